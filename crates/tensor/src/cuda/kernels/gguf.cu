// A GGUF model in its own quantized blocks, computed the way llama.cpp's CPU backend (and so
// our CPU forward, tensor/src/cpu and tensor/src/quant) computes it: activations quantized to
// 8 bits per 32-value block (block_q8_1: d = max|x| / 127, q = round-half-even(x / d),
// s = d * sum q, d and s rounded through f16), integer block dot products with the weights,
// f32 everywhere else, an f16 KV cache, ggml's polynomial expf. Each separate multiply and add
// of the CPU code is written with __fmul_rn / __fadd_rn so that the compiler cannot contract
// it into an FMA the CPU does not do (and fmaf where the CPU does one). What remains different
// is the order of f32 sums (dot products, block dots), a few ulps.
//
// Weight rows are raw GGML bytes: Q4_0 {f16 d; u8 qs[16]} (18 bytes), Q4_1 {f16 d, m; u8 qs[16]}
// (20), Q8_0 {f16 d; i8 qs[32]} (34). Every block starts at an even offset.

#define GGML_Q4_0 2
#define GGML_Q4_1 3
#define GGML_Q8_0 8

__device__ __forceinline__ float h2f(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ unsigned short f2h(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float ld_f16(const unsigned char* p) {
    return h2f(*(const unsigned short*)p);
}

// ggml's AVX-512 ggml_v_expf, lane for lane (tensor/src/cpu/ggml_exp.rs is the reference).
__device__ __forceinline__ float ggml_expf(float x) {
    const float SHIFT = 12582912.0f;
    const float LOG2E = __int_as_float(0x3fb8aa3b);
    const float LN2_HI = __int_as_float(0x3f317200);
    const float LN2_LO = __int_as_float(0x35bfbe8e);
    const float C0 = __int_as_float(0x3f7ffff6);
    const float C1 = __int_as_float(0x3efffedb);
    const float C2 = __int_as_float(0x3e2aaf33);
    const float C3 = __int_as_float(0x3d2b9f17);
    const float C4 = __int_as_float(0x3c072010);
    float z = fmaf(x, LOG2E, SHIFT);
    float n = __fsub_rn(z, SHIFT);
    float b = fmaf(-n, LN2_LO, fmaf(-n, LN2_HI, x));
    float u = __fmul_rn(b, b);
    float j = fmaf(fmaf(fmaf(C4, b, C3), u, fmaf(C2, b, C1)), u, fmaf(C0, b, 1.0f));
    if (fabsf(n) > 192.0f) return n <= 0.0f ? 0.0f : __int_as_float(0x7f800000);
    // vscalefps: j * 2^n rounded once.
    return (float)((double)j * __longlong_as_double(((long long)n + 1023) << 52));
}

__device__ __forceinline__ float warp_max_f(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ int warp_sum_i(int v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum of doubles over a block of blockDim.x (a multiple of 32, at most 1024) threads.
__device__ double block_sum_d(double v) {
    __shared__ double part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    int nw = blockDim.x >> 5;
    v = (threadIdx.x < nw) ? part[threadIdx.x] : 0.0;
    if (warp == 0) v = warp_sum_d(v);
    if (threadIdx.x == 0) part[0] = v;
    __syncthreads();
    double r = part[0];
    __syncthreads();
    return r;
}

__device__ float block_max_f(float v) {
    __shared__ float part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max_f(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    int nw = blockDim.x >> 5;
    v = (threadIdx.x < nw) ? part[threadIdx.x] : -__int_as_float(0x7f800000);
    if (warp == 0) v = warp_max_f(v);
    if (threadIdx.x == 0) part[0] = v;
    __syncthreads();
    float r = part[0];
    __syncthreads();
    return r;
}

// x [blocks * 32] f32 -> qs [blocks * 32] i8, d [blocks], s [blocks]. One warp per block.
extern "C" __global__ void q8_1_quantize(const float* __restrict__ x, signed char* __restrict__ qs,
                                         float* __restrict__ d_out, float* __restrict__ s_out,
                                         long long blocks) {
    long long blk = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (blk >= blocks) return;
    int lane = threadIdx.x & 31;
    float v = x[blk * 32 + lane];
    float amax = warp_max_f(fabsf(v));
    float d = __fdiv_rn(amax, 127.0f);
    float id = amax != 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;
    int q = __float2int_rn(__fmul_rn(v, id));
    qs[blk * 32 + lane] = (signed char)q;
    int sum = warp_sum_i(q);
    if (lane == 0) {
        d_out[blk] = h2f(f2h(d));
        s_out[blk] = h2f(f2h(__fmul_rn(d, (float)sum)));
    }
}

// out[t, r] = row r of w (type ty, cols values) . token t's quantized activations.
// One warp per (row, token): grid (rows / 4, T), 128 threads. Per block the CPU's terms:
// acc += float(sumi) * (d_w * d_x) (one FMA), offs += m_w * s_x (Q4_1).
extern "C" __global__ void qmatmul_nt(const unsigned char* __restrict__ w, int ty, int rows,
                                      int cols, const signed char* __restrict__ xq,
                                      const float* __restrict__ xd, const float* __restrict__ xs,
                                      float* __restrict__ out) {
    int r = blockIdx.x * 4 + (threadIdx.x >> 5);
    int t = blockIdx.y;
    int lane = threadIdx.x & 31;
    if (r >= rows) return;
    int nb = cols / 32;
    int bb = ty == GGML_Q4_0 ? 18 : (ty == GGML_Q4_1 ? 20 : 34);
    const unsigned char* row = w + (long long)r * nb * bb;
    const signed char* xt = xq + (long long)t * cols;
    float acc = 0.0f, offs = 0.0f;
    for (int i = lane; i < nb; i += 32) {
        const unsigned char* b = row + i * bb;
        const signed char* xb = xt + i * 32;
        int sumi = 0;
        float dw = ld_f16(b);
        if (ty == GGML_Q8_0) {
            for (int j = 0; j < 32; j++) sumi += (int)(signed char)b[2 + j] * (int)xb[j];
        } else {
            const unsigned char* q = b + (ty == GGML_Q4_1 ? 4 : 2);
            int off = ty == GGML_Q4_0 ? 8 : 0;
            for (int j = 0; j < 16; j++) {
                sumi += ((int)(q[j] & 15) - off) * (int)xb[j];
                sumi += ((int)(q[j] >> 4) - off) * (int)xb[j + 16];
            }
            if (ty == GGML_Q4_1) offs = __fadd_rn(offs, __fmul_rn(ld_f16(b + 2), xs[(long long)t * nb + i]));
        }
        acc = fmaf((float)sumi, __fmul_rn(dw, xd[(long long)t * nb + i]), acc);
    }
    for (int o = 16; o > 0; o >>= 1) {
        acc += __shfl_xor_sync(0xffffffffu, acc, o);
        offs += __shfl_xor_sync(0xffffffffu, offs, o);
    }
    if (lane == 0) out[(long long)t * rows + r] = __fadd_rn(acc, offs);
}

// Embedding lookup from a quantized table: out[n, :] = dequantised row ids[n]. One block per id.
extern "C" __global__ void dequant_rows(const unsigned char* __restrict__ table, int ty, int cols,
                                        const unsigned int* __restrict__ ids,
                                        float* __restrict__ out) {
    int n = blockIdx.x;
    int nb = cols / 32;
    int bb = ty == GGML_Q4_0 ? 18 : (ty == GGML_Q4_1 ? 20 : 34);
    const unsigned char* row = table + (long long)ids[n] * nb * bb;
    for (int e = threadIdx.x; e < cols; e += blockDim.x) {
        const unsigned char* b = row + (e / 32) * bb;
        int j = e % 32;
        float d = ld_f16(b), y;
        if (ty == GGML_Q8_0) {
            y = __fmul_rn((float)(signed char)b[2 + j], d);
        } else {
            const unsigned char* q = b + (ty == GGML_Q4_1 ? 4 : 2);
            int nib = j < 16 ? (q[j] & 15) : (q[j - 16] >> 4);
            y = ty == GGML_Q4_1 ? __fadd_rn(__fmul_rn((float)nib, d), ld_f16(b + 2))
                                : __fmul_rn((float)(nib - 8), d);
        }
        out[(long long)n * cols + e] = y;
    }
}

// RMSNorm as tensor/src/cpu/norm.rs: mean of squares summed in f64, y = (x * r) * w.
// One block of 256 threads per row.
extern "C" __global__ void rmsnorm_exact(const float* __restrict__ x, const float* __restrict__ w,
                                         float* __restrict__ y, int d, float eps) {
    const float* xr = x + (long long)blockIdx.x * d;
    float* yr = y + (long long)blockIdx.x * d;
    double s = 0.0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) s += (double)__fmul_rn(xr[i], xr[i]);
    s = block_sum_d(s);
    float ms = (float)(s / (double)d);
    float r = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(ms, eps)));
    for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = __fmul_rn(__fmul_rn(xr[i], r), w[i]);
}

// RoPE in the rotate-half layout, as tensor/src/cpu/rope.rs (one FMA per rotated value), with
// the cos/sin of every position precomputed on the CPU: table [capacity, 2, R/2].
// x [B * T, nh, dh]; row n is token n % T at position past + n % T.
extern "C" __global__ void rope_table(float* __restrict__ x, const float* __restrict__ table,
                                      int t_len, int nh, int dh, int rot, int past) {
    int n = blockIdx.x;
    int half = rot / 2;
    int pos = past + n % t_len;
    const float* cs = table + (long long)pos * rot;
    for (int e = threadIdx.x; e < nh * half; e += blockDim.x) {
        int head = e / half, i = e % half;
        float* hp = x + ((long long)n * nh + head) * dh;
        float a = hp[i], b = hp[i + half], c = cs[i], s = cs[half + i];
        hp[i] = fmaf(a, c, -__fmul_rn(b, s));
        hp[i + half] = fmaf(a, s, __fmul_rn(b, c));
    }
}

// Appends x [B, T, width] f32 to cache [B, capacity, width] f16 at position past.
extern "C" __global__ void kv_append_f16(const float* __restrict__ x, unsigned short* __restrict__ cache,
                                         int t_len, int width, int capacity, int past) {
    int n = blockIdx.x;  // b * T + t
    int b = n / t_len, t = n % t_len;
    unsigned short* dst = cache + ((long long)b * capacity + past + t) * width;
    for (int e = threadIdx.x; e < width; e += blockDim.x) dst[e] = f2h(x[(long long)n * width + e]);
}

// Causal attention over the f16 cache as tensor/src/cpu/attention.rs: q rounded to f16, scores
// q.k * scale, p = ggml_expf(score - max), total in f64, each p / total rounded to f16 before
// weighting v. grid (T * H, B), 128 threads; scratch holds one row of scores per (b, t, h):
// [B, T * H, past + T].
extern "C" __global__ void attention_f16kv(const float* __restrict__ q,
                                           const unsigned short* __restrict__ k,
                                           const unsigned short* __restrict__ v,
                                           float* __restrict__ out, float* __restrict__ scratch,
                                           int t_len, int h, int hk, int dh, int capacity, int past,
                                           float scale) {
    __shared__ float qs[256];
    int row = blockIdx.x, b = blockIdx.y;
    int ti = row / h, hi = row % h;
    int kvh = hi / (h / hk);
    int s_len = past + t_len;
    int last = past + ti;
    long long qrow = ((long long)b * t_len + ti) * h + hi;
    for (int d = threadIdx.x; d < dh; d += blockDim.x) qs[d] = h2f(f2h(q[qrow * dh + d]));
    __syncthreads();
    float* p = scratch + ((long long)b * t_len * h + row) * s_len;
    const unsigned short* kb = k + (long long)b * capacity * hk * dh;
    const unsigned short* vb = v + (long long)b * capacity * hk * dh;
    float mx = -__int_as_float(0x7f800000);
    for (int j = threadIdx.x; j <= last; j += blockDim.x) {
        const unsigned short* kr = kb + ((long long)j * hk + kvh) * dh;
        float dot = 0.0f;
        for (int d = 0; d < dh; d++) dot = fmaf(qs[d], h2f(kr[d]), dot);
        float sc = __fmul_rn(dot, scale);
        p[j] = sc;
        mx = fmaxf(mx, sc);
    }
    mx = block_max_f(mx);
    double tot = 0.0;
    for (int j = threadIdx.x; j <= last; j += blockDim.x) {
        float e = ggml_expf(__fsub_rn(p[j], mx));
        p[j] = e;
        tot += (double)e;
    }
    tot = block_sum_d(tot);
    float inv = (float)(1.0 / tot);
    for (int d = threadIdx.x; d < dh; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j <= last; j++) {
            float pj = h2f(f2h(__fmul_rn(p[j], inv)));
            acc = fmaf(pj, h2f(vb[((long long)j * hk + kvh) * dh + d]), acc);
        }
        out[qrow * dh + d] = acc;
    }
}

// out = silu(g) * u with ggml's silu: x / (1 + expf(0 - x)).
extern "C" __global__ void swiglu_exact(const float* __restrict__ g, const float* __restrict__ u,
                                        float* __restrict__ out, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = g[i];
    float silu = __fdiv_rn(x, __fadd_rn(1.0f, ggml_expf(__fsub_rn(0.0f, x))));
    out[i] = __fmul_rn(silu, u[i]);
}

// x += y.
extern "C" __global__ void add_exact(float* __restrict__ x, const float* __restrict__ y, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = __fadd_rn(x[i], y[i]);
}
