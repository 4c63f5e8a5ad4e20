//! The engine's state pools on a small random hybrid (FA, SWA of window 6, GDN): what a
//! sequence's states hold, by pool, matches the admission's prediction at every length — FA
//! keys/values grow with every token, the window's stop growing at its size
//! (block granularity), a recurrent slot is constant.
use engine::pools::{after, held};
use model::hybrid::{HybridConfig, HybridModel};

fn tiny_hybrid() -> HybridModel {
    let cfg = HybridConfig {
        max_position_embeddings: 512,
        ..HybridConfig::small("fa,swa,gdn", 50).unwrap()
    };
    HybridModel::init(cfg, 3).unwrap()
}

#[test]
fn each_pool_holds_what_admission_predicts() {
    let m = tiny_hybrid();
    let per_token = 2 * 2 * 8 * 4; // K and V, 2 kv heads of dim 8, f32
    let mut st = m.new_state(1);
    let mut n = 0;
    let mut recurrent = None;
    // Lengths across the window (6) and across paged blocks (32 tokens).
    for chunk in [1usize, 3, 4, 20, 9, 30] {
        let toks: Vec<u32> = (n..n + chunk).map(|i| (i * 7 % 50) as u32).collect();
        m.forward(&toks, 1, &mut st, false).unwrap();
        n += chunk;
        let (h, a) = (held(&m, &st), after(&m, n));
        assert_eq!(a.kv, n * per_token, "kv after {n}");
        assert_eq!(h.kv, a.kv, "kv held at {n}");
        // The window keeps its last W - 1 tokens and frees whole 32-token blocks: it holds
        // between W - 1 and W + 30 tokens once full, and the prediction is that upper bound.
        assert_eq!(a.window, n.min(6 + 30) * per_token, "window after {n}");
        assert!(
            h.window <= a.window && h.window >= n.min(5) * per_token,
            "window held {} at {n}",
            h.window
        );
        assert_eq!(h.recurrent, a.recurrent, "recurrent at {n}");
        assert!(h.recurrent > 0);
        assert_eq!(
            *recurrent.get_or_insert(h.recurrent),
            h.recurrent,
            "a recurrent slot is constant"
        );
    }
}
