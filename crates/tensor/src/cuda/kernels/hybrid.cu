// The small kernels of the hybrid model's layers on the GPU (inference), each the GPU form of
// one step of mixers::linear_mixer / mixers::attention (which are their specification):
// batched short conv + SiLU, per-head L2 normalisation, β = sigmoid(·), the three decay
// parameterisations, the gated per-head RMSNorm, and attention's sigmoid output gate.

// Short causal conv (+ SiLU) of B sequences: one thread per (token, channel), so a long
// prefill fills the GPU (one thread per channel walking the tokens left a 5K-token prefill
// of a 24-layer hybrid latency-bound at ~0.2 s). Reads the old histories only; the new ones
// are written afterwards by short_conv_history. x, y [B, T, C]; hist [B, W-1, C]; w [C, W].
extern "C" __global__ void short_conv_batched(const bf16_t* x, const float* hist, const float* w, bf16_t* y,
                                              int b, int t, int c, int kw, int silu) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int bi = blockIdx.y;
    if (i >= (long)t * c || bi >= b) return;
    int ti = (int)(i / c), ch = (int)(i % c);
    int h = kw - 1;
    const bf16_t* xs = x + (long)bi * t * c;
    const float* hs = hist + (long)bi * h * c;
    float acc = 0.0f;
    for (int wi = 0; wi < kw; ++wi) {
        int src = ti - h + wi;
        float xv = src >= 0 ? bf16_to_f32(xs[(long)src * c + ch]) : hs[(long)(h + src) * c + ch];
        acc += w[ch * kw + wi] * xv;
    }
    y[(long)bi * t * c + i] = f32_to_bf16(silu ? acc / (1.0f + __expf(-acc)) : acc);
}

// The new histories after short_conv_batched: the last W-1 inputs of (hist ++ x), one thread
// per channel. Reads of old entries happen before they are overwritten (j ascending reads
// h + src >= j).
extern "C" __global__ void short_conv_history(const bf16_t* x, float* hist, int b, int t, int c, int kw) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x, bi = blockIdx.y;
    if (ch >= c || bi >= b) return;
    int h = kw - 1;
    const bf16_t* xs = x + (long)bi * t * c;
    float* hs = hist + (long)bi * h * c;
    for (int j = 0; j < h; ++j) {
        int src = t - h + j;
        hs[(long)j * c + ch] = src >= 0 ? bf16_to_f32(xs[(long)src * c + ch]) : hs[(long)(h + src) * c + ch];
    }
}

// In place: each row of `dim` values (one head of one token) divided by its L2 norm
// (mixers::ops::l2norm_rows: x / sqrt(Σx² + 1e-6)). One warp per row.
extern "C" __global__ void l2norm_rows_bf16(bf16_t* x, long rows, int dim) {
    long row = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    bf16_t* r = x + row * dim;
    float s = 0.f;
    for (int i = lane; i < dim; i += 32) {
        float v = bf16_to_f32(r[i]);
        s += v * v;
    }
    s = warp_sum(s);
    float inv = rsqrtf(s + 1e-6f);
    for (int i = lane; i < dim; i += 32) r[i] = f32_to_bf16(bf16_to_f32(r[i]) * inv);
}

// β = sigmoid(x), bf16 in, f32 out.
extern "C" __global__ void sigmoid_to_f32(const bf16_t* x, float* y, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = 1.f / (1.f + __expf(-bf16_to_f32(x[i])));
}

__device__ __forceinline__ float softplus_f(float u) {
    // torch's softplus with threshold 20 (FLA's gates use it)
    return u > 20.f ? u : log1pf(__expf(u));
}

// Log decays g [N, P] f32 from projections a [N, P] bf16:
//   mode 0 (GDN, P = HV):      g = −exp(A_log[p]) · softplus(a + dt_bias[p])
//   mode 1 (KDA, P = HV·K):    g = −exp(A_log[p / k]) · softplus(a + dt_bias[p])
//   mode 2 (GLA, P = HV·K):    g = logsigmoid(a + bias[p]) / 16
extern "C" __global__ void decay_gates(const bf16_t* a, const float* a_log, const float* bias, float* g,
                                       long n, int p, int k, int mode) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * p) return;
    int col = (int)(i % p);
    float u = bf16_to_f32(a[i]) + bias[col];
    if (mode == 2) {
        // logsigmoid(u) = −softplus(−u)
        g[i] = -softplus_f(-u) / 16.f;
    } else {
        float al = a_log[mode == 0 ? col : col / k];
        g[i] = -__expf(al) * softplus_f(u);
    }
}

// y = rmsnorm_per_head(o) · w ⊙ act(z): o, z [N·HV, V] bf16 (rows = one head of one token),
// w [V] f32; act 0 = SiLU (GDN, GLA), 1 = sigmoid (KDA). One warp per row.
extern "C" __global__ void gated_rmsnorm_bf16(const bf16_t* o, const bf16_t* z, const float* w,
                                              bf16_t* y, long rows, int v, float eps, int act) {
    long row = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const bf16_t* orow = o + row * v;
    float s = 0.f;
    for (int i = lane; i < v; i += 32) {
        float x = bf16_to_f32(orow[i]);
        s += x * x;
    }
    s = warp_sum(s);
    float r = rsqrtf(s / v + eps);
    for (int i = lane; i < v; i += 32) {
        float zz = bf16_to_f32(z[row * v + i]);
        float gate = act ? 1.f / (1.f + __expf(-zz)) : zz / (1.f + __expf(-zz));
        y[row * v + i] = f32_to_bf16(bf16_to_f32(orow[i]) * r * w[i] * gate);
    }
}

// Attention's output gate (Qwen3-Next): q_proj rows per head are [q (dh), gate (dh)].
// Splits qg [N, H, 2·dh] into q [N, H, dh] and gate [N, H, dh].
extern "C" __global__ void split_q_gate(const bf16_t* qg, bf16_t* q, bf16_t* gate, long rows, int dh) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * dh) return;
    long r = i / dh;
    int j = (int)(i % dh);
    q[i] = qg[r * 2 * dh + j];
    gate[i] = qg[r * 2 * dh + dh + j];
}

// o ⊙= sigmoid(gate), n elements.
extern "C" __global__ void sigmoid_gate_mul(bf16_t* o, const bf16_t* gate, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) o[i] = f32_to_bf16(bf16_to_f32(o[i]) / (1.f + __expf(-bf16_to_f32(gate[i]))));
}

// x += bias (per column of `cols`), bf16 rows.
extern "C" __global__ void add_bias_bf16(bf16_t* x, const float* bias, long n, int cols) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = f32_to_bf16(bf16_to_f32(x[i]) + bias[i % cols]);
}
