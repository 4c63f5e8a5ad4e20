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
//    The next chunks' operands stream in while this one computes (TMA bulk copies on sm_90,
//    cp.async before).
//
// Matmuls are mma.sync m16n8k16 (bf16 in, f32 accumulate; T's off-diagonal blocks tf32); S,
// cum, β and the decays stay f32.
// Key dims up to KP (64 or 128; smaller ones are zero-padded on load), value dims any multiple
// of 2 (the value tile is zero-padded to 16). Scalar decays (GDN: g [B,T,HV]) or per channel
// (KDA, GLA: g [B,T,HV,K]).
#define CH 64   // tokens per chunk
#define NSTAGE 3  // chunk_state's pipeline depth: chunks c+1, c+2 land while c computes
#define PAD 8   // bf16 row padding: rows of 2(n+8) bytes put the 8 rows of a fragment load in distinct banks

// tf32 products of f32 matrices in shared memory (m16n8k8, operands rounded to nearest):
// A fragment of the 16x8 tile at (r0, k0) of a row-major matrix, B fragment of the 8x8 tile at
// (k0, n0) of a row-major [k][n] matrix, and the accumulator stored back scaled by `sign`.
__device__ __forceinline__ unsigned to_tf32(float x) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}
__device__ __forceinline__ void mma_tf32(float c[4], const unsigned a[4], const unsigned b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void frag_a_tf32(unsigned a[4], const float* m, int ld, int r0, int k0) {
    const int lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
    a[0] = to_tf32(m[(r0 + gq) * ld + k0 + tq]);
    a[1] = to_tf32(m[(r0 + gq + 8) * ld + k0 + tq]);
    a[2] = to_tf32(m[(r0 + gq) * ld + k0 + tq + 4]);
    a[3] = to_tf32(m[(r0 + gq + 8) * ld + k0 + tq + 4]);
}
__device__ __forceinline__ void frag_b_tf32(unsigned b[2], const float* m, int ld, int k0, int n0) {
    const int lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
    b[0] = to_tf32(m[(k0 + tq) * ld + n0 + gq]);
    b[1] = to_tf32(m[(k0 + tq + 4) * ld + n0 + gq]);
}
__device__ __forceinline__ void store_c(float* m, int ld, int r0, int n0, const float c[4], float sign) {
    const int lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
    m[(r0 + gq) * ld + n0 + 2 * tq] = sign * c[0];
    m[(r0 + gq) * ld + n0 + 2 * tq + 1] = sign * c[1];
    m[(r0 + gq + 8) * ld + n0 + 2 * tq] = sign * c[2];
    m[(r0 + gq + 8) * ld + n0 + 2 * tq + 1] = sign * c[3];
}

// Fragments by ldmatrix (one shared-memory instruction for what took four or two 32-bit
// loads; the values are the same). Tiles live in shared memory with 16-byte-aligned rows.
__device__ __forceinline__ unsigned smem_u32(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

// Four 8x8 bf16 matrices from shared memory (32-bit address), one per group of 8 lanes.
__device__ __forceinline__ void ldsm_x4(unsigned r[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}

// A fragment: the 16x16 tile at (r0, k0) of a row-major bf16 matrix (k contiguous).
__device__ __forceinline__ void frag_a(unsigned a[4], const bf16_t* s, int ld, int r0, int k0) {
    int lane = threadIdx.x & 31;
    ldsm_x4(a, smem_u32(s + (r0 + (lane & 15)) * ld + k0 + (lane >> 4) * 8));
}

// B fragment: the 16(k) x 8(n) tile at (k0, n0) of a matrix stored [n][k] (k contiguous).
__device__ __forceinline__ void frag_b(unsigned b[2], const bf16_t* s, int ld, int n0, int k0) {
    int lane = threadIdx.x & 31;
    unsigned addr = smem_u32(s + (n0 + (lane & 7)) * ld + k0 + ((lane >> 3) & 1) * 8);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(b[0]), "=r"(b[1])
                 : "r"(addr)
                 : "memory");
}

// Round-to-nearest-even conversions in one instruction each (sm_80+; this file needs mma.sync,
// sm_80+, anyway), instead of common.cuh's portable bit arithmetic.
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// The low and high bf16 of a packed pair, as f32.
__device__ __forceinline__ float lo_f32(unsigned x) { return __uint_as_float(x << 16); }
__device__ __forceinline__ float hi_f32(unsigned x) { return __uint_as_float(x & 0xffff0000u); }

// e^x by one ex2.approx with denormal results flushed to zero (__expf without fast-math
// compiles to the same instruction wrapped in a range fix-up for denormals, which tripled the
// instructions of the prep's exponential-heavy loops; decays that small are zero anyway).
__device__ __forceinline__ float fast_exp(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x * 1.4426950408889634f));
    return y;
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_0() { asm volatile("cp.async.wait_group 0;\n" ::); }

// A 64x64 tile of V (tokens t0.., value columns v0..) as 16-byte pieces, two per thread of 256;
// lanes run down the tokens so that the transposed shared-memory stores hit distinct banks.
__device__ __forceinline__ void load_v_tile(uint4 reg[2], const bf16_t* vrow0, int stride, int vd,
                                            int n, int v0) {
#pragma unroll
    for (int u = 0; u < 2; ++u) {
        int i = threadIdx.x + u * 256, r = i & 63, p = (i >> 6) * 8;
        reg[u] = make_uint4(0, 0, 0, 0);
        if (r < n && v0 + p < vd) reg[u] = *(const uint4*)(vrow0 + (long)r * stride + v0 + p);
    }
}
__device__ __forceinline__ void store_v_tile(bf16_t* bvT, int ldc, const uint4 reg[2], const float* sb) {
#pragma unroll
    for (int u = 0; u < 2; ++u) {
        int i = threadIdx.x + u * 256, r = i & 63, p = (i >> 6) * 8;
        const bf16_t* e = (const bf16_t*)&reg[u];
        float beta = sb[r];
#pragma unroll
        for (int q = 0; q < 8; ++q) bvT[(p + q) * ldc + r] = to_bf16(beta * bf16_to_f32(e[q]));
    }
}

// The per-chunk scratch blocks are PrepBlocks (common.cuh), read by the backward too and sized
// the same way by the launchers.
static_assert(PrepBlocks<64>::CHUNK == CH && PrepBlocks<64>::ROW_PAD == PAD, "prep block layout");

// ---------------------------------------------------------------------------------------------
// Kernel 1. Grid (n_chunks, B*HV), 256 threads (8 warps).
//
// Shared memory regions (bf16 rows padded by PAD):
//   kb  [CH][LDK]  k; later bvT [64][LDC], a value tile of β V transposed
//   qb  [max(CH·LDK, KP·LDC)]  q, then QG in place; later bkT [KP][LDC] = (β e^{cum} ⊙ K)ᵀ
//   cum [CH][KP] f32 (later TT [CH][CH+1], T), sb [CH] f32 (β), A [CH][CH+1] f32 (M)
//   Tb  [CH][LDC] then X [max(CH·LDK, KP·LDC)]: contiguous scratch (scaled operands of the
//       per-channel products; then Tb = T in bf16, X = KT / W / U staged for 16-byte stores)
template <int KP>
__device__ __forceinline__ void copy_out(bf16_t* dst, const bf16_t* src, int rows, int cols,
                                         int ld_src, int ld_dst, int col_limit) {
    // rows x cols (multiple of 8) bf16 from shared memory to global, 16 bytes per thread-step.
    const int pieces = cols / 8;
    for (int i = threadIdx.x; i < rows * pieces; i += blockDim.x) {
        int r = i / pieces, p = (i % pieces) * 8;
        if (p < col_limit) *(uint4*)(dst + (long)r * ld_dst + p) = *(const uint4*)(src + r * ld_src + p);
    }
}

// A butterfly step of [`butterfly16`]: a lane keeps the half of its values that its bit O
// selects and adds its partner's copy of that half.
template <int O, int H>
__device__ __forceinline__ void butterfly_step(float (&v)[16], int lane) {
    const bool up = lane & O;
#pragma unroll
    for (int q = 0; q < H; ++q) {
        float send = up ? v[q] : v[q + H], keep = up ? v[q + H] : v[q];
        v[q] = keep + __shfl_xor_sync(0xffffffffu, send, O);
    }
}

// Sums 16 values over a warp at once (16 shuffles where 16 separate reductions take 80):
// lanes 2j and 2j + 1 return the warp's sum of v[j].
__device__ __forceinline__ float butterfly16(float (&v)[16], int lane) {
    butterfly_step<16, 8>(v, lane);
    butterfly_step<8, 4>(v, lane);
    butterfly_step<4, 2>(v, lane);
    butterfly_step<2, 1>(v, lane);
    return v[0] + __shfl_xor_sync(0xffffffffu, v[0], 1);
}

template <int KP>
__device__ void chunk_prep(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                           const bf16_t* __restrict__ v, const float* __restrict__ g,
                           const float* __restrict__ beta, bf16_t* W, bf16_t* U, bf16_t* QG,
                           bf16_t* KT, bf16_t* AQK, float* EL, int T, int H, int HV, int kd,
                           int vd, int vp, float scale, int g_per_head, int delta) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    constexpr int LDK = KP + PAD, LDC = CH + PAD;
    constexpr int REGION = (CH * LDK > KP * LDC ? CH * LDK : KP * LDC);
    bf16_t* kb = (bf16_t*)smem_raw;
    bf16_t* bvT = kb;
    bf16_t* qb = kb + CH * LDK;
    bf16_t* bkT = qb;
    float* cum = (float*)(qb + REGION);
    constexpr int CUMSZ = (CH * KP > CH * (CH + 1) ? CH * KP : CH * (CH + 1));  // cum, later TT
    float* sb = cum + CUMSZ;
    float* A = sb + CH;
    bf16_t* Tb = (bf16_t*)(A + CH * (CH + 1));
    bf16_t* X = Tb + CH * LDC;

    const int c = blockIdx.x, bh = blockIdx.y, b = bh / HV, hv = bh % HV;
    const int hq = hv / (HV / H);
    const int t0 = c * CH, n = min(CH, T - t0);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, gq = lane >> 2, tq = lane & 3;
    const long blk = (long)bh * gridDim.x + c;
    bf16_t* aqk_out = AQK + blk * PrepBlocks<KP>::AQK;  // rows LDC apart

    // Load q, k (zero past kd and past the sequence end; 16-byte loads when rows allow), β,
    // and the log decays; then cum by a prefix sum down each channel.
    if (kd == KP) {
        // Every load issued before the first store (the launch has 256 threads): one round
        // trip to memory instead of one per piece.
        constexpr int RK = KP / 8, NP = CH * RK / 256;
        uint4 qv[NP], kv[NP];
#pragma unroll
        for (int u = 0; u < NP; ++u) {
            const int i = tid + u * 256, r = i / RK, p = (i % RK) * 8;
            qv[u] = kv[u] = make_uint4(0, 0, 0, 0);
            if (r < n) {
                long off = (((long)b * T + t0 + r) * H + hq) * kd + p;
                qv[u] = *(const uint4*)(q + off);
                kv[u] = *(const uint4*)(k + off);
            }
        }
#pragma unroll
        for (int u = 0; u < NP; ++u) {
            const int i = tid + u * 256, r = i / RK, p = (i % RK) * 8;
            *(uint4*)(qb + r * LDK + p) = qv[u];
            *(uint4*)(kb + r * LDK + p) = kv[u];
        }
    } else {
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
    }
    for (int r = tid; r < CH; r += blockDim.x)
        sb[r] = (r < n && delta) ? beta[((long)b * T + t0 + r) * HV + hv] : 1.0f;
    // One decay per token (GDN): its cumulative sum is one column (cum[r·KP], the only one
    // read), scanned by warp 0, and the per-row factors e^{cum_r} and e^{cum_last − cum_r}
    // that QG, KT and βK need go to `rowf` (in Tb, free until T is written) instead of an
    // exponential per element.
    float* rowf = (float*)Tb;
    if (g_per_head) {
        float* gh = A;  // A is free until M is written
        for (int r = tid; r < CH; r += blockDim.x)
            gh[r] = (r < n) ? g[((long)b * T + t0 + r) * HV + hv] : 0.f;  // padding: no decay
        __syncthreads();
        if (warp == 0) {
            const float a0 = gh[2 * lane], a1 = gh[2 * lane + 1];
            float s = a0 + a1;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                float y = __shfl_up_sync(0xffffffffu, s, o);
                if (lane >= o) s += y;
            }
            float before = __shfl_up_sync(0xffffffffu, s, 1);
            if (lane == 0) before = 0.f;
            const float c0 = before + a0, c1 = c0 + a1;
            const float last = __shfl_sync(0xffffffffu, c1, 31);
            cum[(2 * lane) * KP] = c0;
            cum[(2 * lane + 1) * KP] = c1;
            rowf[2 * lane] = fast_exp(c0);
            rowf[2 * lane + 1] = fast_exp(c1);
            rowf[CH + 2 * lane] = fast_exp(last - c0);
            rowf[CH + 2 * lane + 1] = fast_exp(last - c1);
        }
    } else if (kd == KP) {
        constexpr int NG = CH * KP / 4 / 256;  // all loads first, as for q and k
        float4 gv[NG];
#pragma unroll
        for (int u = 0; u < NG; ++u) {
            const int i = tid + u * 256, r = i / (KP / 4), p = (i % (KP / 4)) * 4;
            gv[u] = make_float4(0.f, 0.f, 0.f, 0.f);
            if (r < n) gv[u] = *(const float4*)(g + (((long)b * T + t0 + r) * HV + hv) * kd + p);
        }
#pragma unroll
        for (int u = 0; u < NG; ++u) {
            const int i = tid + u * 256, r = i / (KP / 4), p = (i % (KP / 4)) * 4;
            *(float4*)(cum + r * KP + p) = gv[u];
        }
    } else {
        for (int i = tid; i < CH * KP; i += blockDim.x) {
            int r = i / KP, ch = i % KP;
            cum[i] = (r < n && ch < kd) ? g[(((long)b * T + t0 + r) * HV + hv) * kd + ch] : 0.f;
        }
    }
    __syncthreads();
    if (!g_per_head) {
        for (int ch = tid; ch < KP; ch += blockDim.x) {
            float acc = 0.f;
            for (int r = 0; r < CH; ++r) {
                acc += cum[r * KP + ch];
                cum[r * KP + ch] = acc;
            }
        }
    }
    __syncthreads();

    // M_ij = β_i k_i·k_j e^{cum_i−cum_j} (j < i, into A) and AQK_ij = scale q_i·k_j e^{cum_i−cum_j}
    // (j ≤ i, to global). Blocks above the diagonal are never read (chunk_state skips them).
    if (g_per_head) {
        // One decay per token: the exponentials factor out of the products. Warps 0-3: M rows
        // 16w..; warps 4-7: AQK rows 16(w−4)..; tiles above the diagonal skipped.
        const int mat = warp >> 2, r0 = (warp & 3) * 16;
        if (mat == 1 || delta) {
            const bf16_t* xa = mat ? qb : kb;
            float acc[8][4];
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
#pragma unroll
            for (int ks = 0; ks < KP / 16; ++ks) {
                unsigned a[4];
                frag_a(a, xa, LDK, r0, ks * 16);
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    if (j * 8 > r0 + 15) continue;
                    unsigned bb[2];
                    frag_b(bb, kb, LDK, j * 8, ks * 16);
                    mma_bf16(acc[j], a, bb);
                }
            }
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                if (j * 8 > r0 + 15) continue;
                float val[4];
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    int i = r0 + gq + (e >> 1) * 8, jj = j * 8 + 2 * tq + (e & 1);
                    bool keep = mat ? (jj <= i) : (jj < i);
                    val[e] = keep ? acc[j][e] * fast_exp(cum[i * KP] - cum[jj * KP]) : 0.f;
                    if (!mat) A[i * (CH + 1) + jj] = val[e] * sb[i];
                }
                if (mat) {
                    int col = j * 8 + 2 * tq;
                    *(unsigned*)(aqk_out + (r0 + gq) * LDC + col) = pack_bf16(val[0] * scale, val[1] * scale);
                    *(unsigned*)(aqk_out + (r0 + gq + 8) * LDC + col) = pack_bf16(val[2] * scale, val[3] * scale);
                }
            }
        }
    } else {
        // Per-channel decays (KDA, GLA) do not factor out of a dot product. Off-diagonal
        // 16-blocks (I > J) factor through the reference r = cum at row 16I, where every
        // exponent is ≤ 0: x_i e^{cum_i − r} · k_j e^{r − cum_j}, on tensor cores. Diagonal
        // blocks: exact per-pair sums.
        bf16_t* xs = Tb;              // [32][LDK]: rows 0-15 k_i e^{cum_i−r}, 16-31 q_i e^{cum_i−r}
        bf16_t* ks_ = Tb + 32 * LDK;  // [48][LDK]: k_j e^{r−cum_j}, j < 16I
        for (int I = 1; I < CH / 16; ++I) {
            const int ri = 16 * I;
            for (int i = tid; i < (32 + ri) * KP; i += blockDim.x) {
                int r = i / KP, ch = i % KP;
                float ref = cum[ri * KP + ch];
                if (r < 32) {
                    int row = ri + (r & 15);
                    const bf16_t* src = (r < 16) ? kb : qb;
                    xs[r * LDK + ch] = to_bf16(bf16_to_f32(src[row * LDK + ch]) * fast_exp(cum[row * KP + ch] - ref));
                } else {
                    int row = r - 32;
                    ks_[row * LDK + ch] = to_bf16(bf16_to_f32(kb[row * LDK + ch]) * fast_exp(ref - cum[row * KP + ch]));
                }
            }
            __syncthreads();
            // Tasks: (matrix, n-tile of 8 columns < ri); 2·(ri/8) of them over 8 warps.
            for (int task = warp; task < 2 * (ri / 8); task += 8) {
                const int mat = task / (ri / 8), j = task % (ri / 8);
                if (mat == 0 && !delta) continue;
                float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
                for (int kk = 0; kk < KP / 16; ++kk) {
                    unsigned a[4], bb[2];
                    frag_a(a, xs, LDK, mat * 16, kk * 16);
                    frag_b(bb, ks_, LDK, j * 8, kk * 16);
                    mma_bf16(acc, a, bb);
                }
                int i0 = ri + gq, col = j * 8 + 2 * tq;
                if (mat) {
                    *(unsigned*)(aqk_out + i0 * LDC + col) = pack_bf16(acc[0] * scale, acc[1] * scale);
                    *(unsigned*)(aqk_out + (i0 + 8) * LDC + col) = pack_bf16(acc[2] * scale, acc[3] * scale);
                } else {
                    A[i0 * (CH + 1) + col] = acc[0] * sb[i0];
                    A[i0 * (CH + 1) + col + 1] = acc[1] * sb[i0];
                    A[(i0 + 8) * (CH + 1) + col] = acc[2] * sb[i0 + 8];
                    A[(i0 + 8) * (CH + 1) + col + 1] = acc[3] * sb[i0 + 8];
                }
            }
            __syncthreads();
        }
        // Diagonal blocks: one warp per (block, row i), lanes over channels (row strides in
        // cum would put a warp's loads in one bank), all 16 columns j of the block and both
        // matrices at once: q_i, k_i, cum_i load once, each e^{cum_i − cum_j} serves M and AQK,
        // and the 32 sums are independent (one pair per warp was a chain of dependent loads and
        // a 5-step reduction each). Columns past i are computed too (no divergent branches) with
        // the exponent clamped at 0 so they stay finite, and dropped at the store.
        for (int task = warp; task < 4 * 16; task += 8) {
            const int blk16 = task >> 4, li = task & 15;
            const int i = blk16 * 16 + li, j0 = blk16 * 16;
            float aq[16], ak[16];
#pragma unroll
            for (int jj = 0; jj < 16; ++jj) aq[jj] = ak[jj] = 0.f;
#pragma unroll
            for (int c = 0; c < KP / 32; ++c) {
                const int ch = lane + 32 * c;
                const float qi = bf16_to_f32(qb[i * LDK + ch]), ki = bf16_to_f32(kb[i * LDK + ch]);
                const float ci = cum[i * KP + ch];
#pragma unroll
                for (int jj = 0; jj < 16; ++jj) {
                    const float kj = bf16_to_f32(kb[(j0 + jj) * LDK + ch]) *
                                     fast_exp(fminf(ci - cum[(j0 + jj) * KP + ch], 0.f));
                    aq[jj] += qi * kj;
                    ak[jj] += ki * kj;
                }
            }
            const float sq = butterfly16(aq, lane), sk = delta ? butterfly16(ak, lane) : 0.f;
            const int lj = lane >> 1, j = j0 + lj;
            if ((lane & 1) == 0) {
                if (lj <= li) aqk_out[i * LDC + j] = to_bf16(sq * scale);
                if (delta && lj < li) A[i * (CH + 1) + j] = sk * sb[i];
            }
        }
        for (int e = tid; e < 4 * 256; e += blockDim.x) {
            const int blk16 = e >> 8, li = (e >> 4) & 15, lj = e & 15;
            if (lj > li) aqk_out[(blk16 * 16 + li) * LDC + blk16 * 16 + lj] = 0;
        }
    }
    __syncthreads();

    // QG in place in qb, KT staged transposed in X, EL; then both out with 16-byte stores.
    const int last = CH - 1;
    if (g_per_head) {
        // Eight channels of one row per step (16-byte loads and in-place stores; lanes run
        // down the rows, so the transposed KT stores of a warp fill consecutive halves of one
        // bank row and the loads of 8 lanes meet every bank once).
        for (int it = tid; it < CH * (KP / 8); it += blockDim.x) {
            const int r = it % CH, p = (it / CH) * 8;
            uint4 qv = *(const uint4*)(qb + r * LDK + p), kv = *(const uint4*)(kb + r * LDK + p);
            const float fq = scale * rowf[r], fk = rowf[CH + r];
            unsigned* qw = (unsigned*)&qv;
            const unsigned* kw = (const unsigned*)&kv;
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                qw[e] = pack_bf16(lo_f32(qw[e]) * fq, hi_f32(qw[e]) * fq);
                X[(p + 2 * e) * LDC + r] = to_bf16(lo_f32(kw[e]) * fk);
                X[(p + 2 * e + 1) * LDC + r] = to_bf16(hi_f32(kw[e]) * fk);
            }
            *(uint4*)(qb + r * LDK + p) = qv;
        }
        // Channels past kd carry no decay (as the per-channel path's zero-padded cum gives).
        for (int ch = tid; ch < KP; ch += blockDim.x) EL[blk * KP + ch] = ch < kd ? rowf[last] : 1.f;
    } else {
        for (int i = tid; i < CH * KP; i += blockDim.x) {
            int r = i / KP, ch = i % KP;
            float cr = cum[i];
            qb[r * LDK + ch] = to_bf16(bf16_to_f32(qb[r * LDK + ch]) * scale * fast_exp(cr));
            X[ch * LDC + r] = to_bf16(bf16_to_f32(kb[r * LDK + ch]) * fast_exp(cum[last * KP + ch] - cr));
        }
        for (int ch = tid; ch < KP; ch += blockDim.x) EL[blk * KP + ch] = fast_exp(cum[last * KP + ch]);
    }
    __syncthreads();
    copy_out<KP>(QG + blk * PrepBlocks<KP>::QG, qb, CH, KP, LDK, LDK, KP);
    copy_out<KP>(KT + blk * PrepBlocks<KP>::KT, X, KP, CH, LDC, LDC, CH);

    // T = (I + M)⁻¹, blockwise over 16-blocks, into TT (f32, over cum once nothing reads it):
    // diagonal blocks by forward substitution (one warp each), then the blocks below by
    // distance d = I − J: T_IJ = −T_II Σ_{J ≤ K < I} M_IK T_KJ.
    float* TT = cum;
    const int LT = CH + 1;
    // The first value tile streams in while T is solved (16-byte rows need vd % 8 == 0).
    const bool vvec = (vd % 8) == 0;
    const bf16_t* vrow0 = v + (((long)b * T + t0) * HV + hv) * vd;
    uint4 vreg[2];
    if (vvec) load_v_tile(vreg, vrow0, HV * vd, vd, n, 0);
    __syncthreads();  // QG is out: qb is free for bkT
    // bkT = (β e^{cum} ⊙ K)ᵀ over qb (W's operand: delta only). Per channel it reads cum, so
    // it comes before the solve; one decay per token needs only rowf, so the warps the
    // forward substitution leaves idle build it meanwhile.
    if (!g_per_head && delta) {
        for (int i = tid; i < CH * KP; i += blockDim.x) {
            int r = i / KP, ch = i % KP;
            bkT[ch * LDC + r] = to_bf16(sb[r] * fast_exp(cum[i]) * bf16_to_f32(kb[r * LDK + ch]));
        }
        __syncthreads();  // nobody reads cum any more
    }
    if (delta && warp < 4) {
        // Lane j (and j + 16, a copy) holds column j of the block in registers. As T's column
        // j is 0 above row j and 1 on it, t_i = −Σ_{m<i} M_im t_m for i > j needs no bounds
        // that depend on j: the unrolled loops read M by broadcasts and chain only FMAs (the
        // old loop chained a shared-memory load and a __syncwarp per step).
        const int base = warp * 16, j = lane & 15;
        float t[16];
#pragma unroll
        for (int i = 0; i < 16; ++i) {
            float x = 0.f;
#pragma unroll
            for (int m = 0; m < i; ++m) x += A[(base + i) * LT + base + m] * t[m];
            t[i] = (i == j) ? 1.f : (i < j ? 0.f : -x);
        }
        if (lane < 16) {
#pragma unroll
            for (int i = 0; i < 16; ++i) TT[(base + i) * LT + base + j] = t[i];
        }
    } else if (g_per_head && delta) {
        for (int it = tid - 128; it < CH * (KP / 8); it += 128) {
            const int r = it % CH, p = (it / CH) * 8;
            uint4 kv = *(const uint4*)(kb + r * LDK + p);
            const unsigned* kw = (const unsigned*)&kv;
            const float f = sb[r] * rowf[r];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                bkT[(p + 2 * e) * LDC + r] = to_bf16(lo_f32(kw[e]) * f);
                bkT[(p + 2 * e + 1) * LDC + r] = to_bf16(hi_f32(kw[e]) * f);
            }
        }
    }
    if (delta) {
        __syncthreads();
        // The blocks below the diagonal by merging, on tensor cores (tf32, as FLA's solve_tril;
        // T is rounded to bf16 for W and U anyway): pairs first, T_10 = −T_11 M_10 T_00 and
        // T_32 = −T_33 M_32 T_22 (warps 0-3: block × 8-column tile), then the 32×32 halves,
        // T_BA = −T_BB (M_BA T_AA) (8 warps: 16-row × 8-column tiles). Products run only over
        // the nonzero blocks of the triangular factors (TT's blocks above the diagonal are
        // never written). Each product lands in the block of TT it becomes, its operand
        // fragments read into registers before it is overwritten.
        if (warp < 4) {
            const int I = 2 * (warp >> 1) + 1, J = I - 1, n0 = J * 16 + (warp & 1) * 8;
            float x[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
            for (int k0 = 0; k0 < 16; k0 += 8) {
                unsigned af[4], bf[2];
                frag_a_tf32(af, A, LT, I * 16, J * 16 + k0);
                frag_b_tf32(bf, TT, LT, J * 16 + k0, n0);
                mma_tf32(x, af, bf);
            }
            store_c(TT, LT, I * 16, n0, x, 1.f);  // M_IJ T_JJ, in block (I, J)
            __syncwarp();
            unsigned bx[2][2];
#pragma unroll
            for (int ks = 0; ks < 2; ++ks) frag_b_tf32(bx[ks], TT, LT, I * 16 + ks * 8, n0);
            __syncwarp();
            float t[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
            for (int ks = 0; ks < 2; ++ks) {
                unsigned af[4];
                frag_a_tf32(af, TT, LT, I * 16, I * 16 + ks * 8);
                mma_tf32(t, af, bx[ks]);
            }
            store_c(TT, LT, I * 16, n0, t, -1.f);
        }
        __syncthreads();
        {
            const int rt = warp >> 2, n0 = (warp & 3) * 8, r0 = 32 + 16 * rt;
            // Y = M_BA T_AA into TT's block (B, A): T_AA's column tile n0 is zero above row
            // 16·(n0 / 16).
            float y[4] = {0.f, 0.f, 0.f, 0.f};
            for (int k0 = (n0 / 16) * 16; k0 < 32; k0 += 8) {
                unsigned af[4], bf[2];
                frag_a_tf32(af, A, LT, r0, k0);
                frag_b_tf32(bf, TT, LT, k0, n0);
                mma_tf32(y, af, bf);
            }
            store_c(TT, LT, r0, n0, y, 1.f);
            __syncthreads();
            // T_BA = −T_BB Y: T_BB's row tile rt is zero right of column 32 + 16(rt + 1).
            unsigned by[4][2];
#pragma unroll
            for (int ks = 0; ks < 4; ++ks)
                if (ks < 2 * (rt + 1)) frag_b_tf32(by[ks], TT, LT, 32 + ks * 8, n0);
            __syncthreads();
            float t[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
            for (int ks = 0; ks < 4; ++ks) {
                if (ks >= 2 * (rt + 1)) break;
                unsigned af[4];
                frag_a_tf32(af, TT, LT, r0, 32 + ks * 8);
                mma_tf32(t, af, by[ks]);
            }
            store_c(TT, LT, r0, n0, t, -1.f);
        }
        __syncthreads();
    }
    // T in bf16, eight columns per 16-byte store.
    for (int it = tid; it < CH * CH / 8; it += blockDim.x) {
        const int r = it / (CH / 8), c0 = (it % (CH / 8)) * 8;
        unsigned w[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int c = c0 + 2 * e;
            float lo = (r == c) ? 1.f : (delta && c < r ? TT[r * LT + c] : 0.f);
            float hi = (r == c + 1) ? 1.f : (delta && c + 1 < r ? TT[r * LT + c + 1] : 0.f);
            w[e] = pack_bf16(lo, hi);
        }
        *(uint4*)(Tb + r * LDC + c0) = make_uint4(w[0], w[1], w[2], w[3]);
    }
    __syncthreads();

    // W = T bk (delta only), staged in X as [CH][LDK]: 4 row tiles x KP/8 column tiles.
    if (delta) {
        const int r0 = (warp & 3) * 16, n0 = (warp >> 2) * (KP / 16);
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
            *(unsigned*)(X + (r0 + gq) * LDK + col) = pack_bf16(acc[j][0], acc[j][1]);
            *(unsigned*)(X + (r0 + gq + 8) * LDK + col) = pack_bf16(acc[j][2], acc[j][3]);
        }
        __syncthreads();
        copy_out<KP>(W + blk * PrepBlocks<KP>::W, X, CH, KP, LDK, LDK, KP);
    }
    // U = T (β V), 64 value columns at a time: β V transposed into bvT (over kb), the product
    // staged in X as [CH][LDC].
    bf16_t* u_out = U + blk * CH * vp;
    for (int v0 = 0; v0 < vp; v0 += 64) {
        __syncthreads();
        if (vvec) {
            store_v_tile(bvT, LDC, vreg, sb);
        } else {
            for (int i = tid; i < CH * 64; i += blockDim.x) {
                int r = i % CH, cc = i / CH;
                float val = 0.f;
                if (r < n && v0 + cc < vd) val = sb[r] * bf16_to_f32(vrow0[(long)r * HV * vd + v0 + cc]);
                bvT[cc * LDC + r] = to_bf16(val);
            }
        }
        __syncthreads();
        if (vvec && v0 + 64 < vp) load_v_tile(vreg, vrow0, HV * vd, vd, n, v0 + 64);  // next tile
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
            int col = (n0 + j) * 8 + 2 * tq;
            *(unsigned*)(X + (r0 + gq) * LDC + col) = pack_bf16(acc[j][0], acc[j][1]);
            *(unsigned*)(X + (r0 + gq + 8) * LDC + col) = pack_bf16(acc[j][2], acc[j][3]);
        }
        __syncthreads();
        copy_out<KP>(u_out + v0, X, CH, 64, LDC, vp, vp - v0);
    }
}

// Kernel 2. Grid (vp / BVT, B*HV), 256 threads (8 warps); BVT = 8·NB value columns per block.
//
// The pass is sequential over chunks, so its time is the length of one chunk's dependent
// chain times the number of chunks (it takes as long with one head as with sixteen; ncu: one
// warp a scheduler, ~6 cycles between its instructions). The chain is S → v' → S; the outputs
// hang off it. So the warps split in two:
//   state warps 0-3: own state rows [w·KP/4, (w+1)·KP/4) in f32 accumulators; write Sᵀ,
//     compute v' = U − W S for tokens 16w.., write v'ᵀ, then S ← EL ⊙ S + KT v';
//   output warps 4-7: o = QG S + AQK v' for tokens 16(w−4).., and the copies of the
//     next-but-one chunk's operands (bulk copies by warp 4 on sm_90, see CHUNK_TMA).
// Two barriers a chunk: A (Sᵀ written, this chunk's operands landed), C (v'ᵀ written).
// Shared memory is addressed by 32-bit offsets computed once (per-lane ldmatrix offsets, per-
// thread copy offsets): generic pointers cost ~half of the old kernel's instructions in
// address arithmetic.
#define STATE_THREADS 256
#define COPIERS 128  // the output warps' threads

// Byte offsets of one pipeline stage's operands (bf16 rows padded by PAD; EL f32). The
// launcher sizes the stage the same way.
template <int KP, int NB>
struct StageLayout {
    static constexpr int LDS = KP + PAD, LDC = CH + PAD, LDU = 8 * NB + PAD;
    static constexpr int W = 0, QG = W + 2 * CH * LDS, KT = QG + 2 * CH * LDS, AQK = KT + 2 * KP * LDC,
                         U = AQK + 2 * CH * LDC, EL = U + 2 * CH * LDU, BYTES = EL + 4 * KP;
};

__device__ __forceinline__ void cp_async16_to(unsigned dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_wait_1() { asm volatile("cp.async.wait_group 1;\n" ::); }

// One ROWS x COLS bf16 tile (global rows ld_src apart) into shared rows LDD apart, 16 bytes per
// cp.async, by the COPIERS threads (ct = 0..COPIERS-1): each copies the same column piece of
// every RP-th row, so the offsets past its first piece are compile-time.
template <int ROWS, int COLS, int LDD>
__device__ __forceinline__ void copy_tile(unsigned dst, const bf16_t* src, int ld_src, int ct) {
    constexpr int PR = COLS / 8, RP = COPIERS / PR;
    static_assert(COPIERS % PR == 0 && ROWS % RP == 0, "copy_tile: tile shape");
    const int r = ct / PR, p = ct % PR;
    dst += (r * LDD + p * 8) * 2;
    src += (long)r * ld_src + p * 8;
#pragma unroll
    for (int u = 0; u < ROWS / RP; ++u) cp_async16_to(dst + u * RP * LDD * 2, src + (long)u * RP * ld_src);
}

// On sm_90 the operands arrive by bulk copies (the TMA unit: one instruction a contiguous
// block, no per-16-byte address arithmetic), which one thread issues and an mbarrier per stage
// counts in bytes; ncu showed the cp.async issue (~16 copies and their 64-bit addresses per
// thread a chunk) made the output warps the last at every barrier. Older GPUs keep cp.async.
#if __CUDA_ARCH__ >= 900
#define CHUNK_TMA 1
#else
#define CHUNK_TMA 0
#endif

template <int KP, int NB>
__device__ void chunk_state(const bf16_t* W, const bf16_t* U, const bf16_t* QG, const bf16_t* KT,
                            const bf16_t* AQK, const float* EL, float* state, bf16_t* o,
                            float* CS, int T, int HV, int kd, int vd, int vp, int delta, int save) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    using L = StageLayout<KP, NB>;
    constexpr int BVT = 8 * NB, LDS = L::LDS, LDC = L::LDC, LDU = L::LDU;
    constexpr int MT = KP / 64;  // 16-row state tiles per state warp
    const unsigned sbase = smem_u32(smem_raw);
    bf16_t* sT = (bf16_t*)(smem_raw + NSTAGE * L::BYTES);  // [BVT][LDS]: Sᵀ, B operand of W S, QG S
    bf16_t* vT = sT + BVT * LDS;                            // [BVT][LDC]: v'ᵀ
    const unsigned sT_u = sbase + NSTAGE * L::BYTES, vT_u = sT_u + 2 * BVT * LDS;
    const int bh = blockIdx.y, b = bh / HV, hv = bh % HV, v0 = blockIdx.x * BVT;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, gq = lane >> 2, tq = lane & 3;
    const bool state_warp = warp < 4;
    const int wq = warp & 3, r0 = wq * 16, srow0 = wq * (KP / 4);
    const int nc = (T + CH - 1) / CH;
    float* sp = state + (long)bh * kd * vd;
    // Per-lane ldmatrix offsets (bytes): A fragments of row-major tiles, and B fragments of two
    // adjacent 8-column n-tiles at once from tiles stored [n][k].
    const unsigned a_lds = ((lane & 15) * LDS + (lane >> 4) * 8) * 2;
    const unsigned a_ldc = ((lane & 15) * LDC + (lane >> 4) * 8) * 2;
    const unsigned b_lds = (((lane & 7) + ((lane >> 4) & 1) * 8) * LDS + ((lane >> 3) & 1) * 8) * 2;
    const unsigned b_ldc = (((lane & 7) + ((lane >> 4) & 1) * 8) * LDC + ((lane >> 3) & 1) * 8) * 2;

#if CHUNK_TMA
    const unsigned bar_u = vT_u + 2 * BVT * LDC;  // one mbarrier per stage (after vT)
    if (tid == 0) {
        for (int i = 0; i < NSTAGE; ++i) mbar_init(bar_u + 8 * i, 1);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
#endif
    auto load = [&](int c) {  // chunk c's operands into its stage (output warps)
        using B = PrepBlocks<KP>;
        const unsigned st = sbase + (c % NSTAGE) * L::BYTES;
        const long blk = (long)bh * nc + c;
        const int ct = tid - (STATE_THREADS - COPIERS);
#if CHUNK_TMA
        const unsigned bar = bar_u + 8 * (c % NSTAGE);
        if (tid == STATE_THREADS - COPIERS) {  // one thread of the output warps
            mbar_expect_tx(bar, 2 * ((delta ? B::W : 0) + B::QG + B::KT + B::AQK) + 4 * KP);
            if (delta) bulk_copy(st + L::W, W + blk * B::W, 2 * B::W, bar);
            bulk_copy(st + L::QG, QG + blk * B::QG, 2 * B::QG, bar);
            bulk_copy(st + L::KT, KT + blk * B::KT, 2 * B::KT, bar);
            bulk_copy(st + L::AQK, AQK + blk * B::AQK, 2 * B::AQK, bar);
            bulk_copy(st + L::EL, EL + blk * KP, KP * 4, bar);
        }
        // U's 16 or 32 columns of each row are not contiguous: cp.async, one piece a thread.
        copy_tile<CH, BVT, LDU>(st + L::U, U + blk * CH * vp + v0, vp, ct);
#else
        if (delta) copy_tile<CH, KP, LDS>(st + L::W, W + blk * B::W, LDS, ct);
        copy_tile<CH, KP, LDS>(st + L::QG, QG + blk * B::QG, LDS, ct);
        copy_tile<KP, CH, LDC>(st + L::KT, KT + blk * B::KT, LDC, ct);
        copy_tile<CH, CH, LDC>(st + L::AQK, AQK + blk * B::AQK, LDC, ct);
        copy_tile<CH, BVT, LDU>(st + L::U, U + blk * CH * vp + v0, vp, ct);
        if (ct < KP / 4) cp_async16_to(st + L::EL + ct * 16, EL + blk * KP + ct * 4);
#endif
    };

    // S tile in the state warps' accumulators: s[mt][nt][e] is row srow0 + 16mt + gq (+8 for
    // e ≥ 2), column v0 + 8nt + 2tq + (e & 1).
    float s[MT][NB][4];
    acc_tile_load<MT, NB>(s, sp, vd, srow0, v0, kd, vd, state_warp);

    // Three stages: chunks c+1 and c+2 stream in while chunk c computes.
    if (!state_warp) {
        load(0);
        cp_async_commit();
        if (1 < nc) load(1);
        cp_async_commit();
    }
    for (int c = 0; c < nc; ++c) {
        const unsigned st = sbase + (c % NSTAGE) * L::BYTES;
        const unsigned char* stp = smem_raw + (c % NSTAGE) * L::BYTES;
        if (state_warp) {
            // The state entering chunk c, [B, HV, n_chunks, K, V] f32, for the backward pass.
            if (save) acc_tile_store<MT, NB>(s, CS + ((long)bh * nc + c) * kd * vd, vd, srow0, v0, kd, vd);
            acc_tile_store_bf16_t<MT, NB>(s, sT, LDS, srow0);  // Sᵀ for this chunk's W S and QG S
        } else {
            cp_async_wait_1();  // this thread's copies of chunk c have landed
        }
        __syncthreads();  // A
#if CHUNK_TMA
        mbar_wait(bar_u + 8 * (c % NSTAGE), (c / NSTAGE) & 1);  // chunk c's operands have landed
#endif

        // State warps: acc = W S (v' = U − acc); output warps: acc = QG S. Tokens r0.. .
        // Even and odd k-steps accumulate apart and are added at the end: two chains of
        // dependent MMAs half as long (this product is on the chunk's critical path).
        float acc[NB][4], acc2[NB][4];
#pragma unroll
        for (int nt = 0; nt < NB; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[nt][e] = acc2[nt][e] = 0.f;
        if (!state_warp || delta) {
            const unsigned abase = st + (state_warp ? L::W : L::QG) + a_lds + r0 * LDS * 2;
#pragma unroll
            for (int ks = 0; ks < KP / 16; ++ks) {
                unsigned a[4];
                ldsm_x4(a, abase + ks * 32);
#pragma unroll
                for (int np = 0; np < NB / 2; ++np) {
                    unsigned bb[4];
                    ldsm_x4(bb, sT_u + b_lds + (np * 16 * LDS + ks * 16) * 2);
                    mma_bf16((ks & 1) ? acc2[2 * np] : acc[2 * np], a, bb);
                    mma_bf16((ks & 1) ? acc2[2 * np + 1] : acc[2 * np + 1], a, bb + 2);
                }
            }
#pragma unroll
            for (int nt = 0; nt < NB; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[nt][e] += acc2[nt][e];
        }
        if (state_warp) {
            const bf16_t* us = (const bf16_t*)(stp + L::U);
#pragma unroll
            for (int nt = 0; nt < NB; ++nt)
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    int r = r0 + gq + half * 8, col = nt * 8 + 2 * tq;
                    unsigned uu = *(const unsigned*)(us + r * LDU + col);
                    vT[col * LDC + r] = to_bf16(bf16_to_f32((bf16_t)(uu & 0xffff)) - acc[nt][half * 2]);
                    vT[(col + 1) * LDC + r] = to_bf16(bf16_to_f32((bf16_t)(uu >> 16)) - acc[nt][half * 2 + 1]);
                }
        }
        __syncthreads();  // C

        if (state_warp) {
            // S ← EL ⊙ S + KT v'.
            const float* el = (const float*)(stp + L::EL);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                float e0 = el[srow0 + mt * 16 + gq], e1 = el[srow0 + mt * 16 + gq + 8];
#pragma unroll
                for (int nt = 0; nt < NB; ++nt) {
                    s[mt][nt][0] *= e0;
                    s[mt][nt][1] *= e0;
                    s[mt][nt][2] *= e1;
                    s[mt][nt][3] *= e1;
                }
            }
#pragma unroll
            for (int ks = 0; ks < CH / 16; ++ks) {
                unsigned bb[NB / 2][4];
#pragma unroll
                for (int np = 0; np < NB / 2; ++np) ldsm_x4(bb[np], vT_u + b_ldc + (np * 16 * LDC + ks * 16) * 2);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    unsigned a[4];
                    ldsm_x4(a, st + L::KT + a_ldc + ((srow0 + mt * 16) * LDC + ks * 16) * 2);
#pragma unroll
                    for (int np = 0; np < NB / 2; ++np) {
                        mma_bf16(s[mt][2 * np], a, bb[np]);
                        mma_bf16(s[mt][2 * np + 1], a, bb[np] + 2);
                    }
                }
            }
        } else {
            // o += AQK v' (causal: token tiles after this warp's are zero), then the copies of
            // chunk c + 2 into the stage chunk c − 1 left (free since barrier A).
#pragma unroll
            for (int ks = 0; ks < CH / 16; ++ks) {
                if (ks > wq) break;
                unsigned a[4];
                ldsm_x4(a, st + L::AQK + a_ldc + (r0 * LDC + ks * 16) * 2);
#pragma unroll
                for (int np = 0; np < NB / 2; ++np) {
                    unsigned bb[4];
                    ldsm_x4(bb, vT_u + b_ldc + (np * 16 * LDC + ks * 16) * 2);
                    mma_bf16(acc[2 * np], a, bb);
                    mma_bf16(acc[2 * np + 1], a, bb + 2);
                }
            }
            const int t0 = c * CH;
#pragma unroll
            for (int nt = 0; nt < NB; ++nt)
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    int t = t0 + r0 + gq + half * 8, col = v0 + nt * 8 + 2 * tq;
                    if (t >= T || col >= vd) continue;
                    bf16_t* op = o + (((long)b * T + t) * HV + hv) * vd + col;
                    if (col + 1 < vd) *(unsigned*)op = pack_bf16(acc[nt][half * 2], acc[nt][half * 2 + 1]);
                    else op[0] = to_bf16(acc[nt][half * 2]);
                }
            if (c + NSTAGE - 1 < nc) load(c + NSTAGE - 1);
            cp_async_commit();
        }
    }
    if (!state_warp) cp_async_wait_0();
    if (state_warp) acc_tile_store<MT, NB>(s, sp, vd, srow0, v0, kd, vd);
}

#define PREP(KP)                                                                                    \
    extern "C" __global__ void __launch_bounds__(256, 2) chunk_prep_k##KP(  /* 2 fit in shared memory */ \
        const bf16_t* q, const bf16_t* k, const bf16_t* v, const float* g, const float* beta,      \
        bf16_t* W, bf16_t* U, bf16_t* QG, bf16_t* KT, bf16_t* AQK, float* EL, int T, int H, int HV, \
        int kd, int vd, int vp, float scale, int g_per_head, int delta) {                          \
        chunk_prep<KP>(q, k, v, g, beta, W, U, QG, KT, AQK, EL, T, H, HV, kd, vd, vp, scale,       \
                       g_per_head, delta);                                                          \
    }
#define STATE(KP, NB)                                                                               \
    extern "C" __global__ void __launch_bounds__(STATE_THREADS, 1) chunk_state_k##KP##_v##NB(                   \
        const bf16_t* W, const bf16_t* U, const bf16_t* QG, const bf16_t* KT, const bf16_t* AQK,   \
        const float* EL, float* state, bf16_t* o, float* CS, int T, int HV, int kd, int vd, int vp, \
        int delta, int save) {                                                                      \
        chunk_state<KP, NB>(W, U, QG, KT, AQK, EL, state, o, CS, T, HV, kd, vd, vp, delta, save);  \
    }
PREP(64)
PREP(128)
STATE(64, 2)
STATE(64, 4)
STATE(128, 2)
STATE(128, 4)
