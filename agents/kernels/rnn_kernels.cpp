// Fused CPU sequence and step kernels for the GRU and LSTM memory cores (agents/cores/gru.py, lstm.py).
//
// One layer per call for sequences (the Python autograd functions in fused.py chain layers), all layers per call
// for single steps. Gate order and equations are PyTorch's:
//   GRU  [r, z, n]:  r = s(Wir x + bir + Whr h + bhr), z = s(Wiz x + biz + Whz h + bhz),
//                    n = tanh(Win x + bin + r * (Whn h + bhn)),  h' = (1 - z) * n + z * h
//   LSTM [i, f, g, o]: c' = f * c + i * g,  h' = o * tanh(c')
// Episode resets happen inside the loop: before step t, h_eff = h * keep[t] (and c_eff = c * keep[t] for LSTM), with
// keep = 1 - episode_start. An empty keep tensor means "no resets anywhere" (the multiply is skipped).
//
// Forward: the input projections of all steps are one matrix product; each step is one addmm for h_eff @ W_hh^T plus
// one elementwise pass (sigmoid/tanh inline). Backward runs the steps in reverse with one elementwise pass and one mm
// (dh_eff = dGates_h @ W_hh) per step; the weight, bias and input gradients are then ONE matrix product (or sum) each
// over all steps. Float and double; float uses a vectorisable exp (Cephes polynomial, ~1 ulp), double uses libm.

#include <ATen/ATen.h>
#include <torch/python.h>

#include <cmath>
#include <cstdint>
#include <cstring>
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

// ------------------------------------------------------------------------------------------------ checks
void check_cpu(const Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), "fused rnn kernel: ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, "fused rnn kernel: ", name, " has dtype ", t.scalar_type(), ", expected ",
              dtype);
}

struct NoGrad {  // nothing inside a kernel is recorded by autograd
  at::NoGradGuard no_grad;
};

// ================================================================================================ GRU sequence
// x [T, B, F], h0 [B, H], keep [T, B] or empty, w_ih [3H, F], w_hh [3H, H], b_ih [3H], b_hh [3H]
// returns y [T, B, H], hT [B, H], and for backward: gates (activated r, z, n) [T, B, 3H], gh (h_eff @ W_hh^T + b_hh)
// [T, B, 3H], heff [T, B, H]
std::vector<Tensor> gru_forward(const Tensor& x_, const Tensor& h0_, const Tensor& keep_, const Tensor& w_ih_,
                                const Tensor& w_hh_, const Tensor& b_ih_, const Tensor& b_hh_) {
  NoGrad guard;
  const auto dtype = x_.scalar_type();
  const Tensor x = x_.contiguous(), h0 = h0_.contiguous(), keep = keep_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous(), b_ih = b_ih_.contiguous(),
               b_hh = b_hh_.contiguous();
  for (auto* p : {&x, &h0, &w_ih, &w_hh, &b_ih, &b_hh}) check_cpu(*p, "argument", dtype);
  const int64_t T = x.size(0), B = x.size(1), F = x.size(2), H = h0.size(1);
  TORCH_CHECK(h0.size(0) == B && w_ih.size(0) == 3 * H && w_ih.size(1) == F && w_hh.size(0) == 3 * H &&
                  w_hh.size(1) == H,
              "gru_forward: inconsistent shapes");
  const bool has_keep = keep.numel() > 0;
  if (has_keep) {
    check_cpu(keep, "keep", dtype);
    TORCH_CHECK(keep.numel() == T * B, "gru_forward: keep must be [T, B]");
  }
  Tensor gates = at::addmm(b_ih, x.view({T * B, F}), w_ih.t()).view({T, B, 3 * H});
  Tensor gh = at::empty({T, B, 3 * H}, x.options());
  Tensor heff = at::empty({T, B, H}, x.options());
  Tensor y = at::empty({T, B, H}, x.options());
  Tensor hT = at::empty({B, H}, x.options());
  const Tensor w_hh_t = w_hh.t();

  AT_DISPATCH_FLOATING_TYPES(dtype, "gru_forward", [&] {
    using s_t = scalar_t;
    const s_t* kp = has_keep ? keep.data_ptr<s_t>() : nullptr;
    s_t* hep = heff.data_ptr<s_t>();
    {  // h_eff of step 0
      const s_t* hp = h0.data_ptr<s_t>();
      for (int64_t b = 0; b < B; ++b) {
        const s_t k = kp ? kp[b] : s_t(1);
        for (int64_t j = 0; j < H; ++j) hep[b * H + j] = hp[b * H + j] * k;
      }
    }
    s_t* gp = gates.data_ptr<s_t>();
    s_t* ghp = gh.data_ptr<s_t>();
    s_t* yp = y.data_ptr<s_t>();
    s_t* hTp = hT.data_ptr<s_t>();
    for (int64_t t = 0; t < T; ++t) {
      Tensor gh_t = gh[t];
      at::addmm_out(gh_t, b_hh, heff[t], w_hh_t);
      const bool last = (t + 1 == T);
      for (int64_t b = 0; b < B; ++b) {
        const int64_t row = t * B + b;
        s_t* __restrict g = gp + row * 3 * H;
        const s_t* __restrict q = ghp + row * 3 * H;
        const s_t* __restrict he = hep + row * H;
        s_t* __restrict out = yp + row * H;
        s_t* __restrict nxt = last ? hTp + b * H : hep + (row + B) * H;
        const s_t k = (!last && kp) ? kp[row + B] : s_t(1);
        for (int64_t j = 0; j < H; ++j) {
          const s_t r = sigm(g[j] + q[j]);
          const s_t z = sigm(g[H + j] + q[H + j]);
          const s_t n = tanh_(g[2 * H + j] + r * q[2 * H + j]);
          const s_t h = n + z * (he[j] - n);
          g[j] = r;
          g[H + j] = z;
          g[2 * H + j] = n;
          out[j] = h;
          nxt[j] = h * k;
        }
      }
    }
  });
  return {y, hT, gates, gh, heff};
}

// dy [T, B, H], dhT [B, H] -> dx [T, B, F] (or empty), dh0 [B, H], dw_ih, dw_hh, db_ih, db_hh (or empty)
std::vector<Tensor> gru_backward(const Tensor& dy_, const Tensor& dhT_, const Tensor& x_, const Tensor& keep_,
                                 const Tensor& w_ih_, const Tensor& w_hh_, const Tensor& gates, const Tensor& gh,
                                 const Tensor& heff, bool need_dx, bool need_dw) {
  NoGrad guard;
  const auto dtype = gates.scalar_type();
  const Tensor dy = dy_.contiguous(), dhT = dhT_.contiguous(), x = x_.contiguous(), keep = keep_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  check_cpu(dy, "dy", dtype);
  check_cpu(dhT, "dhT", dtype);
  const int64_t T = gates.size(0), B = gates.size(1), H = heff.size(2), F = x.size(2);
  const bool has_keep = keep.numel() > 0;
  Tensor dgi = at::empty({T, B, 3 * H}, gates.options());
  Tensor dgh = at::empty({T, B, 3 * H}, gates.options());
  Tensor dheff = dhT.clone();  // carried dh (before the keep of the step after): starts as dL/dh_T
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
    s_t* dcp = dheff.data_ptr<s_t>();
    for (int64_t t = T - 1; t >= 0; --t) {
      const bool last = (t + 1 == T);
      for (int64_t b = 0; b < B; ++b) {
        const int64_t row = t * B + b;
        const s_t k = (!last && kp) ? kp[row + B] : s_t(1);
        const s_t* __restrict g = gp + row * 3 * H;
        const s_t* __restrict q = ghp + row * 3 * H;
        const s_t* __restrict he = hep + row * H;
        const s_t* __restrict d = dyp + row * H;
        s_t* __restrict dc = dcp + b * H;
        s_t* __restrict di = dgip + row * 3 * H;
        s_t* __restrict dq = dghp + row * 3 * H;
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
      dheff.addmm_(dgh[t], w_hh);  // dL/dh_eff[t]
    }
    s_t* d0 = dh0.data_ptr<s_t>();
    for (int64_t b = 0; b < B; ++b) {
      const s_t k = kp ? kp[b] : s_t(1);
      for (int64_t j = 0; j < H; ++j) d0[b * H + j] = dcp[b * H + j] * k;
    }
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
// x [T, B, F], h0 [B, H], c0 [B, H], keep [T, B] or empty, w_ih [4H, F], w_hh [4H, H], b_ih [4H], b_hh [4H]
// returns y [T, B, H], hT, cT [B, H], and for backward: gates (activated i, f, g, o) [T, B, 4H], tanh(c) [T, B, H],
// heff [T, B, H], ceff [T, B, H]
std::vector<Tensor> lstm_forward(const Tensor& x_, const Tensor& h0_, const Tensor& c0_, const Tensor& keep_,
                                 const Tensor& w_ih_, const Tensor& w_hh_, const Tensor& b_ih_, const Tensor& b_hh_) {
  NoGrad guard;
  const auto dtype = x_.scalar_type();
  const Tensor x = x_.contiguous(), h0 = h0_.contiguous(), c0 = c0_.contiguous(), keep = keep_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  for (auto* p : {&x, &h0, &c0, &w_ih, &w_hh}) check_cpu(*p, "argument", dtype);
  check_cpu(b_ih_, "b_ih", dtype);
  check_cpu(b_hh_, "b_hh", dtype);
  const int64_t T = x.size(0), B = x.size(1), F = x.size(2), H = h0.size(1);
  TORCH_CHECK(h0.size(0) == B && c0.size(0) == B && c0.size(1) == H && w_ih.size(0) == 4 * H && w_ih.size(1) == F &&
                  w_hh.size(0) == 4 * H && w_hh.size(1) == H,
              "lstm_forward: inconsistent shapes");
  const bool has_keep = keep.numel() > 0;
  if (has_keep) {
    check_cpu(keep, "keep", dtype);
    TORCH_CHECK(keep.numel() == T * B, "lstm_forward: keep must be [T, B]");
  }
  // both biases folded into the input projection; each step adds h_eff @ W_hh^T in place
  Tensor gates = at::addmm(b_ih_ + b_hh_, x.view({T * B, F}), w_ih.t()).view({T, B, 4 * H});
  Tensor tc = at::empty({T, B, H}, x.options());
  Tensor heff = at::empty({T, B, H}, x.options());
  Tensor ceff = at::empty({T, B, H}, x.options());
  Tensor y = at::empty({T, B, H}, x.options());
  Tensor hT = at::empty({B, H}, x.options());
  Tensor cT = at::empty({B, H}, x.options());
  const Tensor w_hh_t = w_hh.t();

  AT_DISPATCH_FLOATING_TYPES(dtype, "lstm_forward", [&] {
    using s_t = scalar_t;
    const s_t* kp = has_keep ? keep.data_ptr<s_t>() : nullptr;
    s_t* hep = heff.data_ptr<s_t>();
    s_t* cep = ceff.data_ptr<s_t>();
    {
      const s_t* hp = h0.data_ptr<s_t>();
      const s_t* cp = c0.data_ptr<s_t>();
      for (int64_t b = 0; b < B; ++b) {
        const s_t k = kp ? kp[b] : s_t(1);
        for (int64_t j = 0; j < H; ++j) {
          hep[b * H + j] = hp[b * H + j] * k;
          cep[b * H + j] = cp[b * H + j] * k;
        }
      }
    }
    s_t* gp = gates.data_ptr<s_t>();
    s_t* tcp = tc.data_ptr<s_t>();
    s_t* yp = y.data_ptr<s_t>();
    s_t* hTp = hT.data_ptr<s_t>();
    s_t* cTp = cT.data_ptr<s_t>();
    for (int64_t t = 0; t < T; ++t) {
      gates[t].addmm_(heff[t], w_hh_t);
      const bool last = (t + 1 == T);
      for (int64_t b = 0; b < B; ++b) {
        const int64_t row = t * B + b;
        s_t* __restrict g = gp + row * 4 * H;
        const s_t* __restrict ce = cep + row * H;
        s_t* __restrict tco = tcp + row * H;
        s_t* __restrict out = yp + row * H;
        s_t* __restrict hn = last ? hTp + b * H : hep + (row + B) * H;
        s_t* __restrict cn = last ? cTp + b * H : cep + (row + B) * H;
        const s_t k = (!last && kp) ? kp[row + B] : s_t(1);
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
    }
  });
  return {y, hT, cT, gates, tc, heff, ceff};
}

// dy [T, B, H], dhT, dcT [B, H] -> dx (or empty), dh0, dc0, dw_ih, dw_hh, db_ih, db_hh (or empty)
std::vector<Tensor> lstm_backward(const Tensor& dy_, const Tensor& dhT_, const Tensor& dcT_, const Tensor& x_,
                                  const Tensor& keep_, const Tensor& w_ih_, const Tensor& w_hh_, const Tensor& gates,
                                  const Tensor& tc, const Tensor& heff, const Tensor& ceff, bool need_dx,
                                  bool need_dw) {
  NoGrad guard;
  const auto dtype = gates.scalar_type();
  const Tensor dy = dy_.contiguous(), dhT = dhT_.contiguous(), dcT = dcT_.contiguous(), x = x_.contiguous(),
               keep = keep_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  check_cpu(dy, "dy", dtype);
  check_cpu(dhT, "dhT", dtype);
  check_cpu(dcT, "dcT", dtype);
  const int64_t T = gates.size(0), B = gates.size(1), H = heff.size(2), F = x.size(2);
  const bool has_keep = keep.numel() > 0;
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
        const s_t k = (!last && kp) ? kp[row + B] : s_t(1);
        const s_t* __restrict g = gp + row * 4 * H;
        const s_t* __restrict tcv = tcp + row * H;
        const s_t* __restrict ce = cep + row * H;
        const s_t* __restrict d = dyp + row * H;
        const s_t* __restrict dhin = dhp + b * H;
        s_t* __restrict dcin = dcp + b * H;
        s_t* __restrict dgo = dgp + row * 4 * H;
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
      at::mm_out(dhc, dg[t], w_hh);  // dL/dh_eff[t]
    }
    s_t* dh0p = dh0.data_ptr<s_t>();
    s_t* dc0p = dc0.data_ptr<s_t>();
    for (int64_t b = 0; b < B; ++b) {
      const s_t k = kp ? kp[b] : s_t(1);
      for (int64_t j = 0; j < H; ++j) {
        dh0p[b * H + j] = dhp[b * H + j] * k;
        dc0p[b * H + j] = dcp[b * H + j] * k;
      }
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
  return {dx, dh0, dc0, dw_ih, dw_hh, db, db};
}

// ================================================================================================ single steps
// No autograd: for rollouts and act (grad disabled / inference mode). All layers in one call.
// x [B, F], state [B, L, H] (GRU) or [B, 2L, H] (LSTM: h rows then c rows), keep [B] or empty,
// weights [w_ih_0, w_hh_0, b_ih_0, b_hh_0, w_ih_1, ...] -> (y [B, H], new state like `state`)
std::vector<Tensor> gru_step(const Tensor& x_, const Tensor& state_, const Tensor& keep_,
                             const std::vector<Tensor>& weights) {
  NoGrad guard;
  const auto dtype = x_.scalar_type();
  const Tensor state = state_.contiguous(), keep = keep_.contiguous();
  check_cpu(x_, "x", dtype);
  check_cpu(state, "state", dtype);
  const int64_t B = state.size(0), L = state.size(1), H = state.size(2);
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == 4 * L, "gru_step: expected 4 weights per layer");
  const bool has_keep = keep.numel() > 0;
  if (has_keep) check_cpu(keep, "keep", dtype);
  Tensor new_state = at::empty({B, L, H}, state.options());
  Tensor heff = at::empty({B, H}, state.options());
  Tensor x = x_;
  for (int64_t l = 0; l < L; ++l) {
    const Tensor& w_ih = weights[4 * l];
    const Tensor& w_hh = weights[4 * l + 1];
    Tensor gi = at::addmm(weights[4 * l + 2], x, w_ih.t());
    Tensor y = at::empty({B, H}, state.options());
    AT_DISPATCH_FLOATING_TYPES(dtype, "gru_step", [&] {
      using s_t = scalar_t;
      const s_t* kp = has_keep ? keep.data_ptr<s_t>() : nullptr;
      const s_t* sp = state.data_ptr<s_t>();
      s_t* hep = heff.data_ptr<s_t>();
      for (int64_t b = 0; b < B; ++b) {
        const s_t k = kp ? kp[b] : s_t(1);
        for (int64_t j = 0; j < H; ++j) hep[b * H + j] = sp[(b * L + l) * H + j] * k;
      }
    });
    Tensor gh = at::addmm(weights[4 * l + 3], heff, w_hh.t());
    AT_DISPATCH_FLOATING_TYPES(dtype, "gru_step", [&] {
      using s_t = scalar_t;
      const s_t* gip = gi.data_ptr<s_t>();
      const s_t* ghp = gh.data_ptr<s_t>();
      const s_t* hep = heff.data_ptr<s_t>();
      s_t* yp = y.data_ptr<s_t>();
      s_t* nsp = new_state.data_ptr<s_t>();
      for (int64_t b = 0; b < B; ++b) {
        const s_t* __restrict g = gip + b * 3 * H;
        const s_t* __restrict q = ghp + b * 3 * H;
        const s_t* __restrict he = hep + b * H;
        s_t* __restrict out = yp + b * H;
        s_t* __restrict ns = nsp + (b * L + l) * H;
        for (int64_t j = 0; j < H; ++j) {
          const s_t r = sigm(g[j] + q[j]);
          const s_t z = sigm(g[H + j] + q[H + j]);
          const s_t n = tanh_(g[2 * H + j] + r * q[2 * H + j]);
          const s_t h = n + z * (he[j] - n);
          out[j] = h;
          ns[j] = h;
        }
      }
    });
    x = y;
  }
  return {x, new_state};
}

std::vector<Tensor> lstm_step(const Tensor& x_, const Tensor& state_, const Tensor& keep_,
                              const std::vector<Tensor>& weights) {
  NoGrad guard;
  const auto dtype = x_.scalar_type();
  const Tensor state = state_.contiguous(), keep = keep_.contiguous();
  check_cpu(x_, "x", dtype);
  check_cpu(state, "state", dtype);
  const int64_t B = state.size(0), L = state.size(1) / 2, H = state.size(2);
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == 4 * L, "lstm_step: expected 4 weights per layer");
  const bool has_keep = keep.numel() > 0;
  if (has_keep) check_cpu(keep, "keep", dtype);
  Tensor new_state = at::empty({B, 2 * L, H}, state.options());
  Tensor heff = at::empty({B, H}, state.options());
  Tensor x = x_;
  for (int64_t l = 0; l < L; ++l) {
    AT_DISPATCH_FLOATING_TYPES(dtype, "lstm_step", [&] {
      using s_t = scalar_t;
      const s_t* kp = has_keep ? keep.data_ptr<s_t>() : nullptr;
      const s_t* sp = state.data_ptr<s_t>();
      s_t* hep = heff.data_ptr<s_t>();
      for (int64_t b = 0; b < B; ++b) {
        const s_t k = kp ? kp[b] : s_t(1);
        for (int64_t j = 0; j < H; ++j) hep[b * H + j] = sp[(b * 2 * L + l) * H + j] * k;
      }
    });
    Tensor g = at::addmm(weights[4 * l + 2] + weights[4 * l + 3], x, weights[4 * l].t());
    g.addmm_(heff, weights[4 * l + 1].t());
    Tensor y = at::empty({B, H}, state.options());
    AT_DISPATCH_FLOATING_TYPES(dtype, "lstm_step", [&] {
      using s_t = scalar_t;
      const s_t* kp = has_keep ? keep.data_ptr<s_t>() : nullptr;
      const s_t* gp = g.data_ptr<s_t>();
      const s_t* sp = state.data_ptr<s_t>();
      s_t* yp = y.data_ptr<s_t>();
      s_t* nsp = new_state.data_ptr<s_t>();
      for (int64_t b = 0; b < B; ++b) {
        const s_t k = kp ? kp[b] : s_t(1);
        const s_t* __restrict gg_ = gp + b * 4 * H;
        const s_t* __restrict cold = sp + (b * 2 * L + L + l) * H;
        s_t* __restrict out = yp + b * H;
        s_t* __restrict hs = nsp + (b * 2 * L + l) * H;
        s_t* __restrict cs = nsp + (b * 2 * L + L + l) * H;
        for (int64_t j = 0; j < H; ++j) {
          const s_t i = sigm(gg_[j]);
          const s_t f = sigm(gg_[H + j]);
          const s_t gv = tanh_(gg_[2 * H + j]);
          const s_t o = sigm(gg_[3 * H + j]);
          const s_t c = f * (cold[j] * k) + i * gv;
          const s_t h = o * tanh_(c);
          out[j] = h;
          hs[j] = h;
          cs[j] = c;
        }
      }
    });
    x = y;
  }
  return {x, new_state};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "recurrent-agents fused CPU GRU/LSTM kernels (sequence forward/backward with in-loop resets, steps)";
  m.def("gru_forward", &gru_forward);
  m.def("gru_backward", &gru_backward);
  m.def("lstm_forward", &lstm_forward);
  m.def("lstm_backward", &lstm_backward);
  m.def("gru_step", &gru_step);
  m.def("lstm_step", &lstm_step);
}
