//! GPU training of a GDN mixer (model::hybrid::gpu_train) against its CPU specification,
//! `LinearMixer::{forward, backward}`: output, input gradient and every parameter's gradient
//! on random inputs (GVA, two sequences, a ragged last chunk). `#[ignore]`d: CI has no GPU;
//! scripts/gpu-check runs it on the device machine.
mod common;
use common::rel_err;
use mixers::linear_mixer::{LinearConfig, LinearKind, LinearMixer};
use mixers::params::InitRng;
use model::hybrid::gpu_train::GpuLinearTrain;
use tensor::cuda::Gpu;

#[test]
#[ignore]
fn gdn_mixer_training_step_matches_cpu() {
    let gpu = Gpu::open(0).unwrap();
    let cfg = LinearConfig {
        kind: LinearKind::Gdn,
        hidden: 96,
        n_heads: 2,
        n_v_heads: 4,
        head_k_dim: 32,
        head_v_dim: 32,
        conv_size: 4,
        gate_rank: 8,
        norm_eps: 1e-5,
        chunk: 16,
    };
    let mut m = LinearMixer::init(cfg.clone(), &mut InitRng::new(7));
    // Larger projections than the 0.02 init, so that every path carries signal.
    for (k, p) in m.params.map.iter_mut() {
        if k.ends_with("proj.weight") {
            p.data.iter_mut().for_each(|v| *v *= 5.0);
        }
    }
    let (b, t) = (2, 150);
    let n = b * t;
    let mut rng = tensor::rng::SplitMix64::new(3);
    let x = rng.normals(n * cfg.hidden, 1.0);
    let dy = rng.normals(n * cfg.hidden, 1.0);
    let (y_cpu, saved) = m.forward(&x, b, t, None);
    let mut grads = m.params.zeros_like();
    let dx_cpu = m.backward(&saved, &dy, &mut grads);

    let mut gm = GpuLinearTrain::new(&gpu, &m).unwrap();
    let (y, s) = gm.forward(&gpu, &gpu.upload(&x).unwrap(), b, t).unwrap();
    let dx = gm.backward(&gpu, &s, &gpu.upload(&dy).unwrap()).unwrap();
    let y: Vec<f32> = gpu.download(&y).unwrap();
    let dx: Vec<f32> = gpu.download(&dx).unwrap();
    let e = rel_err(&y_cpu, &y);
    assert!(e < 2e-2, "output: {e}");
    let e = rel_err(&dx_cpu, &dx);
    assert!(e < 3e-2, "input gradient: {e}");
    let gg = gm.w.to_host(&gpu, true).unwrap();
    for (k, want) in &grads.map {
        let e = rel_err(&want.data, gg.get(k));
        assert!(e < 3e-2, "gradient of {k}: {e}");
    }
    // A second backward accumulates: every gradient doubles.
    let dx2 = gm.backward(&gpu, &s, &gpu.upload(&dy).unwrap()).unwrap();
    let _ = dx2;
    let gg2 = gm.w.to_host(&gpu, true).unwrap();
    for (k, p) in &gg.map {
        let twice: Vec<f32> = p.data.iter().map(|v| 2.0 * v).collect();
        assert!(rel_err(&twice, gg2.get(k)) < 1e-5, "{k} did not accumulate");
    }
    // KDA is not covered yet, and says so.
    let kda = LinearMixer::init(
        LinearConfig {
            kind: LinearKind::Kda,
            ..cfg
        },
        &mut InitRng::new(1),
    );
    let e = GpuLinearTrain::new(&gpu, &kda).err().unwrap().to_string();
    assert!(e.contains("covers GDN mixers so far"), "{e}");
}

/// The attention mixer's training step (FA, and SWA with a window shorter than the
/// sequences) against `Attention::{forward, backward}`.
#[test]
#[ignore]
fn attention_mixer_training_step_matches_cpu() {
    use mixers::attention::{Attention, AttentionConfig};
    use model::hybrid::gpu_train::GpuAttentionTrain;
    let gpu = Gpu::open(0).unwrap();
    for window in [None, Some(24), Some(4)] {
        let cfg = AttentionConfig {
            hidden: 128,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 64,
            rope_theta: 10000.0,
            rot_dims: 64,
            window,
            output_gate: false,
            qkv_bias: false,
            qk_norm: None,
            mla: None,
        };
        let mut a = Attention::init(cfg.clone(), &mut InitRng::new(9));
        for p in a.params.map.values_mut() {
            p.data.iter_mut().for_each(|v| *v *= 5.0);
        }
        let (b, t) = (2, 150);
        let n = b * t;
        let mut rng = tensor::rng::SplitMix64::new(4);
        let x = rng.normals(n * cfg.hidden, 1.0);
        let dy = rng.normals(n * cfg.hidden, 1.0);
        let (y_cpu, saved) = a.forward(&x, b, t, None);
        let mut grads = a.params.zeros_like();
        let dx_cpu = a.backward(&saved, &dy, &mut grads);
        let mut ga = GpuAttentionTrain::new(&gpu, &a).unwrap();
        let (y, s) = ga.forward(&gpu, &gpu.upload(&x).unwrap(), b, t).unwrap();
        let dx = ga.backward(&gpu, &s, &gpu.upload(&dy).unwrap()).unwrap();
        let y: Vec<f32> = gpu.download(&y).unwrap();
        let dx: Vec<f32> = gpu.download(&dx).unwrap();
        let e = rel_err(&y_cpu, &y);
        assert!(e < 2e-2, "window {window:?}: output {e}");
        let e = rel_err(&dx_cpu, &dx);
        assert!(e < 3e-2, "window {window:?}: input gradient {e}");
        let gg = ga.w.to_host(&gpu, true).unwrap();
        for (k, want) in &grads.map {
            let e = rel_err(&want.data, gg.get(k));
            assert!(e < 3e-2, "window {window:?}: gradient of {k}: {e}");
        }
    }
}
