// Causal GQA attention over a bf16 KV cache, one block of ATT_WARPS warps per
// (sequence, query token, head): warp w takes keys first + w, first + w + ATT_WARPS, ... with
// its own online-softmax state, and the warps' states are merged at the end (split-K, as in
// flash-decoding), so a long context is ATT_WARPS times fewer serial steps.
// q: [B, T, H, D] bf16 (RoPE applied); cache k, v: [B, S_max, Hk, D] bf16 holding positions
// 0 .. past + T - 1; o: [B, T, H, D] bf16. D <= 256, a multiple of 32.
#define ATT_MAXD 256
#define ATT_WARPS 8

extern "C" __global__ void attention_bf16(
    const bf16_t* q, const bf16_t* kc, const bf16_t* vc, bf16_t* o,
    int t, int h, int hk, int d, int s_max, int past, int window, float scale, int rows) {
    __shared__ float sm[ATT_WARPS], sl[ATT_WARPS];
    __shared__ float sacc[ATT_WARPS][ATT_MAXD];
    int row = blockIdx.x;  // (b, ti, hi)
    if (row >= rows) return;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    int hi = row % h, ti = (row / h) % t, b = row / (h * t);
    int kh = hi / (h / hk);
    int per = d / 32;
    float qv[ATT_MAXD / 32], acc[ATT_MAXD / 32];
    const bf16_t* qp = q + (long)row * d;
    for (int i = 0; i < per; ++i) { qv[i] = bf16_to_f32(qp[lane * per + i]) * scale; acc[i] = 0.0f; }
    int last = past + ti;
    int first = window > 0 ? max(0, last + 1 - window) : 0;
    float m = __int_as_float(0xff800000), l = 0.0f;
    for (int j = first + w; j <= last; j += ATT_WARPS) {
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
        bf16_t* op = o + (long)row * d + lane * per;
        for (int i = 0; i < per; ++i) op[i] = f32_to_bf16(out[i] / gl);
    }
}

// Writes this call's keys/values [B, T, Hk, D] into the cache at positions past .. past+T-1.
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
