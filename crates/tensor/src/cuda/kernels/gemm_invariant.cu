// Split-invariant GEMM: c[M, N] = a[M, K] · b[N, K]ᵀ (bf16 operands, f32 accumulation) whose
// every output value is the same bits whatever M, N, the tile it falls in or the GPU's size:
// one thread accumulates it over K in a fixed order (m16n8k16 tensor-core steps from the
// start of its K range, never split over threads or blocks). cuBLAS picks its algorithm by
// shape, and a different algorithm (split-K above all) sums in another order; a model cut in
// two for tensor parallelism runs every projection at another shape, so with cuBLAS its
// logits differ from the whole model's in the last bits, and greedy replies part at near-ties.
//
// K may be cut into units (the heads or hidden-unit blocks that tensor parallelism deals out):
// blockIdx.z is a unit, K range [starts[z], starts[z+1]), and its partial product goes to its
// own f32 slab. `tree_sum_f32` then adds the slabs by a fixed binary tree (left half + right
// half, the left getting the floor), the tree that a split over 2, 4, 8 ... ranks cuts at its
// upper levels: each rank's partial is one of its subtrees, so the ranks' partials, added by
// the same tree, give the whole model's sum bit for bit.
//
// Tiles of 64 x 64 outputs, K steps of 32, 4 warps of 32 x 32, two shared-memory stages.
// Operand rows are padded by 8 elements so ldmatrix's eight row addresses hit distinct banks.
#define GI_BM 64
#define GI_BN 64
#define GI_BK 32
#define GI_SD (GI_BK + 8)

__device__ __forceinline__ unsigned gi_smem(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void gi_cp16(unsigned dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void gi_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void gi_wait0() { asm volatile("cp.async.wait_group 0;\n" ::); }
__device__ __forceinline__ void gi_wait1() { asm volatile("cp.async.wait_group 1;\n" ::); }
__device__ __forceinline__ void gi_ldsm(unsigned a, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(a));
}
__device__ __forceinline__ void gi_mma(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Rows [row0, row0 + 64) x K columns [k0, k0 + 32) of a [rows, ld] matrix into a padded shared
// tile; rows past `nrows` and columns at or past `kend` are zeros (0 · 0 adds exactly nothing,
// so a unit's last partial step sums the same values as a full one). Whole 16-byte chunks in
// range at 16-byte-aligned addresses go by cp.async, the rest element by element.
__device__ __forceinline__ void gi_load(bf16_t* sm, const bf16_t* g, long ld, int row0, int nrows, int k0,
                                        int kend, int tid) {
#pragma unroll
    for (int c = tid; c < 64 * (GI_BK / 8); c += 128) {
        int r = c / (GI_BK / 8), kc = k0 + (c % (GI_BK / 8)) * 8;
        bf16_t* dst = sm + r * GI_SD + (c % (GI_BK / 8)) * 8;
        const bf16_t* src = g + (long)(row0 + r) * ld + kc;
        bool row_ok = row0 + r < nrows;
        if (row_ok && kc + 8 <= kend && (((unsigned long long)src) & 15) == 0) {
            gi_cp16(gi_smem(dst), src);
        } else {
#pragma unroll
            for (int e = 0; e < 8; ++e) dst[e] = (row_ok && kc + e < kend) ? src[e] : (bf16_t)0;
        }
    }
}

// grid (ceil(N/64), ceil(M/64), units), 128 threads. out_f32: slabs [units, M, N] (when
// non-null); else out_bf16 [M, N] (one unit), rounded to nearest even.
extern "C" __global__ void __launch_bounds__(128) gemm_units_nt(const bf16_t* __restrict__ a,
                                                                const bf16_t* __restrict__ b,
                                                                float* __restrict__ out_f32,
                                                                bf16_t* __restrict__ out_bf16,
                                                                const int* __restrict__ starts, int m, int n,
                                                                int k) {
    __shared__ __align__(16) bf16_t sA[2][GI_BM * GI_SD];
    __shared__ __align__(16) bf16_t sB[2][GI_BN * GI_SD];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int n0 = blockIdx.x * GI_BN, m0 = blockIdx.y * GI_BM, unit = blockIdx.z;
    const int ks = starts[unit], ke = starts[unit + 1];
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    const int tiles = (ke - ks + GI_BK - 1) / GI_BK;
    if (tiles > 0) {
        gi_load(sA[0], a, k, m0, m, ks, ke, tid);
        gi_load(sB[0], b, k, n0, n, ks, ke, tid);
        gi_commit();
    }
    for (int t = 0; t < tiles; ++t) {
        const int cur = t & 1;
        if (t + 1 < tiles) {
            gi_load(sA[cur ^ 1], a, k, m0, m, ks + (t + 1) * GI_BK, ke, tid);
            gi_load(sB[cur ^ 1], b, k, n0, n, ks + (t + 1) * GI_BK, ke, tid);
            gi_commit();
            gi_wait1();
        } else {
            gi_wait0();
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < GI_BK / 16; ++kk) {
            unsigned af[2][4];
#pragma unroll
            for (int i = 0; i < 2; ++i)
                gi_ldsm(gi_smem(sA[cur] + (wm + i * 16 + (lane & 15)) * GI_SD + kk * 16 + (lane >> 4) * 8),
                        af[i][0], af[i][1], af[i][2], af[i][3]);
#pragma unroll
            for (int jp = 0; jp < 2; ++jp) {
                unsigned b0, b1, b2, b3;
                gi_ldsm(gi_smem(sB[cur] + (wn + jp * 16 + (lane & 7) + (lane >> 4) * 8) * GI_SD + kk * 16 +
                                ((lane >> 3) & 1) * 8),
                        b0, b1, b2, b3);
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    gi_mma(acc[i][2 * jp], af[i], b0, b1);
                    gi_mma(acc[i][2 * jp + 1], af[i], b2, b3);
                }
            }
        }
        __syncthreads();  // every warp is done with this stage before it is refilled
    }

#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int row = m0 + wm + i * 16 + (lane >> 2) + (e >> 1) * 8;
                int col = n0 + wn + j * 8 + (lane & 3) * 2 + (e & 1);
                if (row < m && col < n) {
                    long at = (long)row * n + col;
                    if (out_f32)
                        out_f32[(long)unit * m * n + at] = acc[i][j][e];
                    else
                        out_bf16[at] = f32_to_bf16(acc[i][j][e]);
                }
            }
}

// The tree over units [lo, hi): left half (floor) + right half. Depth bound D at compile time
// (2^D units at most), so the recursion unrolls.
template <int D>
__device__ __forceinline__ float gi_tree(const float* p, long stride, int lo, int hi) {
    if (hi - lo == 1) return p[(long)lo * stride];
    int mid = lo + (hi - lo) / 2;
    return gi_tree<D - 1>(p, stride, lo, mid) + gi_tree<D - 1>(p, stride, mid, hi);
}
template <>
__device__ __forceinline__ float gi_tree<0>(const float* p, long stride, int lo, int hi) {
    return p[(long)lo * stride];
}

// out[i] = tree sum over u < units of parts[u · count + i]; f32 (out_f32) or bf16 (out_bf16).
// units <= 64.
extern "C" __global__ void tree_sum_f32(const float* __restrict__ parts, float* __restrict__ out_f32,
                                        bf16_t* __restrict__ out_bf16, int units, long count) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    float s = gi_tree<6>(parts + i, count, 0, units);
    if (out_f32)
        out_f32[i] = s;
    else
        out_bf16[i] = f32_to_bf16(s);
}
