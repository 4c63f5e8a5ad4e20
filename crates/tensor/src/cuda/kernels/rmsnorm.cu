// RMSNorm, y = x / sqrt(mean(x^2) + eps) * w, one block per row (D up to a few thousand).
// x, y: [rows, D] in f32 or bf16 (activations), w: [D] f32; sums in f32.
extern "C" __global__ void rmsnorm_f32(const float* x, const float* w, float* y, int d, float eps) {
    const float* xr = x + (long)blockIdx.x * d;
    float* yr = y + (long)blockIdx.x * d;
    float s = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) s += xr[i] * xr[i];
    float r = rsqrtf(block_sum(s) / d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = xr[i] * r * w[i];
}

extern "C" __global__ void rmsnorm_bf16(const bf16_t* x, const float* w, bf16_t* y, int d, float eps) {
    const bf16_t* xr = x + (long)blockIdx.x * d;
    bf16_t* yr = y + (long)blockIdx.x * d;
    float s = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) { float v = bf16_to_f32(xr[i]); s += v * v; }
    float r = rsqrtf(block_sum(s) / d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = f32_to_bf16(bf16_to_f32(xr[i]) * r * w[i]);
}

// ---------------------------------------------------------------------------------------
// Backward (tensor::cpu::rms_norm_backward). With r = 1 / sqrt(mean(x^2) + eps) per row,
//   dx = r w dy - x r^3 / D * sum(w dy x),   dw += sum over rows of dy x r.
// Activations x, dy, dx in f32 or bf16; w, dw f32; sums in f32.
__device__ __forceinline__ float rn_ld(const float* p, long i) { return p[i]; }
__device__ __forceinline__ float rn_ld(const bf16_t* p, long i) { return bf16_to_f32(p[i]); }
__device__ __forceinline__ void rn_st(float* p, long i, float v) { p[i] = v; }
__device__ __forceinline__ void rn_st(bf16_t* p, long i, float v) { p[i] = f32_to_bf16(v); }

// dx of one row per block; r of each row to rstd [rows] for the dw pass.
template <typename T>
__device__ __forceinline__ void rmsnorm_bwd_dx(const T* x, const float* w, const T* dy, T* dx, float* rstd, int d,
                                               float eps) {
    const long off = (long)blockIdx.x * d;
    float ss = 0.0f, s = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float xv = rn_ld(x, off + i), g = rn_ld(dy, off + i);
        ss += xv * xv;
        s += w[i] * g * xv;
    }
    ss = block_sum(ss);
    s = block_sum(s);
    const float r = 1.0f / sqrtf(ss / d + eps);
    const float c = r * r * r * s / d;
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        rn_st(dx, off + i, r * w[i] * rn_ld(dy, off + i) - rn_ld(x, off + i) * c);
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
}

// Partial dw over rows [blockIdx.y * rps, +rps): block (32, 8) per 32 columns, part [splits, D].
template <typename T>
__device__ __forceinline__ void rmsnorm_bwd_dw(const T* x, const T* dy, const float* rstd, float* part, int rows,
                                               int d, int rps) {
    __shared__ float red[8][33];
    const int col = blockIdx.x * 32 + threadIdx.x;
    const int r0 = blockIdx.y * rps, r1 = min(rows, r0 + rps);
    float acc = 0.0f;
    if (col < d)
        for (int r = r0 + threadIdx.y; r < r1; r += 8) {
            long i = (long)r * d + col;
            acc += rn_ld(dy, i) * rn_ld(x, i) * rstd[r];
        }
    red[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && col < d) {
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < 8; ++k) s += red[k][threadIdx.x];
        part[(long)blockIdx.y * d + col] = s;
    }
}

extern "C" __global__ void rmsnorm_bwd_dx_f32(const float* x, const float* w, const float* dy, float* dx, float* rstd,
                                              int d, float eps) {
    rmsnorm_bwd_dx<float>(x, w, dy, dx, rstd, d, eps);
}
extern "C" __global__ void rmsnorm_bwd_dx_bf16(const bf16_t* x, const float* w, const bf16_t* dy, bf16_t* dx,
                                               float* rstd, int d, float eps) {
    rmsnorm_bwd_dx<bf16_t>(x, w, dy, dx, rstd, d, eps);
}
extern "C" __global__ void rmsnorm_bwd_dw_f32(const float* x, const float* dy, const float* rstd, float* part, int rows,
                                              int d, int rps) {
    rmsnorm_bwd_dw<float>(x, dy, rstd, part, rows, d, rps);
}
extern "C" __global__ void rmsnorm_bwd_dw_bf16(const bf16_t* x, const bf16_t* dy, const float* rstd, float* part,
                                               int rows, int d, int rps) {
    rmsnorm_bwd_dw<bf16_t>(x, dy, rstd, part, rows, d, rps);
}

// dw[i] += sum over k < splits of part[k, i] (in order: deterministic), n = D.
extern "C" __global__ void sum_parts_f32(const float* part, float* dw, int splits, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float s = 0.0f;
    for (int k = 0; k < splits; ++k) s += part[(long)k * n + i];
    dw[i] += s;
}
