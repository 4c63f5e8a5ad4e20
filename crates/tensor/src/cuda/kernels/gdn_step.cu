// One decode token of the gated delta rule (GDN; KDA with per-channel decay) on an f32 state
// (read from state_in, written to state_out: the same buffer in decode, the next lane in
// speculative verification; each thread reads its elements before writing them), FLA's K-first layout S[K, V] per (sequence, value head):
//   S = exp(g) * S;  u = beta * (v - S^T k);  S += k u^T;  o = S^T (scale * q)
// q, k: [B, H, K] bf16 (L2-normalised by the caller); v: [B, HV, V] bf16;
// g: [B, HV, K] f32 log decays (per channel) or, with g_per_head, [B, HV] (GDN);
// beta: [B, HV] f32; state: [B, HV, K, V] f32; o: [B, HV, V] bf16.
//
// Memory-bound: the state is read and written once. Grid (B*HV, ceil(V/128)); 16 warps.
// Lane l owns columns c0 + 4l .. c0 + 4l + 3 (one 16-byte load per row: a warp reads a whole
// 512-byte row segment at once); warp w owns rows w, w + 16, ... (at most 16 rows for K <= 256),
// so a thread keeps at most 64 state values in registers (bounds are compile-time constants).
#define STEP_WARPS 16
#define STEP_MAXK 256
#define STEP_ROWS (STEP_MAXK / STEP_WARPS)

// The body, inlined into the two entry points below: decode passes one state pointer for
// both (in place: the code the compiler made before lanes existed, 52 us at B=64 on the H200;
// two distinct pointers there cost 14%), speculative verification two.
static __device__ __forceinline__ void gdn_step_body(
    const bf16_t* q, const bf16_t* k, const bf16_t* v, const float* g, const float* beta,
    const float* state_in, float* state_out, bf16_t* o, int h, int hv, int kd, int vd, float scale, int g_per_head) {
    __shared__ float sq[STEP_MAXK], sk[STEP_MAXK], sg[STEP_MAXK];
    __shared__ float4 part[STEP_WARPS][32];
    int bh = blockIdx.x;
    int b = bh / hv, head = bh % hv;
    int qk_head = head / (hv / h);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    int col = blockIdx.y * 128 + lane * 4;
    const bf16_t* qp = q + ((long)b * h + qk_head) * kd;
    const bf16_t* kp = k + ((long)b * h + qk_head) * kd;
    for (int i = threadIdx.x; i < kd; i += blockDim.x) {
        sq[i] = bf16_to_f32(qp[i]) * scale;
        sk[i] = bf16_to_f32(kp[i]);
        sg[i] = __expf(g_per_head ? g[bh] : g[(long)bh * kd + i]);
    }
    __syncthreads();
    const float* s = state_in + (long)bh * kd * vd;
    float* s_out = state_out + (long)bh * kd * vd;
    bool live = col < vd;  // vd % 4 == 0 is required by the launcher
    float4 reg[STEP_ROWS];
    float4 pred = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int n = 0; n < STEP_ROWS; ++n) {
        int r = w + n * STEP_WARPS;
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if (live && r < kd) {
            x = *(const float4*)(s + (long)r * vd + col);
            float a = sg[r], kr = sk[r];
            x.x *= a; x.y *= a; x.z *= a; x.w *= a;
            pred.x += x.x * kr; pred.y += x.y * kr; pred.z += x.z * kr; pred.w += x.w * kr;
        }
        reg[n] = x;
    }
    part[w][lane] = pred;
    __syncthreads();
    pred = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int i = 0; i < STEP_WARPS; ++i) {
        float4 p = part[i][lane];
        pred.x += p.x; pred.y += p.y; pred.z += p.z; pred.w += p.w;
    }
    float bt = beta[bh];
    float4 u = make_float4(0.f, 0.f, 0.f, 0.f);
    if (live) {
        const bf16_t* vp = v + (long)bh * vd + col;
        u = make_float4(bt * (bf16_to_f32(vp[0]) - pred.x), bt * (bf16_to_f32(vp[1]) - pred.y),
                        bt * (bf16_to_f32(vp[2]) - pred.z), bt * (bf16_to_f32(vp[3]) - pred.w));
    }
    float4 out = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int n = 0; n < STEP_ROWS; ++n) {
        int r = w + n * STEP_WARPS;
        if (live && r < kd) {
            float kr = sk[r], qr = sq[r];
            float4 x = reg[n];
            x.x += kr * u.x; x.y += kr * u.y; x.z += kr * u.z; x.w += kr * u.w;
            *(float4*)(s_out + (long)r * vd + col) = x;
            out.x += x.x * qr; out.y += x.y * qr; out.z += x.z * qr; out.w += x.w * qr;
        }
    }
    __syncthreads();
    part[w][lane] = out;
    __syncthreads();
    if (w == 0 && live) {
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
        for (int i = 0; i < STEP_WARPS; ++i) {
            float4 p = part[i][lane];
            acc.x += p.x; acc.y += p.y; acc.z += p.z; acc.w += p.w;
        }
        bf16_t* op = o + (long)bh * vd + col;
        op[0] = f32_to_bf16(acc.x); op[1] = f32_to_bf16(acc.y); op[2] = f32_to_bf16(acc.z); op[3] = f32_to_bf16(acc.w);
    }
}

extern "C" __global__ void __launch_bounds__(512) gdn_step(
    const bf16_t* q, const bf16_t* k, const bf16_t* v, const float* g, const float* beta,
    float* state, bf16_t* o, int h, int hv, int kd, int vd, float scale, int g_per_head) {
    gdn_step_body(q, k, v, g, beta, state, state, o, h, hv, kd, vd, scale, g_per_head);
}

extern "C" __global__ void __launch_bounds__(512) gdn_step_lane(
    const bf16_t* q, const bf16_t* k, const bf16_t* v, const float* g, const float* beta,
    const float* state_in, float* state_out, bf16_t* o, int h, int hv, int kd, int vd, float scale, int g_per_head) {
    gdn_step_body(q, k, v, g, beta, state_in, state_out, o, h, hv, kd, vd, scale, g_per_head);
}
