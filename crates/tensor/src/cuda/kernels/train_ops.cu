// Backward passes of the hybrid layers' small ops, f32, for training on the GPU. Their
// specifications are mixers::ops (l2norm_rows_backward, gated_rmsnorm_backward, softplus) and
// the decay-gate backward of mixers::linear_mixer. Weight gradients are written per element
// into a [rows, cols] buffer and summed over rows by colsum_parts + sum_rows_in_order (fixed
// order, no atomics: the same result every run).

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + __expf(-x)); }

__device__ __forceinline__ float softplusf_(float x) { return x > 20.0f ? x : log1pf(__expf(x)); }

__device__ __forceinline__ float warp_sum_(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// y = x / sqrt(sum x^2 + 1e-6) per row (given y and the inverse norms): dx = inv (dy - y (y.dy)).
// One warp per row.
extern "C" __global__ void l2norm_bwd_f32(const float* y, const float* inv, const float* dy, float* dx,
                                          int rows, int w) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float* yr = y + (long)row * w;
    const float* dr = dy + (long)row * w;
    float s = 0.0f;
    for (int i = lane; i < w; i += 32) s += yr[i] * dr[i];
    s = warp_sum_(s);
    float n = inv[row];
    for (int i = lane; i < w; i += 32) dx[(long)row * w + i] = n * (dr[i] - yr[i] * s);
}

// Gated RMSNorm backward per row of width w (act 0 = silu(z), 1 = sigmoid(z)):
// y = o r weight act(z), r = (mean(o^2) + eps)^-1/2 given. Writes do, dz, and the per-element
// weight-gradient contributions dwp [rows, w]. One warp per row.
extern "C" __global__ void gated_rmsnorm_bwd_f32(const float* o, const float* z, const float* weight,
                                                 const float* rs, const float* dy, float* d_o, float* dz,
                                                 float* dwp, int rows, int w, int act) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    long base = (long)row * w;
    float r = rs[row];
    float s = 0.0f;
    for (int i = lane; i < w; i += 32) {
        float zi = z[base + i], sg = sigmoidf_(zi);
        float a = act == 0 ? zi * sg : sg;
        float da = act == 0 ? sg * (1.0f + zi * (1.0f - sg)) : sg * (1.0f - sg);
        float n = o[base + i] * r, g = dy[base + i];
        dwp[base + i] = g * n * a;
        dz[base + i] = g * n * weight[i] * da;
        float dn = g * weight[i] * a;
        d_o[base + i] = dn;  // finished below, once the row's sum is known
        s += dn * o[base + i];
    }
    s = warp_sum_(s);
    for (int i = lane; i < w; i += 32)
        d_o[base + i] = r * d_o[base + i] - o[base + i] * r * r * r * s / (float)w;
}

// Decay gate g = -exp(A_log[j / group]) softplus(u), u = pre-activation (a + dt_bias), over
// n rows of p gates (j = column). Writes du (= the gradient of a and, summed over rows, of
// dt_bias) and the per-element A_log contributions dgA = dg g.
extern "C" __global__ void decay_gate_bwd_f32(const float* u, const float* dg, const float* a_log,
                                              float* du, float* dga, long n, int p, int group) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int j = (int)(i % p);
    float e = __expf(a_log[j / group]);
    float x = u[i];
    float sp = softplusf_(x), spg = x > 20.0f ? 1.0f : sigmoidf_(x);
    du[i] = dg[i] * (-e) * spg;
    dga[i] = dg[i] * (-e * sp);
}

// beta = sigmoid(b): db = dbeta beta (1 - beta).
extern "C" __global__ void sigmoid_bwd_f32(const float* beta, const float* dbeta, float* db, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float b = beta[i];
    db[i] = dbeta[i] * b * (1.0f - b);
}

// act = silu(gate) up: dgate = dact up silu'(gate), dup = dact silu(gate).
extern "C" __global__ void swiglu_bwd_f32(const float* gate, const float* up, const float* dact,
                                          float* dgate, float* dup, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = gate[i], sg = sigmoidf_(g);
    dup[i] = dact[i] * g * sg;
    dgate[i] = dact[i] * up[i] * sg * (1.0f + g * (1.0f - sg));
}

// Column sums of x [rows, cols] over slices of rps rows: part [slices, cols].
extern "C" __global__ void colsum_parts_f32(const float* x, float* part, int rows, int cols, int rps) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    int slice = blockIdx.y;
    if (c >= cols) return;
    int r0 = slice * rps, r1 = min(rows, r0 + rps);
    float s = 0.0f;
    for (int r = r0; r < r1; ++r) s += x[(long)r * cols + c];
    part[(long)slice * cols + c] = s;
}

// out[j] += sum over slices, then over groups of `group` consecutive columns, in order:
// out has cols / group entries.
extern "C" __global__ void sum_rows_in_order(const float* part, float* out, int slices, int cols, int group) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols / group) return;
    float s = 0.0f;
    for (int c = j * group; c < (j + 1) * group; ++c)
        for (int k = 0; k < slices; ++k) s += part[(long)k * cols + c];
    out[j] += s;
}

// ---- Forward passes that save what the backward needs (f32) ----

// Short causal conv + SiLU from a zero history (mixers::conv::forward): x, y [b, t, c],
// weight [c, kw]; y = silu(sum_j weight[c, j] x[t - (kw - 1) + j]).
extern "C" __global__ void conv_silu_fwd_f32(const float* x, const float* weight, float* y,
                                             int t, int c, int kw, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int ch = (int)(i % c);
    long bt = i / c;
    int ti = (int)(bt % t);
    long row0 = bt - ti;  // first token of this sequence
    float acc = 0.0f;
    for (int j = 0; j < kw; ++j) {
        int src = ti - (kw - 1) + j;
        if (src >= 0) acc += weight[ch * kw + j] * x[(row0 + src) * c + ch];
    }
    y[i] = acc / (1.0f + __expf(-acc));
}

// Row L2 norm in place (x / sqrt(sum x^2 + 1e-6)), saving the inverse norms. One warp a row.
extern "C" __global__ void l2norm_fwd_f32(float* x, float* inv, int rows, int w) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    float* r = x + (long)row * w;
    float s = 0.0f;
    for (int i = lane; i < w; i += 32) s += r[i] * r[i];
    s = warp_sum_(s);
    float n = rsqrtf(s + 1e-6f);
    for (int i = lane; i < w; i += 32) r[i] *= n;
    if (lane == 0) inv[row] = n;
}

extern "C" __global__ void sigmoid_f32(float* x, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = sigmoidf_(x[i]);
}

// u = a + dt_bias[j] (kept for the backward), g = -exp(A_log[j / group]) softplus(u).
extern "C" __global__ void decay_gate_fwd_f32(const float* a, const float* dt_bias, const float* a_log,
                                              float* u, float* g, long n, int p, int group) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int j = (int)(i % p);
    float x = a[i] + dt_bias[j];
    u[i] = x;
    g[i] = -__expf(a_log[j / group]) * softplusf_(x);
}

// Gated RMSNorm forward per row of w (act 0 silu, 1 sigmoid), saving r = (mean(o^2)+eps)^-1/2.
extern "C" __global__ void gated_rmsnorm_fwd_f32(const float* o, const float* z, const float* weight,
                                                 float* y, float* rs, int rows, int w, float eps, int act) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    long base = (long)row * w;
    float s = 0.0f;
    for (int i = lane; i < w; i += 32) s += o[base + i] * o[base + i];
    s = warp_sum_(s);
    float r = rsqrtf(s / (float)w + eps);
    for (int i = lane; i < w; i += 32) {
        float zi = z[base + i], sg = sigmoidf_(zi);
        float a = act == 0 ? zi * sg : sg;
        y[base + i] = o[base + i] * r * weight[i] * a;
    }
    if (lane == 0) rs[row] = r;
}
