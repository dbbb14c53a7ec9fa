// Fused CPU sequence and step kernels for the GRU and LSTM memory cores (agents/cores/gru.py, lstm.py), and the
// elementwise linear scan of the linear-recurrence cores (agents/cores/scan.py; at the end of this file).
//
// One layer per call for sequences (the Python autograd functions in fused.py chain layers), all layers per call
// for single steps. Gate order and equations are PyTorch's:
//   GRU  [r, z, n]:  r = s(Wir x + bir + Whr h + bhr), z = s(Wiz x + biz + Whz h + bhz),
//                    n = tanh(Win x + bin + r * (Whn h + bhn)),  h' = (1 - z) * n + z * h
//   LSTM [i, f, g, o]: c' = f * c + i * g,  h' = o * tanh(c')
// Episode resets happen inside the loop: before step t, h_eff = h * keep[t] (and c_eff = c * keep[t] for LSTM), with
// keep = 1 - episode_start. keep None (or empty) means "no resets anywhere" (the multiply is skipped).
//
// Forward: the input projections of all steps are one matrix product; each step is one addmm for h_eff @ W_hh^T plus
// one elementwise pass (sigmoid/tanh inline). Backward runs the steps in reverse with one elementwise pass and one mm
// (dh_eff = dGates_h @ W_hh) per step; the weight, bias and input gradients are then ONE matrix product (or sum) each
// over all steps. Float and double; float uses a vectorisable exp (Cephes polynomial, ~1 ulp), double uses libm.

#include <ATen/ATen.h>
#include <torch/python.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

namespace {

using at::Tensor;

// ------------------------------------------------------------------------------------------------ activations
inline float exp_approx(float x) {
  // exp(x) = 2^n * exp(r), n = round(x / ln2), |r| <= ln2 / 2; branch-free so that loops over it vectorise.
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits
  const float t = x * 1.44269504088896341f + magic;
  const float fx = t - magic;
  int32_t n;
  std::memcpy(&n, &t, sizeof(n));
  n -= 0x4B400000;  // bits of `magic`
  float r = x - fx * 0.693359375f;
  r = r - fx * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t pb;
  std::memcpy(&pb, &p, sizeof(pb));
  pb += n * (1 << 23);
  std::memcpy(&p, &pb, sizeof(p));
  return p;
}

inline float sigm(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
inline float tanh_(float x) { return 2.0f / (1.0f + exp_approx(-2.0f * x)) - 1.0f; }
inline double sigm(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh_(double x) { return std::tanh(x); }

// ------------------------------------------------------------------------------------------------ row kernels
// One batch row of one step; plain loops over the hidden units that the compiler vectorises.
template <typename s_t>
void scale_row(s_t* __restrict dst, const s_t* __restrict src, s_t k, int64_t H) {
  for (int64_t j = 0; j < H; ++j) dst[j] = src[j] * k;
}

// g: input projections [r, z, n] (biases of r and z folded in) in, activated [r, z, n] out; q: h_eff @ W_hh^T in,
// its n block plus b_hn out (the backward needs it); out = h'; nxt = h' * k
template <typename s_t>
void gru_fwd_row(s_t* __restrict g, s_t* __restrict q, const s_t* __restrict bn, const s_t* __restrict he,
                 s_t* __restrict out, s_t* __restrict nxt, s_t k, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const s_t r = sigm(g[j] + q[j]);
    const s_t z = sigm(g[H + j] + q[H + j]);
    const s_t hn = q[2 * H + j] + bn[j];
    const s_t n = tanh_(g[2 * H + j] + r * hn);
    const s_t h = n + z * (he[j] - n);
    g[j] = r;
    g[H + j] = z;
    g[2 * H + j] = n;
    q[2 * H + j] = hn;
    out[j] = h;
    nxt[j] = h * k;
  }
}

// dc: in, carried dL/dh_eff of the next step (times k = its keep); out, the direct part of dL/dh_eff of this step
template <typename s_t>
void gru_bwd_row(const s_t* __restrict g, const s_t* __restrict q, const s_t* __restrict he, const s_t* __restrict d,
                 s_t* __restrict dc, s_t* __restrict di, s_t* __restrict dq, s_t k, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const s_t r = g[j], z = g[H + j], n = g[2 * H + j];
    const s_t dh = dc[j] * k + d[j];
    const s_t dn = dh * (s_t(1) - z) * (s_t(1) - n * n);
    const s_t dz = dh * (he[j] - n) * z * (s_t(1) - z);
    const s_t dr = dn * q[2 * H + j] * r * (s_t(1) - r);
    di[j] = dr;
    di[H + j] = dz;
    di[2 * H + j] = dn;
    dq[j] = dr;
    dq[H + j] = dz;
    dq[2 * H + j] = dn * r;
    dc[j] = dh * z;
  }
}

// g: gate pre-activations [i, f, g, o] in, activations out; tco = tanh(c'); hn, cn = h' * k, c' * k
template <typename s_t>
void lstm_fwd_row(s_t* __restrict g, const s_t* __restrict ce, s_t* __restrict tco, s_t* __restrict out,
                  s_t* __restrict hn, s_t* __restrict cn, s_t k, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const s_t i = sigm(g[j]);
    const s_t f = sigm(g[H + j]);
    const s_t gg = tanh_(g[2 * H + j]);
    const s_t o = sigm(g[3 * H + j]);
    const s_t c = f * ce[j] + i * gg;
    const s_t tcv = tanh_(c);
    const s_t h = o * tcv;
    g[j] = i;
    g[H + j] = f;
    g[2 * H + j] = gg;
    g[3 * H + j] = o;
    tco[j] = tcv;
    out[j] = h;
    hn[j] = h * k;
    cn[j] = c * k;
  }
}

template <typename s_t>
void lstm_bwd_row(const s_t* __restrict g, const s_t* __restrict tcv, const s_t* __restrict ce,
                  const s_t* __restrict d, const s_t* __restrict dhin, s_t* __restrict dcin, s_t* __restrict dgo, s_t k,
                  int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const s_t i = g[j], f = g[H + j], gg = g[2 * H + j], o = g[3 * H + j], th = tcv[j];
    const s_t dh = dhin[j] * k + d[j];
    const s_t dc = dcin[j] * k + dh * o * (s_t(1) - th * th);
    dgo[j] = dc * gg * i * (s_t(1) - i);
    dgo[H + j] = dc * ce[j] * f * (s_t(1) - f);
    dgo[2 * H + j] = dc * i * (s_t(1) - gg * gg);
    dgo[3 * H + j] = dh * th * o * (s_t(1) - o);
    dcin[j] = dc * f;
  }
}

// single steps: gi = x @ W_ih^T + b_ih, q = h_eff @ W_hh^T + b_hh -> out = ns = h'
template <typename s_t>
void gru_step_row(const s_t* __restrict g, const s_t* __restrict q, const s_t* __restrict he, s_t* __restrict out,
                  s_t* __restrict ns, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const s_t r = sigm(g[j] + q[j]);
    const s_t z = sigm(g[H + j] + q[H + j]);
    const s_t n = tanh_(g[2 * H + j] + r * q[2 * H + j]);
    const s_t h = n + z * (he[j] - n);
    out[j] = h;
    ns[j] = h;
  }
}

// g: all gate pre-activations; cold: c before the reset (times k)
template <typename s_t>
void lstm_step_row(const s_t* __restrict g, const s_t* __restrict cold, s_t* __restrict out, s_t* __restrict hs,
                   s_t* __restrict cs, s_t k, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const s_t i = sigm(g[j]);
    const s_t f = sigm(g[H + j]);
    const s_t gv = tanh_(g[2 * H + j]);
    const s_t o = sigm(g[3 * H + j]);
    const s_t c = f * (cold[j] * k) + i * gv;
    const s_t h = o * tanh_(c);
    out[j] = h;
    hs[j] = h;
    cs[j] = c;
  }
}

// ------------------------------------------------------------------------------------------------ checks
void check_cpu(const Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), "fused rnn kernel: ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, "fused rnn kernel: ", name, " has dtype ", t.scalar_type(), ", expected ",
              dtype);
}

// keep = 1 - episode_start, [n] in `dtype`; an undefined tensor where there are no resets (None or empty)
Tensor keep_of(const std::optional<Tensor>& keep, at::ScalarType dtype, int64_t n, const char* what) {
  if (!keep.has_value() || !keep->defined() || keep->numel() == 0) return Tensor();
  TORCH_CHECK(keep->device().is_cpu(), what, ": keep must be a CPU tensor");
  TORCH_CHECK(keep->numel() == n, what, ": keep has ", keep->numel(), " elements, expected ", n);
  return keep->to(dtype).contiguous();
}

// the same from the episode_start flags of one step (bool, integer or floating)
Tensor keep_from_starts(const std::optional<Tensor>& starts, at::ScalarType dtype, int64_t n, const char* what) {
  if (!starts.has_value() || !starts->defined()) return Tensor();
  TORCH_CHECK(starts->device().is_cpu(), what, ": episode_start must be a CPU tensor");
  TORCH_CHECK(starts->numel() == n, what, ": episode_start has ", starts->numel(), " elements, expected ", n);
  return at::rsub(starts->to(dtype), 1).contiguous();
}

struct NoGrad {  // nothing inside a kernel is recorded by autograd
  at::NoGradGuard no_grad;
};

// ------------------------------------------------------------------------------------------------ per-step product
// The sequence kernels' per-step recurrent product C [B, N] (+)= A [B, K] M [K, N] (M row-major). At a few batch
// rows a BLAS call costs several times its arithmetic (dispatch, packing; results/profile_before.md), so up to
// kStepRowsMax rows of float it runs here: blocks of MB rows x 8*NV columns held in vector registers over the whole
// k loop (GCC/Clang vector extensions). Each output sums over k in order, with FMA where the CPU has it.
constexpr int64_t kStepRowsMax = 8;

#if defined(__GNUC__)
#define RA_STEP_MM 1
typedef float v8f __attribute__((vector_size(32)));

// Rows are given by pointers, so that a block can be filled up with a zero row (A) and a scratch row (C): 3 or 4
// rows run as 5, which measured faster than 2 + 1, 2 + 2 or a 4-row block on this project's CPU (commit 1e059f1).
template <int MB, int NV>
int64_t step_mm_block(const float* const* __restrict A, int64_t K, const float* __restrict M, int64_t N, int64_t n0,
                      float* const* __restrict C, bool accumulate) {
  constexpr int64_t NB = 8 * NV;
  for (; n0 + NB <= N; n0 += NB) {
    v8f acc[MB][NV];
#pragma GCC unroll 8
    for (int b = 0; b < MB; ++b)
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) {
        if (accumulate) std::memcpy(&acc[b][j], C[b] + n0 + 8 * j, sizeof(v8f));
        else acc[b][j] = v8f{};
      }
    for (int64_t k = 0; k < K; ++k) {
      v8f m[NV];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) std::memcpy(&m[j], M + k * N + n0 + 8 * j, sizeof(v8f));
#pragma GCC unroll 8
      for (int b = 0; b < MB; ++b) {
        const float a = A[b][k];
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) acc[b][j] += a * m[j];
      }
    }
#pragma GCC unroll 8
    for (int b = 0; b < MB; ++b)
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) std::memcpy(C[b] + n0 + 8 * j, &acc[b][j], sizeof(v8f));
  }
  return n0;
}

// `rows` (<= MB) rows starting at a / c, run as a block of MB: wide blocks, 8-column blocks, then the last columns
template <int MB, int NV>
void step_mm_rows(const float* a, int64_t K, const float* m, int64_t N, float* c, int64_t rows, bool accumulate) {
  // the filler rows: a zero row of A (never written) and a scratch row of C, kept per thread across calls
  thread_local std::vector<float> zeros, scratch;
  if (rows < MB) {
    if (zeros.size() < static_cast<size_t>(K)) zeros.assign(K, 0.0f);
    if (scratch.size() < static_cast<size_t>(N)) scratch.resize(N);
  }
  const float* A[MB];
  float* C[MB];
  for (int b = 0; b < MB; ++b) {
    A[b] = b < rows ? a + b * K : zeros.data();
    C[b] = b < rows ? c + b * N : scratch.data();
  }
  int64_t n0 = step_mm_block<MB, NV>(A, K, m, N, 0, C, accumulate);
  n0 = step_mm_block<MB, 1>(A, K, m, N, n0, C, accumulate);
  for (int64_t b = 0; b < rows; ++b)
    for (int64_t n = n0; n < N; ++n) {
      float v = accumulate ? c[b * N + n] : 0.0f;
      for (int64_t k = 0; k < K; ++k) v += a[b * K + k] * m[k * N + n];
      c[b * N + n] = v;
    }
}
#endif

// whether step_mm runs B rows of this dtype itself (then M must be contiguous; otherwise BLAS takes any layout)
inline bool step_mm_own(at::ScalarType dtype, int64_t B) {
#ifdef RA_STEP_MM
  return dtype == at::kFloat && B <= kStepRowsMax;
#else
  return false;
#endif
}

// C [B, N] (+)= A [B, K] M [K, N] for one step, all contiguous. Float rows up to kStepRowsMax run on raw pointers
// (no Tensor per step); more rows, double, or no vector extensions: at::mm_out / addmm_ on the given views (C is
// C_all[t], or C_all itself where c_is_step is false, and A is A_all[t]).
template <typename s_t>
void step_mm(s_t* c, const s_t* a, const s_t* m, int64_t B, int64_t K, int64_t N, const Tensor& C_all,
             const Tensor& A_all, const Tensor& M, int64_t t, bool c_is_step, bool accumulate) {
#ifdef RA_STEP_MM
  if constexpr (std::is_same_v<s_t, float>) {
    if (step_mm_own(at::kFloat, B)) {
      // row blocks by measured speed (commits ed606da, 1e059f1): 6 rows x 16 columns, 5 x 16 (also 3 or 4 rows),
      // 2 x 24, 1 x 40
      for (int64_t b = 0; b < B;) {
        const int64_t rows = std::min<int64_t>(B - b, 6);
        const float* ab = a + b * K;
        float* cb = c + b * N;
        if (rows == 6) step_mm_rows<6, 2>(ab, K, m, N, cb, 6, accumulate);
        else if (rows >= 3) step_mm_rows<5, 2>(ab, K, m, N, cb, rows, accumulate);
        else if (rows == 2) step_mm_rows<2, 3>(ab, K, m, N, cb, 2, accumulate);
        else step_mm_rows<1, 5>(ab, K, m, N, cb, 1, accumulate);
        b += rows;
      }
      return;
    }
  }
#endif
  Tensor C = c_is_step ? C_all[t] : C_all;
  const Tensor A = A_all[t];
  if (accumulate) C.addmm_(A, M);
  else at::mm_out(C, A, M);
}

// ================================================================================================ GRU sequence
// x [T, B, F], h0 [B, H], keep [T, B] or None, w_ih [3H, F], w_hh [3H, H], b_ih [3H], b_hh [3H]
// returns y [T, B, H], hT [B, H], and for backward: gates (activated r, z, n) [T, B, 3H],
// gh [T, B, 3H] (its n block: W_hn h_eff + b_hn; the r, z blocks are not used), heff [T, B, H]
std::vector<Tensor> gru_forward(const Tensor& x_, const Tensor& h0_, const std::optional<Tensor>& keep_,
                                const Tensor& w_ih_, const Tensor& w_hh_, const Tensor& b_ih_, const Tensor& b_hh_) {
  NoGrad guard;
  const auto dtype = x_.scalar_type();
  const Tensor x = x_.contiguous(), h0 = h0_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  for (const Tensor* p : {&x, &h0, &w_ih, &w_hh, &b_ih_, &b_hh_}) check_cpu(*p, "argument", dtype);
  TORCH_CHECK(x.dim() == 3 && h0.dim() == 2, "gru_forward: x must be [T, B, F] and h0 [B, H]");
  const int64_t T = x.size(0), B = x.size(1), F = x.size(2), H = h0.size(1);
  TORCH_CHECK(h0.size(0) == B && w_ih.size(0) == 3 * H && w_ih.size(1) == F && w_hh.size(0) == 3 * H &&
                  w_hh.size(1) == H && b_ih_.numel() == 3 * H && b_hh_.numel() == 3 * H,
              "gru_forward: inconsistent shapes");
  const Tensor keep = keep_of(keep_, dtype, T * B, "gru_forward");
  const bool has_keep = keep.defined();
  // b_hr and b_hz folded into the input projection (they add to the same pre-activations); b_hn stays apart, it is
  // scaled by r. Each step is then one plain mm, h_eff @ W_hh^T.
  Tensor bias_x = b_ih_.contiguous().clone();
  bias_x.narrow(0, 0, 2 * H).add_(b_hh_.narrow(0, 0, 2 * H));
  const Tensor b_hn = b_hh_.narrow(0, 2 * H, H).contiguous();
  Tensor gates = at::addmm(bias_x, x.view({T * B, F}), w_ih.t()).view({T, B, 3 * H});
  Tensor gh = at::empty({T, B, 3 * H}, x.options());
  Tensor heff = at::empty({T, B, H}, x.options());
  Tensor y = at::empty({T, B, H}, x.options());
  Tensor hT = at::empty({B, H}, x.options());
  // [H, 3H]: row-major for step_mm's own rows; BLAS takes the transposed view as it is
  const Tensor w_hh_t = step_mm_own(dtype, B) ? w_hh.t().contiguous() : w_hh.t();

  AT_DISPATCH_FLOATING_TYPES(dtype, "gru_forward", [&] {
    using s_t = scalar_t;
    const s_t* kp = has_keep ? keep.data_ptr<s_t>() : nullptr;
    s_t* hep = heff.data_ptr<s_t>();
    const s_t* h0p = h0.data_ptr<s_t>();
    for (int64_t b = 0; b < B; ++b) scale_row(hep + b * H, h0p + b * H, kp ? kp[b] : s_t(1), H);
    s_t* gp = gates.data_ptr<s_t>();
    s_t* ghp = gh.data_ptr<s_t>();
    s_t* yp = y.data_ptr<s_t>();
    s_t* hTp = hT.data_ptr<s_t>();
    const s_t* bnp = b_hn.data_ptr<s_t>();
    for (int64_t t = 0; t < T; ++t) {
      step_mm(ghp + t * B * 3 * H, hep + t * B * H, w_hh_t.data_ptr<s_t>(), B, H, 3 * H, gh, heff, w_hh_t, t, true,
              false);
      const bool last = (t + 1 == T);
      for (int64_t b = 0; b < B; ++b) {
        const int64_t row = t * B + b;
        gru_fwd_row(gp + row * 3 * H, ghp + row * 3 * H, bnp, hep + row * H, yp + row * H,
                    last ? hTp + b * H : hep + (row + B) * H, (!last && kp) ? kp[row + B] : s_t(1), H);
      }
    }
  });
  return {y, hT, gates, gh, heff};
}

// dy [T, B, H], dhT [B, H] -> dx [T, B, F] (or None), dh0 [B, H], dw_ih, dw_hh, db_ih, db_hh (or None)
std::vector<Tensor> gru_backward(const Tensor& dy_, const Tensor& dhT_, const Tensor& x_,
                                 const std::optional<Tensor>& keep_, const Tensor& w_ih_, const Tensor& w_hh_,
                                 const Tensor& gates, const Tensor& gh, const Tensor& heff, bool need_dx,
                                 bool need_dw) {
  NoGrad guard;
  const auto dtype = gates.scalar_type();
  const Tensor dy = dy_.contiguous(), dhT = dhT_.contiguous(), x = x_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  check_cpu(dy, "dy", dtype);
  check_cpu(dhT, "dhT", dtype);
  const int64_t T = gates.size(0), B = gates.size(1), H = heff.size(2), F = x.size(2);
  const Tensor keep = keep_of(keep_, dtype, T * B, "backward");
  const bool has_keep = keep.defined();
  Tensor dgi = at::empty({T, B, 3 * H}, gates.options());
  Tensor dgh = at::empty({T, B, 3 * H}, gates.options());
  Tensor dhc = dhT.clone();  // carried dL/dh_eff of the step after (before its keep); starts as dL/dh_T
  Tensor dh0 = at::empty({B, H}, gates.options());

  AT_DISPATCH_FLOATING_TYPES(dtype, "gru_backward", [&] {
    using s_t = scalar_t;
    const s_t* kp = has_keep ? keep.data_ptr<s_t>() : nullptr;
    const s_t* gp = gates.data_ptr<s_t>();
    const s_t* ghp = gh.data_ptr<s_t>();
    const s_t* hep = heff.data_ptr<s_t>();
    const s_t* dyp = dy.data_ptr<s_t>();
    s_t* dgip = dgi.data_ptr<s_t>();
    s_t* dghp = dgh.data_ptr<s_t>();
    s_t* dcp = dhc.data_ptr<s_t>();
    for (int64_t t = T - 1; t >= 0; --t) {
      const bool last = (t + 1 == T);
      for (int64_t b = 0; b < B; ++b) {
        const int64_t row = t * B + b;
        gru_bwd_row(gp + row * 3 * H, ghp + row * 3 * H, hep + row * H, dyp + row * H, dcp + b * H,
                    dgip + row * 3 * H, dghp + row * 3 * H, (!last && kp) ? kp[row + B] : s_t(1), H);
      }
      // dL/dh_eff[t] = direct part + dGates_h[t] @ W_hh
      step_mm(dcp, dghp + t * B * 3 * H, w_hh.data_ptr<s_t>(), B, 3 * H, H, dhc, dgh, w_hh, t, false, true);
    }
    s_t* d0 = dh0.data_ptr<s_t>();
    for (int64_t b = 0; b < B; ++b) scale_row(d0 + b * H, dcp + b * H, kp ? kp[b] : s_t(1), H);
  });
  Tensor dx, dw_ih, dw_hh, db_ih, db_hh;
  const Tensor dgi2 = dgi.view({T * B, 3 * H}), dgh2 = dgh.view({T * B, 3 * H});
  if (need_dx) dx = at::mm(dgi2, w_ih).view({T, B, F});
  if (need_dw) {
    dw_ih = at::mm(dgi2.t(), x.view({T * B, F}));
    dw_hh = at::mm(dgh2.t(), heff.view({T * B, H}));
    db_ih = dgi2.sum(0);
    db_hh = dgh2.sum(0);
  }
  return {dx, dh0, dw_ih, dw_hh, db_ih, db_hh};
}

// ================================================================================================ LSTM sequence
// x [T, B, F], h0 [B, H], c0 [B, H], keep [T, B] or None, w_ih [4H, F], w_hh [4H, H], b_ih [4H], b_hh [4H]
// returns y [T, B, H], hT, cT [B, H], and for backward: gates (activated i, f, g, o) [T, B, 4H], tanh(c') [T, B, H],
// heff [T, B, H], ceff [T, B, H]
std::vector<Tensor> lstm_forward(const Tensor& x_, const Tensor& h0_, const Tensor& c0_,
                                 const std::optional<Tensor>& keep_, const Tensor& w_ih_, const Tensor& w_hh_,
                                 const Tensor& b_ih_, const Tensor& b_hh_) {
  NoGrad guard;
  const auto dtype = x_.scalar_type();
  const Tensor x = x_.contiguous(), h0 = h0_.contiguous(), c0 = c0_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  for (const Tensor* p : {&x, &h0, &c0, &w_ih, &w_hh, &b_ih_, &b_hh_}) check_cpu(*p, "argument", dtype);
  TORCH_CHECK(x.dim() == 3 && h0.dim() == 2 && c0.dim() == 2, "lstm_forward: x must be [T, B, F], h0 and c0 [B, H]");
  const int64_t T = x.size(0), B = x.size(1), F = x.size(2), H = h0.size(1);
  TORCH_CHECK(h0.size(0) == B && c0.size(0) == B && c0.size(1) == H && w_ih.size(0) == 4 * H && w_ih.size(1) == F &&
                  w_hh.size(0) == 4 * H && w_hh.size(1) == H && b_ih_.numel() == 4 * H && b_hh_.numel() == 4 * H,
              "lstm_forward: inconsistent shapes");
  const Tensor keep = keep_of(keep_, dtype, T * B, "lstm_forward");
  const bool has_keep = keep.defined();
  // both biases folded into the input projection; each step adds h_eff @ W_hh^T in place
  Tensor gates = at::addmm(b_ih_ + b_hh_, x.view({T * B, F}), w_ih.t()).view({T, B, 4 * H});
  Tensor tc = at::empty({T, B, H}, x.options());
  Tensor heff = at::empty({T, B, H}, x.options());
  Tensor ceff = at::empty({T, B, H}, x.options());
  Tensor y = at::empty({T, B, H}, x.options());
  Tensor hT = at::empty({B, H}, x.options());
  Tensor cT = at::empty({B, H}, x.options());
  // [H, 4H]: row-major for step_mm's own rows; BLAS takes the transposed view as it is
  const Tensor w_hh_t = step_mm_own(dtype, B) ? w_hh.t().contiguous() : w_hh.t();

  AT_DISPATCH_FLOATING_TYPES(dtype, "lstm_forward", [&] {
    using s_t = scalar_t;
    const s_t* kp = has_keep ? keep.data_ptr<s_t>() : nullptr;
    s_t* hep = heff.data_ptr<s_t>();
    s_t* cep = ceff.data_ptr<s_t>();
    const s_t* h0p = h0.data_ptr<s_t>();
    const s_t* c0p = c0.data_ptr<s_t>();
    for (int64_t b = 0; b < B; ++b) {
      const s_t k = kp ? kp[b] : s_t(1);
      scale_row(hep + b * H, h0p + b * H, k, H);
      scale_row(cep + b * H, c0p + b * H, k, H);
    }
    s_t* gp = gates.data_ptr<s_t>();
    s_t* tcp = tc.data_ptr<s_t>();
    s_t* yp = y.data_ptr<s_t>();
    s_t* hTp = hT.data_ptr<s_t>();
    s_t* cTp = cT.data_ptr<s_t>();
    for (int64_t t = 0; t < T; ++t) {
      step_mm(gp + t * B * 4 * H, hep + t * B * H, w_hh_t.data_ptr<s_t>(), B, H, 4 * H, gates, heff, w_hh_t, t, true,
              true);
      const bool last = (t + 1 == T);
      for (int64_t b = 0; b < B; ++b) {
        const int64_t row = t * B + b;
        lstm_fwd_row(gp + row * 4 * H, cep + row * H, tcp + row * H, yp + row * H,
                     last ? hTp + b * H : hep + (row + B) * H, last ? cTp + b * H : cep + (row + B) * H,
                     (!last && kp) ? kp[row + B] : s_t(1), H);
      }
    }
  });
  return {y, hT, cT, gates, tc, heff, ceff};
}

// dy [T, B, H], dhT, dcT [B, H] -> dx (or None), dh0, dc0, dw_ih, dw_hh, db_ih, db_hh (or None)
std::vector<Tensor> lstm_backward(const Tensor& dy_, const Tensor& dhT_, const Tensor& dcT_, const Tensor& x_,
                                  const std::optional<Tensor>& keep_, const Tensor& w_ih_, const Tensor& w_hh_,
                                  const Tensor& gates, const Tensor& tc, const Tensor& heff, const Tensor& ceff,
                                  bool need_dx, bool need_dw) {
  NoGrad guard;
  const auto dtype = gates.scalar_type();
  const Tensor dy = dy_.contiguous(), dhT = dhT_.contiguous(), dcT = dcT_.contiguous(), x = x_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  check_cpu(dy, "dy", dtype);
  check_cpu(dhT, "dhT", dtype);
  check_cpu(dcT, "dcT", dtype);
  const int64_t T = gates.size(0), B = gates.size(1), H = heff.size(2), F = x.size(2);
  const Tensor keep = keep_of(keep_, dtype, T * B, "backward");
  const bool has_keep = keep.defined();
  Tensor dg = at::empty({T, B, 4 * H}, gates.options());
  Tensor dhc = dhT.clone();  // carried dL/dh_eff of the step after (before its keep)
  Tensor dcc = dcT.clone();  // carried dL/dc_eff of the step after (before its keep)
  Tensor dh0 = at::empty({B, H}, gates.options());
  Tensor dc0 = at::empty({B, H}, gates.options());

  AT_DISPATCH_FLOATING_TYPES(dtype, "lstm_backward", [&] {
    using s_t = scalar_t;
    const s_t* kp = has_keep ? keep.data_ptr<s_t>() : nullptr;
    const s_t* gp = gates.data_ptr<s_t>();
    const s_t* tcp = tc.data_ptr<s_t>();
    const s_t* cep = ceff.data_ptr<s_t>();
    const s_t* dyp = dy.data_ptr<s_t>();
    s_t* dgp = dg.data_ptr<s_t>();
    s_t* dhp = dhc.data_ptr<s_t>();
    s_t* dcp = dcc.data_ptr<s_t>();
    for (int64_t t = T - 1; t >= 0; --t) {
      const bool last = (t + 1 == T);
      for (int64_t b = 0; b < B; ++b) {
        const int64_t row = t * B + b;
        lstm_bwd_row(gp + row * 4 * H, tcp + row * H, cep + row * H, dyp + row * H, dhp + b * H, dcp + b * H,
                     dgp + row * 4 * H, (!last && kp) ? kp[row + B] : s_t(1), H);
      }
      step_mm(dhp, dgp + t * B * 4 * H, w_hh.data_ptr<s_t>(), B, 4 * H, H, dhc, dg, w_hh, t, false,
              false);  // dL/dh_eff[t]
    }
    s_t* dh0p = dh0.data_ptr<s_t>();
    s_t* dc0p = dc0.data_ptr<s_t>();
    for (int64_t b = 0; b < B; ++b) {
      const s_t k = kp ? kp[b] : s_t(1);
      scale_row(dh0p + b * H, dhp + b * H, k, H);
      scale_row(dc0p + b * H, dcp + b * H, k, H);
    }
  });
  Tensor dx, dw_ih, dw_hh, db;
  const Tensor dg2 = dg.view({T * B, 4 * H});
  if (need_dx) dx = at::mm(dg2, w_ih).view({T, B, F});
  if (need_dw) {
    dw_ih = at::mm(dg2.t(), x.view({T * B, F}));
    dw_hh = at::mm(dg2.t(), heff.view({T * B, H}));
    db = dg2.sum(0);
  }
  // the two bias gradients are equal; separate tensors, as autograd may keep each as its parameter's .grad
  return {dx, dh0, dc0, dw_ih, dw_hh, db, need_dw ? db.clone() : db};
}

// ================================================================================================ few-row linear
// y = x W^T + b for a batch of at most kFewRows rows (act's batch of one) as plain dot products:
// a BLAS call's setup costs more than the arithmetic at these sizes. Eight independent partial sums per dot product
// let the compiler vectorise it without reassociating (no fast-math); more rows go to at::addmm.
constexpr int64_t kFewRows = 4;

template <typename s_t>
s_t dot8(const s_t* __restrict a, const s_t* __restrict b, int64_t n) {
  s_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[k + j] * b[k + j];
  s_t sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; k < n; ++k) sum += a[k] * b[k];
  return sum;
}

// y [B, O] (contiguous) = (accumulate ? y : 0) + x [B, F] W [O, F]^T + b [O] (b may be undefined)
void linear_rows(Tensor& y, const Tensor& x_, const Tensor& W_, const Tensor& b, bool accumulate) {
  const Tensor x = x_.contiguous(), W = W_.contiguous();
  const int64_t B = x.size(0), F = x.size(1), O = W.size(0);
  TORCH_CHECK(W.size(1) == F && y.size(0) == B && y.size(1) == O, "linear: inconsistent shapes");
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "linear_rows", [&] {
    using s_t = scalar_t;
    const s_t* xp = x.data_ptr<s_t>();
    const s_t* wp = W.data_ptr<s_t>();
    const s_t* bp = b.defined() ? b.data_ptr<s_t>() : nullptr;
    s_t* yp = y.data_ptr<s_t>();
    for (int64_t r = 0; r < B; ++r)
      for (int64_t o = 0; o < O; ++o) {
        const s_t v = dot8(wp + o * F, xp + r * F, F) + (bp ? bp[o] : s_t(0));
        yp[r * O + o] = accumulate ? yp[r * O + o] + v : v;
      }
  });
}

// dots: the dot-product path for few rows (policy_act); the step kernels' own callers (rollouts, training) keep
// at::addmm and its rounding
Tensor linear(const Tensor& x, const Tensor& W, const Tensor& b, bool dots = true) {
  if (!dots || x.size(0) > kFewRows) return at::addmm(b, x, W.t());
  Tensor y = at::empty({x.size(0), W.size(0)}, x.options());
  linear_rows(y, x, W, b, false);
  return y;
}

// ================================================================================================ single steps
// No autograd: for rollouts and act (grad disabled / inference mode). All layers in one call.
// x [B, F], state [B, L, H] (GRU) or [B, 2L, H] (LSTM: h rows then c rows), episode_start [B] or None,
// weights [w_ih_0, w_hh_0, b_ih_0, b_hh_0, w_ih_1, ...] -> (y [B, H], new state shaped like `state`)
std::vector<Tensor> gru_step(const Tensor& x_, const Tensor& state_, const std::optional<Tensor>& starts,
                             const std::vector<Tensor>& weights, bool dots = false) {
  NoGrad guard;
  const auto dtype = x_.scalar_type();
  const Tensor state = state_.contiguous();
  check_cpu(x_, "x", dtype);
  check_cpu(state, "state", dtype);
  TORCH_CHECK(x_.dim() == 2 && state.dim() == 3 && state.size(0) == x_.size(0), "gru_step: inconsistent shapes");
  const int64_t B = state.size(0), L = state.size(1), H = state.size(2);
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == 4 * L, "gru_step: expected 4 weights per layer");
  for (const Tensor& w : weights) check_cpu(w, "weight", dtype);
  const Tensor keep = keep_from_starts(starts, dtype, B, "gru_step");
  const bool has_keep = keep.defined();
  Tensor new_state = at::empty({B, L, H}, state.options());
  Tensor heff = at::empty({B, H}, state.options());
  Tensor x = x_;
  for (int64_t l = 0; l < L; ++l) {
    AT_DISPATCH_FLOATING_TYPES(dtype, "gru_step", [&] {
      using s_t = scalar_t;
      const s_t* kp = has_keep ? keep.data_ptr<s_t>() : nullptr;
      const s_t* sp = state.data_ptr<s_t>();
      s_t* hep = heff.data_ptr<s_t>();
      for (int64_t b = 0; b < B; ++b) scale_row(hep + b * H, sp + (b * L + l) * H, kp ? kp[b] : s_t(1), H);
    });
    const Tensor gi = linear(x, weights[4 * l], weights[4 * l + 2], dots);
    const Tensor gh = linear(heff, weights[4 * l + 1], weights[4 * l + 3], dots);
    Tensor y = at::empty({B, H}, state.options());
    AT_DISPATCH_FLOATING_TYPES(dtype, "gru_step", [&] {
      using s_t = scalar_t;
      const s_t* gip = gi.data_ptr<s_t>();
      const s_t* ghp = gh.data_ptr<s_t>();
      const s_t* hep = heff.data_ptr<s_t>();
      s_t* yp = y.data_ptr<s_t>();
      s_t* nsp = new_state.data_ptr<s_t>();
      for (int64_t b = 0; b < B; ++b)
        gru_step_row(gip + b * 3 * H, ghp + b * 3 * H, hep + b * H, yp + b * H, nsp + (b * L + l) * H, H);
    });
    x = y;
  }
  return {x, new_state};
}

std::vector<Tensor> lstm_step(const Tensor& x_, const Tensor& state_, const std::optional<Tensor>& starts,
                              const std::vector<Tensor>& weights, bool dots = false) {
  NoGrad guard;
  const auto dtype = x_.scalar_type();
  const Tensor state = state_.contiguous();
  check_cpu(x_, "x", dtype);
  check_cpu(state, "state", dtype);
  TORCH_CHECK(x_.dim() == 2 && state.dim() == 3 && state.size(0) == x_.size(0) && state.size(1) % 2 == 0,
              "lstm_step: inconsistent shapes");
  const int64_t B = state.size(0), L = state.size(1) / 2, H = state.size(2);
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == 4 * L, "lstm_step: expected 4 weights per layer");
  for (const Tensor& w : weights) check_cpu(w, "weight", dtype);
  const Tensor keep = keep_from_starts(starts, dtype, B, "lstm_step");
  const bool has_keep = keep.defined();
  Tensor new_state = at::empty({B, 2 * L, H}, state.options());
  Tensor heff = at::empty({B, H}, state.options());
  Tensor x = x_;
  for (int64_t l = 0; l < L; ++l) {
    AT_DISPATCH_FLOATING_TYPES(dtype, "lstm_step", [&] {
      using s_t = scalar_t;
      const s_t* kp = has_keep ? keep.data_ptr<s_t>() : nullptr;
      const s_t* sp = state.data_ptr<s_t>();
      s_t* hep = heff.data_ptr<s_t>();
      for (int64_t b = 0; b < B; ++b) scale_row(hep + b * H, sp + (b * 2 * L + l) * H, kp ? kp[b] : s_t(1), H);
    });
    Tensor g;
    if (dots && B <= kFewRows) {
      g = linear(x, weights[4 * l], weights[4 * l + 2]);
      linear_rows(g, heff, weights[4 * l + 1], weights[4 * l + 3], true);
    } else {
      g = at::addmm(weights[4 * l + 2] + weights[4 * l + 3], x, weights[4 * l].t());
      g.addmm_(heff, weights[4 * l + 1].t());
    }
    Tensor y = at::empty({B, H}, state.options());
    AT_DISPATCH_FLOATING_TYPES(dtype, "lstm_step", [&] {
      using s_t = scalar_t;
      const s_t* kp = has_keep ? keep.data_ptr<s_t>() : nullptr;
      const s_t* gp = g.data_ptr<s_t>();
      const s_t* sp = state.data_ptr<s_t>();
      s_t* yp = y.data_ptr<s_t>();
      s_t* nsp = new_state.data_ptr<s_t>();
      for (int64_t b = 0; b < B; ++b)
        lstm_step_row(gp + b * 4 * H, sp + (b * 2 * L + L + l) * H, yp + b * H, nsp + (b * 2 * L + l) * H,
                      nsp + (b * 2 * L + L + l) * H, kp ? kp[b] : s_t(1), H);
    });
    x = y;
  }
  return {x, new_state};
}

// ================================================================================================ linear scan
// h_t = a_t * h_{t-1} + b_t, elementwise, for the linear-recurrence cores (agents/cores/scan.py). a, b [T, N],
// h0 [N], all contiguous; complex: N counts floats, (re, im) pairs adjacent, and the products are complex. A reset is
// a_t = 0, already in `a`. Forward returns h [T, N]; backward runs the adjoint g_t = dL/dh_t + conj(a_{t+1}) g_{t+1}
// from the end and returns (dL/da, dL/db, dL/dh0) with dL/db_t = g_t, dL/da_t = conj(h_{t-1}) g_t.
template <typename s_t>
void scan_forward_impl(const s_t* a, const s_t* b, const s_t* h0, s_t* h, int64_t T, int64_t N, bool complex) {
  const s_t* prev = h0;
  for (int64_t t = 0; t < T; ++t) {
    const s_t* at_ = a + t * N;
    const s_t* bt = b + t * N;
    s_t* ht = h + t * N;
    if (complex) {
      for (int64_t i = 0; i < N; i += 2) {
        const s_t ar = at_[i], ai = at_[i + 1], pr = prev[i], pi = prev[i + 1];
        ht[i] = ar * pr - ai * pi + bt[i];
        ht[i + 1] = ar * pi + ai * pr + bt[i + 1];
      }
    } else {
      for (int64_t i = 0; i < N; ++i) ht[i] = at_[i] * prev[i] + bt[i];
    }
    prev = ht;
  }
}

// out = conj(x) * y (+ add where given), elementwise over N floats (complex: (re, im) pairs): how a gradient flows
// back through a product by x
template <typename s_t>
void conj_mul(const s_t* x, const s_t* y, const s_t* add, s_t* out, int64_t N, bool complex) {
  if (complex) {
    for (int64_t i = 0; i < N; i += 2) {
      const s_t xr = x[i], xi = x[i + 1], yr = y[i], yi = y[i + 1];
      out[i] = (add ? add[i] : s_t(0)) + xr * yr + xi * yi;
      out[i + 1] = (add ? add[i + 1] : s_t(0)) + xr * yi - xi * yr;
    }
  } else {
    for (int64_t i = 0; i < N; ++i) out[i] = (add ? add[i] : s_t(0)) + x[i] * y[i];
  }
}

template <typename s_t>
void scan_backward_impl(const s_t* a, const s_t* h, const s_t* h0, const s_t* gh, s_t* ga, s_t* gb, s_t* gh0,
                        int64_t T, int64_t N, bool complex) {
  for (int64_t t = T - 1; t >= 0; --t) {
    s_t* g = gb + t * N;
    const s_t* ght = gh + t * N;
    if (t == T - 1) {
      for (int64_t i = 0; i < N; ++i) g[i] = ght[i];
    } else {  // g_t = dL/dh_t + conj(a_{t+1}) g_{t+1}
      conj_mul(a + (t + 1) * N, gb + (t + 1) * N, ght, g, N, complex);
    }
    conj_mul(t > 0 ? h + (t - 1) * N : h0, g, static_cast<const s_t*>(nullptr), ga + t * N, N, complex);
  }
  conj_mul(a, gb, static_cast<const s_t*>(nullptr), gh0, N, complex);
}

void check_scan(const Tensor& a, const Tensor& b, const Tensor& h0, bool complex, const char* name) {
  const auto dtype = b.scalar_type();
  check_cpu(a, "a", dtype);
  check_cpu(b, "b", dtype);
  check_cpu(h0, "h0", dtype);
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && h0.dim() == 1 && a.sizes() == b.sizes() && h0.size(0) == b.size(1),
              name, ": expected a, b [T, N] and h0 [N]");
  TORCH_CHECK(a.is_contiguous() && b.is_contiguous() && h0.is_contiguous(), name, ": expected contiguous tensors");
  TORCH_CHECK(!complex || b.size(1) % 2 == 0, name, ": complex scan needs an even N (re, im pairs)");
}

Tensor scan_forward(const Tensor& a, const Tensor& b, const Tensor& h0, bool complex) {
  NoGrad guard;
  check_scan(a, b, h0, complex, "scan_forward");
  Tensor h = at::empty_like(b);
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "scan_forward", [&] {
    scan_forward_impl<scalar_t>(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(),
                                h.data_ptr<scalar_t>(), b.size(0), b.size(1), complex);
  });
  return h;
}

std::vector<Tensor> scan_backward(const Tensor& a, const Tensor& h, const Tensor& h0, const Tensor& grad_h,
                                  bool complex) {
  NoGrad guard;
  check_scan(a, h, h0, complex, "scan_backward");
  const Tensor gh = grad_h.contiguous();
  check_cpu(gh, "grad_h", h.scalar_type());
  TORCH_CHECK(gh.sizes() == h.sizes(), "scan_backward: grad_h must have h's shape");
  Tensor ga = at::empty_like(h), gb = at::empty_like(h), gh0 = at::empty_like(h0);
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "scan_backward", [&] {
    scan_backward_impl<scalar_t>(a.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(),
                                 gh.data_ptr<scalar_t>(), ga.data_ptr<scalar_t>(), gb.data_ptr<scalar_t>(),
                                 gh0.data_ptr<scalar_t>(), h.size(0), h.size(1), complex);
  });
  return {ga, gb, gh0};
}

// ================================================================================================ policy act
// Linear + activation per (W, b) pair of `w` (act: 0 tanh, 1 relu), as agents.encoders.build_mlp builds them
Tensor mlp_layers(Tensor x, const std::vector<Tensor>& w, int64_t act) {
  TORCH_CHECK(w.size() % 2 == 0, "policy_act: expected (weight, bias) pairs");
  for (size_t i = 0; i < w.size(); i += 2) {
    x = linear(x, w[i], w[i + 1]);
    if (act == 0) {
      x.tanh_();
    } else {
      x.relu_();
    }
  }
  return x;
}

// One deterministic step of a whole policy, for every row of obs [B, D] (already flattened): the observation
// normalisation (when norm_mean is given) or the embedding of categorical codes (when embed is given: code c_i is
// row min(max(c_i, 0), max_code_i) + rows_i of the table, as agents.encoders.MiniGridEncoder), the encoder layers,
// the actor's GRU/LSTM layers (the step kernels above, resets by `starts` first), the actor head layers and the
// action layer; the action is the argmax of the logits
// (discrete) or the output itself (a Gaussian's mean). state [B, S] packs the actor's state (first n_pi features, in
// the core's state shape) and the critic's, which is only zeroed where an episode starts. Returns {action, state}.
std::vector<Tensor> policy_act(const Tensor& obs, const Tensor& state, const std::optional<Tensor>& starts,
                               const std::optional<Tensor>& norm_mean, const std::optional<Tensor>& norm_var,
                               double norm_clip, double norm_eps, const std::optional<Tensor>& embed,
                               const std::optional<Tensor>& max_code, const std::optional<Tensor>& rows,
                               const std::vector<Tensor>& encoder,
                               int64_t activation, bool lstm, const std::vector<Tensor>& core_weights,
                               std::vector<int64_t> core_state_shape, const std::vector<Tensor>& head,
                               const Tensor& action_w, const Tensor& action_b, bool discrete) {
  NoGrad guard;
  TORCH_CHECK(obs.dim() == 2 && state.dim() == 2 && obs.size(0) == state.size(0), "policy_act: inconsistent shapes");
  const int64_t B = obs.size(0), S = state.size(1);
  int64_t n_pi = 1;
  for (int64_t d : core_state_shape) n_pi *= d;
  TORCH_CHECK(n_pi <= S, "policy_act: the state is smaller than the actor's part");
  Tensor x = obs;
  if (embed.has_value() && embed->defined()) {  // gather the table's rows straight into [B, D * E]
    const Tensor table = embed->contiguous(), codes = obs.to(at::kLong).contiguous();
    const Tensor top = max_code->to(at::kLong).contiguous(), first = rows->to(at::kLong).contiguous();
    const int64_t D = codes.size(1), E = table.size(1);
    TORCH_CHECK(top.numel() == D && first.numel() == D, "policy_act: max_code and rows need one entry per code");
    x = at::empty({B, D * E}, table.options());
    AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "policy_act_embed", [&] {
      using s_t = scalar_t;
      const int64_t* cp = codes.data_ptr<int64_t>();
      const int64_t* tp = top.data_ptr<int64_t>();
      const int64_t* fp = first.data_ptr<int64_t>();
      const s_t* ep = table.data_ptr<s_t>();
      s_t* xp = x.data_ptr<s_t>();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < D; ++i) {
          const int64_t c = std::min(std::max(cp[b * D + i], int64_t(0)), tp[i]) + fp[i];
          std::copy(ep + c * E, ep + (c + 1) * E, xp + (b * D + i) * E);
        }
    });
  } else if (norm_mean.has_value() && norm_mean->defined()) {
    x = at::clamp((x - *norm_mean) / at::sqrt(*norm_var + norm_eps), -norm_clip, norm_clip);
  }
  x = mlp_layers(x, encoder, activation);
  std::vector<int64_t> shape{B};
  shape.insert(shape.end(), core_state_shape.begin(), core_state_shape.end());
  const Tensor s_pi = state.narrow(1, 0, n_pi).reshape(shape);
  std::vector<Tensor> out =
      lstm ? lstm_step(x, s_pi, starts, core_weights, true) : gru_step(x, s_pi, starts, core_weights, true);
  Tensor action = linear(mlp_layers(out[0], head, activation), action_w, action_b);
  if (discrete) action = action.argmax(-1);
  if (n_pi == S) return {action, out[1].reshape({B, S})};
  Tensor new_state = at::empty({B, S}, state.options());
  new_state.narrow(1, 0, n_pi).copy_(out[1].reshape({B, n_pi}));
  Tensor s_vf = new_state.narrow(1, n_pi, S - n_pi);
  s_vf.copy_(state.narrow(1, n_pi, S - n_pi));
  const Tensor keep = keep_from_starts(starts, state.scalar_type(), B, "policy_act");
  if (keep.defined()) s_vf.mul_(keep.unsqueeze(1));
  return {action, new_state};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "recurrent-agents fused CPU kernels (GRU/LSTM sequences with in-loop resets, steps; linear scan)";
  m.def("gru_forward", &gru_forward);
  m.def("gru_backward", &gru_backward);
  m.def("lstm_forward", &lstm_forward);
  m.def("lstm_backward", &lstm_backward);
  m.def("gru_step", [](const Tensor& x, const Tensor& s, const std::optional<Tensor>& e,
                       const std::vector<Tensor>& w) { return gru_step(x, s, e, w); });
  m.def("lstm_step", [](const Tensor& x, const Tensor& s, const std::optional<Tensor>& e,
                        const std::vector<Tensor>& w) { return lstm_step(x, s, e, w); });
  m.def("policy_act", &policy_act);
  m.def("scan_forward", &scan_forward);
  m.def("scan_backward", &scan_backward);
}
