// Helpers of both flash attention files (flash_attn.cu's mma.sync kernels, flash_sm90.cu's
// wgmma ones), put in front of each by flash.rs (after common.cuh), so the Hopper build does not
// compile the mma.sync kernels too.
#define FA_NEG_INF __int_as_float(0xff800000)
#define FA_LOG2E 1.4426950408889634f
#define FA_LN2 0.6931471805599453f

__device__ __forceinline__ unsigned fa_smem(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

// Two floats -> bf16x2 (lo in the low half), round to nearest even.
__device__ __forceinline__ unsigned fa_pack(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ float fa_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Is key j visible to query i (both absolute: j in [0, s), i in [0, t))?
__device__ __forceinline__ bool fa_visible(int i, int j, int t, int s, int past, int window) {
    return i < t && j < s && j <= past + i && (window <= 0 || j > past + i - window);
}

// rowsum(dO ∘ O) of one row of d elements, by one warp (every lane gets it).
__device__ __forceinline__ float fa_row_dot(const bf16_t* op, const bf16_t* dp, int d, int lane) {
    float acc = 0.0f;
    for (int c = lane * 2; c < d; c += 64) {
        unsigned a = *(const unsigned*)(op + c), g = *(const unsigned*)(dp + c);
        acc += __uint_as_float(a << 16) * __uint_as_float(g << 16) +
               __uint_as_float(a & 0xffff0000u) * __uint_as_float(g & 0xffff0000u);
    }
    return warp_sum(acc);
}
