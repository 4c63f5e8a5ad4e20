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
