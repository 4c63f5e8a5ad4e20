// Backward pass of the chunked GDN / KDA / GLA recurrence (kernels/chunk_linear.cu is the
// forward; mixers::linear_core::backward is the specification). Per chunk c of 64 tokens with
// entry state S_c, exit-state gradient dS (w.r.t. S_{c+1}) and output gradient dO:
//
//   forward:  v' = U − W S_c;  o = QG S_c + AQK v';  S_{c+1} = EL ⊙ S_c + KTᵀ... (KT v')
//
// 1. lbwd_state: sequential in reverse over chunks, parallel over (sequence, value head, 16
//    value columns), on the forward's per-chunk operands (chunk_prep's W, QG, KT, AQK, EL):
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
// Padded tokens (past T) have q = k = v = 0 and g = 0, so γ_63 = γ_last of a ragged chunk.
#define BCH 64   // tokens per chunk (CH of the forward)
#define BVT 16   // value columns per tile
#define LV 17    // padded row length of value tiles

// ---------------------------------------------------------------------------------------------
// Kernel 1. Grid (vd / 16, B*HV), 256 threads.
template <int KP>
__device__ void lbwd_state(const bf16_t* __restrict__ W, const bf16_t* __restrict__ QG,
                           const bf16_t* __restrict__ KT, const bf16_t* __restrict__ AQK,
                           const float* __restrict__ EL, const bf16_t* __restrict__ dO,
                           const float* __restrict__ dht, float* DS, float* DVP, float* dh0,
                           int T, int HV, int kd, int vd, int delta, int has_dht) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    constexpr int LQ = KP + 1, LC = BCH + 1;
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
            aqk[r * LC + cc] = (cc <= r) ? bf16_to_f32(AQK[blk * BCH * BCH + i]) : 0.f;
        }
        for (int i = tid; i < KP * BCH; i += blockDim.x) {
            int r = i / BCH, cc = i % BCH;
            kt[r * LC + cc] = bf16_to_f32(KT[blk * KP * BCH + i]);
        }
        for (int i = tid; i < BCH * KP; i += blockDim.x) {
            int r = i / KP, cc = i % KP;
            qg[r * LQ + cc] = bf16_to_f32(QG[blk * BCH * KP + i]);
            w[r * LQ + cc] = delta ? bf16_to_f32(W[blk * BCH * KP + i]) : 0.f;
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
// Kernel 2. Grid (n_chunks, B*HV), 256 threads. Shared memory (f32):
//   dQG, dKd, dbk [64][KP] accumulators (phase 0: k and cum [64][KP+1] scratch; phase 2: dγ in
//   dQG's place), dA, dM, T [64][65] (phase 0: M in dA; phase 2: E_ij = e^{γ_i−γ_j} for GDN in
//   T), bk [64][KP] (phase 2: cum), value tiles (phase 2: q, k as bf16), small vectors.
template <int KP>
__device__ void lbwd_chunk(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                           const bf16_t* __restrict__ v, const float* __restrict__ g,
                           const float* __restrict__ beta, const float* __restrict__ CS,
                           const float* __restrict__ DS, const float* __restrict__ DVP,
                           const bf16_t* __restrict__ dO, float* DQ, float* DK, float* DV,
                           float* DG, float* DB, int T, int H, int HV, int kd, int vd,
                           float scale, int g_per_head, int delta) {
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
    for (int i = tid; i < BCH * KP; i += blockDim.x) {
        int r = i / KP, ch = i % KP;
        float kv = 0.f;
        if (r < n && ch < kd) kv = bf16_to_f32(k[(((long)b * T + t0 + r) * H + hq) * kd + ch]);
        kf[r * LP + ch] = kv;
    }
    for (int r = tid; r < BCH; r += blockDim.x) {
        sbeta[r] = (r < n) ? (delta ? beta[((long)b * T + t0 + r) * HV + hv] : 1.f) : 0.f;
        sgh[r] = (g_per_head && r < n) ? g[((long)b * T + t0 + r) * HV + hv] : 0.f;
    }
    __syncthreads();
    for (int i = tid; i < BCH * KP; i += blockDim.x) {
        int r = i / KP, ch = i % KP;
        float gv = 0.f;
        if (ch < kd) {
            if (g_per_head) gv = sgh[r];
            else if (r < n) gv = g[(((long)b * T + t0 + r) * HV + hv) * kd + ch];
        }
        cum0[r * LP + ch] = gv;
    }
    __syncthreads();
    for (int ch = tid; ch < KP; ch += blockDim.x) {
        float acc = 0.f;
        for (int r = 0; r < BCH; ++r) {
            acc += cum0[r * LP + ch];
            cum0[r * LP + ch] = acc;
        }
    }
    __syncthreads();
    if (delta) {
        for (int p = tid; p < BCH * BCH; p += blockDim.x) {
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
    for (int i = tid; i < BCH * KP; i += blockDim.x) {
        int r = i / KP, ch = i % KP;
        bk[i] = sbeta[r] * __expf(cum0[r * LP + ch]) * kf[r * LP + ch];
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
    for (int i = tid; i < 3 * BCH * KP + 2 * BCH * LC; i += blockDim.x) dQG[i] = 0.f;  // through dM
    for (int i = tid; i < BCH; i += blockDim.x) sdbeta[i] = 0.f;
    for (int i = tid; i < KP; i += blockDim.x) sdEL[i] = sdgL[i] = 0.f;
    __syncthreads();

    // ---- phase 1: value tiles.
    for (int v0 = 0; v0 < vd; v0 += BVT) {
        for (int i = tid; i < KP * BVT; i += blockDim.x) {
            int r = i / BVT, cc = i % BVT;
            float s = 0.f, ds = 0.f;
            if (r < kd) {
                s = CS[(blk * kd + r) * vd + v0 + cc];
                ds = DS[(blk * kd + r) * vd + v0 + cc];
            }
            sS[r * LV + cc] = s;
            sdS[r * LV + cc] = ds;
        }
        for (int i = tid; i < BCH * BVT; i += blockDim.x) {
            int r = i / BVT, cc = i % BVT;
            float a = 0.f, dv = 0.f, vv = 0.f;
            if (r < n) {
                long off = (((long)b * T + t0 + r) * HV + hv) * vd + v0 + cc;
                a = bf16_to_f32(dO[off]);
                dv = DVP[off];
                vv = bf16_to_f32(v[off]);
            }
            sdO[r * LV + cc] = a;
            sdV[r * LV + cc] = dv;
            svv[r * LV + cc] = vv;
        }
        __syncthreads();
        if (delta) {
            for (int o = tid; o < BCH * BVT; o += blockDim.x) {
                int i = o / BVT, cc = o % BVT;
                float acc = sbeta[i] * svv[i * LV + cc];
                for (int ch = 0; ch < KP; ++ch) acc -= bk[i * KP + ch] * sS[ch * LV + cc];
                sR[i * LV + cc] = acc;
            }
            __syncthreads();
            for (int o = tid; o < BCH * BVT; o += blockDim.x) {
                int i = o / BVT, cc = o % BVT;
                float vp = 0.f, z = 0.f;
                for (int j = 0; j <= i; ++j) vp += Tm[i * LC + j] * sR[j * LV + cc];
                for (int j = i; j < BCH; ++j) z += Tm[j * LC + i] * sdV[j * LV + cc];
                sVp[i * LV + cc] = vp;
                sZ[i * LV + cc] = z;
            }
        } else {
            for (int o = tid; o < BCH * BVT; o += blockDim.x) {
                int i = o / BVT, cc = o % BVT;
                sVp[i * LV + cc] = svv[i * LV + cc];
                sZ[i * LV + cc] = sdV[i * LV + cc];
            }
        }
        __syncthreads();
        // dv, dβ (βV part).
        for (int o = tid; o < BCH * BVT; o += blockDim.x) {
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
        for (int e = tid; e < BCH * KP; e += blockDim.x) {
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
        for (int p = tid; p < BCH * BCH; p += blockDim.x) {
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
    for (int i = tid; i < BCH * KP; i += blockDim.x) {
        int r = i / KP, ch = i % KP;
        bf16_t qv = 0, kv = 0;
        float gv = 0.f;
        if (ch < kd) {
            if (r < n) {
                long off = (((long)b * T + t0 + r) * H + hq) * kd + ch;
                qv = q[off];
                kv = k[off];
            }
            if (g_per_head) gv = sgh[r];
            else if (r < n) gv = g[(((long)b * T + t0 + r) * HV + hv) * kd + ch];
        }
        qb[i] = qv;
        kb[i] = kv;
        cum[i] = gv;
    }
    __syncthreads();
    for (int ch = tid; ch < KP; ch += blockDim.x) {
        float acc = 0.f;
        for (int r = 0; r < BCH; ++r) {
            acc += cum[r * KP + ch];
            cum[r * KP + ch] = acc;
        }
    }
    __syncthreads();
    if (g_per_head) {
        for (int p = tid; p < BCH * BCH; p += blockDim.x) {
            int i = p / BCH, j = p % BCH;
            E[i * LC + j] = (j <= i) ? __expf(cum[i * KP] - cum[j * KP]) : 0.f;
        }
        __syncthreads();
    }
    for (int e = tid; e < BCH * KP; e += blockDim.x) {
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
    for (int ch = tid; ch < KP; ch += blockDim.x) {
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
    extern "C" __global__ void __launch_bounds__(256) lbwd_state_k##KP(                            \
        const bf16_t* W, const bf16_t* QG, const bf16_t* KT, const bf16_t* AQK, const float* EL,   \
        const bf16_t* dO, const float* dht, float* DS, float* DVP, float* dh0, int T, int HV,      \
        int kd, int vd, int delta, int has_dht) {                                                  \
        lbwd_state<KP>(W, QG, KT, AQK, EL, dO, dht, DS, DVP, dh0, T, HV, kd, vd, delta, has_dht);  \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(256) lbwd_chunk_k##KP(                            \
        const bf16_t* q, const bf16_t* k, const bf16_t* v, const float* g, const float* beta,      \
        const float* CS, const float* DS, const float* DVP, const bf16_t* dO, float* DQ,           \
        float* DK, float* DV, float* DG, float* DB, int T, int H, int HV, int kd, int vd,          \
        float scale, int g_per_head, int delta) {                                                  \
        lbwd_chunk<KP>(q, k, v, g, beta, CS, DS, DVP, dO, DQ, DK, DV, DG, DB, T, H, HV, kd, vd,    \
                       scale, g_per_head, delta);                                                   \
    }
LBWD(64)
LBWD(128)
