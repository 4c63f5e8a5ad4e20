// Small ops, one thread per element or per row. Activations bf16, math in f32.

// out[t, :] = table[ids[t], :]   table, out: bf16 [*, D]
extern "C" __global__ void embedding_bf16(const bf16_t* table, const unsigned int* ids, bf16_t* out, int d, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    long t = i / d;
    out[i] = table[(long)ids[t] * d + (i % d)];
}

// out = silu(gate) * up
extern "C" __global__ void swiglu_bf16(const bf16_t* gate, const bf16_t* up, bf16_t* out, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = bf16_to_f32(gate[i]);
    out[i] = f32_to_bf16(g / (1.0f + __expf(-g)) * bf16_to_f32(up[i]));
}

// Rotate-half RoPE in place on x: [T, nh, dh] bf16 holding sequences of seq_t tokens each;
// token t sits at position pos0 + t % seq_t; the first rot dims rotate, pair (i, i + rot/2)
// by angle pos * inv_freq[i]. One thread per pair.
extern "C" __global__ void rope_bf16(bf16_t* x, const float* inv_freq, int t, int nh, int dh, int rot, int pos0, int seq_t) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int half = rot / 2;
    long total = (long)t * nh * half;
    if (i >= total) return;
    int p = i % half;
    long row = i / half;             // (token, head)
    int tok = (row / nh) % seq_t;
    float s, c;
    sincosf((float)(pos0 + tok) * inv_freq[p], &s, &c);
    bf16_t* hp = x + row * dh;
    float a = bf16_to_f32(hp[p]), b = bf16_to_f32(hp[p + half]);
    hp[p] = f32_to_bf16(a * c - b * s);
    hp[p + half] = f32_to_bf16(b * c + a * s);
}

// Cross-entropy per row over f32 logits [N, V] (one block per row): loss[row] and
// dlogits = (softmax - onehot) / count for supervised rows (target >= 0), 0 for ignored.
extern "C" __global__ void cross_entropy_f32(const float* logits, const long long* targets, float* loss, float* dlogits, int v, float inv_count) {
    const float* x = logits + (long)blockIdx.x * v;
    float* dx = dlogits + (long)blockIdx.x * v;
    long long tgt = targets[blockIdx.x];
    if (tgt < 0) {
        for (int i = threadIdx.x; i < v; i += blockDim.x) dx[i] = 0.0f;
        if (threadIdx.x == 0) loss[blockIdx.x] = 0.0f;
        return;
    }
    float m = __int_as_float(0xff800000);
    for (int i = threadIdx.x; i < v; i += blockDim.x) m = fmaxf(m, x[i]);
    // block max through the sum helper's shared memory pattern
    __shared__ float red[32];
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
    __syncthreads();
    if (threadIdx.x < 32) {
        float r = threadIdx.x < (blockDim.x + 31) / 32 ? red[threadIdx.x] : __int_as_float(0xff800000);
        for (int o = 16; o > 0; o >>= 1) r = fmaxf(r, __shfl_xor_sync(0xffffffffu, r, o));
        if (threadIdx.x == 0) red[0] = r;
    }
    __syncthreads();
    m = red[0];
    __syncthreads();
    float s = 0.0f;
    for (int i = threadIdx.x; i < v; i += blockDim.x) s += __expf(x[i] - m);
    s = block_sum(s);
    float lse = m + logf(s);
    for (int i = threadIdx.x; i < v; i += blockDim.x) {
        float p = __expf(x[i] - lse);
        dx[i] = (p - (i == tgt ? 1.0f : 0.0f)) * inv_count;
    }
    if (threadIdx.x == 0) loss[blockIdx.x] = (lse - x[tgt]) * inv_count;
}

// AdamW (decoupled weight decay), f32 parameters and moments; bias corrections passed in.
extern "C" __global__ void adamw_f32(float* p, const float* g, float* m, float* v, long n, float lr, float b1, float b2,
                                     float eps, float wd, float bc1, float bc2) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float pi = p[i] * (1.0f - lr * wd);
    float mi = b1 * m[i] + (1.0f - b1) * g[i];
    float vi = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
    m[i] = mi;
    v[i] = vi;
    p[i] = pi - lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
}

// Short causal depthwise conv + SiLU over T tokens of one sequence, with a history of W-1
// earlier inputs: x [T, C] bf16, hist [W-1, C] f32 (updated), w [C, W] f32, y [T, C] bf16.
extern "C" __global__ void short_conv_bf16(const bf16_t* x, float* hist, const float* w, bf16_t* y, int t, int c, int kw) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    int h = kw - 1;
    for (int ti = 0; ti < t; ++ti) {
        float acc = 0.0f;
        for (int wi = 0; wi < kw; ++wi) {
            int src = ti - h + wi;
            float xv = src >= 0 ? bf16_to_f32(x[(long)src * c + ch]) : hist[(long)(h + src) * c + ch];
            acc += w[ch * kw + wi] * xv;
        }
        y[(long)ti * c + ch] = f32_to_bf16(acc / (1.0f + __expf(-acc)));
    }
    // new history: the last W-1 inputs of (hist ++ x)
    for (int j = 0; j < h; ++j) {
        int src = t - h + j;
        hist[(long)j * c + ch] = src >= 0 ? bf16_to_f32(x[(long)src * c + ch]) : hist[(long)(h + src) * c + ch];
    }
}
