// A GGUF model in its own quantized blocks, computed the way llama.cpp's CPU backend (and so
// our CPU forward, tensor/src/cpu and tensor/src/quant) computes it: activations quantized to
// 8 bits per 32-value block (block_q8_1: d = max|x| / 127, q = round-half-even(x / d),
// s = d * sum q, d and s rounded through f16), integer block dot products with the weights,
// f32 everywhere else, an f16 KV cache, ggml's polynomial expf. Each separate multiply and add
// of the CPU code is written with __fmul_rn / __fadd_rn so that the compiler cannot contract
// it into an FMA the CPU does not do (and fmaf where the CPU does one), and every sum follows the
// CPU's order (its AVX2 block-dot lanes, llama.cpp's attention orders of tensor/src/cpu/
// ggml_order.rs): one ulp of difference flips an 8-bit activation rounding now and then, and on
// a 4-bit model those flips move about 3% of greedy next tokens (llama.cpp's own batch and
// decode paths agree on 96.6%). With the same order the outputs carry the same bits.
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

// out[t, r] = row r of w (type ty, cols values) . token t's quantized activations, in the order
// of the CPU's AVX2 dot_row (tensor/src/quant/q8dot.rs): eight integer lanes per 32-value block
// (lane m sums elements 4m..4m+3), each lane accumulating float(sum) * (d_w * d_x) by FMA over
// the blocks in turn; the lanes added as ((0+4)+(2+6))+((1+5)+(3+7)); Q4_1's offsets m_w * s_x
// summed block by block and added last. Eight threads per (row, token): grid (rows / 16, T),
// 128 threads.
extern "C" __global__ void qmatmul_nt(const unsigned char* __restrict__ w, int ty, int rows,
                                      int cols, const signed char* __restrict__ xq,
                                      const float* __restrict__ xd, const float* __restrict__ xs,
                                      float* __restrict__ out) {
    int r = blockIdx.x * 16 + (threadIdx.x >> 3);
    int t = blockIdx.y;
    int m = threadIdx.x & 7;
    bool live = r < rows;
    int nb = cols / 32;
    int bb = ty == GGML_Q4_0 ? 18 : (ty == GGML_Q4_1 ? 20 : 34);
    const unsigned char* row = w + (long long)(live ? r : 0) * nb * bb;
    const signed char* xt = xq + (long long)t * cols;
    float acc = 0.0f, offs = 0.0f;
    for (int i = 0; i < nb && live; i++) {
        const unsigned char* b = row + i * bb;
        const signed char* xb = xt + i * 32;
        int sumi = 0;
        for (int e = 4 * m; e < 4 * m + 4; e++) {
            int wq;
            if (ty == GGML_Q8_0) {
                wq = (int)(signed char)b[2 + e];
            } else {
                const unsigned char* q = b + (ty == GGML_Q4_1 ? 4 : 2);
                wq = e < 16 ? (q[e] & 15) : (q[e - 16] >> 4);
                if (ty == GGML_Q4_0) wq -= 8;
            }
            sumi += wq * (int)xb[e];
        }
        float xdi = xd[(long long)t * nb + i];
        acc = fmaf((float)sumi, __fmul_rn(ld_f16(b), xdi), acc);
        if (ty == GGML_Q4_1 && m == 0)
            offs = __fadd_rn(offs, __fmul_rn(ld_f16(b + 2), xs[(long long)t * nb + i]));
    }
    // Lanes 0..7 of this row are 8 consecutive threads: xor 4, 2, 1 gives the hsum's tree.
    acc = __fadd_rn(acc, __shfl_xor_sync(0xffffffffu, acc, 4));
    acc = __fadd_rn(acc, __shfl_xor_sync(0xffffffffu, acc, 2));
    acc = __fadd_rn(acc, __shfl_xor_sync(0xffffffffu, acc, 1));
    if (live && m == 0) out[(long long)t * rows + r] = __fadd_rn(acc, offs);
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

// RMSNorm as tensor/src/cpu/norm.rs: the mean of squares summed in f64 in index order (one
// thread; f64 rounding could otherwise, rarely, move the f32 result), y = (x * r) * w.
// One block of 256 threads per row.
extern "C" __global__ void rmsnorm_exact(const float* __restrict__ x, const float* __restrict__ w,
                                         float* __restrict__ y, int d, float eps) {
    __shared__ float r_shared;
    const float* xr = x + (long long)blockIdx.x * d;
    float* yr = y + (long long)blockIdx.x * d;
    if (threadIdx.x == 0) {
        double s = 0.0;
        for (int i = 0; i < d; i++) s += (double)__fmul_rn(xr[i], xr[i]);
        float ms = (float)(s / (double)d);
        r_shared = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(ms, eps)));
    }
    __syncthreads();
    float r = r_shared;
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

// Where rotate-half dim e of a head sits in llama.cpp's adjacent-pair layout (pair i at 2i, 2i+1);
// dims from `rot` on stay. The CPU keeps q and K in that layout: attention sums over head dims
// in its order.
__device__ __forceinline__ int adjacent(int e, int rot) {
    int half = rot / 2;
    if (e >= rot) return e;
    return e < half ? 2 * e : 2 * (e - half) + 1;
}

// Appends x [B, T, Hk * dh] f32 to cache [B, capacity, Hk * dh] f16 at position past; with
// rot > 0 each head's dims go to the adjacent-pair layout (keys), with rot = 0 they stay (values).
extern "C" __global__ void kv_append_f16(const float* __restrict__ x, unsigned short* __restrict__ cache,
                                         int t_len, int width, int dh, int rot, int capacity,
                                         int past) {
    int n = blockIdx.x;  // b * T + t
    int b = n / t_len, t = n % t_len;
    unsigned short* dst = cache + ((long long)b * capacity + past + t) * width;
    for (int e = threadIdx.x; e < width; e += blockDim.x) {
        int head = e / dh, within = e % dh;
        int to = rot > 0 ? head * dh + adjacent(within, rot) : e;
        dst[to] = f2h(x[(long long)n * width + e]);
    }
}

// GCC's _mm512_reduce_add_ps over 16 lanes (tensor/src/cpu/ggml_order.rs reduce16).
__device__ __forceinline__ float reduce16(const float* v) {
    float t3[8];
    for (int i = 0; i < 8; i++) t3[i] = __fadd_rn(v[i + 8], v[i]);
    float t6[4] = {__fadd_rn(t3[4], t3[0]), __fadd_rn(t3[5], t3[1]), __fadd_rn(t3[6], t3[2]),
                   __fadd_rn(t3[7], t3[3])};
    return __fadd_rn(__fadd_rn(t6[0], t6[2]), __fadd_rn(t6[1], t6[3]));
}

// ggml_order's combine + reduce16 of `slots` (1 or 4) accumulators of 16 lanes.
__device__ __forceinline__ float combine_reduce(const float* acc, int slots) {
    if (slots == 1) return reduce16(acc);
    float s[16];
    for (int l = 0; l < 16; l++)
        s[l] = __fadd_rn(__fadd_rn(acc[l], acc[32 + l]), __fadd_rn(acc[16 + l], acc[48 + l]));
    return reduce16(s);
}

// Causal attention over the f16 cache as tensor/src/cpu/attention.rs, in llama.cpp's orders
// (ggml_order.rs): `slots` = 1 for a batch of tokens (tinyBLAS: one 16-lane accumulator), 4 for
// one token (ggml_vec_dot_f16: four taking 16-dim chunks in turn). q rounded to f16 and read in
// the adjacent-pair layout of the keys; scores q.k * scale; p = ggml_expf(score - max); the
// total as 16-key chunks (aligned to key 0) reduced in f32 and added in f64 in order; each
// p / total rounded to f16; key j feeds lane j % 16 of accumulator (j / 16) % slots of the
// output. grid (T * H, B), 128 threads; scratch [B, T * H, S + ceil(S / 16)] f32 with
// S = past + T.
extern "C" __global__ void attention_f16kv(const float* __restrict__ q,
                                           const unsigned short* __restrict__ k,
                                           const unsigned short* __restrict__ v,
                                           float* __restrict__ out, float* __restrict__ scratch,
                                           int t_len, int h, int hk, int dh, int rot, int capacity,
                                           int past, float scale) {
    __shared__ float qs[256];
    __shared__ float inv_shared;
    int row = blockIdx.x, b = blockIdx.y;
    int ti = row / h, hi = row % h;
    int kvh = hi / (h / hk);
    int s_len = past + t_len;
    int last = past + ti;
    int slots = t_len == 1 ? 4 : 1;
    long long qrow = ((long long)b * t_len + ti) * h + hi;
    for (int d = threadIdx.x; d < dh; d += blockDim.x)
        qs[adjacent(d, rot)] = h2f(f2h(q[qrow * dh + d]));
    __syncthreads();
    // Per (b, t, h): s_len scores, then the ceil(s_len / 16) chunk sums of the softmax total.
    float* p = scratch + ((long long)b * t_len * h + row) * (s_len + (s_len + 15) / 16);
    float* chunk = p + s_len;
    const unsigned short* kb = k + (long long)b * capacity * hk * dh;
    const unsigned short* vb = v + (long long)b * capacity * hk * dh;
    float mx = -__int_as_float(0x7f800000);
    for (int j = threadIdx.x; j <= last; j += blockDim.x) {
        const unsigned short* kr = kb + ((long long)j * hk + kvh) * dh;
        float acc[64];
        for (int l = 0; l < 64; l++) acc[l] = 0.0f;
        for (int c = 0; c < dh / 16; c++) {
            float* a = acc + (c % slots) * 16;
            for (int l = 0; l < 16; l++) a[l] = fmaf(qs[c * 16 + l], h2f(kr[c * 16 + l]), a[l]);
        }
        float sc = __fmul_rn(combine_reduce(acc, slots), scale);
        p[j] = sc;
        mx = fmaxf(mx, sc);
    }
    mx = block_max_f(mx);
    for (int j = threadIdx.x; j <= last; j += blockDim.x) p[j] = ggml_expf(__fsub_rn(p[j], mx));
    __syncthreads();
    int chunks = last / 16 + 1;
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
        float lanes[16];
        for (int l = 0; l < 16; l++) {
            int j = c * 16 + l;
            lanes[l] = j <= last ? p[j] : 0.0f;
        }
        chunk[c] = reduce16(lanes);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double tot = 0.0;
        for (int c = 0; c < chunks; c++) tot += (double)chunk[c];
        inv_shared = (float)(1.0 / tot);
    }
    __syncthreads();
    float inv = inv_shared;
    for (int d = threadIdx.x; d < dh; d += blockDim.x) {
        float acc[64];
        for (int l = 0; l < 64; l++) acc[l] = 0.0f;
        for (int j = 0; j <= last; j++) {
            float pj = h2f(f2h(__fmul_rn(p[j], inv)));
            int at = ((j / 16) % slots) * 16 + j % 16;
            acc[at] = fmaf(pj, h2f(vb[((long long)j * hk + kvh) * dh + d]), acc[at]);
        }
        out[qrow * dh + d] = combine_reduce(acc, slots);
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
