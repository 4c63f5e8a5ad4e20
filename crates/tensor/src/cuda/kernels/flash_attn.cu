// FlashAttention-2 forward and backward on tensor cores (mma.sync m16n8k16 bf16 -> f32,
// ldmatrix, cp.async), for crates/mixers/src/attention_core.rs's semantics: q [B, T, H, D],
// k, v [B, S, Hk, D] with S = past + T, causal (query i sees keys j <= past + i), query head h
// reads key/value head h / (H / Hk), optional sliding window W (keys past + i - W < j).
// o [B, T, H, D] bf16; lse [B, H, T] f32 (natural log of the softmax denominator of the scaled
// scores), saved for the backward.
//
// Shared-memory tiles are row-major with rows padded by 8 elements (16 bytes), so the eight
// row addresses of one ldmatrix fall in eight different bank groups. flash_common.cuh (in front
// of this file) has the helpers shared with flash_sm90.cu.

// 16-byte async copy global -> shared; zero-fills when !pred (src is then not read).
__device__ __forceinline__ void fa_cp16(unsigned dst, const void* src, bool pred) {
    int n = pred ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void fa_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void fa_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void fa_ldsm(unsigned a, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(a));
}
__device__ __forceinline__ void fa_ldsm_t(unsigned a, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(a));
}

// c[16x8] += a[16x16] b[16x8], bf16 operands, f32 accumulators.
__device__ __forceinline__ void fa_mma(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                       unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Rows [row0, row0 + R) of a [*, ld] bf16 matrix (rows >= nrows zero-filled) into a padded
// shared tile [R][D + 8], by NT threads.
template <int R, int D, int NT>
__device__ __forceinline__ void fa_load_tile(bf16_t* sm, const bf16_t* g, long ld, int row0, int nrows, int tid) {
    constexpr int CH = D / 8;  // 16-byte chunks per row
    constexpr int SD = D + 8;
#pragma unroll
    for (int c = tid; c < R * CH; c += NT) {
        int r = c / CH, cc = c % CH;
        bool ok = row0 + r < nrows;
        const bf16_t* src = ok ? g + (long)(row0 + r) * ld + cc * 8 : g;
        fa_cp16(fa_smem(sm + r * SD + cc * 8), src, ok);
    }
}

// ---------------------------------------------------------------------------------------
// Forward. One CTA of NW warps per (query tile of BM rows, head, batch); each warp owns
// MT = BM / (16 NW) m16 row tiles. Key tiles of BN: V(j) loads while S = Q K(j)^T runs, K(j+1)
// while P V(j) runs (FlashAttention-2's schedule with one K and one V buffer).
template <int D, int BM, int BN, int NW>
__device__ __forceinline__ void flash_fwd(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                                          const bf16_t* __restrict__ v, bf16_t* __restrict__ o,
                                          float* __restrict__ lse, int t, int s, int h, int hk, int window,
                                          float scale_log2) {
    constexpr int NT = NW * 32, MT = BM / (16 * NW), SD = D + 8;
    constexpr int NN = BN / 8, ND = D / 8;
    extern __shared__ __align__(16) unsigned char fa_sm[];
    bf16_t* sQ = (bf16_t*)fa_sm;
    bf16_t* sK = sQ + BM * SD;
    bf16_t* sV = sK + BN * SD;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int mb = gridDim.y - 1 - blockIdx.y;  // heaviest (last) query tiles first
    const int hh = blockIdx.x % h, b = blockIdx.x / h, kh = hh / (h / hk);
    const int m0 = mb * BM, past = s - t;
    const long qld = (long)h * D, kld = (long)hk * D;
    const bf16_t* qb = q + ((long)b * t * h + hh) * D;
    const bf16_t* kb = k + ((long)b * s * hk + kh) * D;
    const bf16_t* vb = v + ((long)b * s * hk + kh) * D;

    const int last = min(s - 1, past + m0 + BM - 1);
    const int first = window > 0 ? max(0, past + m0 + 1 - window) : 0;
    const int nb_first = first / BN, nb_last = last / BN;

    fa_load_tile<BM, D, NT>(sQ, qb, qld, m0, t, tid);
    fa_load_tile<BN, D, NT>(sK, kb, kld, nb_first * BN, s, tid);
    fa_commit();

    float oacc[MT][ND][4];
    float mrow[MT][2], lrow[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int nd = 0; nd < ND; ++nd)
#pragma unroll
            for (int e = 0; e < 4; ++e) oacc[mt][nd][e] = 0.0f;
        mrow[mt][0] = mrow[mt][1] = FA_NEG_INF;
        lrow[mt][0] = lrow[mt][1] = 0.0f;
    }
    const int wrow = warp * MT * 16;  // this warp's first row within the tile

    for (int nb = nb_first; nb <= nb_last; ++nb) {
        const int n0 = nb * BN;
        __syncthreads();  // every warp is done with sV of the previous tile
        fa_load_tile<BN, D, NT>(sV, vb, kld, n0, s, tid);
        fa_commit();
        fa_wait<1>();  // Q and K(nb) have landed
        __syncthreads();

        float sacc[MT][NN][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nn = 0; nn < NN; ++nn)
#pragma unroll
                for (int e = 0; e < 4; ++e) sacc[mt][nn][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            unsigned a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
                fa_ldsm(fa_smem(sQ + (wrow + mt * 16 + (lane & 15)) * SD + kk * 16 + (lane >> 4) * 8),
                        a[mt][0], a[mt][1], a[mt][2], a[mt][3]);
#pragma unroll
            for (int np = 0; np < NN / 2; ++np) {
                unsigned b0, b1, b2, b3;
                fa_ldsm(fa_smem(sK + (np * 16 + (lane & 7) + (lane >> 4) * 8) * SD + kk * 16 + ((lane >> 3) & 1) * 8),
                        b0, b1, b2, b3);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    fa_mma(sacc[mt][2 * np], a[mt][0], a[mt][1], a[mt][2], a[mt][3], b0, b1);
                    fa_mma(sacc[mt][2 * np + 1], a[mt][0], a[mt][1], a[mt][2], a[mt][3], b2, b3);
                }
            }
        }
        // Masks only on tiles that cut through the causal diagonal, the window edge or S.
        const bool full = n0 + BN - 1 <= past + m0 && n0 + BN <= s &&
                          (window <= 0 || n0 >= past + m0 + BM - window);
        if (!full) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nn = 0; nn < NN; ++nn)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        int i = m0 + wrow + mt * 16 + (lane >> 2) + (e >> 1) * 8;
                        int j = n0 + nn * 8 + (lane & 3) * 2 + (e & 1);
                        // rows past t are never stored; keep them finite-safe like the rest
                        bool vis = j < s && j <= past + i && (window <= 0 || j > past + i - window);
                        if (!vis) sacc[mt][nn][e] = FA_NEG_INF;
                    }
        }
        __syncthreads();  // every warp is done with sK
        if (nb < nb_last) fa_load_tile<BN, D, NT>(sK, kb, kld, n0 + BN, s, tid);
        fa_commit();

        // Online softmax in the log2 domain.
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                float mx = FA_NEG_INF;
#pragma unroll
                for (int nn = 0; nn < NN; ++nn) mx = fmaxf(mx, fmaxf(sacc[mt][nn][2 * r], sacc[mt][nn][2 * r + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                float mnew = fmaxf(mrow[mt][r], mx * scale_log2);
                float muse = mnew == FA_NEG_INF ? 0.0f : mnew;
                float corr = fa_exp2(mrow[mt][r] - muse);
                float sum = 0.0f;
#pragma unroll
                for (int nn = 0; nn < NN; ++nn)
#pragma unroll
                    for (int e = 2 * r; e < 2 * r + 2; ++e) {
                        float p = fa_exp2(sacc[mt][nn][e] * scale_log2 - muse);
                        sacc[mt][nn][e] = p;
                        sum += p;
                    }
                lrow[mt][r] = lrow[mt][r] * corr + sum;
                mrow[mt][r] = mnew;
#pragma unroll
                for (int nd = 0; nd < ND; ++nd) {
                    oacc[mt][nd][2 * r] *= corr;
                    oacc[mt][nd][2 * r + 1] *= corr;
                }
            }

        fa_wait<1>();  // V(nb) has landed (K(nb+1) may still be in flight)
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
            unsigned a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                a[mt][0] = fa_pack(sacc[mt][2 * kk][0], sacc[mt][2 * kk][1]);
                a[mt][1] = fa_pack(sacc[mt][2 * kk][2], sacc[mt][2 * kk][3]);
                a[mt][2] = fa_pack(sacc[mt][2 * kk + 1][0], sacc[mt][2 * kk + 1][1]);
                a[mt][3] = fa_pack(sacc[mt][2 * kk + 1][2], sacc[mt][2 * kk + 1][3]);
            }
#pragma unroll
            for (int dp = 0; dp < ND / 2; ++dp) {
                unsigned b0, b1, b2, b3;
                fa_ldsm_t(fa_smem(sV + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * SD + dp * 16 + (lane >> 4) * 8),
                          b0, b1, b2, b3);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    fa_mma(oacc[mt][2 * dp], a[mt][0], a[mt][1], a[mt][2], a[mt][3], b0, b1);
                    fa_mma(oacc[mt][2 * dp + 1], a[mt][0], a[mt][1], a[mt][2], a[mt][3], b2, b3);
                }
            }
        }
    }
    fa_wait<0>();

    // Epilogue: normalise, store o (bf16) and lse.
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float l = lrow[mt][r];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            float inv = l > 0.0f ? 1.0f / l : 0.0f;
            int i = m0 + wrow + mt * 16 + (lane >> 2) + r * 8;
            if (i < t) {
                bf16_t* orow = o + (((long)b * t + i) * h + hh) * D + (lane & 3) * 2;
#pragma unroll
                for (int nd = 0; nd < ND; ++nd)
                    *(unsigned*)(orow + nd * 8) = fa_pack(oacc[mt][nd][2 * r] * inv, oacc[mt][nd][2 * r + 1] * inv);
                if ((lane & 3) == 0)
                    lse[((long)b * h + hh) * t + i] = l > 0.0f ? (mrow[mt][r] + __log2f(l)) * FA_LN2 : FA_NEG_INF;
            }
        }
}

#define FA_FWD(NAME, D, BM, BN, NW)                                                                  \
    extern "C" __global__ void __launch_bounds__(NW * 32) NAME(                                      \
        const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* o, float* lse, int t, int s, int h, \
        int hk, int window, float scale_log2) {                                                      \
        flash_fwd<D, BM, BN, NW>(q, k, v, o, lse, t, s, h, hk, window, scale_log2);                  \
    }
FA_FWD(flash_fwd_d64_m64n64w4, 64, 64, 64, 4)
FA_FWD(flash_fwd_d64_m128n64w4, 64, 128, 64, 4)
FA_FWD(flash_fwd_d64_m128n64w8, 64, 128, 64, 8)
FA_FWD(flash_fwd_d128_m64n64w4, 128, 64, 64, 4)
FA_FWD(flash_fwd_d128_m128n64w4, 128, 128, 64, 4)
FA_FWD(flash_fwd_d128_m128n64w8, 128, 128, 64, 8)
FA_FWD(flash_fwd_d128_m128n32w4, 128, 128, 32, 4)

// ---------------------------------------------------------------------------------------
// Backward, FlashAttention-2 style.
//
// Pre-pass: delta[b, h, i] = rowsum(dO ∘ O); one warp per row.
extern "C" __global__ void flash_bwd_pre(const bf16_t* o, const bf16_t* d_o, float* delta, int t, int h, int d,
                                         long rows) {
    long row = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    int lane = threadIdx.x & 31;
    float acc = fa_row_dot(o + row * d, d_o + row * d, d, lane);
    if (lane == 0) {
        int hh = row % h, i = (row / h) % t;
        long b = row / ((long)h * t);
        delta[(b * h + hh) * t + i] = acc;
    }
}

// dq (bf16) = scale · dq_acc (f32), n elements.
extern "C" __global__ void flash_bwd_dq(const float* acc, bf16_t* dq, float scale, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dq[i] = f32_to_bf16(acc[i] * scale);
}

// Main pass. One CTA of NW warps per (key tile of BN = 16 NW keys, kv head, batch); warp w owns
// keys n0 + 16w .. +15 and keeps their dK, dV in registers while the CTA walks the query heads
// of its group and, for each, the query tiles of BM rows that see any of its keys:
//   S^T = K Q^T, P^T = exp(S^T scale - lse), dP^T = V dO^T, dS^T = P^T ∘ (dP^T - delta),
//   dV += P^T dO, dK += dS^T Q, dQ += dS K (dS^T through shared memory; the warps split dQ's
//   BM x D tile and add it to the f32 accumulator with 16-byte reductions).
// Q, dO, lse and delta tiles are double-buffered: the next tile loads while this one computes.
template <int D, int BM, int BN, int NW>
__device__ __forceinline__ void flash_bwd(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                                          const bf16_t* __restrict__ v, const bf16_t* __restrict__ d_o,
                                          const float* __restrict__ lse, const float* __restrict__ delta,
                                          float* __restrict__ dq_acc, bf16_t* __restrict__ dk,
                                          bf16_t* __restrict__ dv, int t, int s, int h, int hk, int window,
                                          float scale, float scale_log2) {
    constexpr int NT = NW * 32, SD = D + 8, SB = BM + 8;
    constexpr int NQ = BM / 8, ND = D / 8;
    constexpr int QW = BM / 16;       // query m16 tiles of the dQ phase
    constexpr int DW = NW / QW;       // warps sharing one of them, each D / DW columns
    constexpr int NDW = ND / DW;      // n8 tiles of dQ per warp
    static_assert(BN == 16 * NW && NW % QW == 0 && NDW % 2 == 0, "tile shapes");
    extern __shared__ __align__(16) unsigned char fa_sm[];
    bf16_t* sK = (bf16_t*)fa_sm;
    bf16_t* sV = sK + BN * SD;
    bf16_t* sQ0 = sV + BN * SD;      // [2][BM][SD]
    bf16_t* sdO0 = sQ0 + 2 * BM * SD;  // [2][BM][SD]
    bf16_t* sdS = sdO0 + 2 * BM * SD;  // [BN keys][BM queries + 8]
    float* sL0 = (float*)(sdS + BN * SB);  // [2][BM]
    float* sDi0 = sL0 + 2 * BM;            // [2][BM]
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int nb = gridDim.y - 1 - blockIdx.y;
    const int kh = blockIdx.x % hk, b = blockIdx.x / hk, rep = h / hk;
    const int n0 = nb * BN, past = s - t;
    const long qld = (long)h * D, kld = (long)hk * D;
    const bf16_t* kb = k + ((long)b * s * hk + kh) * D;
    const bf16_t* vb = v + ((long)b * s * hk + kh) * D;

    // Query rows that see any key of this tile; the (head, query tile) steps of the CTA.
    const int i_first = max(0, n0 - past);
    const int i_last = window > 0 ? min(t - 1, n0 + BN - 1 + window - 1 - past) : t - 1;
    const int mb_first = i_first / BM;
    const int nmb = i_first <= i_last ? i_last / BM - mb_first + 1 : 0;
    const int steps = rep * nmb;

    auto load_step = [&](int step, int buf) {
        const int hq = kh * rep + step / nmb, m0 = (mb_first + step % nmb) * BM;
        fa_load_tile<BM, D, NT>(sQ0 + buf * BM * SD, q + ((long)b * t * h + hq) * D, qld, m0, t, tid);
        fa_load_tile<BM, D, NT>(sdO0 + buf * BM * SD, d_o + ((long)b * t * h + hq) * D, qld, m0, t, tid);
        const float* lb = lse + ((long)b * h + hq) * t;
        const float* db = delta + ((long)b * h + hq) * t;
        for (int c = tid; c < 2 * BM; c += NT) {
            int r = c % BM;
            bool ok = m0 + r < t;
            const float* src = c < BM ? lb : db;
            float* dst = (c < BM ? sL0 : sDi0) + buf * BM + r;
            asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(fa_smem(dst)),
                         "l"(ok ? src + m0 + r : src), "r"(ok ? 4 : 0));
        }
    };

    fa_load_tile<BN, D, NT>(sK, kb, kld, n0, s, tid);
    fa_load_tile<BN, D, NT>(sV, vb, kld, n0, s, tid);
    if (steps > 0) load_step(0, 0);
    fa_commit();

    float dkacc[ND][4], dvacc[ND][4];
#pragma unroll
    for (int nd = 0; nd < ND; ++nd)
#pragma unroll
        for (int e = 0; e < 4; ++e) dkacc[nd][e] = dvacc[nd][e] = 0.0f;
    const int wk = warp * 16;  // this warp's keys within the tile

    for (int step = 0; step < steps; ++step) {
        const int buf = step & 1;
        const int hq = kh * rep + step / nmb, m0 = (mb_first + step % nmb) * BM;
        // The other buffer was last read before the previous step's middle barrier.
        if (step + 1 < steps) load_step(step + 1, buf ^ 1);
        fa_commit();
        fa_wait<1>();
        __syncthreads();
        const bf16_t* sQ = sQ0 + buf * BM * SD;
        const bf16_t* sdO = sdO0 + buf * BM * SD;
        const float* sL = sL0 + buf * BM;
        const float* sDi = sDi0 + buf * BM;

        // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys x BM queries.
        float sacc[NQ][4], pacc[NQ][4];
#pragma unroll
        for (int nq = 0; nq < NQ; ++nq)
#pragma unroll
            for (int e = 0; e < 4; ++e) sacc[nq][e] = pacc[nq][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            unsigned a0, a1, a2, a3, c0, c1, c2, c3;
            fa_ldsm(fa_smem(sK + (wk + (lane & 15)) * SD + kk * 16 + (lane >> 4) * 8), a0, a1, a2, a3);
            fa_ldsm(fa_smem(sV + (wk + (lane & 15)) * SD + kk * 16 + (lane >> 4) * 8), c0, c1, c2, c3);
#pragma unroll
            for (int qp = 0; qp < NQ / 2; ++qp) {
                unsigned b0, b1, b2, b3;
                int off = (qp * 16 + (lane & 7) + (lane >> 4) * 8) * SD + kk * 16 + ((lane >> 3) & 1) * 8;
                fa_ldsm(fa_smem(sQ + off), b0, b1, b2, b3);
                fa_mma(sacc[2 * qp], a0, a1, a2, a3, b0, b1);
                fa_mma(sacc[2 * qp + 1], a0, a1, a2, a3, b2, b3);
                fa_ldsm(fa_smem(sdO + off), b0, b1, b2, b3);
                fa_mma(pacc[2 * qp], c0, c1, c2, c3, b0, b1);
                fa_mma(pacc[2 * qp + 1], c0, c1, c2, c3, b2, b3);
            }
        }
        // P^T and dS^T (unscaled; dK and dQ take `scale` at the end).
        const bool full = m0 + BM <= t && n0 + BN <= s && n0 + BN - 1 <= past + m0 &&
                          (window <= 0 || n0 >= past + m0 + BM - window);
#pragma unroll
        for (int nq = 0; nq < NQ; ++nq)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int il = nq * 8 + (lane & 3) * 2 + (e & 1);
                int j = n0 + wk + (lane >> 2) + (e >> 1) * 8;
                float p = fa_exp2(sacc[nq][e] * scale_log2 - sL[il] * FA_LOG2E);
                if (!full && !fa_visible(m0 + il, j, t, s, past, window)) p = 0.0f;
                sacc[nq][e] = p;
                pacc[nq][e] = p * (pacc[nq][e] - sDi[il]);
            }
        // dV += P^T dO, dK += dS^T Q (A operands straight from the accumulators).
#pragma unroll
        for (int kk = 0; kk < BM / 16; ++kk) {
            unsigned p0 = fa_pack(sacc[2 * kk][0], sacc[2 * kk][1]);
            unsigned p1 = fa_pack(sacc[2 * kk][2], sacc[2 * kk][3]);
            unsigned p2 = fa_pack(sacc[2 * kk + 1][0], sacc[2 * kk + 1][1]);
            unsigned p3 = fa_pack(sacc[2 * kk + 1][2], sacc[2 * kk + 1][3]);
            unsigned g0 = fa_pack(pacc[2 * kk][0], pacc[2 * kk][1]);
            unsigned g1 = fa_pack(pacc[2 * kk][2], pacc[2 * kk][3]);
            unsigned g2 = fa_pack(pacc[2 * kk + 1][0], pacc[2 * kk + 1][1]);
            unsigned g3 = fa_pack(pacc[2 * kk + 1][2], pacc[2 * kk + 1][3]);
            // dS^T to shared for the dQ phase: rows = keys, cols = queries.
            int kr = wk + (lane >> 2), qc = kk * 16 + (lane & 3) * 2;
            *(unsigned*)(sdS + kr * SB + qc) = g0;
            *(unsigned*)(sdS + (kr + 8) * SB + qc) = g1;
            *(unsigned*)(sdS + kr * SB + qc + 8) = g2;
            *(unsigned*)(sdS + (kr + 8) * SB + qc + 8) = g3;
#pragma unroll
            for (int dp = 0; dp < ND / 2; ++dp) {
                unsigned b0, b1, b2, b3;
                int off = (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * SD + dp * 16 + (lane >> 4) * 8;
                fa_ldsm_t(fa_smem(sdO + off), b0, b1, b2, b3);
                fa_mma(dvacc[2 * dp], p0, p1, p2, p3, b0, b1);
                fa_mma(dvacc[2 * dp + 1], p0, p1, p2, p3, b2, b3);
                fa_ldsm_t(fa_smem(sQ + off), b0, b1, b2, b3);
                fa_mma(dkacc[2 * dp], g0, g1, g2, g3, b0, b1);
                fa_mma(dkacc[2 * dp + 1], g0, g1, g2, g3, b2, b3);
            }
        }
        __syncthreads();  // dS^T complete; this step's Q and dO buffers are free

        // dQ[BM x D] += dS K: warp w takes query tile w % QW, columns (w / QW) · D / DW.
        const int qt = warp % QW, dc = (warp / QW) * (D / DW);
        float qacc[NDW][4];
#pragma unroll
        for (int nd = 0; nd < NDW; ++nd)
#pragma unroll
            for (int e = 0; e < 4; ++e) qacc[nd][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
            unsigned a0, a1, a2, a3;
            fa_ldsm_t(fa_smem(sdS + (kk * 16 + (lane & 7) + ((lane >> 4) & 1) * 8) * SB + qt * 16 + ((lane >> 3) & 1) * 8),
                      a0, a1, a2, a3);
#pragma unroll
            for (int dp = 0; dp < NDW / 2; ++dp) {
                unsigned b0, b1, b2, b3;
                fa_ldsm_t(fa_smem(sK + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * SD + dc + dp * 16 + (lane >> 4) * 8),
                          b0, b1, b2, b3);
                fa_mma(qacc[2 * dp], a0, a1, a2, a3, b0, b1);
                fa_mma(qacc[2 * dp + 1], a0, a1, a2, a3, b2, b3);
            }
        }
        // 16-byte reductions: even lanes of a pair add 4 columns of row r, odd lanes of row r + 8.
        const bool odd = lane & 1;
        const int i = m0 + qt * 16 + (lane >> 2) + (odd ? 8 : 0);
        float* dst = dq_acc + (((long)b * t + i) * h + hq) * D + dc + ((lane & 3) >> 1) * 4;
#pragma unroll
        for (int nd = 0; nd < NDW; ++nd) {
            float x = odd ? qacc[nd][0] : qacc[nd][2];
            float y = odd ? qacc[nd][1] : qacc[nd][3];
            float rx = __shfl_xor_sync(0xffffffffu, x, 1), ry = __shfl_xor_sync(0xffffffffu, y, 1);
            float w0 = odd ? rx : qacc[nd][0], w1 = odd ? ry : qacc[nd][1];
            float w2 = odd ? qacc[nd][2] : rx, w3 = odd ? qacc[nd][3] : ry;
            if (i < t) {
#if __CUDA_ARCH__ >= 900
                asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(dst + nd * 8), "f"(w0),
                             "f"(w1), "f"(w2), "f"(w3)
                             : "memory");
#else
                // Vector reductions are sm_90+; older GPUs (the mma.sync path's) add one by one.
                atomicAdd(dst + nd * 8, w0);
                atomicAdd(dst + nd * 8 + 1, w1);
                atomicAdd(dst + nd * 8 + 2, w2);
                atomicAdd(dst + nd * 8 + 3, w3);
#endif
            }
        }
    }
    fa_wait<0>();

    // dK = scale · Σ dS^T Q, dV = Σ P^T dO, for keys < s (zero for keys no query sees).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        int j = n0 + wk + (lane >> 2) + r * 8;
        if (j < s) {
            long at = (((long)b * s + j) * hk + kh) * D + (lane & 3) * 2;
#pragma unroll
            for (int nd = 0; nd < ND; ++nd) {
                *(unsigned*)(dk + at + nd * 8) = fa_pack(dkacc[nd][2 * r] * scale, dkacc[nd][2 * r + 1] * scale);
                *(unsigned*)(dv + at + nd * 8) = fa_pack(dvacc[nd][2 * r], dvacc[nd][2 * r + 1]);
            }
        }
    }
}

#define FA_BWD(NAME, D, BM, BN, NW)                                                                      \
    extern "C" __global__ void __launch_bounds__(NW * 32) NAME(                                          \
        const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* d_o, const float* lse,          \
        const float* delta, float* dq_acc, bf16_t* dk, bf16_t* dv, int t, int s, int h, int hk, int window, \
        float scale, float scale_log2) {                                                                 \
        flash_bwd<D, BM, BN, NW>(q, k, v, d_o, lse, delta, dq_acc, dk, dv, t, s, h, hk, window, scale,    \
                                 scale_log2);                                                            \
    }
FA_BWD(flash_bwd_d64_m64n64w4, 64, 64, 64, 4)
FA_BWD(flash_bwd_d64_m64n128w8, 64, 64, 128, 8)
FA_BWD(flash_bwd_d128_m64n64w4, 128, 64, 64, 4)
FA_BWD(flash_bwd_d128_m64n128w8, 128, 64, 128, 8)
