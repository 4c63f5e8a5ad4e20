//! Training a GDN mixer on the GPU: the forward that keeps what the backward needs, and the
//! backward that accumulates every parameter's gradient and returns the input's. The
//! specification is `mixers::linear_mixer::LinearMixer::{forward, backward}` (whole sequences,
//! zero initial state); tests/gpu_train.rs compares the two on random inputs.
//!
//! Precision, as mixed-precision training does it: f32 master parameters, gradients and
//! elementwise activations; GEMM operands and the chunked recurrence's q/k/v/do in bf16 with
//! f32 accumulation. The bf16 weight copies are made from the masters at every forward, so
//! an optimizer step on the masters is all an update needs.
//!
//! The attention candidates' trainer is here too (`GpuAttentionTrain`); the whole model's
//! training pass, which `hybrid convert` uses for transfer, supernet and distillation, is
//! `gpu_supernet`.
use anyhow::{bail, Result};
use cudarc::driver::CudaSlice;
use half::bf16;
use mixers::linear_mixer::{LinearKind, LinearMixer};
use mixers::params::Params;
use std::collections::BTreeMap;
use tensor::cuda::{ChunkDims, ChunkScratch, GateActivation, Gpu};

/// A GDN mixer's parameters on the GPU (f32 masters) and their gradients.
pub struct GpuLinearTrain {
    pub cfg: mixers::linear_mixer::LinearConfig,
    pub w: GpuParams,
}

/// What [`GpuLinearTrain::backward`] needs from the forward.
pub struct GpuLinearSaved {
    b: usize,
    t: usize,
    xb: CudaSlice<bf16>,
    /// bf16 copies of the weights the forward used.
    wb: BTreeMap<String, CudaSlice<bf16>>,
    pre: [CudaSlice<f32>; 3],
    q: CudaSlice<f32>,
    k: CudaSlice<f32>,
    qkvb: [CudaSlice<bf16>; 3],
    inv_q: CudaSlice<f32>,
    inv_k: CudaSlice<f32>,
    beta: CudaSlice<f32>,
    u: CudaSlice<f32>,
    g: CudaSlice<f32>,
    scratch: ChunkScratch,
    o: CudaSlice<f32>,
    z: CudaSlice<f32>,
    rs: CudaSlice<f32>,
    yb: CudaSlice<bf16>,
}

pub(crate) fn to_bf(g: &Gpu, x: &CudaSlice<f32>) -> Result<CudaSlice<bf16>> {
    let mut y = g.zeros::<bf16>(x.len())?;
    g.f32_to_bf16(x, &mut y, x.len())?;
    Ok(y)
}

/// A mixer's parameters on the GPU (f32 masters) with their gradients, under checkpoint names.
pub struct GpuParams {
    pub params: BTreeMap<String, CudaSlice<f32>>,
    pub grads: BTreeMap<String, CudaSlice<f32>>,
    shapes: BTreeMap<String, Vec<usize>>,
}

impl GpuParams {
    pub fn upload(g: &Gpu, p: &Params) -> Result<Self> {
        let (mut params, mut grads, mut shapes) =
            (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for (k, v) in &p.map {
            params.insert(k.clone(), g.upload(&v.data)?);
            grads.insert(k.clone(), g.zeros::<f32>(v.data.len())?);
            shapes.insert(k.clone(), v.shape.clone());
        }
        Ok(GpuParams {
            params,
            grads,
            shapes,
        })
    }

    /// Sets every gradient to zero (before a step's backward).
    pub fn zero_grads(&mut self, g: &Gpu) -> Result<()> {
        for v in self.grads.values_mut() {
            g.stream.memset_zeros(v)?;
        }
        Ok(())
    }

    /// The parameters or the gradients as host `Params` (checkpoint names and shapes).
    pub fn to_host(&self, g: &Gpu, grads: bool) -> Result<Params> {
        let mut p = Params::default();
        for (k, shape) in &self.shapes {
            let src = if grads {
                &self.grads[k]
            } else {
                &self.params[k]
            };
            let data: Vec<f32> = g.download(src)?;
            p.insert(k, shape, data);
        }
        Ok(p)
    }

    /// Writes the parameters back into the CPU mixer's (after training).
    pub fn write_back(&self, g: &Gpu, p: &mut Params) -> Result<()> {
        for (k, v) in p.map.iter_mut() {
            let data: Vec<f32> = g.download(&self.params[k])?;
            v.data.copy_from_slice(&data);
        }
        Ok(())
    }
}

const PROJ: [&str; 6] = [
    "q_proj.weight",
    "k_proj.weight",
    "v_proj.weight",
    "b_proj.weight",
    "a_proj.weight",
    "g_proj.weight",
];

impl GpuLinearTrain {
    pub fn new(g: &Gpu, m: &LinearMixer) -> Result<Self> {
        if m.cfg.kind != LinearKind::Gdn {
            bail!(
                "GPU training covers GDN mixers so far; this one is {}",
                m.cfg.kind.name()
            );
        }
        if m.cfg.conv_size == 0 {
            bail!("GPU training of a GDN mixer needs its short convs (conv_size > 0)");
        }
        Ok(GpuLinearTrain {
            cfg: m.cfg.clone(),
            w: GpuParams::upload(g, &m.params)?,
        })
    }

    fn p(&self, name: &str) -> &CudaSlice<f32> {
        &self.w.params[name]
    }

    /// y [n, out] = x [n, in] · Wᵀ, bf16 operands, f32 result.
    pub(crate) fn lin(
        g: &Gpu,
        xb: &CudaSlice<bf16>,
        w: &CudaSlice<bf16>,
        (n, out, inp): (usize, usize, usize),
    ) -> Result<CudaSlice<f32>> {
        let mut y = g.zeros::<f32>(n * out)?;
        g.gemm_bf16_f32((false, true), xb, w, &mut y, (n, out, inp), false)?;
        Ok(y)
    }

    /// Forward over x [B·T, hidden] (f32), zero initial state: the output [B·T, hidden].
    pub fn forward(
        &self,
        g: &Gpu,
        x: &CudaSlice<f32>,
        b: usize,
        t: usize,
    ) -> Result<(CudaSlice<f32>, GpuLinearSaved)> {
        let c = &self.cfg;
        let n = b * t;
        let (d, nh, hv, kd, vd) = (c.hidden, c.n_heads, c.n_v_heads, c.head_k_dim, c.head_v_dim);
        let (hk, hvv) = (nh * kd, hv * vd);
        if x.len() < n * d {
            bail!("the input holds {} values, not {b} x {t} x {d}", x.len());
        }
        let xb = to_bf(g, x)?;
        let mut wb = BTreeMap::new();
        for name in PROJ.iter().chain(&["o_proj.weight"]) {
            wb.insert(name.to_string(), to_bf(g, self.p(name))?);
        }
        // q, k, v: projection, short conv + SiLU; q and k L2-normalised per head.
        let mut pre: Vec<CudaSlice<f32>> = vec![];
        let mut post: Vec<CudaSlice<f32>> = vec![];
        for (proj, conv, ch) in [
            ("q_proj.weight", "q_conv1d.weight", hk),
            ("k_proj.weight", "k_conv1d.weight", hk),
            ("v_proj.weight", "v_conv1d.weight", hvv),
        ] {
            let p = Self::lin(g, &xb, &wb[proj], (n, ch, d))?;
            let mut y = g.zeros::<f32>(n * ch)?;
            g.conv_silu_fwd_f32(&p, self.p(conv), &mut y, (b, t, ch, c.conv_size))?;
            pre.push(p);
            post.push(y);
        }
        let v = post.pop().expect("three");
        let mut k = post.pop().expect("three");
        let mut q = post.pop().expect("three");
        let (mut inv_q, mut inv_k) = (g.zeros::<f32>(n * nh)?, g.zeros::<f32>(n * nh)?);
        g.l2norm_fwd_f32(&mut q, &mut inv_q, n * nh, kd)?;
        g.l2norm_fwd_f32(&mut k, &mut inv_k, n * nh, kd)?;
        let mut beta = Self::lin(g, &xb, &wb["b_proj.weight"], (n, hv, d))?;
        g.sigmoid_f32(&mut beta, n * hv)?;
        let a = Self::lin(g, &xb, &wb["a_proj.weight"], (n, hv, d))?;
        let (mut u, mut gd) = (g.zeros::<f32>(n * hv)?, g.zeros::<f32>(n * hv)?);
        g.decay_gate_fwd_f32(
            &a,
            self.p("dt_bias"),
            self.p("A_log"),
            &mut u,
            &mut gd,
            (n, hv, 1),
        )?;
        // The chunked recurrence (bf16 q, k, v), keeping chunk-entry states for the backward.
        let qkvb = [to_bf(g, &q)?, to_bf(g, &k)?, to_bf(g, &v)?];
        let cd = ChunkDims {
            b,
            t,
            h: nh,
            hv,
            k: kd,
            v: vd,
        };
        let mut scratch = g.chunk_linear_scratch(cd)?;
        scratch.keep_states(g)?;
        let mut rec = g.zeros::<f32>(b * hv * kd * vd)?;
        let mut ob = g.zeros::<bf16>(n * hvv)?;
        g.chunk_linear_fwd(
            cd,
            &qkvb[0],
            &qkvb[1],
            &qkvb[2],
            &gd,
            true,
            Some(&beta),
            (kd as f32).powf(-0.5),
            &mut rec,
            &mut ob,
            &mut scratch,
        )?;
        let mut o = g.zeros::<f32>(n * hvv)?;
        g.bf16_to_f32(&ob, &mut o, n * hvv)?;
        // Output gate and norm, output projection.
        let z = Self::lin(g, &xb, &wb["g_proj.weight"], (n, hvv, d))?;
        let (mut y, mut rs) = (g.zeros::<f32>(n * hvv)?, g.zeros::<f32>(n * hv)?);
        g.gated_rmsnorm_fwd_f32(
            &o,
            &z,
            self.p("o_norm.weight"),
            &mut y,
            &mut rs,
            (n * hv, vd),
            c.norm_eps,
            GateActivation::Silu,
        )?;
        let yb = to_bf(g, &y)?;
        let out = Self::lin(g, &yb, &wb["o_proj.weight"], (n, d, hvv))?;
        let mut pre_it = pre.into_iter();
        let pre = [
            pre_it.next().expect("three"),
            pre_it.next().expect("three"),
            pre_it.next().expect("three"),
        ];
        Ok((
            out,
            GpuLinearSaved {
                b,
                t,
                xb,
                wb,
                pre,
                q,
                k,
                qkvb,
                inv_q,
                inv_k,
                beta,
                u,
                g: gd,
                scratch,
                o,
                z,
                rs,
                yb,
            },
        ))
    }

    /// dx [n, in] (+)= dy · W and dW += dyᵀ · x, for y = x · Wᵀ.
    #[allow(clippy::too_many_arguments)]
    fn lin_bwd(
        g: &Gpu,
        xb: &CudaSlice<bf16>,
        wb: &CudaSlice<bf16>,
        dy: &CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
        (n, out, inp): (usize, usize, usize),
        accumulate_dx: bool,
    ) -> Result<()> {
        let dyb = to_bf(g, dy)?;
        g.gemm_bf16_f32((true, false), &dyb, xb, dw, (out, inp, n), true)?;
        g.gemm_bf16_f32((false, false), &dyb, wb, dx, (n, inp, out), accumulate_dx)?;
        Ok(())
    }

    /// Backward of [`GpuLinearTrain::forward`] from dy [B·T, hidden]: adds every parameter's
    /// gradient into `grads` and returns dx [B·T, hidden].
    pub fn backward(
        &mut self,
        g: &Gpu,
        s: &GpuLinearSaved,
        dy: &CudaSlice<f32>,
    ) -> Result<CudaSlice<f32>> {
        let c = self.cfg.clone();
        let (b, t) = (s.b, s.t);
        let n = b * t;
        let (d, nh, hv, kd, vd) = (c.hidden, c.n_heads, c.n_v_heads, c.head_k_dim, c.head_v_dim);
        let (hk, hvv) = (nh * kd, hv * vd);
        // The gradient buffers, by name, each borrowed mutably while the parameters are read.
        let gr = &mut self.w.grads;
        let prm = &self.w.params;
        let p = |k: &str| &prm[k];
        macro_rules! grad {
            ($k:expr) => {
                gr.get_mut($k)
                    .expect("every parameter has a gradient buffer")
            };
        }
        let mut dyn_ = g.zeros::<f32>(n * hvv)?;
        Self::lin_bwd(
            g,
            &s.yb,
            &s.wb["o_proj.weight"],
            dy,
            grad!("o_proj.weight"),
            &mut dyn_,
            (n, d, hvv),
            false,
        )?;
        let (mut d_o, mut dz) = (g.zeros::<f32>(n * hvv)?, g.zeros::<f32>(n * hvv)?);
        g.gated_rmsnorm_bwd_f32(
            &s.o,
            &s.z,
            p("o_norm.weight"),
            &s.rs,
            &dyn_,
            &mut d_o,
            &mut dz,
            grad!("o_norm.weight"),
            (n * hv, vd),
            GateActivation::Silu,
        )?;
        let mut dx = g.zeros::<f32>(n * d)?;
        Self::lin_bwd(
            g,
            &s.xb,
            &s.wb["g_proj.weight"],
            &dz,
            grad!("g_proj.weight"),
            &mut dx,
            (n, hvv, d),
            false,
        )?;
        // The recurrence.
        let cd = ChunkDims {
            b,
            t,
            h: nh,
            hv,
            k: kd,
            v: vd,
        };
        let dob = to_bf(g, &d_o)?;
        let mut cg = g.chunk_linear_grads(cd, true)?;
        g.chunk_linear_bwd(
            cd,
            &s.qkvb[0],
            &s.qkvb[1],
            &s.qkvb[2],
            &s.g,
            true,
            Some(&s.beta),
            (kd as f32).powf(-0.5),
            &s.scratch,
            &dob,
            None,
            &mut cg,
        )?;
        // beta = sigmoid(x·Wbᵀ)
        let mut dbl = g.zeros::<f32>(n * hv)?;
        g.sigmoid_bwd_f32(&s.beta, &cg.dbeta, &mut dbl, n * hv)?;
        Self::lin_bwd(
            g,
            &s.xb,
            &s.wb["b_proj.weight"],
            &dbl,
            grad!("b_proj.weight"),
            &mut dx,
            (n, hv, d),
            true,
        )?;
        // g = −exp(A_log)·softplus(x·Waᵀ + dt_bias): two gradients at once, taken out and back.
        let mut da = g.zeros::<f32>(n * hv)?;
        let mut ddt = gr.remove("dt_bias").expect("dt_bias gradient");
        let mut dal = gr.remove("A_log").expect("A_log gradient");
        let r = g.decay_gate_bwd_f32(
            &s.u,
            &cg.dg,
            p("A_log"),
            &mut da,
            &mut ddt,
            &mut dal,
            (n, hv, 1),
        );
        gr.insert("dt_bias".into(), ddt);
        gr.insert("A_log".into(), dal);
        r?;
        Self::lin_bwd(
            g,
            &s.xb,
            &s.wb["a_proj.weight"],
            &da,
            grad!("a_proj.weight"),
            &mut dx,
            (n, hv, d),
            true,
        )?;
        // q, k: L2 norm, then conv + SiLU and projection; v: conv + SiLU and projection.
        let (mut dq, mut dk) = (g.zeros::<f32>(n * hk)?, g.zeros::<f32>(n * hk)?);
        g.l2norm_bwd_f32(&s.q, &s.inv_q, &cg.dq, &mut dq, n * nh, kd)?;
        g.l2norm_bwd_f32(&s.k, &s.inv_k, &cg.dk, &mut dk, n * nh, kd)?;
        for (i, (dpost, ch, conv, proj)) in [
            (&dq, hk, "q_conv1d.weight", "q_proj.weight"),
            (&dk, hk, "k_conv1d.weight", "k_proj.weight"),
            (&cg.dv, hvv, "v_conv1d.weight", "v_proj.weight"),
        ]
        .into_iter()
        .enumerate()
        {
            let mut dpre = g.zeros::<f32>(n * ch)?;
            g.short_conv_bwd_f32(
                &s.pre[i],
                p(conv),
                dpost,
                &mut dpre,
                grad!(conv),
                b,
                t,
                ch,
                c.conv_size,
            )?;
            Self::lin_bwd(
                g,
                &s.xb,
                &s.wb[proj],
                &dpre,
                grad!(proj),
                &mut dx,
                (n, ch, d),
                true,
            )?;
        }
        Ok(dx)
    }
}

/// An attention mixer (FA, or SWA with its window) on the GPU for training: f32 master
/// parameters and gradients; bf16 projections, RoPE and flash attention (forward and backward
/// kernels of `tensor::cuda::flash`). Specification: `mixers::attention::Attention::{forward,
/// backward}` on whole sequences.
/// tests/gpu_train.rs checks it against the CPU (FA and SWA windows) on the GPU.
pub struct GpuAttentionTrain {
    pub cfg: mixers::attention::AttentionConfig,
    pub w: GpuParams,
    inv_freq: CudaSlice<f32>,
    /// −inv_freq: RoPE's backward is the rotation by the opposite angle.
    neg_inv_freq: CudaSlice<f32>,
}

pub struct GpuAttentionSaved {
    b: usize,
    t: usize,
    xb: CudaSlice<bf16>,
    wb: BTreeMap<String, CudaSlice<bf16>>,
    q: CudaSlice<bf16>,
    k: CudaSlice<bf16>,
    v: CudaSlice<bf16>,
    o: CudaSlice<bf16>,
    lse: CudaSlice<f32>,
}

const ATTN_PROJ: [&str; 4] = [
    "q_proj.weight",
    "k_proj.weight",
    "v_proj.weight",
    "o_proj.weight",
];

impl GpuAttentionTrain {
    pub fn new(g: &Gpu, a: &mixers::attention::Attention) -> Result<Self> {
        let c = &a.cfg;
        if c.output_gate || c.qkv_bias || c.qk_norm.is_some() || c.mla.is_some() {
            bail!("GPU training of attention with an output gate, q/k/v biases, q/k norms or MLA is not built yet");
        }
        if c.head_dim != 64 && c.head_dim != 128 {
            bail!(
                "GPU attention training needs head dim 64 or 128 (flash attention), got {}",
                c.head_dim
            );
        }
        let inv: Vec<f32> = (0..c.rot_dims / 2)
            .map(|i| c.rope_theta.powf(-2.0 * i as f64 / c.rot_dims as f64) as f32)
            .collect();
        let neg: Vec<f32> = inv.iter().map(|v| -v).collect();
        Ok(GpuAttentionTrain {
            cfg: c.clone(),
            w: GpuParams::upload(g, &a.params)?,
            inv_freq: g.upload(&inv)?,
            neg_inv_freq: g.upload(&neg)?,
        })
    }

    fn dims(&self, b: usize, t: usize) -> tensor::cuda::flash::FlashDims {
        tensor::cuda::flash::FlashDims {
            b,
            t,
            s: t,
            h: self.cfg.n_heads,
            hk: self.cfg.n_kv_heads,
            d: self.cfg.head_dim,
        }
    }

    /// Forward over x [B·T, hidden] (f32), whole sequences: the output [B·T, hidden].
    pub fn forward(
        &self,
        g: &Gpu,
        x: &CudaSlice<f32>,
        b: usize,
        t: usize,
    ) -> Result<(CudaSlice<f32>, GpuAttentionSaved)> {
        let c = &self.cfg;
        let (n, d, h, hk, dh) = (b * t, c.hidden, c.n_heads, c.n_kv_heads, c.head_dim);
        if x.len() < n * d {
            bail!("the input holds {} values, not {b} x {t} x {d}", x.len());
        }
        let xb = to_bf(g, x)?;
        let mut wb = BTreeMap::new();
        for name in ATTN_PROJ {
            wb.insert(name.to_string(), to_bf(g, &self.w.params[name])?);
        }
        let proj = |w: &str, out: usize| -> Result<CudaSlice<bf16>> {
            to_bf(g, &GpuLinearTrain::lin(g, &xb, &wb[w], (n, out, d))?)
        };
        let mut q = proj("q_proj.weight", h * dh)?;
        let mut k = proj("k_proj.weight", hk * dh)?;
        let v = proj("v_proj.weight", hk * dh)?;
        g.rope_bf16(&mut q, &self.inv_freq, n, h, dh, c.rot_dims, 0, t)?;
        g.rope_bf16(&mut k, &self.inv_freq, n, hk, dh, c.rot_dims, 0, t)?;
        let mut o = g.zeros::<bf16>(n * h * dh)?;
        let mut lse = g.zeros::<f32>(b * h * t)?;
        g.flash_attn_fwd_bf16(
            &q,
            &k,
            &v,
            &mut o,
            &mut lse,
            self.dims(b, t),
            (dh as f32).powf(-0.5),
            c.window,
        )?;
        let y = GpuLinearTrain::lin(g, &o, &wb["o_proj.weight"], (n, d, h * dh))?;
        Ok((
            y,
            GpuAttentionSaved {
                b,
                t,
                xb,
                wb,
                q,
                k,
                v,
                o,
                lse,
            },
        ))
    }

    /// Backward from dy [B·T, hidden]: adds every parameter's gradient into `grads` and
    /// returns dx [B·T, hidden].
    pub fn backward(
        &mut self,
        g: &Gpu,
        s: &GpuAttentionSaved,
        dy: &CudaSlice<f32>,
    ) -> Result<CudaSlice<f32>> {
        let c = self.cfg.clone();
        let (b, t) = (s.b, s.t);
        let (n, d, h, hk, dh) = (b * t, c.hidden, c.n_heads, c.n_kv_heads, c.head_dim);
        let dims = self.dims(b, t);
        let gr = &mut self.w.grads;
        macro_rules! grad {
            ($k:expr) => {
                gr.get_mut($k)
                    .expect("every parameter has a gradient buffer")
            };
        }
        let mut d_o = g.zeros::<f32>(n * h * dh)?;
        GpuLinearTrain::lin_bwd(
            g,
            &s.o,
            &s.wb["o_proj.weight"],
            dy,
            grad!("o_proj.weight"),
            &mut d_o,
            (n, d, h * dh),
            false,
        )?;
        let dob = to_bf(g, &d_o)?;
        let (mut dq, mut dk, mut dv) = (
            g.zeros::<bf16>(n * h * dh)?,
            g.zeros::<bf16>(n * hk * dh)?,
            g.zeros::<bf16>(n * hk * dh)?,
        );
        g.flash_attn_bwd_bf16(
            &s.q,
            &s.k,
            &s.v,
            &s.o,
            &dob,
            &s.lse,
            &mut dq,
            &mut dk,
            &mut dv,
            dims,
            (dh as f32).powf(-0.5),
            c.window,
        )?;
        g.rope_bf16(&mut dq, &self.neg_inv_freq, n, h, dh, c.rot_dims, 0, t)?;
        g.rope_bf16(&mut dk, &self.neg_inv_freq, n, hk, dh, c.rot_dims, 0, t)?;
        let mut dx = g.zeros::<f32>(n * d)?;
        for (i, (dpb, proj, out)) in [
            (&dq, "q_proj.weight", h * dh),
            (&dk, "k_proj.weight", hk * dh),
            (&dv, "v_proj.weight", hk * dh),
        ]
        .into_iter()
        .enumerate()
        {
            g.gemm_bf16_f32((true, false), dpb, &s.xb, grad!(proj), (out, d, n), true)?;
            g.gemm_bf16_f32(
                (false, false),
                dpb,
                &s.wb[proj],
                &mut dx,
                (n, d, out),
                i > 0,
            )?;
        }
        Ok(dx)
    }
}

/// AdamW (PyTorch semantics, as `train::optim::AdamW`) over named f32 GPU tensors, with its
/// moments on the GPU. No weight decay on 1-D tensors (norm gains, A_log, dt_bias).
pub struct GpuAdamW {
    pub lr: f32,
    pub betas: (f32, f32),
    pub eps: f32,
    pub weight_decay: f32,
    moments: BTreeMap<String, (CudaSlice<f32>, CudaSlice<f32>)>,
    step: u64,
}

impl GpuAdamW {
    pub fn new(lr: f32, weight_decay: f32) -> Self {
        GpuAdamW {
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay,
            moments: BTreeMap::new(),
            step: 0,
        }
    }

    pub fn step(
        &mut self,
        g: &Gpu,
        params: &mut BTreeMap<String, CudaSlice<f32>>,
        grads: &BTreeMap<String, CudaSlice<f32>>,
    ) -> Result<()> {
        self.step += 1;
        for (k, p) in params.iter_mut() {
            let n = p.len();
            if !self.moments.contains_key(k) {
                self.moments
                    .insert(k.clone(), (g.zeros::<f32>(n)?, g.zeros::<f32>(n)?));
            }
            let (m, v) = self.moments.get_mut(k).expect("inserted above");
            let grad = grads
                .get(k)
                .ok_or_else(|| anyhow::anyhow!("no gradient for {k}"))?;
            let wd = if n > 1 && !k.contains("norm") && k != "A_log" && k != "dt_bias" {
                self.weight_decay
            } else {
                0.0
            };
            g.adamw_f32(
                p, grad, m, v, n, self.lr, self.betas, self.eps, wd, self.step,
            )?;
        }
        Ok(())
    }
}
