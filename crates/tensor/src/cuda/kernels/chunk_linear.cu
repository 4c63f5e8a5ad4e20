// Chunked forward of the linear mixers' recurrence (GDN, KDA, GLA) on tensor cores, the GPU
// form of mixers::linear_core::chunked (whose naive reference is the specification):
//
//   S ← exp(g_t) ⊙ S;  u = β_t (v_t − Sᵀk_t) (delta rule) or u = v_t (GLA);  S += k_t uᵀ;  o_t = Sᵀq_t
//
// Two kernels, FLA's split (research/mixers.md §3.1):
// 1. chunk_prep: every (sequence, value head, chunk of 64 tokens) at once. Cumulative log
//    decays `cum`, the UT transform T = (I + M)⁻¹ with M_ij = β_i k_i·k_j e^{cum_i−cum_j}
//    (j < i), and the per-chunk operands of the sequential pass:
//      W  = T (β e^{cum} ⊙ K)   [64, KP]    U = T (β V)           [64, VP]
//      QG = scale e^{cum} ⊙ Q   [64, KP]    KT = (e^{cum_last−cum} ⊙ K)ᵀ [KP, 64]
//      AQK_ij = scale q_i·k_j e^{cum_i−cum_j} (j ≤ i)  [64, 64]   EL = e^{cum_last} [KP]
// 2. chunk_state: sequential over chunks, parallel over (sequence, value head, 16 value
//    columns); the state tile S [KP, 16] lives in f32 mma accumulators for the whole pass:
//      v' = U − W S;  o = QG S + AQK v';  S ← EL ⊙ S + KT v'
//    The next chunk's operands stream in by cp.async while this one computes.
//
// Matmuls are mma.sync m16n8k16 (bf16 in, f32 accumulate); S, cum, β and the decays stay f32.
// Key dims up to KP (64 or 128; smaller ones are zero-padded on load), value dims any multiple
// of 2 (the value tile is zero-padded to 16). Scalar decays (GDN: g [B,T,HV]) or per channel
// (KDA, GLA: g [B,T,HV,K]).
#define CH 64   // tokens per chunk
#define PAD 8   // bf16 row padding: rows of 2(n+8) bytes put the 8 rows of a fragment load in distinct banks
#define BV 16   // value columns per chunk_state block

__device__ __forceinline__ void mma_bf16(float c[4], const unsigned a[4], const unsigned b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// A fragment: the 16x16 tile at (r0, k0) of a row-major bf16 matrix (k contiguous).
__device__ __forceinline__ void frag_a(unsigned a[4], const bf16_t* s, int ld, int r0, int k0) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const bf16_t* p = s + (r0 + g) * ld + k0 + 2 * t;
    a[0] = *(const unsigned*)p;
    a[1] = *(const unsigned*)(p + 8 * ld);
    a[2] = *(const unsigned*)(p + 8);
    a[3] = *(const unsigned*)(p + 8 * ld + 8);
}

// B fragment: the 16(k) x 8(n) tile at (k0, n0) of a matrix stored [n][k] (k contiguous).
__device__ __forceinline__ void frag_b(unsigned b[2], const bf16_t* s, int ld, int n0, int k0) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const bf16_t* p = s + (n0 + g) * ld + k0 + 2 * t;
    b[0] = *(const unsigned*)p;
    b[1] = *(const unsigned*)(p + 8);
}

__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    return (unsigned)f32_to_bf16(lo) | ((unsigned)f32_to_bf16(hi) << 16);
}

__device__ __forceinline__ unsigned smem_addr(const void* p) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_1() { asm volatile("cp.async.wait_group 1;\n" ::); }
__device__ __forceinline__ void cp_async_wait_0() { asm volatile("cp.async.wait_group 0;\n" ::); }

// Sizes of the per-chunk scratch blocks (elements), shared with the launcher.
template <int KP>
struct Blocks {
    static constexpr int W = CH * KP, QG = CH * KP, KT = KP * CH, AQK = CH * CH, EL = KP;
};

// ---------------------------------------------------------------------------------------------
// Kernel 1. Grid (n_chunks, B*HV), 256 threads.
template <int KP>
__device__ void chunk_prep(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                           const bf16_t* __restrict__ v, const float* __restrict__ g,
                           const float* __restrict__ beta, bf16_t* W, bf16_t* U, bf16_t* QG,
                           bf16_t* KT, bf16_t* AQK, float* EL, int T, int H, int HV, int kd,
                           int vd, int vp, float scale, int g_per_head, int delta) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int LDK = KP + PAD, LDC = CH + PAD;
    // Regions: kb (later bvT), qb (later bkT), cum, beta, A (M, then T), Tb.
    bf16_t* kb = (bf16_t*)smem_raw;                 // [CH][LDK]
    bf16_t* bvT = kb;                               // [64][LDC] value tile, after kb is done
    bf16_t* qb = kb + CH * LDK;                     // [CH][LDK]
    bf16_t* bkT = qb;                               // [KP][LDC], after qb is done
    const int region = (CH * LDK > KP * LDC ? CH * LDK : KP * LDC);
    float* cum = (float*)(qb + region);             // [CH][KP]
    float* sb = cum + CH * KP;                      // [CH]
    float* A = sb + CH;                             // [CH][CH+1]
    bf16_t* Tb = (bf16_t*)(A + CH * (CH + 1));      // [CH][LDC]

    const int c = blockIdx.x, bh = blockIdx.y, b = bh / HV, hv = bh % HV;
    const int hq = hv / (HV / H);
    const int t0 = c * CH, n = min(CH, T - t0);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int nc = gridDim.x;
    const long blk = (long)bh * nc + c;

    // Load q, k (zero past kd and past the sequence end), β, and the log decays.
    for (int i = tid; i < CH * KP; i += blockDim.x) {
        int r = i / KP, ch = i % KP;
        bf16_t qv = 0, kv = 0;
        if (r < n && ch < kd) {
            long off = (((long)b * T + t0 + r) * H + hq) * kd + ch;
            qv = q[off];
            kv = k[off];
        }
        qb[r * LDK + ch] = qv;
        kb[r * LDK + ch] = kv;
    }
    for (int r = tid; r < CH; r += blockDim.x)
        sb[r] = (r < n && delta) ? beta[((long)b * T + t0 + r) * HV + hv] : 1.0f;
    // cum[r][ch] = Σ_{s ≤ r} g_s (padding tokens decay by nothing).
    for (int ch = tid; ch < KP; ch += blockDim.x) {
        float acc = 0.f;
        for (int r = 0; r < CH; ++r) {
            if (r < n && ch < kd) {
                long row = ((long)b * T + t0 + r) * HV + hv;
                acc += g_per_head ? g[row] : g[row * kd + ch];
            }
            cum[r * KP + ch] = acc;
        }
    }
    __syncthreads();

    // M (in A, f32) and AQK (to global), from K Kᵀ and Q Kᵀ on tensor cores. Warps 0-3: M rows
    // 16w..; warps 4-7: AQK rows 16(w-4)... Per-channel decays do not factor out of the dot
    // product: those fall back to an exact per-pair loop (every exponent ≤ 0, never factored).
    {
        const int mat = warp >> 2, r0 = (warp & 3) * 16;
        if (mat == 1 || delta) {
            const bf16_t* xa = mat ? qb : kb;
            float acc[8][4];
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
            if (g_per_head) {
#pragma unroll
                for (int ks = 0; ks < KP / 16; ++ks) {
                    unsigned a[4];
                    frag_a(a, xa, LDK, r0, ks * 16);
#pragma unroll
                    for (int j = 0; j < 8; ++j) {
                        if (j * 8 > r0 + 15) continue;  // above the diagonal
                        unsigned bb[2];
                        frag_b(bb, kb, LDK, j * 8, ks * 16);
                        mma_bf16(acc[j], a, bb);
                    }
                }
            }
            const int gq = lane >> 2, tq = lane & 3;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    int i = r0 + gq + (e >> 1) * 8, jj = j * 8 + 2 * tq + (e & 1);
                    float val = 0.f;
                    bool keep = mat ? (jj <= i) : (jj < i);
                    if (keep) {
                        if (g_per_head) {
                            val = acc[j][e] * __expf(cum[i * KP] - cum[jj * KP]);
                        } else {
                            for (int ch = 0; ch < KP; ++ch)
                                val += bf16_to_f32(xa[i * LDK + ch]) *
                                       bf16_to_f32(kb[jj * LDK + ch]) *
                                       __expf(cum[i * KP + ch] - cum[jj * KP + ch]);
                        }
                    }
                    if (mat) AQK[blk * CH * CH + i * CH + jj] = f32_to_bf16(val * scale);
                    else A[i * (CH + 1) + jj] = val * sb[i];
                }
            }
        }
    }
    __syncthreads();

    // QG and KT to global, EL; then β e^{cum} ⊙ K transposed into bkT (over qb).
    const int last = CH - 1;
    for (int i = tid; i < CH * KP; i += blockDim.x) {
        int r = i / KP, ch = i % KP;
        float cr = cum[r * KP + ch], kv = bf16_to_f32(kb[r * LDK + ch]);
        QG[blk * CH * KP + r * KP + ch] = f32_to_bf16(bf16_to_f32(qb[r * LDK + ch]) * scale * __expf(cr));
        KT[blk * KP * CH + ch * CH + r] = f32_to_bf16(kv * __expf(cum[last * KP + ch] - cr));
    }
    for (int ch = tid; ch < KP; ch += blockDim.x) EL[blk * KP + ch] = __expf(cum[last * KP + ch]);
    __syncthreads();
    for (int i = tid; i < CH * KP; i += blockDim.x) {
        int r = i % CH, ch = i / CH;
        bkT[ch * LDC + r] = f32_to_bf16(sb[r] * __expf(cum[r * KP + ch]) * bf16_to_f32(kb[r * LDK + ch]));
    }

    // T = (I + M)⁻¹ by forward substitution, row by row, in place in A. Row i:
    // T_ij = −M_ij − Σ_{j<m<i} M_im T_mj; four threads per column j.
    if (delta) {
        const int j = tid >> 2, part = tid & 3;
        for (int i = 1; i < CH; ++i) {
            float s = 0.f;
            if (j < i)
                for (int m = j + 1 + part; m < i; m += 4) s += A[i * (CH + 1) + m] * A[m * (CH + 1) + j];
            s += __shfl_xor_sync(0xffffffffu, s, 1);
            s += __shfl_xor_sync(0xffffffffu, s, 2);
            float tij = (j < i) ? -A[i * (CH + 1) + j] - s : 0.f;
            __syncthreads();
            if (j < i && part == 0) A[i * (CH + 1) + j] = tij;
            __syncthreads();
        }
    }
    for (int i = tid; i < CH * CH; i += blockDim.x) {
        int r = i / CH, cc = i % CH;
        float val = (r == cc) ? 1.f : (delta && cc < r ? A[r * (CH + 1) + cc] : 0.f);
        Tb[r * LDC + cc] = f32_to_bf16(val);
    }
    __syncthreads();

    // W = T bk (delta only): 4 row tiles x KP/8 column tiles over 8 warps.
    const int gq = lane >> 2, tq = lane & 3;
    if (delta) {
        const int r0 = (warp & 3) * 16, nhalf = KP / 16;  // column tiles per warp
        const int n0 = (warp >> 2) * nhalf;
        float acc[KP / 16][4];
#pragma unroll
        for (int j = 0; j < KP / 16; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
#pragma unroll
        for (int ks = 0; ks < CH / 16; ++ks) {
            unsigned a[4];
            frag_a(a, Tb, LDC, r0, ks * 16);
#pragma unroll
            for (int j = 0; j < KP / 16; ++j) {
                unsigned bb[2];
                frag_b(bb, bkT, LDC, (n0 + j) * 8, ks * 16);
                mma_bf16(acc[j], a, bb);
            }
        }
#pragma unroll
        for (int j = 0; j < KP / 16; ++j) {
            int col = (n0 + j) * 8 + 2 * tq;
            bf16_t* wp = W + blk * CH * KP;
            *(unsigned*)(wp + (r0 + gq) * KP + col) = pack_bf16(acc[j][0], acc[j][1]);
            *(unsigned*)(wp + (r0 + gq + 8) * KP + col) = pack_bf16(acc[j][2], acc[j][3]);
        }
    }
    // U = T (β V), 64 value columns at a time through bvT (over kb).
    for (int v0 = 0; v0 < vp; v0 += 64) {
        __syncthreads();
        for (int i = tid; i < CH * 64; i += blockDim.x) {
            int r = i % CH, cc = i / CH;
            float val = 0.f;
            if (r < n && v0 + cc < vd)
                val = sb[r] * bf16_to_f32(v[(((long)b * T + t0 + r) * HV + hv) * vd + v0 + cc]);
            bvT[cc * LDC + r] = f32_to_bf16(val);
        }
        __syncthreads();
        const int r0 = (warp & 3) * 16, n0 = (warp >> 2) * 4;  // 4 column tiles of 8 per warp
        float acc[4][4];
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
#pragma unroll
        for (int ks = 0; ks < CH / 16; ++ks) {
            unsigned a[4];
            frag_a(a, Tb, LDC, r0, ks * 16);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                unsigned bb[2];
                frag_b(bb, bvT, LDC, (n0 + j) * 8, ks * 16);
                mma_bf16(acc[j], a, bb);
            }
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            int col = v0 + (n0 + j) * 8 + 2 * tq;
            if (col >= vp) continue;
            bf16_t* up = U + blk * CH * vp;
            *(unsigned*)(up + (r0 + gq) * vp + col) = pack_bf16(acc[j][0], acc[j][1]);
            *(unsigned*)(up + (r0 + gq + 8) * vp + col) = pack_bf16(acc[j][2], acc[j][3]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kernel 2. Grid (vp / BV, B*HV), 128 threads (4 warps). Warp w computes tokens 16w..16w+15 of
// v' and o, and owns state rows [w·KP/4, (w+1)·KP/4) of the S tile.
template <int KP>
struct Stage {
    bf16_t w[CH][KP + PAD], qg[CH][KP + PAD], kt[KP][CH + PAD], aqk[CH][CH + PAD], u[CH][BV + PAD];
    float el[KP];
};

template <int KP>
__device__ void stage_load(Stage<KP>* st, const bf16_t* W, const bf16_t* U, const bf16_t* QG,
                           const bf16_t* KT, const bf16_t* AQK, const float* EL, long blk, int vp,
                           int v0, int delta) {
    const int tid = threadIdx.x, nt = blockDim.x;
    constexpr int RK = KP / 8;  // 16-byte pieces per row of KP bf16
    if (delta)
        for (int i = tid; i < CH * RK; i += nt)
            cp_async16(&st->w[i / RK][(i % RK) * 8], W + blk * CH * KP + (i / RK) * KP + (i % RK) * 8);
    for (int i = tid; i < CH * RK; i += nt)
        cp_async16(&st->qg[i / RK][(i % RK) * 8], QG + blk * CH * KP + (i / RK) * KP + (i % RK) * 8);
    for (int i = tid; i < KP * 8; i += nt)
        cp_async16(&st->kt[i / 8][(i % 8) * 8], KT + blk * KP * CH + (i / 8) * CH + (i % 8) * 8);
    for (int i = tid; i < CH * 8; i += nt)
        cp_async16(&st->aqk[i / 8][(i % 8) * 8], AQK + blk * CH * CH + (i / 8) * CH + (i % 8) * 8);
    for (int i = tid; i < CH * 2; i += nt)
        cp_async16(&st->u[i / 2][(i % 2) * 8], U + blk * CH * vp + (i / 2) * vp + v0 + (i % 2) * 8);
    for (int i = tid; i < KP / 4; i += nt) cp_async16(&st->el[i * 4], EL + blk * KP + i * 4);
}

template <int KP>
__device__ void chunk_state(const bf16_t* W, const bf16_t* U, const bf16_t* QG, const bf16_t* KT,
                            const bf16_t* AQK, const float* EL, float* state, bf16_t* o, int T,
                            int HV, int kd, int vd, int vp, int delta) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    Stage<KP>* stages = (Stage<KP>*)smem_raw;
    bf16_t* sT = (bf16_t*)(stages + 2);  // [BV][KP+PAD]: Sᵀ in bf16, the B operand of W S and QG S
    bf16_t* vT = sT + BV * (KP + PAD);   // [BV][CH+PAD]: v'ᵀ in bf16
    const int LDS = KP + PAD, LDC = CH + PAD;
    const int bh = blockIdx.y, b = bh / HV, hv = bh % HV, v0 = blockIdx.x * BV;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, gq = lane >> 2, tq = lane & 3;
    const int nc = (T + CH - 1) / CH;
    constexpr int MT = KP / 64;  // 16-row state tiles per warp
    const int srow0 = warp * (KP / 4);
    float* sp = state + (long)bh * kd * vd;

    // S tile in accumulators: s[mt][nt][e] is row srow0 + 16mt + gq (+8 for e ≥ 2), column
    // v0 + 8nt + 2tq + (e & 1).
    float s[MT][2][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int r = srow0 + mt * 16 + gq + (e >> 1) * 8, col = v0 + nt * 8 + 2 * tq + (e & 1);
                s[mt][nt][e] = (r < kd && col < vd) ? sp[(long)r * vd + col] : 0.f;
            }

    stage_load<KP>(&stages[0], W, U, QG, KT, AQK, EL, (long)bh * nc, vp, v0, delta);
    cp_async_commit();
    for (int c = 0; c < nc; ++c) {
        Stage<KP>* st = &stages[c & 1];
        // Sᵀ (bf16) for this chunk's W S and QG S.
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    int r = srow0 + mt * 16 + gq + (e >> 1) * 8, col = nt * 8 + 2 * tq + (e & 1);
                    sT[col * LDS + r] = f32_to_bf16(s[mt][nt][e]);
                }
        __syncthreads();  // every warp is done with the other stage and with vT
        if (c + 1 < nc)
            stage_load<KP>(&stages[(c + 1) & 1], W, U, QG, KT, AQK, EL, (long)bh * nc + c + 1, vp, v0, delta);
        cp_async_commit();
        cp_async_wait_1();
        __syncthreads();

        // v' = U − W S and o = QG S for tokens 16·warp ..
        float vacc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
        float oacc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
        const int r0 = warp * 16;
#pragma unroll
        for (int ks = 0; ks < KP / 16; ++ks) {
            unsigned aq[4], bb[2][2];
            frag_a(aq, &st->qg[0][0], LDS, r0, ks * 16);
            frag_b(bb[0], sT, LDS, 0, ks * 16);
            frag_b(bb[1], sT, LDS, 8, ks * 16);
            mma_bf16(oacc[0], aq, bb[0]);
            mma_bf16(oacc[1], aq, bb[1]);
            if (delta) {
                unsigned aw[4];
                frag_a(aw, &st->w[0][0], LDS, r0, ks * 16);
                mma_bf16(vacc[0], aw, bb[0]);
                mma_bf16(vacc[1], aw, bb[1]);
            }
        }
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int r = r0 + gq + (e >> 1) * 8, col = nt * 8 + 2 * tq + (e & 1);
                float vn = bf16_to_f32(st->u[r][col]) - vacc[nt][e];
                vT[col * LDC + r] = f32_to_bf16(vn);
            }
        __syncthreads();

        // o += AQK v' (causal: token tiles after this warp's are zero).
#pragma unroll
        for (int ks = 0; ks < CH / 16; ++ks) {
            if (ks > warp) break;
            unsigned a[4], bb[2];
            frag_a(a, &st->aqk[0][0], LDC, r0, ks * 16);
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
                frag_b(bb, vT, LDC, nt * 8, ks * 16);
                mma_bf16(oacc[nt], a, bb);
            }
        }
        const int t0 = c * CH;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                int t = t0 + r0 + gq + half * 8, col = v0 + nt * 8 + 2 * tq;
                if (t >= T || col >= vd) continue;
                bf16_t* op = o + (((long)b * T + t) * HV + hv) * vd + col;
                if (col + 1 < vd) *(unsigned*)op = pack_bf16(oacc[nt][half * 2], oacc[nt][half * 2 + 1]);
                else op[0] = f32_to_bf16(oacc[nt][half * 2]);
            }

        // S ← EL ⊙ S + KT v'.
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            float e0 = st->el[srow0 + mt * 16 + gq], e1 = st->el[srow0 + mt * 16 + gq + 8];
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
                s[mt][nt][0] *= e0;
                s[mt][nt][1] *= e0;
                s[mt][nt][2] *= e1;
                s[mt][nt][3] *= e1;
            }
#pragma unroll
            for (int ks = 0; ks < CH / 16; ++ks) {
                unsigned a[4], bb[2];
                frag_a(a, &st->kt[0][0], LDC, srow0 + mt * 16, ks * 16);
#pragma unroll
                for (int nt = 0; nt < 2; ++nt) {
                    frag_b(bb, vT, LDC, nt * 8, ks * 16);
                    mma_bf16(s[mt][nt], a, bb);
                }
            }
        }
    }
    cp_async_wait_0();
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int r = srow0 + mt * 16 + gq + (e >> 1) * 8, col = v0 + nt * 8 + 2 * tq + (e & 1);
                if (r < kd && col < vd) sp[(long)r * vd + col] = s[mt][nt][e];
            }
}

#define PREP(KP)                                                                                    \
    extern "C" __global__ void __launch_bounds__(256) chunk_prep_k##KP(                            \
        const bf16_t* q, const bf16_t* k, const bf16_t* v, const float* g, const float* beta,      \
        bf16_t* W, bf16_t* U, bf16_t* QG, bf16_t* KT, bf16_t* AQK, float* EL, int T, int H, int HV, \
        int kd, int vd, int vp, float scale, int g_per_head, int delta) {                          \
        chunk_prep<KP>(q, k, v, g, beta, W, U, QG, KT, AQK, EL, T, H, HV, kd, vd, vp, scale,       \
                       g_per_head, delta);                                                          \
    }
#define STATE(KP)                                                                                   \
    extern "C" __global__ void __launch_bounds__(128) chunk_state_k##KP(                           \
        const bf16_t* W, const bf16_t* U, const bf16_t* QG, const bf16_t* KT, const bf16_t* AQK,   \
        const float* EL, float* state, bf16_t* o, int T, int HV, int kd, int vd, int vp,           \
        int delta) {                                                                                \
        chunk_state<KP>(W, U, QG, KT, AQK, EL, state, o, T, HV, kd, vd, vp, delta);                \
    }
PREP(64)
PREP(128)
STATE(64)
STATE(128)
