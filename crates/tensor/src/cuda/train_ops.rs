//! Launchers of kernels/train_ops.cu: the f32 backward passes of the hybrid layers' small ops
//! (L2 norm, gated RMSNorm, decay gate, sigmoid, SwiGLU), the pieces of GPU training beyond
//! the GEMMs, norms, convs, attention and chunked kernels. Each checks its buffers against the
//! shapes. Weight gradients accumulate (`+=`) in a fixed order, as the CPU backward does.
use super::{cuda_err, Gpu, CONVERT, TRAIN_OPS};
use crate::{Error, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use half::bf16;

pub(super) fn check(what: &str, got: usize, want: usize) -> Result<()> {
    if got < want {
        return Err(Error::Msg(format!(
            "{what} holds {got} elements, the shapes need {want}"
        )));
    }
    Ok(())
}

pub(super) fn per_element(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// 8 warps a block, one row a warp.
fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(8) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Which gate activation a gated RMSNorm uses (mixers::ops::GateAct).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateActivation {
    Silu,
    Sigmoid,
}

impl Gpu {
    /// Backward of the row L2 norm `y = x · inv` (inv = 1/sqrt(Σx² + 1e-6) per row of w):
    /// writes dx [rows, w].
    pub fn l2norm_bwd_f32(
        &self,
        y: &CudaSlice<f32>,
        inv: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
        rows: usize,
        w: usize,
    ) -> Result<()> {
        for (what, len) in [("y", y.len()), ("dy", dy.len()), ("dx", dx.len())] {
            check(&format!("l2norm backward: {what}"), len, rows * w)?;
        }
        check("l2norm backward: inv", inv.len(), rows)?;
        let f = self.function(TRAIN_OPS, "l2norm_bwd_f32")?;
        let (ri, wi) = (rows as i32, w as i32);
        let mut b = self.stream.launch_builder(&f);
        b.arg(y).arg(inv).arg(dy).arg(dx).arg(&ri).arg(&wi);
        // SAFETY: argument list matches l2norm_bwd_f32; lengths checked above.
        unsafe { b.launch(per_row(rows)) }.map_err(|e| cuda_err("l2norm backward launch", e))?;
        Ok(())
    }

    /// Backward of the gated RMSNorm `y = o·r·weight ⊙ act(z)` per row of w (r given per row):
    /// writes do and dz [rows, w] and adds the weight gradient into dweight [w].
    #[allow(clippy::too_many_arguments)]
    pub fn gated_rmsnorm_bwd_f32(
        &self,
        o: &CudaSlice<f32>,
        z: &CudaSlice<f32>,
        weight: &CudaSlice<f32>,
        rs: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        d_o: &mut CudaSlice<f32>,
        dz: &mut CudaSlice<f32>,
        dweight: &mut CudaSlice<f32>,
        (rows, w): (usize, usize),
        act: GateActivation,
    ) -> Result<()> {
        for (what, len) in [
            ("o", o.len()),
            ("z", z.len()),
            ("dy", dy.len()),
            ("do", d_o.len()),
            ("dz", dz.len()),
        ] {
            check(&format!("gated rmsnorm backward: {what}"), len, rows * w)?;
        }
        check("gated rmsnorm backward: rs", rs.len(), rows)?;
        check("gated rmsnorm backward: weight", weight.len(), w)?;
        check("gated rmsnorm backward: dweight", dweight.len(), w)?;
        let mut dwp = self.zeros::<f32>(rows * w)?;
        let f = self.function(TRAIN_OPS, "gated_rmsnorm_bwd_f32")?;
        let (ri, wi, ai) = (
            rows as i32,
            w as i32,
            (act == GateActivation::Sigmoid) as i32,
        );
        let mut b = self.stream.launch_builder(&f);
        b.arg(o)
            .arg(z)
            .arg(weight)
            .arg(rs)
            .arg(dy)
            .arg(d_o)
            .arg(dz)
            .arg(&mut dwp)
            .arg(&ri)
            .arg(&wi)
            .arg(&ai);
        // SAFETY: argument list matches gated_rmsnorm_bwd_f32; lengths checked above.
        unsafe { b.launch(per_row(rows)) }
            .map_err(|e| cuda_err("gated rmsnorm backward launch", e))?;
        self.column_sums_into(&dwp, rows, w, 1, dweight)
    }

    /// Backward of the decay gate `g = −exp(A_log[j / group]) · softplus(u)` over rows of `p`
    /// gates (GDN: p = heads, group 1; KDA: p = heads·K, group K): given the pre-activation
    /// u = a + dt_bias and dg [rows, p], writes du [rows, p] (the gradient of a) and adds into
    /// d_dt_bias [p] and d_a_log [p / group].
    #[allow(clippy::too_many_arguments)]
    pub fn decay_gate_bwd_f32(
        &self,
        u: &CudaSlice<f32>,
        dg: &CudaSlice<f32>,
        a_log: &CudaSlice<f32>,
        du: &mut CudaSlice<f32>,
        d_dt_bias: &mut CudaSlice<f32>,
        d_a_log: &mut CudaSlice<f32>,
        (rows, p, group): (usize, usize, usize),
    ) -> Result<()> {
        if group == 0 || p % group != 0 {
            return Err(Error::Msg(format!(
                "decay gate backward: {p} gates do not split into groups of {group}"
            )));
        }
        let n = rows * p;
        for (what, len) in [("u", u.len()), ("dg", dg.len()), ("du", du.len())] {
            check(&format!("decay gate backward: {what}"), len, n)?;
        }
        check("decay gate backward: A_log", a_log.len(), p / group)?;
        check("decay gate backward: dA_log", d_a_log.len(), p / group)?;
        check("decay gate backward: d dt_bias", d_dt_bias.len(), p)?;
        let mut dga = self.zeros::<f32>(n)?;
        let f = self.function(TRAIN_OPS, "decay_gate_bwd_f32")?;
        let (ni, pi, gi) = (n as i64, p as i32, group as i32);
        let mut b = self.stream.launch_builder(&f);
        b.arg(u)
            .arg(dg)
            .arg(a_log)
            .arg(&mut *du)
            .arg(&mut dga)
            .arg(&ni)
            .arg(&pi)
            .arg(&gi);
        // SAFETY: argument list matches decay_gate_bwd_f32; lengths checked above.
        unsafe { b.launch(per_element(n)) }
            .map_err(|e| cuda_err("decay gate backward launch", e))?;
        self.column_sums_into(du, rows, p, 1, d_dt_bias)?;
        self.column_sums_into(&dga, rows, p, group, d_a_log)
    }

    /// Backward of `beta = sigmoid(b)`: db = dbeta · beta · (1 − beta), n elements.
    pub fn sigmoid_bwd_f32(
        &self,
        beta: &CudaSlice<f32>,
        dbeta: &CudaSlice<f32>,
        db: &mut CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        for (what, len) in [
            ("beta", beta.len()),
            ("dbeta", dbeta.len()),
            ("db", db.len()),
        ] {
            check(&format!("sigmoid backward: {what}"), len, n)?;
        }
        let f = self.function(TRAIN_OPS, "sigmoid_bwd_f32")?;
        let ni = n as i64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(beta).arg(dbeta).arg(db).arg(&ni);
        // SAFETY: argument list matches sigmoid_bwd_f32; lengths checked above.
        unsafe { b.launch(per_element(n)) }.map_err(|e| cuda_err("sigmoid backward launch", e))?;
        Ok(())
    }

    /// Backward of `act = silu(gate) · up`: writes dgate and dup, n elements.
    pub fn swiglu_bwd_f32(
        &self,
        gate: &CudaSlice<f32>,
        up: &CudaSlice<f32>,
        dact: &CudaSlice<f32>,
        dgate: &mut CudaSlice<f32>,
        dup: &mut CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        for (what, len) in [
            ("gate", gate.len()),
            ("up", up.len()),
            ("dact", dact.len()),
            ("dgate", dgate.len()),
            ("dup", dup.len()),
        ] {
            check(&format!("swiglu backward: {what}"), len, n)?;
        }
        let f = self.function(TRAIN_OPS, "swiglu_bwd_f32")?;
        let ni = n as i64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(gate).arg(up).arg(dact).arg(dgate).arg(dup).arg(&ni);
        // SAFETY: argument list matches swiglu_bwd_f32; lengths checked above.
        unsafe { b.launch(per_element(n)) }.map_err(|e| cuda_err("swiglu backward launch", e))?;
        Ok(())
    }

    /// bf16 copy of x (round to nearest even), n elements.
    pub fn f32_to_bf16(&self, x: &CudaSlice<f32>, y: &mut CudaSlice<bf16>, n: usize) -> Result<()> {
        check("to bf16: x", x.len(), n)?;
        check("to bf16: y", y.len(), n)?;
        let f = self.function(CONVERT, "f32_to_bf16_kernel")?;
        let ni = n as i64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(x).arg(y).arg(&ni);
        // SAFETY: argument list matches f32_to_bf16_kernel; lengths checked above.
        unsafe { b.launch(per_element(n)) }.map_err(|e| cuda_err("to bf16 launch", e))?;
        Ok(())
    }

    /// f32 copy of a bf16 x, n elements.
    pub fn bf16_to_f32(&self, x: &CudaSlice<bf16>, y: &mut CudaSlice<f32>, n: usize) -> Result<()> {
        check("to f32: x", x.len(), n)?;
        check("to f32: y", y.len(), n)?;
        let f = self.function(CONVERT, "bf16_to_f32_kernel")?;
        let ni = n as i64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(x).arg(y).arg(&ni);
        // SAFETY: argument list matches bf16_to_f32_kernel; lengths checked above.
        unsafe { b.launch(per_element(n)) }.map_err(|e| cuda_err("to f32 launch", e))?;
        Ok(())
    }

    /// Short causal conv + SiLU from a zero history (`mixers::conv::forward`): x, y [b, t, c],
    /// weight [c, kw].
    #[allow(clippy::too_many_arguments)]
    pub fn conv_silu_fwd_f32(
        &self,
        x: &CudaSlice<f32>,
        weight: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        (b, t, c, kw): (usize, usize, usize, usize),
    ) -> Result<()> {
        let n = b * t * c;
        check("conv forward: x", x.len(), n)?;
        check("conv forward: y", y.len(), n)?;
        check("conv forward: weight", weight.len(), c * kw)?;
        let f = self.function(TRAIN_OPS, "conv_silu_fwd_f32")?;
        let (ti, ci, ki, ni) = (t as i32, c as i32, kw as i32, n as i64);
        let mut bl = self.stream.launch_builder(&f);
        bl.arg(x)
            .arg(weight)
            .arg(y)
            .arg(&ti)
            .arg(&ci)
            .arg(&ki)
            .arg(&ni);
        // SAFETY: argument list matches conv_silu_fwd_f32; lengths checked above.
        unsafe { bl.launch(per_element(n)) }.map_err(|e| cuda_err("conv forward launch", e))?;
        Ok(())
    }

    /// Row L2 norm in place, writing the inverse norms inv [rows].
    pub fn l2norm_fwd_f32(
        &self,
        x: &mut CudaSlice<f32>,
        inv: &mut CudaSlice<f32>,
        rows: usize,
        w: usize,
    ) -> Result<()> {
        check("l2norm: x", x.len(), rows * w)?;
        check("l2norm: inv", inv.len(), rows)?;
        let f = self.function(TRAIN_OPS, "l2norm_fwd_f32")?;
        let (ri, wi) = (rows as i32, w as i32);
        let mut b = self.stream.launch_builder(&f);
        b.arg(x).arg(inv).arg(&ri).arg(&wi);
        // SAFETY: argument list matches l2norm_fwd_f32; lengths checked above.
        unsafe { b.launch(per_row(rows)) }.map_err(|e| cuda_err("l2norm launch", e))?;
        Ok(())
    }

    /// Sigmoid in place, n elements.
    pub fn sigmoid_f32(&self, x: &mut CudaSlice<f32>, n: usize) -> Result<()> {
        check("sigmoid: x", x.len(), n)?;
        let f = self.function(TRAIN_OPS, "sigmoid_f32")?;
        let ni = n as i64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(x).arg(&ni);
        // SAFETY: argument list matches sigmoid_f32; length checked above.
        unsafe { b.launch(per_element(n)) }.map_err(|e| cuda_err("sigmoid launch", e))?;
        Ok(())
    }

    /// Decay gate forward over rows of p gates: u = a + dt_bias (kept for the backward),
    /// g = −exp(A_log[j / group]) · softplus(u).
    #[allow(clippy::too_many_arguments)]
    pub fn decay_gate_fwd_f32(
        &self,
        a: &CudaSlice<f32>,
        dt_bias: &CudaSlice<f32>,
        a_log: &CudaSlice<f32>,
        u: &mut CudaSlice<f32>,
        g: &mut CudaSlice<f32>,
        (rows, p, group): (usize, usize, usize),
    ) -> Result<()> {
        if group == 0 || p % group != 0 {
            return Err(Error::Msg(format!(
                "decay gate: {p} gates do not split into groups of {group}"
            )));
        }
        let n = rows * p;
        for (what, len) in [("a", a.len()), ("u", u.len()), ("g", g.len())] {
            check(&format!("decay gate: {what}"), len, n)?;
        }
        check("decay gate: dt_bias", dt_bias.len(), p)?;
        check("decay gate: A_log", a_log.len(), p / group)?;
        let f = self.function(TRAIN_OPS, "decay_gate_fwd_f32")?;
        let (ni, pi, gi) = (n as i64, p as i32, group as i32);
        let mut b = self.stream.launch_builder(&f);
        b.arg(a)
            .arg(dt_bias)
            .arg(a_log)
            .arg(u)
            .arg(g)
            .arg(&ni)
            .arg(&pi)
            .arg(&gi);
        // SAFETY: argument list matches decay_gate_fwd_f32; lengths checked above.
        unsafe { b.launch(per_element(n)) }.map_err(|e| cuda_err("decay gate launch", e))?;
        Ok(())
    }

    /// Gated RMSNorm forward per row of w, writing y and r [rows] (the inverse RMS).
    #[allow(clippy::too_many_arguments)]
    pub fn gated_rmsnorm_fwd_f32(
        &self,
        o: &CudaSlice<f32>,
        z: &CudaSlice<f32>,
        weight: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        rs: &mut CudaSlice<f32>,
        (rows, w): (usize, usize),
        eps: f32,
        act: GateActivation,
    ) -> Result<()> {
        for (what, len) in [("o", o.len()), ("z", z.len()), ("y", y.len())] {
            check(&format!("gated rmsnorm: {what}"), len, rows * w)?;
        }
        check("gated rmsnorm: weight", weight.len(), w)?;
        check("gated rmsnorm: rs", rs.len(), rows)?;
        let f = self.function(TRAIN_OPS, "gated_rmsnorm_fwd_f32")?;
        let (ri, wi, ai) = (
            rows as i32,
            w as i32,
            (act == GateActivation::Sigmoid) as i32,
        );
        let mut b = self.stream.launch_builder(&f);
        b.arg(o)
            .arg(z)
            .arg(weight)
            .arg(y)
            .arg(rs)
            .arg(&ri)
            .arg(&wi)
            .arg(&eps)
            .arg(&ai);
        // SAFETY: argument list matches gated_rmsnorm_fwd_f32; lengths checked above.
        unsafe { b.launch(per_row(rows)) }.map_err(|e| cuda_err("gated rmsnorm launch", e))?;
        Ok(())
    }

    /// out[j] += Σ over rows and over the `group` columns of group j of x [rows, cols], in a
    /// fixed order (slices of rows, then the slices' sums).
    fn column_sums_into(
        &self,
        x: &CudaSlice<f32>,
        rows: usize,
        cols: usize,
        group: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let col_blocks = cols.div_ceil(256);
        let slices = (264 / col_blocks).clamp(1, rows.div_ceil(16));
        let rps = rows.div_ceil(slices);
        let slices = rows.div_ceil(rps);
        let mut part = self.zeros::<f32>(slices * cols)?;
        let f = self.function(TRAIN_OPS, "colsum_parts_f32")?;
        let (ri, ci, rpsi) = (rows as i32, cols as i32, rps as i32);
        let cfg = LaunchConfig {
            grid_dim: (col_blocks as u32, slices as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(x).arg(&mut part).arg(&ri).arg(&ci).arg(&rpsi);
        // SAFETY: argument list matches colsum_parts_f32; part holds slices·cols, x rows·cols.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("column sums launch", e))?;
        let f = self.function(TRAIN_OPS, "sum_rows_in_order")?;
        let (si, gi) = (slices as i32, group as i32);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&part).arg(out).arg(&si).arg(&ci).arg(&gi);
        // SAFETY: argument list matches sum_rows_in_order; out holds cols / group (callers).
        unsafe { b.launch(per_element(cols / group)) }
            .map_err(|e| cuda_err("column sums (in order) launch", e))?;
        Ok(())
    }
}
