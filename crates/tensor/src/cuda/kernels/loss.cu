// Distillation loss (train::loss::kl_div): rows of student and teacher logits [N, V] (f32) at
// temperature T; with p = softmax(logits / T),
//   loss[row] = loss_scale · KL(p_t || p_s) = loss_scale · sum p_t (log p_t - log p_s)   (T^2 / N),
//   dstudent[row] = grad_scale · (p_s - p_t)                                              (T / N),
// so sum(loss) is kl_div's loss and dstudent its gradient. A teacher probability that
// underflows to 0 contributes 0 (not 0 · -inf). One block per row: one pass for both rows'
// (max, sum of exp) by online rescaling, one for the loss and the gradient.
#define LS_NEG_INF __int_as_float(0xff800000)

// (m, s) <- the pair for the union: max, and the sum of exp(x - max).
__device__ __forceinline__ void ls_merge(float& m, float& s, float m2, float s2) {
    float mx = fmaxf(m, m2);
    if (mx == LS_NEG_INF) {
        s = 0.0f;
    } else {
        s = s * expf(m - mx) + s2 * expf(m2 - mx);
    }
    m = mx;
}

// Block-wide merge of two (max, sum) pairs; every thread gets the results.
__device__ __forceinline__ void ls_block_merge2(float& ma, float& sa, float& mb, float& sb) {
    __shared__ float sh[4][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, ma, o), s2 = __shfl_xor_sync(0xffffffffu, sa, o);
        ls_merge(ma, sa, m2, s2);
        m2 = __shfl_xor_sync(0xffffffffu, mb, o);
        s2 = __shfl_xor_sync(0xffffffffu, sb, o);
        ls_merge(mb, sb, m2, s2);
    }
    if (lane == 0) {
        sh[0][warp] = ma;
        sh[1][warp] = sa;
        sh[2][warp] = mb;
        sh[3][warp] = sb;
    }
    __syncthreads();
    ma = LS_NEG_INF, sa = 0.0f, mb = LS_NEG_INF, sb = 0.0f;
    for (int w = 0; w < nw; ++w) {  // in order: every thread gets the same bits
        ls_merge(ma, sa, sh[0][w], sh[1][w]);
        ls_merge(mb, sb, sh[2][w], sh[3][w]);
    }
    __syncthreads();
}

extern "C" __global__ void kl_div_f32(const float* student, const float* teacher, float* loss, float* dstudent, int v,
                                      float inv_temp, float loss_scale, float grad_scale) {
    const long off = (long)blockIdx.x * v;
    const float* s = student + off;
    const float* t = teacher + off;
    float ms = LS_NEG_INF, ss = 0.0f, mt = LS_NEG_INF, st = 0.0f;
    for (int i = threadIdx.x; i < v; i += blockDim.x) {
        float a = s[i] * inv_temp, b = t[i] * inv_temp;
        if (a > ms) {
            ss = ss * expf(ms - a) + 1.0f;
            ms = a;
        } else if (a > LS_NEG_INF) {  // a logit of -inf adds nothing (and no NaN)
            ss += expf(a - ms);
        }
        if (b > mt) {
            st = st * expf(mt - b) + 1.0f;
            mt = b;
        } else if (b > LS_NEG_INF) {
            st += expf(b - mt);
        }
    }
    ls_block_merge2(ms, ss, mt, st);
    const float ls = logf(ss), lt = logf(st);
    float kl = 0.0f;
    float* g = dstudent + off;
    for (int i = threadIdx.x; i < v; i += blockDim.x) {
        // log-probabilities as (x/T - max) - ln sum, as kl_div forms them
        float lps = (s[i] * inv_temp - ms) - ls;
        float lpt = (t[i] * inv_temp - mt) - lt;
        float pt = expf(lpt);
        if (pt > 0.0f) kl += pt * (lpt - lps);
        g[i] = grad_scale * (expf(lps) - pt);
    }
    kl = block_sum(kl);
    if (threadIdx.x == 0) loss[blockIdx.x] = loss_scale * kl;
}
