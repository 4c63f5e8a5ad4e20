// Causal GQA attention over a bf16 KV cache (flash-decoding). Block (row, split) with
// row = (sequence, query token, head) takes the split-th run of `split_len` keys of the row's
// visible range; its ATT_WARPS warps take keys first + w, first + w + ATT_WARPS, ... with their
// own online-softmax states, merged at the end of the block. With one split the block writes
// the output; with several it writes its (max, sum, unnormalised accumulator) to `part`
// [rows, splits, D + 2] and `attention_merge` combines them. Splitting the keys over blocks is
// what keeps a long context from being ATT_WARPS serial walks of thousands of keys per head
// (batch-1 decode has only H rows: 9 blocks for SmolLM2).
// q: [B, T, H, D] bf16 (RoPE applied); cache k, v: [B, S_max, Hk, D] bf16 holding positions
// 0 .. past + T - 1; o: [B, T, H, D] bf16. D <= 256, a multiple of 32.
#define ATT_MAXD 256
#define ATT_WARPS 8

extern "C" __global__ void attention_bf16(
    const bf16_t* q, const bf16_t* kc, const bf16_t* vc, bf16_t* o,
    int t, int h, int hk, int d, int s_max, int past, int window, float scale, int rows,
    int split_len, float* part) {
    __shared__ float sm[ATT_WARPS], sl[ATT_WARPS];
    __shared__ float sacc[ATT_WARPS][ATT_MAXD];
    int row = blockIdx.x;  // (b, ti, hi)
    if (row >= rows) return;
    int split = blockIdx.y, splits = gridDim.y;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    int hi = row % h, ti = (row / h) % t, b = row / (h * t);
    int kh = hi / (h / hk);
    int per = d / 32;
    float qv[ATT_MAXD / 32], acc[ATT_MAXD / 32];
    const bf16_t* qp = q + (long)row * d;
    for (int i = 0; i < per; ++i) { qv[i] = bf16_to_f32(qp[lane * per + i]) * scale; acc[i] = 0.0f; }
    int last = past + ti;
    int first = window > 0 ? max(0, last + 1 - window) : 0;
    int lo = first + split * split_len;
    int hi_key = min(last, lo + split_len - 1);
    float m = __int_as_float(0xff800000), l = 0.0f;
    for (int j = lo + w; j <= hi_key; j += ATT_WARPS) {
        const bf16_t* kp = kc + (((long)b * s_max + j) * hk + kh) * d + lane * per;
        float s = 0.0f;
        for (int i = 0; i < per; ++i) s += qv[i] * bf16_to_f32(kp[i]);
        s = warp_sum(s);
        float mn = fmaxf(m, s);
        float corr = __expf(m - mn), p = __expf(s - mn);
        l = l * corr + p;
        const bf16_t* vp = vc + (((long)b * s_max + j) * hk + kh) * d + lane * per;
        for (int i = 0; i < per; ++i) acc[i] = acc[i] * corr + p * bf16_to_f32(vp[i]);
        m = mn;
    }
    if (lane == 0) { sm[w] = m; sl[w] = l; }
    for (int i = 0; i < per; ++i) sacc[w][lane * per + i] = acc[i];
    __syncthreads();
    if (w == 0) {
        float gm = __int_as_float(0xff800000);
        for (int i = 0; i < ATT_WARPS; ++i) gm = fmaxf(gm, sm[i]);
        float gl = 0.0f;
        float out[ATT_MAXD / 32];
        for (int i = 0; i < per; ++i) out[i] = 0.0f;
        for (int x = 0; x < ATT_WARPS; ++x) {
            if (sl[x] == 0.0f) continue;  // a warp that saw no key
            float c = __expf(sm[x] - gm);
            gl += sl[x] * c;
            for (int i = 0; i < per; ++i) out[i] += sacc[x][lane * per + i] * c;
        }
        if (splits == 1) {
            bf16_t* op = o + (long)row * d + lane * per;
            for (int i = 0; i < per; ++i) op[i] = f32_to_bf16(out[i] / gl);
        } else {
            // A split past the row's range saw no key: l = 0 tells the merge to skip it.
            float* pp = part + ((long)row * splits + split) * (d + 2);
            if (lane == 0) { pp[0] = gm; pp[1] = gl; }
            for (int i = 0; i < per; ++i) pp[2 + lane * per + i] = out[i];
        }
    }
}

// Combines the splits of attention_bf16: one block of 32 threads per row, D / 32 channels each.
extern "C" __global__ void attention_merge(const float* part, bf16_t* o, int d, int splits, int rows) {
    int row = blockIdx.x;
    if (row >= rows) return;
    int lane = threadIdx.x, per = d / 32;
    const float* pr = part + (long)row * splits * (d + 2);
    float gm = __int_as_float(0xff800000);
    for (int s = 0; s < splits; ++s)
        if (pr[s * (d + 2) + 1] > 0.0f) gm = fmaxf(gm, pr[s * (d + 2)]);
    float gl = 0.0f, out[ATT_MAXD / 32];
    for (int i = 0; i < per; ++i) out[i] = 0.0f;
    for (int s = 0; s < splits; ++s) {
        const float* ps = pr + s * (d + 2);
        if (ps[1] == 0.0f) continue;
        float c = __expf(ps[0] - gm);
        gl += ps[1] * c;
        for (int i = 0; i < per; ++i) out[i] += ps[2 + lane * per + i] * c;
    }
    bf16_t* op = o + (long)row * d + lane * per;
    for (int i = 0; i < per; ++i) op[i] = f32_to_bf16(out[i] / gl);
}

extern "C" __global__ void kv_append_bf16(const bf16_t* src, bf16_t* cache, int t, int row, int s_max, int past, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    long r = i / row;            // b * t + ti
    int b = r / t, ti = r % t;
    cache[((long)b * s_max + past + ti) * row + (i % row)] = src[i];
}

// y += x (bf16 residual add, f32 math).
extern "C" __global__ void add_bf16(bf16_t* y, const bf16_t* x, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = f32_to_bf16(bf16_to_f32(y[i]) + bf16_to_f32(x[i]));
}

// Index of the largest value of each row of x [rows, n] (first on ties). One block per row.
template <typename T>
__device__ float load_f32(const T* p);
template <>
__device__ float load_f32<bf16_t>(const bf16_t* p) { return bf16_to_f32(*p); }
template <>
__device__ float load_f32<float>(const float* p) { return *p; }

template <typename T>
__device__ void argmax_rows(const T* x, unsigned int* out, int n) {
    const T* xr = x + (long)blockIdx.x * n;
    float best = __int_as_float(0xff800000);
    int idx = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = load_f32<T>(xr + i);
        if (v > best) { best = v; idx = i; }
    }
    __shared__ float sv[1024];
    __shared__ int si[1024];
    sv[threadIdx.x] = best; si[threadIdx.x] = idx;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float ov = sv[threadIdx.x + s]; int oi = si[threadIdx.x + s];
            if (ov > sv[threadIdx.x] || (ov == sv[threadIdx.x] && oi < si[threadIdx.x])) { sv[threadIdx.x] = ov; si[threadIdx.x] = oi; }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = si[0];
}
extern "C" __global__ void argmax_bf16(const bf16_t* x, unsigned int* out, int n) { argmax_rows(x, out, n); }
extern "C" __global__ void argmax_f32(const float* x, unsigned int* out, int n) { argmax_rows(x, out, n); }
