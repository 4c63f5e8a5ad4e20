// Elementwise pieces of whole-model training on the GPU (model::hybrid::gpu_supernet): the
// f32 SwiGLU forward, the residual add, and the global gradient-norm clip (sum of squares,
// then a scale). Their specifications are tensor::cpu::{swiglu, add_inplace} and
// train::optim::clip_grad_norm.

__device__ __forceinline__ float silu_(float x) { return x / (1.0f + __expf(-x)); }

// act = silu(gate) * up, n elements.
extern "C" __global__ void swiglu_fwd_f32(const float* gate, const float* up, float* act, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    act[i] = silu_(gate[i]) * up[i];
}

// y += x, n elements.
extern "C" __global__ void add_f32(float* y, const float* x, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    y[i] += x[i];
}

// out[0] += sum of x^2 over n elements: a block reduction, then one atomic per block. The
// order of the atomics varies between runs; the clip scale it feeds is a norm, where that
// last-bit variation does not matter.
extern "C" __global__ void sumsq_f32(const float* x, float* out, long n) {
    __shared__ float part[32];
    float s = 0.0f;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float v = x[i];
        s += v * v;
    }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = s;
    __syncthreads();
    if (warp == 0) {
        s = lane < (blockDim.x >> 5) ? part[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) atomicAdd(out, s);
    }
}

// x *= s, n elements.
extern "C" __global__ void scale_f32(float* x, float s, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    x[i] *= s;
}
