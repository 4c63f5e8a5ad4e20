// ---------------------------------------------------------------------------------------
// Flash attention on Hopper's warpgroup MMA (wgmma), forward and backward, head dim 128. This
// file is compiled for sm_90a only, after common.cuh and flash_common.cuh (the fa_* helpers it
// shares with flash_attn.cu), by flash.rs.
//
// Products take both operands from shared memory (descriptors), or A from registers (the
// accumulator layout of S is the A-fragment layout, as with mma.sync). Shared tiles are
// [D / 64][rows][64] bf16 with the 128-byte swizzle (16-byte chunk c of row r at chunk
// c ^ (r % 8)), 1024-byte aligned, as TMA writes them: K-major for Q and K, MN-major
// (transposed) for V. (A first forward, one warpgroup per 64 rows loading its own tiles by
// cp.async and running the two products and the softmax in lockstep, reached 340 TFLOP/s:
// bench/NOTES-gpu.md.)
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// d[64] (+)= A B for m64n128k16: A and B in shared memory (descriptors), scale_d = 0 zeroes d first.
__device__ __forceinline__ void wg_ss(float* d, unsigned long long da, unsigned long long db, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(da), "l"(db), "r"(scale_d));
}
// d[64] += A B for m64n128k16: A (16 rows a warp, mma.m16n8k16 fragment layout) in registers,
// B in shared memory MN-major (transposed).
__device__ __forceinline__ void wg_rs(float* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned long long db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(db));
}
// Keeps the compiler from moving accesses of d across the wgmma wait.
__device__ __forceinline__ void wg_fence_regs(float* d) {
#pragma unroll
    for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

__device__ __forceinline__ unsigned long long wg_desc(unsigned addr, unsigned lbo, unsigned sbo) {
    return (unsigned long long)((addr & 0x3FFFF) >> 4) | ((unsigned long long)((lbo & 0x3FFFF) >> 4) << 16) |
           ((unsigned long long)((sbo & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}

// ---------------------------------------------------------------------------------------
// flash_fwd_ws_d128: FlashAttention-3's warp-specialized schedule. One CTA per 128 query rows
// of one (batch, head), three warpgroups: 0 and 1 consumers of 64 rows each, one thread of
// warpgroup 2 the producer (setmaxnreg moves registers from it to the consumers: 24 / 240).
// It brings Q, then each key tile's K and V (128 keys) by TMA (tensor maps with the 128-byte
// swizzle the wgmma descriptors read) into a ring of FW_NS stages; "full" mbarriers count the bytes in, "empty" ones the eight consumer warps out. The
// consumers share every K/V tile (two warpgroups: half the L2 traffic per FLOP of one) and
// overlap inside a warpgroup: S(j) = Q K(j)^T and O += P(j-1) V(j-1) are issued together, the
// softmax of S(j) runs while the second product is on the tensor cores, and only the rescale of
// O waits for it (registers: O 64 + S 64 + P 32 a thread).
struct __align__(64) TmaMap {
    unsigned long long v[16];
};
constexpr int FW_NS = 2;
constexpr unsigned FW_TILE = 128 * 128 * 2;  // bytes of one 128 x 128 bf16 tile

// Rows [row, row + box) x columns [col, col + 64) of one (batch, head) of a [B, rows, heads,
// 128] tensor (box: the map's box rows, 128 or 64), as swizzled rows of 128 bytes at dst (rows
// past the end read as zero).
__device__ __forceinline__ void fw_tma(unsigned dst, const TmaMap* map, int col, int head, int row, int b, unsigned bar) {
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], [%2];\n" ::"r"(dst),
        "l"((unsigned long long)map), "r"(bar), "r"(col), "r"(head), "r"(row), "r"(b)
        : "memory");
}

extern "C" __global__ void __launch_bounds__(384, 1) flash_fwd_ws_d128(
    const __grid_constant__ TmaMap tq, const __grid_constant__ TmaMap tk, const __grid_constant__ TmaMap tv,
    bf16_t* __restrict__ o, float* __restrict__ lse, int t, int s, int h, int hk, int window, float scale_log2,
    int v_lbo, int v_sbo) {
    constexpr int D = 128, BN = 128, NN = BN / 8, ND = D / 8, NS = FW_NS;
    extern __shared__ __align__(16) unsigned char fa_sm[];
    const unsigned base = (fa_smem(fa_sm) + 1023u) & ~1023u;
    // Tiles: Q, then K and V of each stage; each [2 column halves][128 rows][128 bytes].
    const unsigned sQ = base;
    const unsigned bars = base + FW_TILE * (1 + 2 * NS);
    // mbarriers: Q full; K full, V full, K empty, V empty (one a stage).
    const unsigned bar_q = bars, bar_kf = bars + 8, bar_vf = bar_kf + 8 * NS, bar_ke = bar_vf + 8 * NS,
                   bar_ve = bar_ke + 8 * NS;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int mb = gridDim.y - 1 - blockIdx.y;  // the longest rows (most key tiles) first
    const int hh = blockIdx.x % h, b = blockIdx.x / h, kh = hh / (h / hk);
    const int m0 = mb * 128, past = s - t;
    const int last = min(s - 1, past + min(t, m0 + 128) - 1);
    const int first = window > 0 ? max(0, past + m0 + 1 - window) : 0;
    const int nb_first = first / BN, n = last / BN - nb_first + 1;

    if (tid == 0) {
        mbar_init(bar_q, 1);
        for (int i = 0; i < NS; ++i) {
            mbar_init(bar_kf + 8 * i, 1);
            mbar_init(bar_vf + 8 * i, 1);
            mbar_init(bar_ke + 8 * i, 8);
            mbar_init(bar_ve + 8 * i, 8);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (warp >= 8) {  // producer
        asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
        if (warp == 8 && lane == 0) {
            mbar_expect_tx(bar_q, FW_TILE);
            fw_tma(sQ, &tq, 0, hh, m0, b, bar_q);
            fw_tma(sQ + FW_TILE / 2, &tq, 64, hh, m0, b, bar_q);
            for (int j = 0; j < n; ++j) {
                const int st = j % NS, n0 = (nb_first + j) * BN;
                const unsigned use = j / NS, sK = base + FW_TILE * (1 + 2 * st), sV = sK + FW_TILE;
                if (j >= NS) mbar_wait(bar_ke + 8 * st, (use - 1) & 1);
                mbar_expect_tx(bar_kf + 8 * st, FW_TILE);
                fw_tma(sK, &tk, 0, kh, n0, b, bar_kf + 8 * st);
                fw_tma(sK + FW_TILE / 2, &tk, 64, kh, n0, b, bar_kf + 8 * st);
                if (j >= NS) mbar_wait(bar_ve + 8 * st, (use - 1) & 1);
                mbar_expect_tx(bar_vf + 8 * st, FW_TILE);
                fw_tma(sV, &tv, 0, kh, n0, b, bar_vf + 8 * st);
                fw_tma(sV + FW_TILE / 2, &tv, 64, kh, n0, b, bar_vf + 8 * st);
            }
        }
        return;
    }

    // Consumers: warpgroup wg owns rows m0 + 64 wg .. + 63, warp w of it 16 of those.
    asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n" ::: "memory");
    const int wg = warp >> 2, wrow = 64 * wg + 16 * (warp & 3);
    const int r_lo = m0 + 64 * wg, r_hi = r_lo + 63;
    const unsigned sQw = sQ + wg * 64 * 128;
    float oacc[ND * 4], sacc[NN * 4];
#pragma unroll
    for (int i = 0; i < ND * 4; ++i) oacc[i] = 0.0f;
    float mrow[2] = {FA_NEG_INF, FA_NEG_INF}, lrow[2] = {0.0f, 0.0f}, corr[2];
    unsigned pa[BN / 16][4];

    auto s_gemm = [&](int st) {  // sacc = Q K(stage st)^T, issued (not waited for)
        const unsigned sK = base + FW_TILE * (1 + 2 * st);
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            const unsigned off = (kk >> 2) * (FW_TILE / 2) + (kk & 3) * 32;
            wg_ss(sacc, wg_desc(sQw + off, 16, 1024), wg_desc(sK + off, 16, 1024), kk > 0);
        }
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    };
    auto pv_gemm = [&](int st) {  // oacc += P V(stage st), issued
        const unsigned sV = base + FW_TILE * (2 + 2 * st);
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk)
            wg_rs(oacc, pa[kk][0], pa[kk][1], pa[kk][2], pa[kk][3],
                  wg_desc(sV + kk * 16 * 128, (unsigned)v_lbo, (unsigned)v_sbo));
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    };
    // Masks sacc for key tile n0 (only tiles that cross the diagonal, the window's edge or s),
    // then turns it into P = exp2(S scale - m) with the running max m and sum l updated; corr
    // is what O must be multiplied by.
    auto softmax = [&](int n0) {
        const bool full = n0 + BN - 1 <= past + r_lo && n0 + BN <= s &&
                          (window <= 0 || n0 >= past + r_hi + 1 - window);
        if (!full) {
#pragma unroll
            for (int nn = 0; nn < NN; ++nn)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    int i = m0 + wrow + (lane >> 2) + (e >> 1) * 8;
                    int j = n0 + nn * 8 + (lane & 3) * 2 + (e & 1);
                    bool vis = j < s && j <= past + i && (window <= 0 || j > past + i - window);
                    if (!vis) sacc[nn * 4 + e] = FA_NEG_INF;
                }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float mx = FA_NEG_INF;
#pragma unroll
            for (int nn = 0; nn < NN; ++nn) mx = fmaxf(mx, fmaxf(sacc[nn * 4 + 2 * r], sacc[nn * 4 + 2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            float mnew = fmaxf(mrow[r], mx * scale_log2);
            float muse = mnew == FA_NEG_INF ? 0.0f : mnew;
            corr[r] = fa_exp2(mrow[r] - muse);
            float sum = 0.0f;
#pragma unroll
            for (int nn = 0; nn < NN; ++nn)
#pragma unroll
                for (int e = 2 * r; e < 2 * r + 2; ++e) {
                    float p = fa_exp2(sacc[nn * 4 + e] * scale_log2 - muse);
                    sacc[nn * 4 + e] = p;
                    sum += p;
                }
            lrow[r] = lrow[r] * corr[r] + sum;
            mrow[r] = mnew;
        }
    };
    auto pack_p = [&]() {
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
            pa[kk][0] = fa_pack(sacc[(2 * kk) * 4 + 0], sacc[(2 * kk) * 4 + 1]);
            pa[kk][1] = fa_pack(sacc[(2 * kk) * 4 + 2], sacc[(2 * kk) * 4 + 3]);
            pa[kk][2] = fa_pack(sacc[(2 * kk + 1) * 4 + 0], sacc[(2 * kk + 1) * 4 + 1]);
            pa[kk][3] = fa_pack(sacc[(2 * kk + 1) * 4 + 2], sacc[(2 * kk + 1) * 4 + 3]);
        }
    };

    mbar_wait(bar_q, 0);
    mbar_wait(bar_kf, 0);
    s_gemm(0);
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    wg_fence_regs(sacc);
    if (lane == 0) mbar_arrive(bar_ke);
    softmax(nb_first * BN);
    pack_p();
    for (int j = 1; j < n; ++j) {
        const int st = j % NS, ps = (j - 1) % NS;
        mbar_wait(bar_kf + 8 * st, (j / NS) & 1);
        s_gemm(st);
        mbar_wait(bar_vf + 8 * ps, ((j - 1) / NS) & 1);
        pv_gemm(ps);
        asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");  // S(j) is done
        wg_fence_regs(sacc);
        if (lane == 0) mbar_arrive(bar_ke + 8 * st);
        softmax((nb_first + j) * BN);
        // Pins the softmax before the wait: it is plain arithmetic, which the compiler otherwise
        // moved below the (volatile) wait, so the softmax no longer ran under P V (ncu).
        wg_fence_regs(sacc);
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");  // P(j-1) V(j-1) is done
        wg_fence_regs(oacc);
        if (lane == 0) mbar_arrive(bar_ve + 8 * ps);
#pragma unroll
        for (int nd = 0; nd < ND; ++nd) {
            oacc[nd * 4 + 0] *= corr[0];
            oacc[nd * 4 + 1] *= corr[0];
            oacc[nd * 4 + 2] *= corr[1];
            oacc[nd * 4 + 3] *= corr[1];
        }
        pack_p();
    }
    {
        const int ps = (n - 1) % NS;
        mbar_wait(bar_vf + 8 * ps, ((n - 1) / NS) & 1);
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
        pv_gemm(ps);
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
        wg_fence_regs(oacc);
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float l = lrow[r];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        float inv = l > 0.0f ? 1.0f / l : 0.0f;
        int i = m0 + wrow + (lane >> 2) + r * 8;
        if (i < t) {
            bf16_t* orow = o + (((long)b * t + i) * h + hh) * D + (lane & 3) * 2;
#pragma unroll
            for (int nd = 0; nd < ND; ++nd)
                *(unsigned*)(orow + nd * 8) = fa_pack(oacc[nd * 4 + 2 * r] * inv, oacc[nd * 4 + 2 * r + 1] * inv);
            if ((lane & 3) == 0)
                lse[((long)b * h + hh) * t + i] = l > 0.0f ? (mrow[r] + __log2f(l)) * FA_LN2 : FA_NEG_INF;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Backward (FlashAttention-3's layout on wgmma).
//
// flash_bwd_pre_sm90: per query row, lse in log2 units and delta = rowsum(dO ∘ O), interleaved
// into ld[B, H, tpad][2] (rows padded to whole 64-row tiles and left zero, so a tile's 512 bytes
// arrive by one bulk copy); one warp a row.
extern "C" __global__ void flash_bwd_pre_sm90(const bf16_t* o, const bf16_t* d_o, const float* lse, float* ld, int t,
                                              int h, int tpad, long rows) {
    long row = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    int lane = threadIdx.x & 31;
    float acc = fa_row_dot(o + row * 128, d_o + row * 128, 128, lane);
    if (lane == 0) {
        int hh = row % h, i = (row / h) % t;
        long b = row / ((long)h * t), at = ((b * h + hh) * tpad + i) * 2;
        ld[at] = lse[(b * h + hh) * t + i] * FA_LOG2E;
        ld[at + 1] = acc;
    }
}

// dq [B, T, H, 128] bf16 = scale · dq_acc, whose 64 x 64 blocks are in flash_bwd_ws_d128's
// fragment order; one thread per pair of columns.
extern "C" __global__ void flash_bwd_dq_sm90(const float* acc, bf16_t* dq, float scale, int t, int h, int tiles, long pairs) {
    long p = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= pairs) return;
    const int c = (int)(p % 64) * 2, hq = (int)((p / 64) % h);
    const long bi = p / (64 * h);
    const int i = (int)(bi % t), b = (int)(bi / t);
    const int row = i % 64, col = c % 64, half = c / 64;
    const int tw = (row >> 4) * 32 + (row & 7) * 4 + ((col >> 1) & 3);
    const long blk = (((long)b * h + hq) * tiles + i / 64) * 2 + half;
    const float* src = acc + blk * 4096 + (((col >> 3) * 2 + ((row >> 3) & 1)) * 128 + tw) * 2;
    *(unsigned*)(dq + p * 2) = fa_pack(src[0] * scale, src[1] * scale);
}

// d[32] (+)= A B for m64n64k16, A and B from shared memory; TA / TB: the operand is MN-major
// (transposed) rather than K-major.
template <int TA, int TB>
__device__ __forceinline__ void wg_ss64(float* d, unsigned long long da, unsigned long long db, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, %35, %36;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(da), "l"(db), "r"(scale_d), "n"(TA), "n"(TB));
}
__device__ __forceinline__ void wg_fence_regs32(float* d) {
#pragma unroll
    for (int i = 0; i < 32; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// flash_bwd_ws_d128: one CTA per 128 keys of one (batch, kv head), three warpgroups: one thread
// of warpgroup 2 brings K and V once, then, for every (query head of the group, 64-row query
// tile) that sees these keys, Q, dO and the tile's lse/delta by TMA into a 2-stage ring.
// Consumer warpgroup w owns keys 64w .. +63 and keeps their dK, dV (f32, 128 registers) while
// it walks the steps:
//   S^T = K_w Q^T and dP^T = V_w dO^T (issued together), P^T = exp2(S^T scale - lse),
//   dV += P^T dO (issued, P from registers) while dS^T = P^T ∘ (dP^T - delta) is formed,
//   dK += dS^T Q (dS from registers), dS^T to shared memory (bf16, both warpgroups'),
//   dQ[:, 64w .. +63] = dS K[:, 64w ..] over all 128 keys, added to the f32 dQ accumulator.
// dQ = scale · dq_acc (flash_bwd_dq_sm90), dK = scale · Σ dS^T Q. dq_acc holds, per (batch,
// head, 64-row tile, 64-column half), one 64 x 64 block in the consumers' fragment order.
constexpr unsigned FB_KV = 128 * 128 * 2, FB_QT = 64 * 128 * 2, FB_LD = 64 * 8, FB_DS = 128 * 64 * 2,
                   FB_DQ = 64 * 64 * 4;
constexpr unsigned FB_STAGE = 2 * FB_QT + FB_LD;

extern "C" __global__ void __launch_bounds__(384, 1) flash_bwd_ws_d128(
    const __grid_constant__ TmaMap tk, const __grid_constant__ TmaMap tv, const __grid_constant__ TmaMap tq,
    const __grid_constant__ TmaMap tdo, const float* __restrict__ ld, float* __restrict__ dq_acc,
    bf16_t* __restrict__ dk, bf16_t* __restrict__ dv, int t, int s, int h, int hk, int window, int tpad, float scale,
    float scale_log2) {
    constexpr int D = 128, BM = 64, BN = 128, NS = 2;
    extern __shared__ __align__(16) unsigned char fa_sm[];
    const unsigned base = (fa_smem(fa_sm) + 1023u) & ~1023u;
    // K, V [2 halves][128 keys][128 B]; stages of Q, dO [2 halves][64 rows][128 B] and ld
    // [64][2] f32; dS^T [2 buffers][128 keys][64 queries] bf16 (one 128-byte swizzled row a key);
    // dQ blocks.
    const unsigned sK = base, sV = base + FB_KV, sSt = base + 2 * FB_KV;
    const unsigned sDS = sSt + NS * FB_STAGE;
    const unsigned sDQ = sDS + 2 * FB_DS;   // dQ blocks [2 buffers][2 warpgroups][64 x 64] f32
    const unsigned bars = sDQ + 4 * FB_DQ;  // K/V full; stage full; stage empty
    const unsigned bar_kv = bars, bar_f = bars + 8, bar_e = bar_f + 8 * NS;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int nb = blockIdx.y;  // key tile 0 (seen by the most queries) first
    const int kh = blockIdx.x % hk, b = blockIdx.x / hk, rep = h / hk;
    const int n0 = nb * BN, past = s - t;
    const int i_first = max(0, n0 - past);
    const int i_last = window > 0 ? min(t - 1, n0 + BN - 1 + window - 1 - past) : t - 1;
    const int mb_first = i_first / BM;
    const int nmb = i_first <= i_last ? i_last / BM - mb_first + 1 : 0;
    const int steps = rep * nmb;

    if (tid == 0) {
        mbar_init(bar_kv, 1);
        for (int i = 0; i < NS; ++i) {
            mbar_init(bar_f + 8 * i, 1);
            mbar_init(bar_e + 8 * i, 8);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (warp >= 8) {  // producer
        asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
        if (warp == 8 && lane == 0 && steps > 0) {
            mbar_expect_tx(bar_kv, 2 * FB_KV);
            fw_tma(sK, &tk, 0, kh, n0, b, bar_kv);
            fw_tma(sK + FB_KV / 2, &tk, 64, kh, n0, b, bar_kv);
            fw_tma(sV, &tv, 0, kh, n0, b, bar_kv);
            fw_tma(sV + FB_KV / 2, &tv, 64, kh, n0, b, bar_kv);
            for (int j = 0; j < steps; ++j) {
                const int st = j % NS, hq = kh * rep + j / nmb, m0 = (mb_first + j % nmb) * BM;
                const unsigned use = j / NS, sQ = sSt + st * FB_STAGE, sdO = sQ + FB_QT, sLD = sdO + FB_QT;
                if (j >= NS) mbar_wait(bar_e + 8 * st, (use - 1) & 1);
                mbar_expect_tx(bar_f + 8 * st, FB_STAGE);
                fw_tma(sQ, &tq, 0, hq, m0, b, bar_f + 8 * st);
                fw_tma(sQ + FB_QT / 2, &tq, 64, hq, m0, b, bar_f + 8 * st);
                fw_tma(sdO, &tdo, 0, hq, m0, b, bar_f + 8 * st);
                fw_tma(sdO + FB_QT / 2, &tdo, 64, hq, m0, b, bar_f + 8 * st);
                bulk_copy(sLD, ld + (((long)b * h + hq) * tpad + m0) * 2, FB_LD, bar_f + 8 * st);
            }
        }
        return;
    }

    asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n" ::: "memory");
    const int wg = warp >> 2, wi = warp & 3, g = lane >> 2, tq4 = lane & 3;
    const int kw0 = n0 + 64 * wg;  // this warpgroup's first key
    const unsigned sKw = sK + wg * 64 * 128, sVw = sV + wg * 64 * 128;
    float dkacc[64], dvacc[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) dkacc[i] = dvacc[i] = 0.0f;

    if (steps > 0) mbar_wait(bar_kv, 0);
    for (int j = 0; j < steps; ++j) {
        const int st = j % NS, hq = kh * rep + j / nmb, m0 = (mb_first + j % nmb) * BM;
        const unsigned sQ = sSt + st * FB_STAGE, sdO = sQ + FB_QT, sLD = sdO + FB_QT;
        const unsigned sdS = sDS + (j & 1) * FB_DS;
        float sacc[32], pacc[32];
        mbar_wait(bar_f + 8 * st, (j / NS) & 1);
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            const unsigned ok = (kk >> 2) * (FB_KV / 2) + (kk & 3) * 32, oq = (kk >> 2) * (FB_QT / 2) + (kk & 3) * 32;
            wg_ss64<0, 0>(sacc, wg_desc(sKw + ok, 16, 1024), wg_desc(sQ + oq, 16, 1024), kk > 0);
        }
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            const unsigned ok = (kk >> 2) * (FB_KV / 2) + (kk & 3) * 32, oq = (kk >> 2) * (FB_QT / 2) + (kk & 3) * 32;
            wg_ss64<0, 0>(pacc, wg_desc(sVw + ok, 16, 1024), wg_desc(sdO + oq, 16, 1024), kk > 0);
        }
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");  // S^T
        wg_fence_regs32(sacc);

        // P^T: rows are keys kw0 + 16 wi + g (+8), columns queries m0 + 8 nn + 2 tq4 (+1).
        const bool full = m0 + BM <= t && kw0 + 64 <= s && kw0 + 63 <= past + m0 &&
                          (window <= 0 || kw0 >= past + m0 + BM - window);
        // The tile's (lse, delta) of columns c, c + 1 are 16 contiguous bytes: one load each nn
        // here and again for dS (was a 4-byte load per element; keeping delta in registers
        // spilled).
#pragma unroll
        for (int nn = 0; nn < 8; ++nn) {
            float l0, d0, l1, d1;
            asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                         : "=f"(l0), "=f"(d0), "=f"(l1), "=f"(d1)
                         : "r"(sLD + (nn * 8 + 2 * tq4) * 8)
                         : "memory");
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int c = nn * 8 + 2 * tq4 + (e & 1);
                float p = fa_exp2(sacc[nn * 4 + e] * scale_log2 - ((e & 1) ? l1 : l0));
                if (!full && !fa_visible(m0 + c, kw0 + 16 * wi + g + (e >> 1) * 8, t, s, past, window)) p = 0.0f;
                sacc[nn * 4 + e] = p;
            }
        }
        unsigned pp[4][4];
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            pp[kk][0] = fa_pack(sacc[(2 * kk) * 4 + 0], sacc[(2 * kk) * 4 + 1]);
            pp[kk][1] = fa_pack(sacc[(2 * kk) * 4 + 2], sacc[(2 * kk) * 4 + 3]);
            pp[kk][2] = fa_pack(sacc[(2 * kk + 1) * 4 + 0], sacc[(2 * kk + 1) * 4 + 1]);
            pp[kk][3] = fa_pack(sacc[(2 * kk + 1) * 4 + 2], sacc[(2 * kk + 1) * 4 + 3]);
        }
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)  // dV += P^T dO: dO MN-major, 16 query rows a step
            wg_rs(dvacc, pp[kk][0], pp[kk][1], pp[kk][2], pp[kk][3], wg_desc(sdO + kk * 2048, FB_QT / 2, 1024));
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");  // dP^T
        wg_fence_regs32(pacc);

        // dS^T = P^T ∘ (dP^T - delta), to registers (dK's A) and to shared memory (dQ's A).
        unsigned ps[4][4];
#pragma unroll
        for (int nn = 0; nn < 8; ++nn) {
            float l0, d0, l1, d1;
            asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                         : "=f"(l0), "=f"(d0), "=f"(l1), "=f"(d1)
                         : "r"(sLD + (nn * 8 + 2 * tq4) * 8)
                         : "memory");
#pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const unsigned v = fa_pack(sacc[nn * 4 + e] * (pacc[nn * 4 + e] - d0),
                                           sacc[nn * 4 + e + 1] * (pacc[nn * 4 + e + 1] - d1));
                ps[nn >> 1][(nn & 1) * 2 + (e >> 1)] = v;
                const int key = 64 * wg + 16 * wi + g + (e >> 1) * 8;
                asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(sdS + key * 128 + ((nn ^ (key & 7)) << 4) + tq4 * 4),
                             "r"(v)
                             : "memory");
            }
        }
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)  // dK += dS^T Q
            wg_rs(dkacc, ps[kk][0], ps[kk][1], ps[kk][2], ps[kk][3], wg_desc(sQ + kk * 2048, FB_QT / 2, 1024));
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");

        // Both warpgroups' dS^T are in shared memory: dQ[:, 64 wg ..] = dS K[:, 64 wg ..].
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        asm volatile("bar.sync 1, 256;\n" ::: "memory");
        float qacc[32];
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk)
            wg_ss64<1, 1>(qacc, wg_desc(sdS + kk * 2048, FB_DS, 1024), wg_desc(sK + wg * (FB_KV / 2) + kk * 2048, FB_KV / 2, 1024),
                          kk > 0);
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
        wg_fence_regs32(qacc);
        wg_fence_regs(dvacc);
        wg_fence_regs(dkacc);
        if (lane == 0) mbar_arrive(bar_e + 8 * st);
        // dQ's 64 x 64 block goes to shared memory in fragment order (float2 (nn, r) of thread
        // tw at ((nn·2 + r)·128 + tw)·8 bytes: conflict-free), then one bulk reduction adds it
        // to its contiguous block of dq_acc (per-thread red.global stalled the warps on their
        // address registers: ~25% of ncu's samples). Two buffers: the reduction issued at step
        // j − 1 finished reading (its thread waited before the dS barrier) before this write.
        const unsigned sDQw = sDQ + ((j & 1) * 2 + wg) * FB_DQ;
        const int tw = tid & 127;
#pragma unroll
        for (int nn = 0; nn < 8; ++nn)
#pragma unroll
            for (int r = 0; r < 2; ++r)
                asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(sDQw + ((nn * 2 + r) * 128 + tw) * 8),
                             "f"(qacc[nn * 4 + 2 * r]), "f"(qacc[nn * 4 + 2 * r + 1])
                             : "memory");
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        asm volatile("bar.sync %0, 128;\n" ::"r"(2 + wg) : "memory");
        if (tw == 0) {
            float* dst = dq_acc + ((((long)b * h + hq) * (tpad / 64) + m0 / 64) * 2 + wg) * 4096;
            asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst),
                         "r"(sDQw), "n"(FB_DQ)
                         : "memory");
            asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
            asm volatile("cp.async.bulk.wait_group.read 1;\n" ::: "memory");  // step j − 1's is read
        }
    }
    if ((tid & 127) == 0) asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");

    // dK = scale · Σ dS^T Q, dV = Σ P^T dO for keys < s (zeros where no query sees them).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int key = kw0 + 16 * wi + g + 8 * r;
        if (key < s) {
            const long at = (((long)b * s + key) * hk + kh) * D + 2 * tq4;
#pragma unroll
            for (int nd = 0; nd < D / 8; ++nd) {
                *(unsigned*)(dk + at + nd * 8) = fa_pack(dkacc[nd * 4 + 2 * r] * scale, dkacc[nd * 4 + 2 * r + 1] * scale);
                *(unsigned*)(dv + at + nd * 8) = fa_pack(dvacc[nd * 4 + 2 * r], dvacc[nd * 4 + 2 * r + 1]);
            }
        }
    }
}
#endif
