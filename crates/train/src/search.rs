//! Stage 5 of `hybrid convert`: scoring layouts on held-out data and searching placements
//! under a budget (research/placement.md §2.3, §8.3).
//!
//! Scores, reported separately and combined (PostNAS: different tasks pick different layers):
//! - `kl`: mean KL(teacher ‖ layout) over the generated tokens of held-out teacher traces;
//! - per retrieval kind: mean negative log-likelihood of the answer tokens (continuous, so a
//!   few items already rank layouts; PostNAS scores MMLU by the answer's loss the same way) and
//!   exact-answer accuracy under teacher forcing.
//!
//! Search for a type-count budget (`fa=F,swa=S`), PostNAS's hierarchical reading: (1) the
//! single-FA heatmap — every layer alone as FA, the rest linear — ranks layers by retrieval
//! loss; (2) beam search places the F FA layers among the best-ranked positions by retrieval
//! loss; (3) with those fixed, a second heatmap ranks the remaining layers as SWA by KL, and
//! the S best become SWA. The rest stay linear.
use crate::supernet::Supernet;
use anyhow::{bail, Result};
use model::hybrid::gpu_supernet::{GpuSupernet, RowStats};
use model::hybrid::HybridModel;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Held-out data with the teacher's logits precomputed where KL is scored.
pub struct EvalSet {
    /// (tokens, first scored position, the teacher's log-probabilities at positions
    /// start−1 .. len−1, [n, V]).
    traces: Vec<(Vec<u32>, usize, Vec<f32>)>,
    retrieval: Vec<Probe>,
    vocab: usize,
}

/// One held-out retrieval item: its answer tokens start at `answer_start`; `distance` is the
/// filler between the fact and the question (sentences), for accuracy by distance.
#[derive(Clone, Debug)]
pub struct Probe {
    pub kind: String,
    pub tokens: Vec<u32>,
    pub answer_start: usize,
    pub distance: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Score {
    pub kl: f64,
    /// Per retrieval kind: (answer NLL, accuracy).
    pub retrieval: BTreeMap<String, (f64, f64)>,
    /// Per distance (filler sentences between fact and question), all kinds together:
    /// (answer NLL, accuracy, items).
    #[serde(default)]
    pub by_distance: BTreeMap<usize, (f64, f64, usize)>,
    /// Mean NLL of the traces' generated tokens (the teacher's own text): exp = perplexity.
    #[serde(default)]
    pub trace_nll: f64,
    /// Share of the traces' scored positions where the argmax is the teacher's (teacher
    /// forcing).
    #[serde(default)]
    pub greedy_agreement: f64,
}

impl Score {
    /// Mean answer NLL over the retrieval kinds.
    pub fn retrieval_nll(&self) -> f64 {
        let n = self.retrieval.len().max(1) as f64;
        self.retrieval.values().map(|v| v.0).sum::<f64>() / n
    }
    /// Mean accuracy over the retrieval kinds.
    pub fn retrieval_acc(&self) -> f64 {
        let n = self.retrieval.len().max(1) as f64;
        self.retrieval.values().map(|v| v.1).sum::<f64>() / n
    }
    /// The combined score (lower is better): KL plus the mean answer NLL.
    pub fn combined(&self) -> f64 {
        self.kl + self.retrieval_nll()
    }
}

fn log_softmax_rows(logits: &[f32], v: usize) -> Vec<f32> {
    logits
        .chunks_exact(v)
        .flat_map(tensor::cpu::log_softmax)
        .collect()
}

impl EvalSet {
    /// `traces`: (tokens, first generated position); `retrieval`: the held-out items.
    pub fn new(
        teacher: &HybridModel,
        traces: Vec<(Vec<u32>, usize)>,
        retrieval: Vec<Probe>,
    ) -> Result<Self> {
        let v = teacher.config.vocab_size;
        let mut t = vec![];
        for (toks, start) in traces {
            if start == 0 || start >= toks.len() {
                bail!("a trace's scored span is empty");
            }
            let logits = teacher.forward(&toks, 1, &mut teacher.new_state(1), true)?;
            let lp = log_softmax_rows(&logits[(start - 1) * v..(toks.len() - 1) * v], v);
            t.push((toks, start, lp));
        }
        Ok(EvalSet {
            traces: t,
            retrieval,
            vocab: v,
        })
    }

    /// An evaluation set for [`EvalSet::score_gpu`], which recomputes the teacher's logits on
    /// the GPU: nothing is precomputed on the CPU.
    pub fn for_gpu(
        vocab: usize,
        traces: Vec<(Vec<u32>, usize)>,
        retrieval: Vec<Probe>,
    ) -> Result<Self> {
        let mut t = vec![];
        for (toks, start) in traces {
            if start == 0 || start >= toks.len() {
                bail!("a trace's scored span is empty");
            }
            t.push((toks, start, vec![]));
        }
        Ok(EvalSet {
            traces: t,
            retrieval,
            vocab,
        })
    }

    pub fn tokens(&self) -> usize {
        self.traces.iter().map(|t| t.0.len()).sum::<usize>()
            + self.retrieval.iter().map(|r| r.tokens.len()).sum::<usize>()
    }

    /// The score of a CPU model (the teacher's log-probabilities precomputed by `new`).
    pub fn score(&self, m: &HybridModel) -> Result<Score> {
        let v = self.vocab;
        self.score_by(|toks, from, trace| {
            let logits = m.forward(toks, 1, &mut m.new_state(1), true)?;
            let slp = log_softmax_rows(&logits[(from - 1) * v..(toks.len() - 1) * v], v);
            let rows = slp.chunks_exact(v);
            let nll = rows
                .clone()
                .zip(&toks[from..])
                .map(|(q, &next)| -q[next as usize])
                .collect();
            let argmax = rows.clone().map(model::sampling::argmax).collect();
            let (kl, teacher_argmax) = match trace {
                None => (None, None),
                Some(i) => {
                    let tlp = &self.traces[i].2;
                    if tlp.is_empty() {
                        bail!("this evaluation set was built for the GPU: it holds no teacher log-probabilities");
                    }
                    let kl = tlp
                        .chunks_exact(v)
                        .zip(rows)
                        .map(|(p, q)| {
                            p.iter()
                                .zip(q)
                                .map(|(&a, &b)| (a as f64).exp() * (a - b) as f64)
                                .sum::<f64>() as f32
                        })
                        .collect();
                    let ta = tlp.chunks_exact(v).map(model::sampling::argmax).collect();
                    (Some(kl), Some(ta))
                }
            };
            Ok(RowStats {
                nll,
                argmax,
                kl,
                teacher_argmax,
            })
        })
    }

    /// The score of `layout` in a GPU supernet (the teacher's logits recomputed there).
    pub fn score_gpu(&self, g: &GpuSupernet, layout: &[String]) -> Result<Score> {
        self.score_by(|toks, from, trace| g.row_stats(layout, toks, from, trace.is_some()))
    }

    /// The score from per-row statistics: `rows(tokens, first scored position, trace index)`
    /// gives, for the positions `from..len`, the next-token NLL and argmax, and for traces the
    /// KL to the teacher and the teacher's argmax.
    fn score_by(
        &self,
        mut rows: impl FnMut(&[u32], usize, Option<usize>) -> Result<RowStats>,
    ) -> Result<Score> {
        let (mut kl, mut trace_nll, mut agree) = (0.0, 0.0, 0usize);
        let mut n = 0usize;
        for (i, (toks, start, _)) in self.traces.iter().enumerate() {
            let r = rows(toks, *start, Some(i))?;
            let (Some(k), Some(ta)) = (&r.kl, &r.teacher_argmax) else {
                bail!("a trace's row statistics lack the teacher's KL or argmax");
            };
            trace_nll += r.nll.iter().map(|&x| x as f64).sum::<f64>();
            kl += k.iter().map(|&x| x as f64).sum::<f64>();
            agree += r.argmax.iter().zip(ta).filter(|(a, b)| a == b).count();
            n += r.nll.len();
        }
        let mut per: BTreeMap<String, (f64, f64, usize)> = BTreeMap::new();
        let mut by_distance: BTreeMap<usize, (f64, f64, usize)> = BTreeMap::new();
        for p in &self.retrieval {
            let (toks, start) = (&p.tokens, p.answer_start);
            let r = rows(toks, start, None)?;
            let nll =
                r.nll.iter().map(|&x| x as f64).sum::<f64>() / (toks.len() - start).max(1) as f64;
            let ok = r.argmax.iter().zip(&toks[start..]).all(|(a, b)| a == b);
            for e in [
                per.entry(p.kind.clone()).or_default(),
                by_distance.entry(p.distance).or_default(),
            ] {
                e.0 += nll;
                e.1 += ok as usize as f64;
                e.2 += 1;
            }
        }
        let mean = |(nll, acc, c): (f64, f64, usize)| (nll / c as f64, acc / c as f64, c);
        Ok(Score {
            kl: kl / n.max(1) as f64,
            trace_nll: trace_nll / n.max(1) as f64,
            greedy_agreement: agree as f64 / n.max(1) as f64,
            retrieval: per
                .into_iter()
                .map(|(k, v)| {
                    let (nll, acc, _) = mean(v);
                    (k, (nll, acc))
                })
                .collect(),
            by_distance: by_distance.into_iter().map(|(d, v)| (d, mean(v))).collect(),
        })
    }
}

/// One scored layout.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scored {
    pub layout: Vec<String>,
    pub score: Score,
}

/// Search settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SearchSpec {
    /// Beam width of the FA placement.
    pub width: usize,
    /// FA positions considered by the beam: the best of the heatmap.
    pub top: usize,
    /// The linear type filling the layers that are neither FA nor SWA.
    pub linear: String,
}

/// Everything the search evaluated, for the report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SearchResult {
    pub best: Scored,
    /// Single-FA heatmap: layer i as the only FA layer, the rest linear.
    pub fa_heatmap: Vec<Scored>,
    /// With the chosen FA layers fixed: layer i as the only SWA layer.
    pub swa_heatmap: Vec<Scored>,
    pub evaluated: usize,
}

/// Searches placements of `fa` FA and `swa` SWA layers (the rest `spec.linear`).
pub fn search(
    sn: &mut Supernet,
    set: &EvalSet,
    fa: usize,
    swa: usize,
    spec: &SearchSpec,
    mut progress: impl FnMut(&str, usize),
) -> Result<SearchResult> {
    let n = sn.teacher.blocks.len();
    if fa + swa > n {
        bail!("{fa} FA + {swa} SWA layers do not fit {n}");
    }
    let mut evaluated = 0;
    let mut eval = |sn: &mut Supernet, layout: Vec<String>, stage: &str| -> Result<Scored> {
        let score = sn.score(set, &layout)?;
        evaluated += 1;
        progress(stage, evaluated);
        Ok(Scored { layout, score })
    };
    let lin = spec.linear.clone();
    let with = |base: &[String], i: usize, k: &str| -> Vec<String> {
        let mut l = base.to_vec();
        l[i] = k.to_string();
        l
    };
    let all_lin = vec![lin.clone(); n];
    // (1) Single-FA heatmap.
    let mut fa_heatmap = vec![];
    for i in 0..n {
        fa_heatmap.push(eval(sn, with(&all_lin, i, "fa"), "FA heatmap")?);
    }
    // (2) Beam over FA placements among the heatmap's best positions (by retrieval NLL).
    let mut ranked: Vec<usize> = (0..n).collect();
    ranked.sort_by(|&a, &b| {
        fa_heatmap[a]
            .score
            .retrieval_nll()
            .total_cmp(&fa_heatmap[b].score.retrieval_nll())
    });
    let pool: Vec<usize> = ranked.into_iter().take(spec.top.max(fa)).collect();
    let mut beam: Vec<Scored> = vec![Scored {
        layout: all_lin.clone(),
        score: Score::default(),
    }];
    for step in 0..fa {
        let mut next: Vec<Scored> = vec![];
        for b in &beam {
            for &i in &pool {
                if b.layout[i] == "fa" {
                    continue;
                }
                let l = with(&b.layout, i, "fa");
                if next.iter().any(|s| s.layout == l) {
                    continue;
                }
                // One FA layer: the heatmap already scored it.
                let s = if step == 0 {
                    fa_heatmap[i].clone()
                } else {
                    eval(sn, l, "FA beam")?
                };
                next.push(s);
            }
        }
        next.sort_by(|a, b| a.score.retrieval_nll().total_cmp(&b.score.retrieval_nll()));
        next.truncate(spec.width.max(1));
        beam = next;
    }
    let fa_layout = beam.into_iter().next().map(|s| s.layout).unwrap_or(all_lin);
    // (3) SWA heatmap with the FA layers fixed, then the `swa` best by KL.
    let mut swa_heatmap = vec![];
    let mut swa_rank = vec![];
    for i in 0..n {
        if fa_layout[i] == "fa" || swa == 0 {
            continue;
        }
        let s = eval(sn, with(&fa_layout, i, "swa"), "SWA heatmap")?;
        swa_rank.push((i, s.score.kl));
        swa_heatmap.push(s);
    }
    swa_rank.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut best_layout = fa_layout;
    for &(i, _) in swa_rank.iter().take(swa) {
        best_layout[i] = "swa".into();
    }
    let best = eval(sn, best_layout, "final")?;
    Ok(SearchResult {
        best,
        fa_heatmap,
        swa_heatmap,
        evaluated,
    })
}

/// Baseline layouts at the same budget (the report's comparisons): a uniform interleave
/// (softmax layers evenly spread, FA and SWA alternating, Kimi / Qwen3-Next style), evenly
/// spaced FA with SWA after each, and FA at the first and last layers.
pub fn baselines(n: usize, fa: usize, swa: usize, linear: &str) -> Vec<(String, Vec<String>)> {
    let mut out = vec![];
    let soft = fa + swa;
    if soft > 0 {
        // Uniform interleave: softmax at every (n / soft)-th layer, the last one of each period.
        let mut l = vec![linear.to_string(); n];
        let mut kinds: Vec<&str> = vec![];
        for j in 0..soft {
            kinds.push(if (j * fa) / soft.max(1) != ((j + 1) * fa) / soft.max(1) {
                "fa"
            } else {
                "swa"
            });
        }
        for (j, k) in kinds.iter().enumerate() {
            let pos = ((j + 1) * n) / soft - 1;
            l[pos] = k.to_string();
        }
        out.push(("uniform interleave".to_string(), l));
    }
    // Evenly spaced FA, SWA filling the layers after them.
    let mut l = vec![linear.to_string(); n];
    for j in 0..fa {
        l[((2 * j + 1) * n) / (2 * fa)] = "fa".into();
    }
    let mut placed = 0;
    let mut i = 0;
    while placed < swa && i < n {
        if l[i] == linear {
            l[i] = "swa".into();
            placed += 1;
        }
        i += (n / (swa + 1)).max(1);
    }
    let mut i = 0;
    while placed < swa && i < n {
        if l[i] == linear {
            l[i] = "swa".into();
            placed += 1;
        }
        i += 1;
    }
    out.push(("evenly spaced FA".to_string(), l));
    // FA at the first and last layers (what MSE/PPL ablation selectors pick, KLGS).
    let mut l = vec![linear.to_string(); n];
    for j in 0..fa {
        let pos = if j % 2 == 0 { j / 2 } else { n - 1 - j / 2 };
        l[pos] = "fa".into();
    }
    let mut placed = 0;
    for i in (0..n).rev() {
        if placed == swa {
            break;
        }
        if l[i] == linear {
            l[i] = "swa".into();
            placed += 1;
        }
    }
    out.push(("first/last FA".to_string(), l));
    out
}

/// Kendall's tau-b between two score lists (rank agreement, -1..1; ties count as neither
/// concordant nor discordant, and the denominator corrects for them).
pub fn kendall_tau(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let (mut conc, mut disc, mut ties_a, mut ties_b) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..a.len() {
        for j in i + 1..a.len() {
            let (da, db) = (a[i] - a[j], b[i] - b[j]);
            match (da == 0.0, db == 0.0) {
                (true, true) => {}
                (true, false) => ties_a += 1,
                (false, true) => ties_b += 1,
                _ if (da > 0.0) == (db > 0.0) => conc += 1,
                _ => disc += 1,
            }
        }
    }
    let denom = (((conc + disc + ties_a) * (conc + disc + ties_b)) as f64).sqrt();
    (denom > 0.0).then(|| (conc - disc) as f64 / denom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kendall_tau_of_known_rankings() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(kendall_tau(&a, &a), Some(1.0));
        assert_eq!(kendall_tau(&a, &[5.0, 4.0, 3.0, 2.0, 1.0]), Some(-1.0));
        // One swapped pair of 10: (9 - 1) / 10.
        let t = kendall_tau(&a, &[1.0, 2.0, 3.0, 5.0, 4.0]).unwrap();
        assert!((t - 0.8).abs() < 1e-12, "{t}");
        // (1,2,2,3) vs (1,3,2,4): 5 concordant pairs, 1 tied in a only: 5 / sqrt(5 * 6).
        let t = kendall_tau(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0]).unwrap();
        assert!((t - 0.912_870_929_175_276_9).abs() < 1e-12, "{t}");
        assert_eq!(kendall_tau(&[1.0], &[1.0]), None);
        assert_eq!(kendall_tau(&[1.0, 1.0], &[2.0, 3.0]), None);
    }

    #[test]
    fn baselines_keep_the_budget() {
        for (n, fa, swa) in [(30, 2, 4), (8, 1, 2), (12, 3, 0), (4, 0, 2)] {
            for (name, l) in baselines(n, fa, swa, "gdn") {
                assert_eq!(l.len(), n, "{name}");
                assert_eq!(l.iter().filter(|k| *k == "fa").count(), fa, "{name} {l:?}");
                assert_eq!(
                    l.iter().filter(|k| *k == "swa").count(),
                    swa,
                    "{name} {l:?}"
                );
            }
        }
    }
}
