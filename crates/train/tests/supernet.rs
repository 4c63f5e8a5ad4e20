//! The supernet on a small random teacher: layout sampling, assembly that leaves the teacher
//! intact, training that lowers the KL of the layouts it samples, and extraction of a layout
//! as a standalone model that saves and loads.
mod common;

use model::hybrid::HybridModel;
use train::loss::kl_div;
use train::supernet::{sample_layout, Supernet, SupernetSpec};
use train::tasks::rng::SplitMix64;
use train::transfer::candidate_model;

fn teacher() -> HybridModel {
    common::teacher(4, 40, 2, 5)
}

fn supernet() -> Supernet {
    let t = teacher();
    let cands = ["swa", "gdn"]
        .iter()
        .map(|k| (k.to_string(), candidate_model(&t, k, 4, 0).unwrap()))
        .collect();
    Supernet::new(t, cands).unwrap()
}

fn seqs() -> Vec<Vec<u32>> {
    let mut r = SplitMix64::new(3);
    (0..8)
        .map(|_| (0..32).map(|_| r.below(40) as u32).collect())
        .collect()
}

fn spec(steps: usize) -> SupernetSpec {
    SupernetSpec {
        steps,
        lr: 3e-3,
        seq_len: 32,
        temperature: 1.0,
        p_all_fa: 0.1,
        p_uniform: 0.1,
        seed: 1,
        fixed: None,
        batch: 1,
    }
}

fn kl_of(s: &mut Supernet, layout: &[String], toks: &[Vec<u32>]) -> f64 {
    let mut total = 0.0;
    for t in toks {
        let target = s
            .teacher
            .forward(t, 1, &mut s.teacher.new_state(1), true)
            .unwrap();
        let out = s
            .with_layout(layout, |m| {
                m.forward(t, 1, &mut m.new_state(1), true).unwrap()
            })
            .unwrap();
        total += kl_div(&out, &target, 40, 1.0).0 as f64;
    }
    total / toks.len() as f64
}

#[test]
fn sampled_layouts_cover_every_kind_and_the_special_shares() {
    let kinds: Vec<String> = ["fa", "swa", "gdn"].iter().map(|s| s.to_string()).collect();
    let mut rng = SplitMix64::new(0);
    let (mut all_fa, mut counts) = (0, [0usize; 3]);
    for _ in 0..2000 {
        let l = sample_layout(&kinds, 12, &spec(0), &mut rng);
        assert_eq!(l.len(), 12);
        all_fa += l.iter().all(|k| k == "fa") as usize;
        for (j, k) in kinds.iter().enumerate() {
            counts[j] += l.iter().filter(|x| *x == k).count();
        }
    }
    assert!(
        (150..=260).contains(&all_fa),
        "all-FA layouts: {all_fa} of 2000"
    );
    assert!(counts.iter().all(|&c| c > 4000), "{counts:?}");
}

#[test]
fn training_lowers_the_kl_of_sampled_layouts_and_leaves_the_teacher_intact() {
    let mut s = supernet();
    let data = seqs();
    let probe = &data[..2];
    let before_teacher = s
        .teacher
        .forward(&probe[0], 1, &mut s.teacher.new_state(1), true)
        .unwrap();
    let mixed: Vec<String> = ["gdn", "fa", "swa", "gdn"]
        .iter()
        .map(|x| x.to_string())
        .collect();
    let all_gdn = vec!["gdn".to_string(); 4];
    let (k0_mixed, k0_gdn) = (kl_of(&mut s, &mixed, probe), kl_of(&mut s, &all_gdn, probe));
    let log = s.train(&data, &spec(120), |_| {}).unwrap();
    assert_eq!(log.len(), 120);
    let (k1_mixed, k1_gdn) = (kl_of(&mut s, &mixed, probe), kl_of(&mut s, &all_gdn, probe));
    eprintln!("KL mixed {k0_mixed:.4} -> {k1_mixed:.4}, all-GDN {k0_gdn:.4} -> {k1_gdn:.4}");
    assert!(
        k1_mixed < 0.7 * k0_mixed,
        "mixed layout KL {k0_mixed} -> {k1_mixed}"
    );
    assert!(k1_gdn < 0.7 * k0_gdn, "all-GDN KL {k0_gdn} -> {k1_gdn}");
    let after_teacher = s
        .teacher
        .forward(&probe[0], 1, &mut s.teacher.new_state(1), true)
        .unwrap();
    assert_eq!(
        before_teacher, after_teacher,
        "the teacher (FA mixers, MLPs) must stay frozen"
    );
    let all_fa = vec!["fa".to_string(); 4];
    assert!(kl_of(&mut s, &all_fa, probe) < 1e-9);
}

#[test]
fn an_extracted_layout_is_a_standalone_model_that_saves_and_loads() {
    let mut s = supernet();
    let layout: Vec<String> = ["swa", "gdn", "fa", "gdn"]
        .iter()
        .map(|x| x.to_string())
        .collect();
    let m = s.extract(&layout).unwrap();
    assert_eq!(
        m.config.layer_names().unwrap(),
        vec!["SWA", "GDN", "FA", "GDN"]
    );
    let t = &seqs()[0];
    let want = s
        .with_layout(&layout, |x| {
            x.forward(t, 1, &mut x.new_state(1), true).unwrap()
        })
        .unwrap();
    let got = m.forward(t, 1, &mut m.new_state(1), true).unwrap();
    assert_eq!(want, got);
    let dir = std::env::temp_dir().join(format!("hybrid-supernet-{}", std::process::id()));
    m.save(&dir).unwrap();
    let back = HybridModel::load(&dir).unwrap();
    assert_eq!(
        back.forward(t, 1, &mut back.new_state(1), true).unwrap(),
        got
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn search_keeps_the_budget_and_scores_the_teacher_layout_at_zero_kl() {
    use train::search::{search, EvalSet, Probe, SearchSpec};
    let mut s = supernet();
    let data = seqs();
    s.train(&data, &spec(40), |_| {}).unwrap();
    let traces = vec![(data[0].clone(), 20), (data[1].clone(), 16)];
    let probe = |kind: &str, tokens: &Vec<u32>, answer_start, distance| Probe {
        kind: kind.into(),
        tokens: tokens.clone(),
        answer_start,
        distance,
    };
    let retrieval = vec![
        probe("kv", &data[2], 29, 4),
        probe("hop", &data[3], 30, 4),
        probe("kv", &data[4], 28, 9),
    ];
    let set = EvalSet::new(&s.teacher, traces, retrieval).unwrap();
    let teacher = s.teacher.clone_model();
    let t = set.score(&teacher).unwrap();
    assert!(t.kl.abs() < 1e-9, "teacher KL {}", t.kl);
    // By distance: items 0+1 at 4, item 2 at 9; the kinds' and distances' NLLs are means of
    // the same per-item NLLs, so their item-weighted averages agree.
    assert_eq!(
        t.by_distance.values().map(|v| v.2).collect::<Vec<_>>(),
        [2, 1]
    );
    let by_kind = (2.0 * t.retrieval["kv"].0 + t.retrieval["hop"].0) / 3.0;
    let by_dist = (2.0 * t.by_distance[&4].0 + t.by_distance[&9].0) / 3.0;
    assert!((by_kind - by_dist).abs() < 1e-9, "{by_kind} vs {by_dist}");
    let spec = SearchSpec {
        width: 2,
        top: 3,
        linear: "gdn".into(),
    };
    let r = search(&mut s, &set, 1, 2, &spec, |_, _| {}).unwrap();
    let l = &r.best.layout;
    assert_eq!(l.iter().filter(|k| *k == "fa").count(), 1);
    assert_eq!(l.iter().filter(|k| *k == "swa").count(), 2);
    assert_eq!(r.fa_heatmap.len(), 4);
    assert_eq!(r.swa_heatmap.len(), 3);
    // The FA layer is the heatmap's best by retrieval NLL (one FA layer: the beam keeps it).
    let best_fa = (0..4)
        .min_by(|&a, &b| {
            r.fa_heatmap[a]
                .score
                .retrieval_nll()
                .total_cmp(&r.fa_heatmap[b].score.retrieval_nll())
        })
        .unwrap();
    assert_eq!(l[best_fa], "fa");
}
