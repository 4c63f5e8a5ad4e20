// Backward pass of the chunked GDN / KDA / GLA recurrence (kernels/chunk_linear.cu is the
// forward; mixers::linear_core::backward is the specification). Per chunk c of 64 tokens with
// entry state S_c, exit-state gradient dS (w.r.t. S_{c+1}) and output gradient dO:
//
//   forward:  v' = U − W S_c;  o = QG S_c + AQK v';  S_{c+1} = EL ⊙ S_c + KT v'
//
// 1. lbwd_state: sequential in reverse over chunks, parallel over (sequence, value head, 16
//    value columns), on tensor cores, on the forward's per-chunk operands (chunk_prep's W, QG,
//    KT, AQK, EL):
//      dV' = AQKᵀ dO + KTᵀ dS;  dS_c = QGᵀ dO + EL ⊙ dS − Wᵀ dV'
//    It saves every chunk's dS (f32 [B,HV,NC,K,V]) and dV' (f32 [B,T,HV,V]); the carried
//    value at the end is dh0.
// 2. lbwd_chunk: every (sequence, value head, chunk) at once, all f32. With bk = β e^γ ⊙ K,
//    R = βV − bk S_c and T = (I + M)⁻¹ (so V' = T R), over value tiles of 16 columns:
//      Z = Tᵀ dV' (= d(βV));  dQG += dO S_cᵀ;  dKd += V' dSᵀ;  dbk −= Z S_cᵀ;
//      dA += dO V'ᵀ (j ≤ i);  dM −= Z V'ᵀ (j < i);  dEL += Σ_v dS ⊙ S_c
//    (dM = −Tᵀ dT Tᵀ with dT = dV' Rᵀ folds to −Z V'ᵀ.) Then through QG = scale e^γ ⊙ Q,
//    Kd = e^{γ_last − γ} ⊙ K, EL = e^{γ_last}, bk, AQK_ij = scale Σ_c q_ic k_jc e^{γ_ic−γ_jc},
//    M_ij = β_i Σ_c k_ic k_jc e^{γ_ic−γ_jc} to dq, dk, dβ and dγ; dg is the reverse cumulative
//    sum of dγ inside the chunk (γ_t = Σ_{s≤t} g_s), summed over channels for GDN.
//    The value-tile products run in f32 FMA loops (use_mma = 0, the default) or on tensor cores
//    with bf16 operands (use_mma = 1: faster, but GDN's dg loses accuracy: see the launcher).
// Padded tokens (past T) have q = k = v = 0 and g = 0, so γ_63 = γ_last of a ragged chunk.
// lbwd_state_f32 is the plain-FMA form of lbwd_state, kept as a cross-check.
#define BCH 64   // tokens per chunk (CH of the forward)
#define BPAD 8  // shared-memory row padding (as PrepBlocks' global-memory rows)
#define BVT 16   // value columns per tile
#define LV 17    // padded row length of value tiles

// ---------------------------------------------------------------------------------------------
// Kernel 1, plain f32 form (lbwd_state_f32). Grid (vd / 16, B*HV), 256 threads.
template <int KP>
__device__ void lbwd_state_f32(const bf16_t* __restrict__ W, const bf16_t* __restrict__ QG,
                           const bf16_t* __restrict__ KT, const bf16_t* __restrict__ AQK,
                           const float* __restrict__ EL, const bf16_t* __restrict__ dO,
                           const float* __restrict__ dht, float* DS, float* DVP, float* dh0,
                           int T, int HV, int kd, int vd, int delta, int has_dht) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    constexpr int LQ = KP + 1, LC = BCH + 1;
    using PB = PrepBlocks<KP>;  // the prep's block layout
    float* aqk = (float*)smem_raw;   // [64][65]
    float* kt = aqk + BCH * LC;      // [KP][65]
    float* qg = kt + KP * LC;        // [64][KP+1]
    float* w = qg + BCH * LQ;        // [64][KP+1]
    float* el = w + BCH * LQ;        // [KP]
    float* sdo = el + KP;            // [64][17]
    float* sdv = sdo + BCH * LV;     // [64][17]
    float* sds = sdv + BCH * LV;     // [KP][17]

    const int bh = blockIdx.y, b = bh / HV, hv = bh % HV, v0 = blockIdx.x * BVT;
    const int tid = threadIdx.x;
    const int nc = (T + BCH - 1) / BCH;
    for (int i = tid; i < KP * BVT; i += blockDim.x) {
        int r = i / BVT, cc = i % BVT;
        sds[r * LV + cc] = (has_dht && r < kd) ? dht[((long)bh * kd + r) * vd + v0 + cc] : 0.f;
    }
    __syncthreads();
    for (int c = nc - 1; c >= 0; --c) {
        const long blk = (long)bh * nc + c;
        const int t0 = c * BCH, n = min(BCH, T - t0);
        // Save the exit-state gradient of chunk c.
        for (int i = tid; i < KP * BVT; i += blockDim.x) {
            int r = i / BVT, cc = i % BVT;
            if (r < kd) DS[(blk * kd + r) * vd + v0 + cc] = sds[r * LV + cc];
        }
        for (int i = tid; i < BCH * BCH; i += blockDim.x) {
            int r = i / BCH, cc = i % BCH;
            aqk[r * LC + cc] = (cc <= r) ? bf16_to_f32(AQK[blk * PB::AQK + r * PB::LDC + cc]) : 0.f;
        }
        for (int i = tid; i < KP * BCH; i += blockDim.x) {
            int r = i / BCH, cc = i % BCH;
            kt[r * LC + cc] = bf16_to_f32(KT[blk * PB::KT + r * PB::LDC + cc]);
        }
        for (int i = tid; i < BCH * KP; i += blockDim.x) {
            int r = i / KP, cc = i % KP;
            qg[r * LQ + cc] = bf16_to_f32(QG[blk * PB::QG + r * PB::LDK + cc]);
            w[r * LQ + cc] = delta ? bf16_to_f32(W[blk * PB::W + r * PB::LDK + cc]) : 0.f;
        }
        for (int i = tid; i < KP; i += blockDim.x) el[i] = EL[blk * KP + i];
        for (int i = tid; i < BCH * BVT; i += blockDim.x) {
            int r = i / BVT, cc = i % BVT;
            sdo[r * LV + cc] = (r < n) ? bf16_to_f32(dO[(((long)b * T + t0 + r) * HV + hv) * vd + v0 + cc]) : 0.f;
        }
        __syncthreads();
        // dV' = AQKᵀ dO + KTᵀ dS (rows past n are zero: their AQK and KT columns are).
        for (int o = tid; o < BCH * BVT; o += blockDim.x) {
            int i = o / BVT, cc = o % BVT;
            float acc = 0.f;
            for (int j = i; j < BCH; ++j) acc += aqk[j * LC + i] * sdo[j * LV + cc];
            for (int r = 0; r < KP; ++r) acc += kt[r * LC + i] * sds[r * LV + cc];
            sdv[i * LV + cc] = acc;
            if (i < n) DVP[(((long)b * T + t0 + i) * HV + hv) * vd + v0 + cc] = acc;
        }
        __syncthreads();
        // dS ← QGᵀ dO + EL ⊙ dS − Wᵀ dV'.
        float nv[KP * BVT / 256];
#pragma unroll
        for (int u = 0; u < KP * BVT / 256; ++u) {
            int o = tid + u * 256, r = o / BVT, cc = o % BVT;
            float acc = el[r] * sds[r * LV + cc];
            for (int i = 0; i < BCH; ++i) acc += qg[i * LQ + r] * sdo[i * LV + cc];
            if (delta)
                for (int i = 0; i < BCH; ++i) acc -= w[i * LQ + r] * sdv[i * LV + cc];
            nv[u] = acc;
        }
        __syncthreads();
#pragma unroll
        for (int u = 0; u < KP * BVT / 256; ++u) {
            int o = tid + u * 256, r = o / BVT, cc = o % BVT;
            sds[r * LV + cc] = nv[u];
        }
        __syncthreads();
    }
    for (int i = tid; i < KP * BVT; i += blockDim.x) {
        int r = i / BVT, cc = i % BVT;
        if (r < kd) dh0[((long)bh * kd + r) * vd + v0 + cc] = sds[r * LV + cc];
    }
}

// ---------------------------------------------------------------------------------------------
// Kernel 1 on tensor cores (the default). Grid (vd / (8·NB), B*HV), BST = 128 threads (4 warps);
// the mirror of the forward's chunk_state. The dS tile [KP, 8·NB] lives in f32 mma accumulators
// (warp w owns rows [w·KP/4, (w+1)·KP/4)); warp w computes dV' for tokens 16w..16w+15. Every
// product reads a transposed operand (AQKᵀ, KTᵀ, QGᵀ, Wᵀ), gathered by 16-bit fragment loads;
// the next chunk's operands stream in by cp.async while this one computes.
#define BST 128

__device__ __forceinline__ unsigned bpack16(bf16_t lo, bf16_t hi) {
    return (unsigned)lo | ((unsigned)hi << 16);
}
// A fragment (16x16 at (r0, k0)) of A = Xᵀ, X stored row-major [k][m].
__device__ __forceinline__ void bfrag_a_t(unsigned a[4], const bf16_t* x, int ld, int r0, int k0) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const bf16_t* p = x + (k0 + 2 * t) * ld + r0 + g;
    a[0] = bpack16(p[0], p[ld]);
    a[1] = bpack16(p[8], p[ld + 8]);
    a[2] = bpack16(p[8 * ld], p[9 * ld]);
    a[3] = bpack16(p[8 * ld + 8], p[9 * ld + 8]);
}
// B fragment (16(k) x 8(n) at (k0, n0)) of B stored row-major [k][n].
__device__ __forceinline__ void bfrag_b_t(unsigned b[2], const bf16_t* x, int ld, int n0, int k0) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const bf16_t* p = x + (k0 + 2 * t) * ld + n0 + g;
    b[0] = bpack16(p[0], p[ld]);
    b[1] = bpack16(p[8 * ld], p[9 * ld]);
}
// A fragment of A stored row-major [m][k] (k contiguous).
__device__ __forceinline__ void bfrag_a(unsigned a[4], const bf16_t* s, int ld, int r0, int k0) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const bf16_t* p = s + (r0 + g) * ld + k0 + 2 * t;
    a[0] = *(const unsigned*)p;
    a[1] = *(const unsigned*)(p + 8 * ld);
    a[2] = *(const unsigned*)(p + 8);
    a[3] = *(const unsigned*)(p + 8 * ld + 8);
}
// B fragment of B stored [n][k] (k contiguous).
__device__ __forceinline__ void bfrag_b(unsigned b[2], const bf16_t* s, int ld, int n0, int k0) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const bf16_t* p = s + (n0 + g) * ld + k0 + 2 * t;
    b[0] = *(const unsigned*)p;
    b[1] = *(const unsigned*)(p + 8);
}
__device__ __forceinline__ void bcp_async16(void* dst, const void* src) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(a), "l"(src));
}
__device__ __forceinline__ void bcp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void bcp_wait_1() { asm volatile("cp.async.wait_group 1;\n" ::); }
__device__ __forceinline__ void bcp_wait_0() { asm volatile("cp.async.wait_group 0;\n" ::); }

template <int KP, int NB>
struct BStage {
    bf16_t w[BCH][KP + BPAD], qg[BCH][KP + BPAD], kt[KP][BCH + BPAD], aqk[BCH][BCH + BPAD];
    bf16_t dO[BCH][8 * NB + BPAD];
    float el[KP];
};

template <int ROWS, int COLS, int LDD>
__device__ __forceinline__ void bcopy_rows(bf16_t* dst, const bf16_t* src, int ld_src) {
    constexpr int PR = COLS / 8, PIECES = ROWS * PR;
#pragma unroll
    for (int u = 0; u < (PIECES + BST - 1) / BST; ++u) {
        int i = threadIdx.x + u * BST;
        if (PIECES % BST == 0 || i < PIECES)
            bcp_async16(dst + (i / PR) * LDD + (i % PR) * 8, src + (long)(i / PR) * ld_src + (i % PR) * 8);
    }
}

template <int KP, int NB>
__device__ __forceinline__ void bstage_load(BStage<KP, NB>* st, const bf16_t* W, const bf16_t* QG,
                                            const bf16_t* KT, const bf16_t* AQK, const float* EL,
                                            const bf16_t* dO, long blk, int b, int hv, int HV,
                                            int T, int c, int vd, int v0, int delta) {
    using PB = PrepBlocks<KP>;
    if (delta) bcopy_rows<BCH, KP, KP + BPAD>(&st->w[0][0], W + blk * PB::W, PB::LDK);
    bcopy_rows<BCH, KP, KP + BPAD>(&st->qg[0][0], QG + blk * PB::QG, PB::LDK);
    bcopy_rows<KP, BCH, BCH + BPAD>(&st->kt[0][0], KT + blk * PB::KT, PB::LDC);
    bcopy_rows<BCH, BCH, BCH + BPAD>(&st->aqk[0][0], AQK + blk * PB::AQK, PB::LDC);
    if (threadIdx.x < KP / 4) bcp_async16(&st->el[threadIdx.x * 4], EL + blk * KP + threadIdx.x * 4);
    const int t0 = c * BCH, n = min(BCH, T - t0);
    for (int i = threadIdx.x; i < BCH * NB; i += BST) {
        int r = i / NB, p = (i % NB) * 8;
        bf16_t* d = &st->dO[r][p];
        if (r < n) bcp_async16(d, dO + (((long)b * T + t0 + r) * HV + hv) * vd + v0 + p);
        else *(uint4*)d = make_uint4(0, 0, 0, 0);
    }
}

template <int KP, int NB>
__device__ void lbwd_state(const bf16_t* __restrict__ W, const bf16_t* __restrict__ QG,
                           const bf16_t* __restrict__ KT, const bf16_t* __restrict__ AQK,
                           const float* __restrict__ EL, const bf16_t* __restrict__ dO,
                           const float* __restrict__ dht, float* DS, float* DVP, float* dh0,
                           int T, int HV, int kd, int vd, int delta, int has_dht) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    constexpr int BV = 8 * NB, LDS = KP + BPAD, LDC = BCH + BPAD, LDO = BV + BPAD;
    BStage<KP, NB>* stages = (BStage<KP, NB>*)smem_raw;
    bf16_t* sT = (bf16_t*)(stages + 2);  // [BV][LDS]: dSᵀ, the B operand of KTᵀ dS
    bf16_t* vT = sT + BV * LDS;          // [BV][LDC]: −dV'ᵀ, the B operand of Wᵀ dV'
    const int bh = blockIdx.y, b = bh / HV, hv = bh % HV, v0 = blockIdx.x * BV;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, gq = lane >> 2, tq = lane & 3;
    const int nc = (T + BCH - 1) / BCH;
    constexpr int MT = KP / 64;
    const int srow0 = warp * (KP / 4), r0 = warp * 16;

    float s[MT][NB][4];
    acc_tile_load<MT, NB>(s, dht + (long)bh * kd * vd, vd, srow0, v0, kd, vd, has_dht);
    bstage_load<KP, NB>(&stages[0], W, QG, KT, AQK, EL, dO, (long)bh * nc + nc - 1, b, hv, HV, T,
                        nc - 1, vd, v0, delta);
    bcp_commit();
    for (int it = 0; it < nc; ++it) {
        const int c = nc - 1 - it;
        const long blk = (long)bh * nc + c;
        BStage<KP, NB>* st = &stages[it & 1];
        // The exit-state gradient of chunk c, then dSᵀ in bf16.
        acc_tile_store<MT, NB>(s, DS + blk * kd * vd, vd, srow0, v0, kd, vd);
        acc_tile_store_bf16_t<MT, NB>(s, sT, LDS, srow0);
        __syncthreads();  // every warp is done with the other stage and with vT
        if (it + 1 < nc)
            bstage_load<KP, NB>(&stages[(it + 1) & 1], W, QG, KT, AQK, EL, dO, blk - 1, b, hv, HV,
                                T, c - 1, vd, v0, delta);
        bcp_commit();
        bcp_wait_1();
        __syncthreads();

        // dV' = AQKᵀ dO + KTᵀ dS for tokens 16·warp.. (AQK_ji = 0 for j < i).
        float vacc[NB][4];
#pragma unroll
        for (int nt = 0; nt < NB; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) vacc[nt][e] = 0.f;
#pragma unroll
        for (int ks = 0; ks < BCH / 16; ++ks) {
            if (ks < warp) continue;
            unsigned a[4], bb[2];
            bfrag_a_t(a, &st->aqk[0][0], LDC, r0, ks * 16);
#pragma unroll
            for (int nt = 0; nt < NB; ++nt) {
                bfrag_b_t(bb, &st->dO[0][0], LDO, nt * 8, ks * 16);
                mma_bf16(vacc[nt], a, bb);
            }
        }
#pragma unroll
        for (int ks = 0; ks < KP / 16; ++ks) {
            unsigned a[4], bb[2];
            bfrag_a_t(a, &st->kt[0][0], LDC, r0, ks * 16);
#pragma unroll
            for (int nt = 0; nt < NB; ++nt) {
                bfrag_b(bb, sT, LDS, nt * 8, ks * 16);
                mma_bf16(vacc[nt], a, bb);
            }
        }
        const int t0 = c * BCH;
#pragma unroll
        for (int nt = 0; nt < NB; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int r = r0 + gq + (e >> 1) * 8, col = nt * 8 + 2 * tq + (e & 1);
                vT[col * LDC + r] = to_bf16(-vacc[nt][e]);
                if (t0 + r < T) DVP[(((long)b * T + t0 + r) * HV + hv) * vd + v0 + col] = vacc[nt][e];
            }
        __syncthreads();

        // dS ← EL ⊙ dS + QGᵀ dO − Wᵀ dV'.
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            const int c0 = srow0 + mt * 16;
            float e0 = st->el[c0 + gq], e1 = st->el[c0 + gq + 8];
#pragma unroll
            for (int nt = 0; nt < NB; ++nt) {
                s[mt][nt][0] *= e0;
                s[mt][nt][1] *= e0;
                s[mt][nt][2] *= e1;
                s[mt][nt][3] *= e1;
            }
#pragma unroll
            for (int ks = 0; ks < BCH / 16; ++ks) {
                unsigned a[4], bb[2];
                bfrag_a_t(a, &st->qg[0][0], LDS, c0, ks * 16);
#pragma unroll
                for (int nt = 0; nt < NB; ++nt) {
                    bfrag_b_t(bb, &st->dO[0][0], LDO, nt * 8, ks * 16);
                    mma_bf16(s[mt][nt], a, bb);
                }
                if (delta) {
                    bfrag_a_t(a, &st->w[0][0], LDS, c0, ks * 16);
#pragma unroll
                    for (int nt = 0; nt < NB; ++nt) {
                        bfrag_b(bb, vT, LDC, nt * 8, ks * 16);
                        mma_bf16(s[mt][nt], a, bb);
                    }
                }
            }
        }
    }
    bcp_wait_0();
    acc_tile_store<MT, NB>(s, dh0 + (long)bh * kd * vd, vd, srow0, v0, kd, vd);
}

// ---------------------------------------------------------------------------------------------
// Kernel 2. Grid (n_chunks, B*HV), 256 threads. Shared memory (f32):
//   dQG, dKd, dbk [64][KP] accumulators (phase 0: k and cum [64][KP+1] scratch; phase 2: dγ in
//   dQG's place), dA, dM, T [64][65] (phase 0: M in dA; phase 2: E_ij = e^{γ_i−γ_j} for GDN in
//   T), bk [64][KP] (phase 2: cum), value tiles (phase 2: q, k as bf16), small vectors.
// Tile loaders of lbwd_chunk (NT threads): [ROWS][COLS] from global rows `ld` apart, rows past
// `nrows` zero; every thread's loads are issued before its shared-memory stores.
#define NT 256
template <int ROWS, int COLS, int LDD>
__device__ __forceinline__ void tile_f32(float* dst, const float* src, long ld, int nrows) {
    constexpr int PR = COLS / 4, P = ROWS * PR, U = (P + NT - 1) / NT;
    float4 r[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
        int i = threadIdx.x + u * NT;
        r[u] = make_float4(0.f, 0.f, 0.f, 0.f);
        if (i < P && i / PR < nrows) r[u] = *(const float4*)(src + (long)(i / PR) * ld + (i % PR) * 4);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
        int i = threadIdx.x + u * NT;
        if (i < P) {
            float* d = dst + (i / PR) * LDD + (i % PR) * 4;
            d[0] = r[u].x;
            d[1] = r[u].y;
            d[2] = r[u].z;
            d[3] = r[u].w;
        }
    }
}
// bf16 source (COLS a multiple of 8) into f32 (OUT_F32) or bf16 shared memory.
template <int ROWS, int COLS, int LDD, bool OUT_F32>
__device__ __forceinline__ void tile_bf16(void* dst, const bf16_t* src, long ld, int nrows) {
    constexpr int PR = COLS / 8, P = ROWS * PR, U = (P + NT - 1) / NT;
    uint4 r[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
        int i = threadIdx.x + u * NT;
        r[u] = make_uint4(0, 0, 0, 0);
        if (i < P && i / PR < nrows) r[u] = *(const uint4*)(src + (long)(i / PR) * ld + (i % PR) * 8);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
        int i = threadIdx.x + u * NT;
        if (i < P) {
            if (OUT_F32) {
                float* d = (float*)dst + (i / PR) * LDD + (i % PR) * 8;
                const bf16_t* e = (const bf16_t*)&r[u];
#pragma unroll
                for (int x = 0; x < 8; ++x) d[x] = bf16_to_f32(e[x]);
            } else {
                *(uint4*)((bf16_t*)dst + (i / PR) * LDD + (i % PR) * 8) = r[u];
            }
        }
    }
}

// f32 source (COLS a multiple of 4) into bf16 shared memory.
template <int ROWS, int COLS, int LDD>
__device__ __forceinline__ void tile_f32_bf16(bf16_t* dst, const float* src, long ld, int nrows) {
    constexpr int PR = COLS / 4, P = ROWS * PR, U = (P + NT - 1) / NT;
    float4 r[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
        int i = threadIdx.x + u * NT;
        r[u] = make_float4(0.f, 0.f, 0.f, 0.f);
        if (i < P && i / PR < nrows) r[u] = *(const float4*)(src + (long)(i / PR) * ld + (i % PR) * 4);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
        int i = threadIdx.x + u * NT;
        if (i < P) {
            bf16_t* d = dst + (i / PR) * LDD + (i % PR) * 4;
            d[0] = to_bf16(r[u].x);
            d[1] = to_bf16(r[u].y);
            d[2] = to_bf16(r[u].z);
            d[3] = to_bf16(r[u].w);
        }
    }
}
// The entry state S and exit-state gradient dS tiles [KP][BVT] (f32 in global) as bf16 S, Sᵀ
// and dS in shared memory; dEL_c += Σ_v dS S from the f32 values on the way.
template <int KP, int LT, int LST>
__device__ __forceinline__ void tile_state(bf16_t* sSb, bf16_t* sSt, bf16_t* sdSb, float* sdEL,
                                           const float* cs, const float* ds, int vd, int kd) {
    constexpr int PR = BVT / 4, P = KP * PR, U = (P + NT - 1) / NT;
    float4 a[U], d[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
        int i = threadIdx.x + u * NT, r = i / PR, p = (i % PR) * 4;
        a[u] = d[u] = make_float4(0.f, 0.f, 0.f, 0.f);
        if (i < P && r < kd) {
            a[u] = *(const float4*)(cs + (long)r * vd + p);
            d[u] = *(const float4*)(ds + (long)r * vd + p);
        }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
        int i = threadIdx.x + u * NT, r = i / PR, p = (i % PR) * 4;
        if (i < P) {
            float sv[4] = {a[u].x, a[u].y, a[u].z, a[u].w}, dv[4] = {d[u].x, d[u].y, d[u].z, d[u].w};
            float dot = 0.f;
#pragma unroll
            for (int x = 0; x < 4; ++x) {
                bf16_t h = to_bf16(sv[x]);
                sSb[r * LT + p + x] = h;
                sSt[(p + x) * LST + r] = h;
                sdSb[r * LT + p + x] = to_bf16(dv[x]);
                dot += sv[x] * dv[x];
            }
            atomicAdd(&sdEL[r], dot);
        }
    }
}

template <int KP>
__device__ void lbwd_chunk(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                           const bf16_t* __restrict__ v, const float* __restrict__ g,
                           const float* __restrict__ beta, const float* __restrict__ CS,
                           const float* __restrict__ DS, const float* __restrict__ DVP,
                           const bf16_t* __restrict__ dO, float* DQ, float* DK, float* DV,
                           float* DG, float* DB, int T, int H, int HV, int kd, int vd,
                           float scale, int g_per_head, int delta, int use_mma) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    constexpr int LC = BCH + 1, LP = KP + 1;
    float* dQG = (float*)smem_raw;
    float* dKd = dQG + BCH * KP;
    float* dBK = dKd + BCH * KP;
    float* dA = dBK + BCH * KP;
    float* dM = dA + BCH * LC;
    float* Tm = dM + BCH * LC;
    float* bk = Tm + BCH * LC;
    float* tiles = bk + BCH * KP;
    float* sS = tiles;              // [KP][17]
    float* sdS = sS + KP * LV;      // [KP][17]
    float* sdO = sdS + KP * LV;     // [64][17] each below
    float* sdV = sdO + BCH * LV;
    float* svv = sdV + BCH * LV;
    float* sR = svv + BCH * LV;
    float* sVp = sR + BCH * LV;
    float* sZ = sVp + BCH * LV;
    float* sbeta = sZ + BCH * LV;   // [64]
    float* sdbeta = sbeta + BCH;    // [64]
    float* sdEL = sdbeta + BCH;     // [KP]
    float* sdgL = sdEL + KP;        // [KP]
    float* sgh = sdgL + KP;         // [64]
    // phase 0 views
    float* kf = dQG;                // [64][KP+1]
    float* cum0 = dQG + BCH * LP;   // [64][KP+1]
    float* M = dA;
    // phase 2 views
    float* cum = bk;                // [64][KP]
    bf16_t* qb = (bf16_t*)tiles;    // [64][KP]
    bf16_t* kb = qb + BCH * KP;     // [64][KP]
    float* E = Tm;

    const int c = blockIdx.x, bh = blockIdx.y, b = bh / HV, hv = bh % HV;
    const int hq = hv / (HV / H);
    const int nc = gridDim.x;
    const int t0 = c * BCH, n = min(BCH, T - t0);
    const int tid = threadIdx.x;
    const long blk = (long)bh * nc + c;

    // ---- phase 0: k, β, cum; M, T, bk.
    const bool full = (kd == KP);  // rows of whole 16-byte pieces
    const bf16_t* krow = k + (((long)b * T + t0) * H + hq) * kd;
    const float* grow = g + (((long)b * T + t0) * HV + hv) * kd;  // per-channel decays
    if (full) {
        tile_bf16<BCH, KP, LP, true>(kf, krow, (long)H * kd, n);
    } else {
        for (int i = tid; i < BCH * KP; i += NT) {
            int r = i / KP, ch = i % KP;
            kf[r * LP + ch] = (r < n && ch < kd) ? bf16_to_f32(krow[(long)r * H * kd + ch]) : 0.f;
        }
    }
    if (tid < BCH) {
        const int r = tid;
        sbeta[r] = (r < n) ? (delta ? beta[((long)b * T + t0 + r) * HV + hv] : 1.f) : 0.f;
        sgh[r] = (g_per_head && r < n) ? g[((long)b * T + t0 + r) * HV + hv] : 0.f;
    }
    if (!g_per_head && full) tile_f32<BCH, KP, LP>(cum0, grow, (long)HV * kd, n);
    __syncthreads();
    if (g_per_head || !full) {
        for (int i = tid; i < BCH * KP; i += NT) {
            int r = i / KP, ch = i % KP;
            float gv = 0.f;
            if (ch < kd) {
                if (g_per_head) gv = sgh[r];
                else if (r < n) gv = grow[(long)r * HV * kd + ch];
            }
            cum0[r * LP + ch] = gv;
        }
        __syncthreads();
    }
    for (int ch = tid; ch < KP; ch += NT) {
        float acc = 0.f;
        for (int r = 0; r < BCH; ++r) {
            acc += cum0[r * LP + ch];
            cum0[r * LP + ch] = acc;
        }
    }
    __syncthreads();
    if (delta) {
        for (int p = tid; p < BCH * BCH; p += NT) {
            int i = p / BCH, j = p % BCH;
            float acc = 0.f;
            if (j < i) {
                if (g_per_head) {
                    for (int ch = 0; ch < KP; ++ch) acc += kf[i * LP + ch] * kf[j * LP + ch];
                    acc *= __expf(cum0[i * LP] - cum0[j * LP]);
                } else {
                    for (int ch = 0; ch < KP; ++ch)
                        acc += kf[i * LP + ch] * kf[j * LP + ch] *
                               __expf(cum0[i * LP + ch] - cum0[j * LP + ch]);
                }
                acc *= sbeta[i];
            }
            M[i * LC + j] = acc;
        }
    }
    constexpr int LB = KP + 8, LTB = BCH + 8;  // bf16 rows of bk and T (mma path)
    bf16_t* bkb = (bf16_t*)bk;                   // [64][LB]
    bf16_t* Tb = (bf16_t*)Tm;                    // [64][LTB], after the solve
    for (int i = tid; i < BCH * KP; i += NT) {
        int r = i / KP, ch = i % KP;
        float val = sbeta[r] * __expf(cum0[r * LP + ch]) * kf[r * LP + ch];
        if (use_mma) bkb[r * LB + ch] = to_bf16(val);
        else bk[i] = val;
    }
    __syncthreads();
    // T = (I + M)⁻¹ by forward substitution, one column per thread.
    if (tid < BCH) {
        const int j = tid;
        for (int i = 0; i < BCH; ++i) {
            float t = (i == j) ? 1.f : 0.f;
            if (delta && i > j) {
                t = -M[i * LC + j];
                for (int m = j + 1; m < i; ++m) t -= M[i * LC + m] * Tm[m * LC + j];
            }
            Tm[i * LC + j] = t;
        }
    }
    __syncthreads();
    if (use_mma) {
        float tv[BCH * BCH / NT];
#pragma unroll
        for (int u = 0; u < BCH * BCH / NT; ++u) {
            int i = tid + u * NT;
            tv[u] = Tm[(i / BCH) * LC + i % BCH];
        }
        __syncthreads();
#pragma unroll
        for (int u = 0; u < BCH * BCH / NT; ++u) {
            int i = tid + u * NT;
            Tb[(i / BCH) * LTB + i % BCH] = to_bf16(tv[u]);
        }
    }
    for (int i = tid; i < 3 * BCH * KP + 2 * BCH * LC; i += NT) dQG[i] = 0.f;  // through dM
    for (int i = tid; i < BCH; i += NT) sdbeta[i] = 0.f;
    for (int i = tid; i < KP; i += NT) sdEL[i] = sdgL[i] = 0.f;
    __syncthreads();

    // ---- phase 1: value tiles.
    if (use_mma) {
        constexpr int LT = BVT + 8, LST = KP + 8;
        bf16_t* tb = (bf16_t*)tiles;
        bf16_t* sSb = tb;                 // [KP][LT]  S
        bf16_t* sdSb = sSb + KP * LT;     // [KP][LT]  dS
        bf16_t* sSt = sdSb + KP * LT;     // [BVT][LST] Sᵀ
        bf16_t* sdOb = sSt + BVT * LST;   // [64][LT] each below
        bf16_t* sdVb = sdOb + BCH * LT;
        bf16_t* svb = sdVb + BCH * LT;
        bf16_t* sRb = svb + BCH * LT;
        bf16_t* sVpb = sRb + BCH * LT;
        bf16_t* sZb = sVpb + BCH * LT;
        const int lane = tid & 31, warp = tid >> 5, gq = lane >> 2, tq = lane & 3;
        const bf16_t* Vp = delta ? sVpb : svb;  // V' (GLA: v)
        const bf16_t* Zs = delta ? sZb : sdVb;  // Z = d(βV) (GLA: dV')
        for (int v0 = 0; v0 < vd; v0 += BVT) {
            tile_state<KP, LT, LST>(sSb, sSt, sdSb, sdEL, CS + blk * kd * vd + v0, DS + blk * kd * vd + v0, vd, kd);
            const long voff = (((long)b * T + t0) * HV + hv) * vd + v0;
            tile_bf16<BCH, BVT, LT, false>(sdOb, dO + voff, (long)HV * vd, n);
            tile_f32_bf16<BCH, BVT, LT>(sdVb, DVP + voff, (long)HV * vd, n);
            tile_bf16<BCH, BVT, LT, false>(svb, v + voff, (long)HV * vd, n);
            __syncthreads();
            if (delta) {
                const int rt = warp >> 1, n0 = (warp & 1) * 8;
                // R = βV − bk S (one 16x8 tile per warp).
                float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
                for (int ks = 0; ks < KP / 16; ++ks) {
                    unsigned a[4], bb[2];
                    bfrag_a(a, bkb, LB, rt * 16, ks * 16);
                    bfrag_b(bb, sSt, LST, n0, ks * 16);
                    mma_bf16(acc, a, bb);
                }
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    int i = rt * 16 + gq + (e >> 1) * 8, col = n0 + 2 * tq + (e & 1);
                    sRb[i * LT + col] = to_bf16(sbeta[i] * bf16_to_f32(svb[i * LT + col]) - acc[e]);
                }
                __syncthreads();
                // V' = T R (j ≤ i) and Z = Tᵀ dV' (j ≥ i).
                float va[4] = {0.f, 0.f, 0.f, 0.f}, za[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
                for (int ks = 0; ks < BCH / 16; ++ks) {
                    unsigned a[4], bb[2];
                    if (ks <= rt) {
                        bfrag_a(a, Tb, LTB, rt * 16, ks * 16);
                        bfrag_b_t(bb, sRb, LT, n0, ks * 16);
                        mma_bf16(va, a, bb);
                    }
                    if (ks >= rt) {
                        bfrag_a_t(a, Tb, LTB, rt * 16, ks * 16);
                        bfrag_b_t(bb, sdVb, LT, n0, ks * 16);
                        mma_bf16(za, a, bb);
                    }
                }
                float db[2] = {0.f, 0.f};
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    int i = rt * 16 + gq + (e >> 1) * 8, col = n0 + 2 * tq + (e & 1);
                    sVpb[i * LT + col] = to_bf16(va[e]);
                    sZb[i * LT + col] = to_bf16(za[e]);
                    db[e >> 1] += za[e] * bf16_to_f32(svb[i * LT + col]);
                    if (i < n) DV[(((long)b * T + t0 + i) * HV + hv) * vd + v0 + col] = sbeta[i] * za[e];
                }
                atomicAdd(&sdbeta[rt * 16 + gq], db[0]);
                atomicAdd(&sdbeta[rt * 16 + gq + 8], db[1]);
            } else {
                for (int o = tid; o < BCH * BVT; o += NT) {
                    int i = o / BVT, cc = o % BVT;
                    long off = voff + (long)i * HV * vd + cc;
                    if (i < n) DV[off] = DVP[off];
                }
            }
            __syncthreads();
            // dQG += dO Sᵀ, dKd += V' dSᵀ, dbk −= Z Sᵀ; dA += dO V'ᵀ, dM −= Z V'ᵀ (upper
            // triangles never read).
            {
                const int rt = warp & 3, nh = warp >> 2;
                unsigned ao[4], av[4], az[4];
                bfrag_a(ao, sdOb, LT, rt * 16, 0);
                bfrag_a(av, Vp, LT, rt * 16, 0);
                bfrag_a(az, Zs, LT, rt * 16, 0);
                const int i0 = rt * 16 + gq;
#pragma unroll
                for (int j = 0; j < KP / 16; ++j) {
                    const int n0 = nh * (KP / 2) + j * 8, col = n0 + 2 * tq;
                    unsigned bs[2], bd[2];
                    bfrag_b(bs, sSb, LT, n0, 0);
                    bfrag_b(bd, sdSb, LT, n0, 0);
                    float c1[4] = {0.f, 0.f, 0.f, 0.f}, c2[4] = {0.f, 0.f, 0.f, 0.f}, c3[4] = {0.f, 0.f, 0.f, 0.f};
                    mma_bf16(c1, ao, bs);
                    mma_bf16(c2, av, bd);
                    if (delta) mma_bf16(c3, az, bs);
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        int idx = (i0 + (e >> 1) * 8) * KP + col + (e & 1);
                        dQG[idx] += c1[e];
                        dKd[idx] += c2[e];
                        dBK[idx] -= c3[e];
                    }
                }
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const int n0 = nh * 32 + j * 8, col = n0 + 2 * tq;
                    if (n0 > rt * 16 + 15) continue;
                    unsigned bv[2];
                    bfrag_b(bv, Vp, LT, n0, 0);
                    float c1[4] = {0.f, 0.f, 0.f, 0.f}, c2[4] = {0.f, 0.f, 0.f, 0.f};
                    mma_bf16(c1, ao, bv);
                    if (delta) mma_bf16(c2, az, bv);
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        int idx = (i0 + (e >> 1) * 8) * LC + col + (e & 1);
                        dA[idx] += c1[e];
                        dM[idx] -= c2[e];
                    }
                }
            }
            __syncthreads();
        }
    } else
    for (int v0 = 0; v0 < vd; v0 += BVT) {
        tile_f32<KP, BVT, LV>(sS, CS + blk * kd * vd + v0, vd, kd);
        tile_f32<KP, BVT, LV>(sdS, DS + blk * kd * vd + v0, vd, kd);
        const long voff = (((long)b * T + t0) * HV + hv) * vd + v0;
        tile_bf16<BCH, BVT, LV, true>(sdO, dO + voff, (long)HV * vd, n);
        tile_f32<BCH, BVT, LV>(sdV, DVP + voff, (long)HV * vd, n);
        tile_bf16<BCH, BVT, LV, true>(svv, v + voff, (long)HV * vd, n);
        __syncthreads();
        if (delta) {
            for (int o = tid; o < BCH * BVT; o += NT) {
                int i = o / BVT, cc = o % BVT;
                float acc = sbeta[i] * svv[i * LV + cc];
                for (int ch = 0; ch < KP; ++ch) acc -= bk[i * KP + ch] * sS[ch * LV + cc];
                sR[i * LV + cc] = acc;
            }
            __syncthreads();
            for (int o = tid; o < BCH * BVT; o += NT) {
                int i = o / BVT, cc = o % BVT;
                float vp = 0.f, z = 0.f;
                for (int j = 0; j <= i; ++j) vp += Tm[i * LC + j] * sR[j * LV + cc];
                for (int j = i; j < BCH; ++j) z += Tm[j * LC + i] * sdV[j * LV + cc];
                sVp[i * LV + cc] = vp;
                sZ[i * LV + cc] = z;
            }
        } else {
            for (int o = tid; o < BCH * BVT; o += NT) {
                int i = o / BVT, cc = o % BVT;
                sVp[i * LV + cc] = svv[i * LV + cc];
                sZ[i * LV + cc] = sdV[i * LV + cc];
            }
        }
        __syncthreads();
        // dv, dβ (βV part).
        for (int o = tid; o < BCH * BVT; o += NT) {
            int i = o / BVT, cc = o % BVT;
            if (i < n) DV[(((long)b * T + t0 + i) * HV + hv) * vd + v0 + cc] = sbeta[i] * sZ[i * LV + cc];
        }
        if (delta && tid < BCH) {
            float acc = 0.f;
            for (int cc = 0; cc < BVT; ++cc) acc += sZ[tid * LV + cc] * svv[tid * LV + cc];
            sdbeta[tid] += acc;
        }
        if (tid < KP) {
            float acc = 0.f;
            for (int cc = 0; cc < BVT; ++cc) acc += sdS[tid * LV + cc] * sS[tid * LV + cc];
            sdEL[tid] += acc;
        }
        // [64][KP] accumulators.
        for (int e = tid; e < BCH * KP; e += NT) {
            int i = e / KP, ch = e % KP;
            float a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma unroll
            for (int cc = 0; cc < BVT; ++cc) {
                float s = sS[ch * LV + cc];
                a1 += sdO[i * LV + cc] * s;
                a2 += sVp[i * LV + cc] * sdS[ch * LV + cc];
                a3 += sZ[i * LV + cc] * s;
            }
            dQG[e] += a1;
            dKd[e] += a2;
            dBK[e] -= a3;
        }
        // [64][64] accumulators.
        for (int p = tid; p < BCH * BCH; p += NT) {
            int i = p / BCH, j = p % BCH;
            if (j > i) continue;
            float a1 = 0.f, a2 = 0.f;
#pragma unroll
            for (int cc = 0; cc < BVT; ++cc) {
                float vp = sVp[j * LV + cc];
                a1 += sdO[i * LV + cc] * vp;
                a2 += sZ[i * LV + cc] * vp;
            }
            dA[i * LC + j] += a1;
            if (j < i) dM[i * LC + j] -= a2;
        }
        __syncthreads();
    }

    // ---- phase 2: through the prep.
    const bf16_t* qrow = q + (((long)b * T + t0) * H + hq) * kd;
    if (full) {
        tile_bf16<BCH, KP, KP, false>(qb, qrow, (long)H * kd, n);
        tile_bf16<BCH, KP, KP, false>(kb, krow, (long)H * kd, n);
    }
    if (!g_per_head && full) tile_f32<BCH, KP, KP>(cum, grow, (long)HV * kd, n);
    for (int i = tid; i < BCH * KP; i += NT) {
        int r = i / KP, ch = i % KP;
        if (!full) {
            bf16_t qv = 0, kv = 0;
            if (ch < kd && r < n) {
                qv = qrow[(long)r * H * kd + ch];
                kv = krow[(long)r * H * kd + ch];
            }
            qb[i] = qv;
            kb[i] = kv;
        }
        if (g_per_head || !full) {
            float gv = 0.f;
            if (ch < kd) {
                if (g_per_head) gv = sgh[r];
                else if (r < n) gv = grow[(long)r * HV * kd + ch];
            }
            cum[i] = gv;
        }
    }
    __syncthreads();
    for (int ch = tid; ch < KP; ch += NT) {
        float acc = 0.f;
        for (int r = 0; r < BCH; ++r) {
            acc += cum[r * KP + ch];
            cum[r * KP + ch] = acc;
        }
    }
    __syncthreads();
    if (g_per_head) {
        for (int p = tid; p < BCH * BCH; p += NT) {
            int i = p / BCH, j = p % BCH;
            E[i * LC + j] = (j <= i) ? __expf(cum[i * KP] - cum[j * KP]) : 0.f;
        }
        __syncthreads();
    }
    for (int e = tid; e < BCH * KP; e += NT) {
        const int i = e / KP, ch = e % KP;
        float dgam = 0.f;
        if (ch < kd) {
            const float gi = cum[e], gl = cum[(BCH - 1) * KP + ch];
            const float qi = bf16_to_f32(qb[e]), ki = bf16_to_f32(kb[e]), bi = sbeta[i];
            const float ei = __expf(gi), eL = __expf(gl - gi);
            float dq = 0.f, dk = 0.f;
            // QG = scale e^γ q
            float g1 = dQG[e];
            dq += scale * ei * g1;
            dgam += g1 * scale * qi * ei;
            // Kd = e^{γ_L − γ} k
            float g2 = dKd[e], kdv = ki * eL;
            dk += eL * g2;
            dgam -= g2 * kdv;
            atomicAdd(&sdgL[ch], g2 * kdv);
            if (delta) {
                // bk = β e^γ k
                float g3 = dBK[e];
                dk += g3 * bi * ei;
                atomicAdd(&sdbeta[i], g3 * ei * ki);
                dgam += g3 * bi * ei * ki;
            }
            // i-side of AQK (j ≤ i) and M (j < i).
            float s1 = 0.f, s3 = 0.f;
            for (int j = 0; j <= i; ++j) {
                float dec = g_per_head ? E[i * LC + j] : __expf(gi - cum[j * KP + ch]);
                float kj = bf16_to_f32(kb[j * KP + ch]) * dec;
                s1 += dA[i * LC + j] * kj;
                if (j < i) s3 += dM[i * LC + j] * kj;
            }
            dq += scale * s1;
            dgam += scale * qi * s1;
            if (delta) {
                dk += bi * s3;
                dgam += bi * ki * s3;
                atomicAdd(&sdbeta[i], ki * s3);
            }
            // j-side (this token as j): AQK over t ≥ i, M over t > i.
            float s2 = 0.f, s4 = 0.f;
            for (int t = i; t < BCH; ++t) {
                float dec = g_per_head ? E[t * LC + i] : __expf(cum[t * KP + ch] - gi);
                s2 += dA[t * LC + i] * bf16_to_f32(qb[t * KP + ch]) * dec;
                if (t > i) s4 += dM[t * LC + i] * sbeta[t] * bf16_to_f32(kb[t * KP + ch]) * dec;
            }
            dk += scale * s2;
            dgam -= scale * ki * s2;
            if (delta) {
                dk += s4;
                dgam -= ki * s4;
            }
            if (i < n) {
                long off = (((long)b * T + t0 + i) * H + hq) * kd + ch;
                atomicAdd(&DQ[off], dq);
                atomicAdd(&DK[off], dk);
            }
        }
        dQG[e] = dgam;
    }
    __syncthreads();
    // Reverse cumulative sum down each channel, starting from γ_last's gradient.
    for (int ch = tid; ch < KP; ch += NT) {
        float run = sdgL[ch] + sdEL[ch] * __expf(cum[(BCH - 1) * KP + ch]);
        for (int r = BCH - 1; r >= 0; --r) {
            run += dQG[r * KP + ch];
            dQG[r * KP + ch] = run;
            if (!g_per_head && r < n && ch < kd)
                DG[(((long)b * T + t0 + r) * HV + hv) * kd + ch] = run;
        }
    }
    __syncthreads();
    if (tid < n) {
        if (g_per_head) {
            float acc = 0.f;
            for (int ch = 0; ch < kd; ++ch) acc += dQG[tid * KP + ch];
            DG[((long)b * T + t0 + tid) * HV + hv] = acc;
        }
        if (delta) DB[((long)b * T + t0 + tid) * HV + hv] = sdbeta[tid];
    }
}

#define LBWD(KP)                                                                                    \
    extern "C" __global__ void __launch_bounds__(256) lbwd_state_f32_k##KP(                        \
        const bf16_t* W, const bf16_t* QG, const bf16_t* KT, const bf16_t* AQK, const float* EL,   \
        const bf16_t* dO, const float* dht, float* DS, float* DVP, float* dh0, int T, int HV,      \
        int kd, int vd, int delta, int has_dht) {                                                  \
        lbwd_state_f32<KP>(W, QG, KT, AQK, EL, dO, dht, DS, DVP, dh0, T, HV, kd, vd, delta,        \
                           has_dht);                                                                \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(BST) lbwd_state_k##KP(                            \
        const bf16_t* W, const bf16_t* QG, const bf16_t* KT, const bf16_t* AQK, const float* EL,   \
        const bf16_t* dO, const float* dht, float* DS, float* DVP, float* dh0, int T, int HV,      \
        int kd, int vd, int delta, int has_dht) {                                                  \
        lbwd_state<KP, 2>(W, QG, KT, AQK, EL, dO, dht, DS, DVP, dh0, T, HV, kd, vd, delta,         \
                          has_dht);                                                                 \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(256) lbwd_chunk_k##KP(                            \
        const bf16_t* q, const bf16_t* k, const bf16_t* v, const float* g, const float* beta,      \
        const float* CS, const float* DS, const float* DVP, const bf16_t* dO, float* DQ,           \
        float* DK, float* DV, float* DG, float* DB, int T, int H, int HV, int kd, int vd,          \
        float scale, int g_per_head, int delta, int use_mma) {                                     \
        lbwd_chunk<KP>(q, k, v, g, beta, CS, DS, DVP, dO, DQ, DK, DV, DG, DB, T, H, HV, kd, vd,    \
                       scale, g_per_head, delta, use_mma);                                          \
    }
LBWD(64)
LBWD(128)
