// Backward of the short causal depthwise conv + SiLU (mixers::conv::backward: zero history),
//   pre[t, c] = sum_w weight[c, w] x[t - (W-1) + w, c],   y = silu(pre),
//   dpre = dy silu'(pre),   dx[t] = sum_w dpre[t + W-1 - w] weight[w],   dw[w] += sum_t dpre[t] x[t - (W-1) + w].
// x, dy, dx [B, T, C] in f32 or bf16 (pre is recomputed, not stored); weight, dw [C, W] f32.
// One thread per (channel, chunk of cb tokens, sequence), sliding windows of W inputs and W
// dpre values in registers; each chunk's dw goes to part [B, chunks, C, W], summed in order by
// conv_bwd_sum (deterministic: no atomics).
__device__ __forceinline__ float cv_ld(const float* p, long i) { return p[i]; }
__device__ __forceinline__ float cv_ld(const bf16_t* p, long i) { return bf16_to_f32(p[i]); }
__device__ __forceinline__ void cv_st(float* p, long i, float v) { p[i] = v; }
__device__ __forceinline__ void cv_st(bf16_t* p, long i, float v) { p[i] = f32_to_bf16(v); }

template <typename T, int W>
__device__ __forceinline__ void conv_bwd(const T* x, const float* weight, const T* dy, T* dx, float* part, int t, int c,
                                         int cb) {
    constexpr int H = W - 1;
    const int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    const int chunk = blockIdx.y, b = blockIdx.z;
    const int t0 = chunk * cb, t1 = min(t, t0 + cb);
    const long base = (long)b * t * c + ch;
    const T* xb = x + base;
    const T* gb = dy + base;
    T* dxb = dx + base;
    float wt[W], xw[W], gw[W], dacc[W];
#pragma unroll
    for (int w = 0; w < W; ++w) {
        wt[w] = weight[ch * W + w];
        dacc[w] = 0.0f;
        gw[w] = 0.0f;
    }
    // xw[k] = x[tp - H + k] (zero before the sequence); gw[k] = dpre[tp - H + k] (zero before t0:
    // only dx of tokens before t0 would read them).
#pragma unroll
    for (int k = 0; k < H; ++k) {
        int src = t0 - H + k;
        xw[k] = src >= 0 ? cv_ld(xb, (long)src * c) : 0.0f;
    }
    for (int tp = t0; tp < t1 + H; ++tp) {
        float g = 0.0f;
        if (tp < t) {
            xw[H] = cv_ld(xb, (long)tp * c);
            float pre = 0.0f;
#pragma unroll
            for (int w = 0; w < W; ++w) pre += wt[w] * xw[w];
            float sg = 1.0f / (1.0f + expf(-pre));
            g = cv_ld(gb, (long)tp * c) * (sg * (1.0f + pre * (1.0f - sg)));
            if (tp < t1)
#pragma unroll
                for (int w = 0; w < W; ++w) dacc[w] += g * xw[w];
        } else {
            xw[H] = 0.0f;
        }
        gw[H] = g;
        const int td = tp - H;  // dx[td] = sum_w dpre[td + H - w] wt[w] = sum_w gw[H - w] wt[w]
        if (td >= t0 && td < t) {
            float acc = 0.0f;
#pragma unroll
            for (int w = 0; w < W; ++w) acc += gw[H - w] * wt[w];
            cv_st(dxb, (long)td * c, acc);
        }
#pragma unroll
        for (int k = 0; k < H; ++k) {
            xw[k] = xw[k + 1];
            gw[k] = gw[k + 1];
        }
    }
    float* pp = part + (((long)b * gridDim.y + chunk) * c + ch) * W;
#pragma unroll
    for (int w = 0; w < W; ++w) pp[w] = dacc[w];
}

#define CONV_BWD(W)                                                                                              \
    extern "C" __global__ void conv_bwd_f32_w##W(const float* x, const float* weight, const float* dy, float* dx, \
                                                 float* part, int t, int c, int cb) {                            \
        conv_bwd<float, W>(x, weight, dy, dx, part, t, c, cb);                                                   \
    }                                                                                                            \
    extern "C" __global__ void conv_bwd_bf16_w##W(const bf16_t* x, const float* weight, const bf16_t* dy,        \
                                                  bf16_t* dx, float* part, int t, int c, int cb) {               \
        conv_bwd<bf16_t, W>(x, weight, dy, dx, part, t, c, cb);                                                  \
    }
CONV_BWD(1)
CONV_BWD(2)
CONV_BWD(3)
CONV_BWD(4)

// dw[i] += sum over k < parts of part[k, i], in order, n = C * W.
extern "C" __global__ void conv_bwd_sum(const float* part, float* dw, int parts, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float s = 0.0f;
    for (int k = 0; k < parts; ++k) s += part[(long)k * n + i];
    dw[i] += s;
}
