// Shared device helpers. No toolkit headers: bf16 is handled as raw 16-bit patterns, so the
// kernels compile with NVRTC alone (a user's machine may have the driver and NVRTC but no
// CUDA include folder).
typedef unsigned short bf16_t;

__device__ __forceinline__ float bf16_to_f32(bf16_t h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

// Round to nearest even, NaN kept quiet.
__device__ __forceinline__ bf16_t f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over a block of up to 1024 threads; every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    int nwarps = (blockDim.x + 31) >> 5;
    v = (threadIdx.x < nwarps) ? partial[threadIdx.x] : 0.0f;
    if (warp == 0) v = warp_sum(v);
    if (threadIdx.x == 0) partial[0] = v;
    __syncthreads();
    return partial[0];
}

// The chunked prep's per-chunk output blocks (elements), as chunk_prep writes them and both
// sequential passes (forward chunk_state, backward lbwd_state*) read them: 64-token chunks, bf16
// rows padded by 8 in global memory too, so that each block is contiguous and copies whole
// (one bulk copy a block, where a row at a time left the copy engine idle between requests).
template <int KP>
struct PrepBlocks {
    static constexpr int CHUNK = 64, ROW_PAD = 8, LDK = KP + ROW_PAD, LDC = CHUNK + ROW_PAD;
    static constexpr int W = CHUNK * LDK, QG = CHUNK * LDK, KT = KP * LDC, AQK = CHUNK * LDC, EL = KP;
};

#if __CUDA_ARCH__ >= 800
// Tensor-core pieces shared by the chunked linear-mixer kernels (forward and backward).
__device__ __forceinline__ void mma_bf16(float c[4], const unsigned a[4], const unsigned b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// Round to nearest even in one instruction (f32_to_bf16 above is the portable bit arithmetic).
__device__ __forceinline__ bf16_t to_bf16(float f) {
    unsigned short r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}

// An f32 tile a warp holds in m16n8 mma accumulators, MT 16-row tiles by NB 8-column tiles:
// s[mt][nt][e] is row r0 + 16mt + gq (+8 for e >= 2), column c0 + 8nt + 2tq + (e & 1) (gq =
// lane / 4, tq = lane % 4). `f(value, row, column)` visits every element.
template <int MT, int NB, class F>
__device__ __forceinline__ void acc_tile_each(float (&s)[MT][NB][4], int r0, int c0, F f) {
    const int lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NB; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                f(s[mt][nt][e], r0 + mt * 16 + gq + (e >> 1) * 8, c0 + nt * 8 + 2 * tq + (e & 1));
}
// Loads from / stores to a row-major f32 matrix with rows ld apart; rows >= nrows and columns
// >= ncols are skipped (read as zero), and !on loads zeros.
template <int MT, int NB>
__device__ __forceinline__ void acc_tile_load(float (&s)[MT][NB][4], const float* m, long ld, int r0,
                                              int c0, int nrows, int ncols, bool on) {
    acc_tile_each<MT, NB>(s, r0, c0, [&](float& x, int r, int c) {
        x = (on && r < nrows && c < ncols) ? m[(long)r * ld + c] : 0.f;
    });
}
template <int MT, int NB>
__device__ __forceinline__ void acc_tile_store(float (&s)[MT][NB][4], float* m, long ld, int r0, int c0,
                                               int nrows, int ncols) {
    acc_tile_each<MT, NB>(s, r0, c0, [&](float& x, int r, int c) {
        if (r < nrows && c < ncols) m[(long)r * ld + c] = x;
    });
}
// The tile transposed into bf16 shared memory: t[c·ld + r] (the B operand of products with it).
template <int MT, int NB>
__device__ __forceinline__ void acc_tile_store_bf16_t(float (&s)[MT][NB][4], bf16_t* t, int ld, int r0) {
    acc_tile_each<MT, NB>(s, r0, 0, [&](float& x, int r, int c) { t[c * ld + r] = to_bf16(x); });
}
#endif

#if __CUDA_ARCH__ >= 900
// mbarriers and the TMA unit (sm_90+): a barrier counts arrivals and, with expect_tx, the bytes
// that bulk copies deliver; waiters poll one phase parity.
__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count) {
    asm volatile("mbarrier.init.shared.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(unsigned bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
    unsigned done = 0;
    while (!done)
        asm volatile(
            "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }\n"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
}
__device__ __forceinline__ void bulk_copy(unsigned dst, const void* src, unsigned bytes, unsigned bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
}
__device__ __forceinline__ void mbar_arrive(unsigned bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
#endif
