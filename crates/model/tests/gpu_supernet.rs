//! Whole-model training on the GPU (model::hybrid::gpu_supernet) against its specification,
//! the CPU model of the assembled layout (`HybridModel::{forward_train, backward}`): logits,
//! the KL loss, every trained mixer's gradient, the clip norm, which mixers a step changes,
//! and the per-row scoring statistics. `#[ignore]`d: CI has no GPU; scripts/gpu-check runs it.
mod common;
use common::rel_err;
use model::hybrid::config::LinearAttnType;
use model::hybrid::gpu_supernet::GpuSupernet;
use model::hybrid::{parse_layout, HybridConfig, HybridModel};

fn config(layout: &str) -> HybridConfig {
    let (layer_types, lin) = parse_layout(layout).unwrap();
    HybridConfig {
        model_type: "hybrid".into(),
        vocab_size: 97,
        hidden_size: 128,
        intermediate_size: 96,
        num_hidden_layers: layer_types.len(),
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        partial_rotary_factor: 1.0,
        sliding_window: Some(9),
        attn_output_gate: false,
        attention_bias: false,
        qk_norm: false,
        moe: None,
        mla: None,
        max_position_embeddings: 256,
        tie_word_embeddings: true,
        layer_types,
        linear_attn_type: Some(LinearAttnType::PerLayer(lin)),
        linear_num_key_heads: Some(4),
        linear_num_value_heads: Some(4),
        linear_key_head_dim: Some(64),
        linear_value_head_dim: Some(64),
        linear_conv_kernel_dim: 4,
        linear_gate_rank: 16,
        linear_chunk_size: 64,
        bos_token_id: None,
        eos_token_id: None,
    }
}

/// Larger random weights than the init so that every path carries signal.
fn model(layout: &str, seed: u64) -> HybridModel {
    let mut m = HybridModel::init(config(layout), seed).unwrap();
    common::perturb(&mut m, seed + 11);
    m
}

fn log_softmax(row: &[f32]) -> Vec<f32> {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let z = row
        .iter()
        .map(|&x| ((x - m) as f64).exp())
        .sum::<f64>()
        .ln() as f32;
    row.iter().map(|&x| x - m - z).collect()
}

/// KL(teacher ‖ student) averaged over rows and its gradient (temperature 1), as
/// train::loss::kl_div.
fn kl(student: &[f32], teacher: &[f32], v: usize) -> (f32, Vec<f32>) {
    let n = student.len() / v;
    let mut grad = vec![0f32; student.len()];
    let mut total = 0f64;
    for r in 0..n {
        let (s, t) = (
            log_softmax(&student[r * v..(r + 1) * v]),
            log_softmax(&teacher[r * v..(r + 1) * v]),
        );
        for j in 0..v {
            total += (t[j].exp() * (t[j] - s[j])) as f64;
            grad[r * v + j] = (s[j].exp() - t[j].exp()) / n as f32;
        }
    }
    ((total / n as f64) as f32, grad)
}

/// The CPU model of `layout`: the teacher's blocks with the candidates' mixers, holding the
/// weights the GPU has now (earlier steps train them).
fn cpu_student(
    teacher: &HybridModel,
    cands: &[(String, HybridModel)],
    sn: &GpuSupernet,
    layout: &[String],
) -> HybridModel {
    let mut student = teacher.clone_model();
    for (i, k) in layout.iter().enumerate() {
        if let Some((_, c)) = cands.iter().find(|(name, _)| name == k) {
            let mut mixer = c.blocks[i].mixer.clone();
            let p = sn.mixer_params(k, i).unwrap();
            for (name, val) in mixer.params_mut().map.iter_mut() {
                val.data.copy_from_slice(p.get(name));
            }
            student.blocks[i].mixer = mixer;
        }
    }
    student
}

#[test]
#[ignore]
fn supernet_training_pass_matches_the_cpu_model() {
    let teacher = model("fa,fa,fa,fa", 1);
    let cands = vec![
        ("swa".to_string(), model("swa,swa,swa,swa", 2)),
        ("gdn".to_string(), model("gdn,gdn,gdn,gdn", 3)),
    ];
    let named: Vec<(&str, &HybridModel)> = cands.iter().map(|(k, m)| (k.as_str(), m)).collect();
    let mut sn = GpuSupernet::new(&teacher, &named, 0).unwrap();
    let v = teacher.config.vocab_size;
    let (b, t) = (2, 80);
    let mut r = tensor::rng::SplitMix64::new(9);
    let tokens: Vec<u32> = (0..b * t).map(|_| r.below(v as u64) as u32).collect();
    let t_cpu = teacher.forward_train(&tokens, b, t).unwrap().0;
    let t_gpu = sn.teacher_logits(&tokens, (b, t)).unwrap();
    let e = rel_err(&t_cpu, &sn.g.download(&t_gpu).unwrap());
    assert!(e < 3e-2, "teacher logits: {e}");

    for layout in [["fa", "gdn", "swa", "gdn"], ["gdn", "fa", "swa", "fa"]] {
        let layout: Vec<String> = layout.iter().map(|s| s.to_string()).collect();
        let student = cpu_student(&teacher, &cands, &sn, &layout);
        let (logits, saved) = student.forward_train(&tokens, b, t).unwrap();
        let (kl_cpu, dlogits) = kl(&logits, &t_cpu, v);
        let mut grads = student.zero_grads();
        student.backward(&saved, &dlogits, &mut grads);

        let (lg, _) = sn.forward(&layout, &tokens, (b, t), false).unwrap();
        let e = rel_err(&logits, &sn.g.download(&lg).unwrap());
        assert!(e < 3e-2, "{layout:?}: logits {e}");
        let kl_gpu = sn
            .loss_and_grads(&layout, &tokens, (b, t), &t_gpu, 1.0)
            .unwrap();
        assert!(
            (kl_gpu - kl_cpu).abs() < 0.03 * kl_cpu.abs() + 1e-4,
            "{layout:?}: KL {kl_gpu} vs {kl_cpu}"
        );
        let mut sumsq = 0f64;
        for (i, k) in layout.iter().enumerate() {
            if k == "fa" {
                continue;
            }
            let got = sn.mixers[i]
                .get_mut(k)
                .unwrap()
                .weights()
                .to_host(&sn.g, true)
                .unwrap();
            for (name, want) in &grads.blocks[i].1.map {
                let e = rel_err(&want.data, got.get(name));
                assert!(
                    e < 5e-2,
                    "{layout:?} layer {i} {k}: gradient of {name}: {e}"
                );
                sumsq += want.data.iter().map(|&x| (x as f64).powi(2)).sum::<f64>();
            }
        }
        // A step changes exactly the layout's non-FA mixers.
        let before: Vec<Vec<_>> = (0..4)
            .map(|i| {
                ["fa", "swa", "gdn"]
                    .iter()
                    .map(|k| sn.mixer_params(k, i).unwrap())
                    .collect()
            })
            .collect();
        let norm = sn.step(&layout, 1e-3, 1e9).unwrap();
        let want = sumsq.sqrt() as f32;
        assert!(
            (norm - want).abs() < 0.05 * want,
            "clip norm {norm} vs {want}"
        );
        for i in 0..4 {
            for (j, k) in ["fa", "swa", "gdn"].iter().enumerate() {
                let after = sn.mixer_params(k, i).unwrap();
                let changed = after
                    .map
                    .iter()
                    .any(|(name, p)| p.data != before[i][j].get(name));
                assert_eq!(
                    changed,
                    layout[i] == *k && *k != "fa",
                    "{layout:?}: layer {i} {k} changed = {changed}"
                );
            }
        }
    }

    // Row statistics of a layout on one sequence, against the CPU.
    let layout: Vec<String> = ["swa", "gdn", "fa", "gdn"].map(String::from).to_vec();
    let student = cpu_student(&teacher, &cands, &sn, &layout);
    let seq = &tokens[..t];
    let from = 30;
    let st = sn.row_stats(&layout, seq, from, true).unwrap();
    let lc = student.forward_train(seq, 1, t).unwrap().0;
    let tc = teacher.forward_train(seq, 1, t).unwrap().0;
    assert_eq!(st.nll.len(), t - from);
    let mut agree = 0;
    for (j, r) in (from - 1..t - 1).enumerate() {
        let lp = log_softmax(&lc[r * v..(r + 1) * v]);
        let tp = log_softmax(&tc[r * v..(r + 1) * v]);
        let nll = -lp[seq[r + 1] as usize];
        assert!(
            (st.nll[j] - nll).abs() < 0.05 * nll.abs() + 0.02,
            "row {r}: nll {} vs {nll}",
            st.nll[j]
        );
        let kl: f32 = (0..v).map(|c| tp[c].exp() * (tp[c] - lp[c])).sum();
        let got = st.kl.as_ref().unwrap()[j];
        assert!(
            (got - kl).abs() < 0.05 * kl.abs() + 1e-3,
            "row {r}: KL {got} vs {kl}"
        );
        agree += (st.argmax[j] == model::sampling::argmax(&lc[r * v..(r + 1) * v])) as usize;
    }
    assert!(
        agree * 10 >= (t - from) * 9,
        "argmax agrees on {agree} of {} rows",
        t - from
    );
}

/// Data parallelism (two GPUs, NCCL): two replicas that each take half of a batch and sum
/// their gradients weighted by their share of the rows hold the gradients one replica gets
/// from the whole batch; one step later their weights are still identical.
#[test]
#[ignore]
fn two_replicas_sum_to_the_whole_batch_gradients() {
    tensor::cuda::libs::ensure_loaded().unwrap();
    let n = cudarc::driver::CudaContext::device_count().unwrap_or(0);
    assert!(n >= 2, "this test needs two GPUs; the machine has {n}");
    let teacher = model("fa,fa,fa,fa", 1);
    let cands = [("gdn".to_string(), model("gdn,gdn,gdn,gdn", 3))];
    let named: Vec<(&str, &HybridModel)> = cands.iter().map(|(k, m)| (k.as_str(), m)).collect();
    let layout: Vec<String> = ["gdn", "fa", "gdn", "gdn"].map(String::from).to_vec();
    let v = teacher.config.vocab_size;
    let (b, t) = (2, 64);
    let mut r = tensor::rng::SplitMix64::new(4);
    let tokens: Vec<u32> = (0..b * t).map(|_| r.below(v as u64) as u32).collect();

    let mut whole = GpuSupernet::new(&teacher, &named, 0).unwrap();
    let tl = whole.teacher_logits(&tokens, (b, t)).unwrap();
    whole
        .loss_and_grads(&layout, &tokens, (b, t), &tl, 1.0)
        .unwrap();

    let mut reps = [
        GpuSupernet::new(&teacher, &named, 0).unwrap(),
        GpuSupernet::new(&teacher, &named, 1).unwrap(),
    ];
    let comms = tensor::cuda::Collective::group(&[&reps[0].g, &reps[1].g]).unwrap();
    for (rep, c) in reps.iter_mut().zip(comms) {
        rep.join(c);
    }
    std::thread::scope(|s| {
        for (i, rep) in reps.iter_mut().enumerate() {
            let (tokens, layout) = (&tokens, &layout);
            s.spawn(move || {
                rep.g.ctx.bind_to_thread().unwrap();
                let part = &tokens[i * t..(i + 1) * t];
                let tl = rep.teacher_logits(part, (1, t)).unwrap();
                rep.loss_and_grads(layout, part, (1, t), &tl, 1.0).unwrap();
                rep.all_reduce_grads(layout, 0.5).unwrap();
                rep.step(layout, 1e-3, 1.0).unwrap();
            });
        }
    });
    for (i, k) in layout.iter().enumerate() {
        if k == "fa" {
            continue;
        }
        let want = whole.mixers[i]
            .get_mut(k)
            .unwrap()
            .weights()
            .to_host(&whole.g, true)
            .unwrap();
        let got: Vec<_> = reps
            .iter_mut()
            .map(|rep| {
                let g = rep.g.ctx.clone();
                g.bind_to_thread().unwrap();
                rep.mixers[i]
                    .get_mut(k)
                    .unwrap()
                    .weights()
                    .to_host(&rep.g, true)
                    .unwrap()
            })
            .collect();
        for (name, w) in &want.map {
            let e = rel_err(&w.data, got[0].get(name));
            assert!(
                e < 2e-2,
                "layer {i} {name}: summed gradient vs whole batch {e}"
            );
        }
        let (p0, p1) = (
            reps[0].mixer_params(k, i).unwrap(),
            reps[1].mixer_params(k, i).unwrap(),
        );
        assert_eq!(
            p0, p1,
            "layer {i}: the replicas' weights differ after a step"
        );
    }
    eprintln!(
        "two replicas: summed gradients match the whole batch's; weights identical after a step"
    );
}
