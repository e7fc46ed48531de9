// Input-sparse GEMV over a column-contiguous (transposed) weight: y[b] = sum_j x[b, j] * Wt[j, :].
//
// Wt is [in, out] row-major, so the weight column of input j is one contiguous row of Wt: a zero (or
// below-threshold) input skips its whole row, and the bytes read fall with the input sparsity. The active rows
// of a batch are the union over its rows (a row is read once and used for every batch row). Threads split the
// active rows and accumulate into their own buffers (thread 0 straight into y), then reduce a slice of y each.
// Weights are fp32, bf16 (stored as uint16) or int8 with one fp32 scale per output channel; inputs are fp32
// values or int32 spike counts (an integer count times its row: accumulate only, scaled by v_th at the end).
#include <torch/extension.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <ctime>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

inline float widen(float v) { return v; }
inline float widen(int8_t v) { return static_cast<float>(v); }
inline float widen(uint16_t v) {  // bf16 -> fp32: the bf16 bits are the high half of the fp32 bits
  uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

constexpr int64_t kParallelBytes = 1 << 17;  // below ~128 KiB of weights one thread beats the fork/join

constexpr int64_t kAhead = 8;  // rows prefetched ahead: short rows (and gathered ones) defeat the hardware prefetcher
constexpr int64_t kPrefetchRowBytes = 1 << 16;  // longer rows stream well on their own; kAhead of them overflow L2

#if defined(__AVX512F__)
// One cache line (64 int8 outputs) of four rows times their inputs, added into a[0:64]: sign-extend 16 codes at a
// time straight to int32, convert, FMA. The generic loop below gets the same arithmetic, but the compiler widens
// int8 through int16 and re-enters a peeled vector loop for every 64-element line, which held int8 decode to about
// half the fp32 bandwidth. Summation order per output (row 0, 1, 2, 3 onto a) is the generic loop's.
inline void int8_line(const int8_t* r0, const int8_t* r1, const int8_t* r2, const int8_t* r3, float x0, float x1,
                      float x2, float x3, float* a) {
  const __m512 v0 = _mm512_set1_ps(x0), v1 = _mm512_set1_ps(x1), v2 = _mm512_set1_ps(x2), v3 = _mm512_set1_ps(x3);
  auto w = [](const int8_t* r) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r))));
  };
  for (int c = 0; c < 64; c += 16) {
    __m512 t = _mm512_mul_ps(v0, w(r0 + c));
    t = _mm512_fmadd_ps(v1, w(r1 + c), t);
    t = _mm512_fmadd_ps(v2, w(r2 + c), t);
    t = _mm512_fmadd_ps(v3, w(r3 + c), t);
    _mm512_storeu_ps(a + c, _mm512_add_ps(_mm512_loadu_ps(a + c), t));
  }
}
#endif

// Rows idx[lo:hi) (or lo:hi themselves when idx is null) of Wt, times x, added into acc [B, out]. Four rows at a
// time; for rows up to kPrefetchRowBytes each cache line comes with a software prefetch of the same line kAhead
// rows on, so the next rows (gathered, or only a few KB long) are on their way when the loop gets there (int8
// decode on SmolLM2 ran at half the fp32 bandwidth without it).
template <typename W>
void accumulate(const W* __restrict wt, const float* __restrict x, const int32_t* idx, int64_t lo, int64_t hi,
                int64_t B, int64_t in, int64_t out, float* __restrict acc) {
  constexpr int64_t line = 64 / static_cast<int64_t>(sizeof(W));  // elements per cache line
  auto row = [&](int64_t k) { return idx ? static_cast<int64_t>(idx[k]) : k; };
  int64_t k = lo;
  for (; k + 4 <= hi; k += 4) {
    const int64_t j0 = row(k), j1 = row(k + 1), j2 = row(k + 2), j3 = row(k + 3);
    const W* __restrict r0 = wt + j0 * out;
    const W* __restrict r1 = wt + j1 * out;
    const W* __restrict r2 = wt + j2 * out;
    const W* __restrict r3 = wt + j3 * out;
    const bool ahead = k + kAhead + 4 <= hi && out * static_cast<int64_t>(sizeof(W)) <= kPrefetchRowBytes;
    const W* p0 = ahead ? wt + row(k + kAhead) * out : nullptr;
    const W* p1 = ahead ? wt + row(k + kAhead + 1) * out : nullptr;
    const W* p2 = ahead ? wt + row(k + kAhead + 2) * out : nullptr;
    const W* p3 = ahead ? wt + row(k + kAhead + 3) * out : nullptr;
    for (int64_t o0 = 0; o0 < out; o0 += line) {
      const int64_t o1 = std::min(out, o0 + line);
      if (ahead) {
        __builtin_prefetch(p0 + o0);
        __builtin_prefetch(p1 + o0);
        __builtin_prefetch(p2 + o0);
        __builtin_prefetch(p3 + o0);
      }
#if defined(__AVX512F__)
      if constexpr (std::is_same_v<W, int8_t>) {
        if (B == 1 && o1 - o0 == line) {  // a whole line, batch 1: the decode case, see int8_line
          int8_line(r0 + o0, r1 + o0, r2 + o0, r3 + o0, x[j0], x[j1], x[j2], x[j3], acc + o0);
          continue;
        }
      }
#endif
      for (int64_t b = 0; b < B; ++b) {
        const float* xb = x + b * in;
        const float x0 = xb[j0], x1 = xb[j1], x2 = xb[j2], x3 = xb[j3];
        float* __restrict a = acc + b * out;
#pragma omp simd
        for (int64_t o = o0; o < o1; ++o)
          a[o] += x0 * widen(r0[o]) + x1 * widen(r1[o]) + x2 * widen(r2[o]) + x3 * widen(r3[o]);
      }
    }
  }
  for (; k < hi; ++k) {
    const int64_t j = row(k);
    const W* __restrict r = wt + j * out;
    for (int64_t b = 0; b < B; ++b) {
      const float xv = x[b * in + j];
      float* __restrict a = acc + b * out;
#pragma omp simd
      for (int64_t o = 0; o < out; ++o) a[o] += xv * widen(r[o]);
    }
  }
}

// y (zeroed by the caller) = the active rows of Wt times x, then scaled and biased; `scratch` is reused storage.
template <typename W>
void run(const W* wt, const float* x, const int32_t* idx, int64_t n, int64_t B, int64_t in, int64_t out,
         const float* colscale, const float* rowscale, const float* bias, float* y, std::vector<float>& scratch) {
  const int64_t bytes = n * out * static_cast<int64_t>(sizeof(W));
  int nt = bytes < kParallelBytes ? 1 : std::min<int64_t>(omp_get_max_threads(), std::max<int64_t>(1, n / 8));
  scratch.resize(std::max(scratch.size(), static_cast<size_t>(nt - 1) * B * out));
  const int64_t total = B * out;
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    float* acc = t == 0 ? y : scratch.data() + (t - 1) * total;
    if (t > 0) std::fill(acc, acc + total, 0.0f);
    const int64_t lo = n * t / T, hi = n * (t + 1) / T;
    accumulate(wt, x, idx, lo, hi, B, in, out, acc);
#pragma omp barrier
    const int64_t s0 = total * t / T, s1 = total * (t + 1) / T;
    for (int u = 1; u < T; ++u) {
      const float* part = scratch.data() + (u - 1) * total;
#pragma omp simd
      for (int64_t i = s0; i < s1; ++i) y[i] += part[i];
    }
    for (int64_t i = s0; i < s1; ++i) {
      const int64_t b = i / out, o = i % out;
      float v = y[i];
      if (colscale) v *= colscale[o];
      if (rowscale) v *= rowscale[b];
      if (bias) v += bias[o];
      y[i] = v;
    }
  }
}

// Indices j where some batch row has a non-zero input with |x| >= threshold; zeroes the others in xs.
std::vector<int32_t> active(float* xs, int64_t B, int64_t in, float threshold) {
  std::vector<int32_t> idx;
  idx.reserve(in);
  for (int64_t j = 0; j < in; ++j) {
    bool any = false;
    for (int64_t b = 0; b < B; ++b) {
      float& v = xs[b * in + j];
      if (std::fabs(v) < threshold) v = 0.0f;
      any |= v != 0.0f;
    }
    if (any) idx.push_back(static_cast<int32_t>(j));
  }
  return idx;
}

const float* optional_ptr(const c10::optional<torch::Tensor>& t, int64_t numel, const char* what) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK(t->scalar_type() == torch::kFloat32 && t->is_contiguous() && t->numel() == numel,
              what, " must be a contiguous float32 tensor of ", numel, " values");
  return t->data_ptr<float>();
}

void dispatch(const torch::Tensor& wt, const float* xp, const int32_t* ip, int64_t n, int64_t B, int64_t in,
              int64_t out, const float* cs, const float* rs, const float* bs, float* yp, std::vector<float>& scratch) {
  switch (wt.scalar_type()) {
    case torch::kFloat32: run(wt.data_ptr<float>(), xp, ip, n, B, in, out, cs, rs, bs, yp, scratch); break;
    case torch::kBFloat16:
      run(reinterpret_cast<const uint16_t*>(wt.data_ptr<at::BFloat16>()), xp, ip, n, B, in, out, cs, rs, bs, yp,
          scratch);
      break;
    case torch::kInt8: run(wt.data_ptr<int8_t>(), xp, ip, n, B, in, out, cs, rs, bs, yp, scratch); break;
    default: TORCH_CHECK(false, "Wt must be float32, bfloat16 or int8, got ", wt.scalar_type());
  }
}

// y [B, out] (fp32) = x [B, in] (fp32 values, or int32 spike counts) times Wt [in, out].
// sparse: skip inputs that are zero or below `threshold` in magnitude (TEAL); otherwise read every row (dense).
torch::Tensor gemv(torch::Tensor wt, torch::Tensor x, bool sparse, double threshold,
                   c10::optional<torch::Tensor> colscale, c10::optional<torch::Tensor> rowscale,
                   c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(wt.device().is_cpu() && x.device().is_cpu(), "the C++ sparse kernels run on the CPU only");
  TORCH_CHECK(wt.dim() == 2 && wt.is_contiguous(), "Wt must be a contiguous [in, out] tensor");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == wt.size(0), "x must be [B, in] with in = Wt.size(0)");
  const int64_t B = x.size(0), in = wt.size(0), out = wt.size(1);
  TORCH_CHECK(in < (int64_t(1) << 31), "in_features too large for int32 indices");
  // an owned fp32 copy: thresholding writes into it
  torch::Tensor xs = x.to(torch::kFloat32, false, /*copy=*/true).contiguous();
  float* xp = xs.data_ptr<float>();
  std::vector<int32_t> idx;
  if (sparse) idx = active(xp, B, in, static_cast<float>(threshold));
  const int32_t* ip = sparse ? idx.data() : nullptr;
  const int64_t n = sparse ? static_cast<int64_t>(idx.size()) : in;
  torch::Tensor y = torch::zeros({B, out}, torch::kFloat32);
  const float* cs = optional_ptr(colscale, out, "colscale");
  const float* rs = optional_ptr(rowscale, B, "rowscale");
  const float* bs = optional_ptr(bias, out, "bias");
  float* yp = y.data_ptr<float>();
  std::vector<float> scratch;
  dispatch(wt, xp, ip, n, B, in, out, cs, rs, bs, yp, scratch);
  return y;
}


// ---- the fused decode step: a whole Llama-like token in one call ----------------------------------------------
//
// One linear of the decoder: a packed weight (as `gemv` takes it) and its input rule. `sparse`: skip inputs with
// |x| < threshold (and exact zeros), TEAL's rule, as `gemv(..., sparse=true, threshold)` does for one row.
struct Linear {
  torch::Tensor wt;
  c10::optional<torch::Tensor> scale, bias;
  bool sparse;
  double threshold;
  Linear(torch::Tensor wt_, c10::optional<torch::Tensor> scale_, c10::optional<torch::Tensor> bias_, bool sparse_,
         double threshold_)
      : wt(wt_), scale(scale_), bias(bias_), sparse(sparse_), threshold(threshold_) {
    TORCH_CHECK(wt.device().is_cpu() && wt.dim() == 2 && wt.is_contiguous(), "Wt must be a contiguous CPU [in, out]");
  }
  int64_t in() const { return wt.size(0); }
  int64_t out() const { return wt.size(1); }
};

double now(bool cpu) {
  if (cpu) {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Batch-1 decoding of a Llama-like stack (RMSNorm, rotary, grouped-query attention over a static KV cache,
// SiLU-gated MLP): 7 linears per layer in the order q, k, v, o, gate, up, down, then optionally the LM head.
// Every buffer is allocated once; `step` allocates nothing. With `profile`, the seconds of every linear and of
// the rest of each layer (norms, rotary, attention, residuals) are added up per slot for `take_profile`.
class Decoder {
 public:
  Decoder(std::vector<Linear> lins, std::vector<torch::Tensor> norms, torch::Tensor k, torch::Tensor v,
          int64_t n_heads, int64_t n_kv, int64_t head_dim, double eps, bool has_head)
      : lins_(std::move(lins)), norms_(std::move(norms)), k_(k), v_(v), n_heads_(n_heads), n_kv_(n_kv),
        hd_(head_dim), eps_(static_cast<float>(eps)), has_head_(has_head) {
    n_layers_ = static_cast<int64_t>(norms_.size() - 1) / 2;
    TORCH_CHECK(static_cast<int64_t>(lins_.size()) == 7 * n_layers_ + (has_head ? 1 : 0),
                "need 7 linears per layer (q, k, v, o, gate, up, down) and the head if has_head");
    TORCH_CHECK(k_.dtype() == torch::kFloat32 && k_.is_contiguous() && v_.sizes() == k_.sizes() &&
                    v_.is_contiguous() && k_.dim() == 4 && k_.size(0) == n_layers_ && k_.size(1) == n_kv &&
                    k_.size(3) == head_dim,
                "K/V caches must be contiguous float32 [layers, n_kv, max_len, head_dim]");
    TORCH_CHECK(n_kv > 0 && n_heads % n_kv == 0, "n_heads must be a multiple of n_kv");
    d_ = norms_[0].numel();
    for (auto& n : norms_) TORCH_CHECK(n.dtype() == torch::kFloat32 && n.is_contiguous() && n.numel() == d_,
                                       "norm weights must be contiguous float32 [hidden]");
    for (int64_t l = 0; l < n_layers_; ++l) {
      const Linear* L = &lins_[7 * l];
      TORCH_CHECK(L[0].in() == d_ && L[0].out() == n_heads * hd_ && L[1].out() == n_kv * hd_ &&
                      L[2].out() == n_kv * hd_ && L[3].in() == n_heads * hd_ && L[3].out() == d_ &&
                      L[4].in() == d_ && L[5].in() == d_ && L[4].out() == L[5].out() && L[6].in() == L[4].out() &&
                      L[6].out() == d_ && L[1].in() == d_ && L[2].in() == d_,
                  "layer ", l, ": linear shapes do not fit a Llama-like block");
      inter_ = std::max(inter_, L[4].out());
    }
    for (auto& L : lins_) widest_ = std::max(widest_, std::max(L.in(), L.out()));
    x_.resize(d_); q_.resize(n_heads * hd_); kk_.resize(n_kv * hd_); vv_.resize(n_kv * hd_);
    ctx_.resize(n_heads * hd_); y_.resize(std::max(d_, widest_)); g_.resize(inter_); u_.resize(inter_);
    p_.resize(k_.size(2)); idx_.reserve(widest_);
    prof_.assign(8 * n_layers_ + 2, 0.0);
  }

  // h [hidden] float32 (the token's embedding in, the final normed hidden state out); logits [vocab] (written when
  // the decoder has a head); cos/sin [head_dim] of this position.
  void step(torch::Tensor h, int64_t pos, torch::Tensor cos, torch::Tensor sin, torch::Tensor logits, bool profile,
            bool cpu_clock) {
    TORCH_CHECK(h.dtype() == torch::kFloat32 && h.is_contiguous() && h.numel() == d_, "h must be float32 [hidden]");
    TORCH_CHECK(pos >= 0 && pos < k_.size(2), "position ", pos, " outside the KV cache");
    TORCH_CHECK(cos.numel() == hd_ && sin.numel() == hd_ && cos.is_contiguous() && sin.is_contiguous() &&
                    cos.dtype() == torch::kFloat32 && sin.dtype() == torch::kFloat32,
                "cos/sin must be contiguous float32 [head_dim]");
    profile_ = profile;
    cpu_ = cpu_clock;
    float* hp = h.data_ptr<float>();
    const float *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
    const int64_t L = k_.size(2), g = n_heads_ / n_kv_;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd_));
    float *kc = k_.data_ptr<float>(), *vc = v_.data_ptr<float>();
    for (int64_t l = 0; l < n_layers_; ++l) {
      const Linear* lin = &lins_[7 * l];
      double t0 = profile_ ? now(cpu_) : 0.0, spent = 0.0;
      norm(hp, norms_[2 * l].data_ptr<float>(), x_.data());
      spent += linear(lin[0], x_.data(), q_.data(), 8 * l + 0);
      spent += linear(lin[1], x_.data(), kk_.data(), 8 * l + 1);
      spent += linear(lin[2], x_.data(), vv_.data(), 8 * l + 2);
      float* kl = kc + l * n_kv_ * L * hd_;
      float* vl = vc + l * n_kv_ * L * hd_;
      for (int64_t hh = 0; hh < n_heads_; ++hh) rotate(q_.data() + hh * hd_, cp, sp);
      for (int64_t c = 0; c < n_kv_; ++c) {
        rotate(kk_.data() + c * hd_, cp, sp);
        std::memcpy(kl + (c * L + pos) * hd_, kk_.data() + c * hd_, hd_ * sizeof(float));
        std::memcpy(vl + (c * L + pos) * hd_, vv_.data() + c * hd_, hd_ * sizeof(float));
      }
      for (int64_t hh = 0; hh < n_heads_; ++hh) {
        const int64_t c = hh / g;
        const float* qh = q_.data() + hh * hd_;
        float m = -INFINITY;
        for (int64_t t = 0; t <= pos; ++t) {
          const float* kt = kl + (c * L + t) * hd_;
          float s = 0.0f;
          for (int64_t i = 0; i < hd_; ++i) s += qh[i] * kt[i];
          p_[t] = s * scale;
          m = std::max(m, p_[t]);
        }
        float z = 0.0f;
        for (int64_t t = 0; t <= pos; ++t) z += (p_[t] = std::exp(p_[t] - m));
        float* out = ctx_.data() + hh * hd_;
        std::fill(out, out + hd_, 0.0f);
        for (int64_t t = 0; t <= pos; ++t) {
          const float w = p_[t] / z;
          const float* vt = vl + (c * L + t) * hd_;
#pragma omp simd
          for (int64_t i = 0; i < hd_; ++i) out[i] += w * vt[i];
        }
      }
      spent += linear(lin[3], ctx_.data(), y_.data(), 8 * l + 3);
      for (int64_t i = 0; i < d_; ++i) hp[i] += y_[i];
      norm(hp, norms_[2 * l + 1].data_ptr<float>(), x_.data());
      spent += linear(lin[4], x_.data(), g_.data(), 8 * l + 4);
      spent += linear(lin[5], x_.data(), u_.data(), 8 * l + 5);
      const int64_t f = lin[4].out();
      for (int64_t i = 0; i < f; ++i) g_[i] = g_[i] / (1.0f + std::exp(-g_[i])) * u_[i];
      spent += linear(lin[6], g_.data(), y_.data(), 8 * l + 6);
      for (int64_t i = 0; i < d_; ++i) hp[i] += y_[i];
      if (profile_) prof_[8 * l + 7] += now(cpu_) - t0 - spent;
    }
    double t0 = profile_ ? now(cpu_) : 0.0;
    norm(hp, norms_.back().data_ptr<float>(), hp);
    if (profile_) prof_[8 * n_layers_] += now(cpu_) - t0;
    if (has_head_) {
      const Linear& H = lins_.back();
      TORCH_CHECK(logits.dtype() == torch::kFloat32 && logits.is_contiguous() && logits.numel() == H.out(),
                  "logits must be contiguous float32 [vocab]");
      linear(H, hp, logits.data_ptr<float>(), 8 * n_layers_ + 1);
    }
  }

  // Seconds per slot since the last call (8 per layer: q, k, v, o, gate, up, down, the rest; then final norm,
  // head), and zero them.
  torch::Tensor take_profile() {
    torch::Tensor t = torch::tensor(prof_, torch::kFloat64);
    std::fill(prof_.begin(), prof_.end(), 0.0);
    return t;
  }

 private:
  void norm(const float* h, const float* w, float* out) const {
    double ss = 0.0;
    for (int64_t i = 0; i < d_; ++i) ss += static_cast<double>(h[i]) * h[i];
    const float r = 1.0f / std::sqrt(static_cast<float>(ss / d_) + eps_);
    for (int64_t i = 0; i < d_; ++i) out[i] = w[i] * (h[i] * r);
  }

  void rotate(float* x, const float* c, const float* s) const {  // x * cos + rotate_half(x) * sin
    const int64_t half = hd_ / 2;
    for (int64_t i = 0; i < half; ++i) {
      const float a = x[i], b = x[i + half];
      x[i] = a * c[i] - b * s[i];
      x[i + half] = b * c[i + half] + a * s[i + half];
    }
  }

  double linear(const Linear& L, const float* x, float* y, int64_t slot) {
    const double t0 = profile_ ? now(cpu_) : 0.0;
    const int64_t in = L.in(), out = L.out();
    int64_t n = in;
    const int32_t* ip = nullptr;
    if (L.sparse) {
      idx_.clear();
      const float t = static_cast<float>(L.threshold);
      for (int64_t j = 0; j < in; ++j)
        if (x[j] != 0.0f && !(std::fabs(x[j]) < t)) idx_.push_back(static_cast<int32_t>(j));
      ip = idx_.data();
      n = static_cast<int64_t>(idx_.size());
    }
    std::fill(y, y + out, 0.0f);
    dispatch(L.wt, x, ip, n, 1, in, out, L.scale ? L.scale->data_ptr<float>() : nullptr, nullptr,
             L.bias ? L.bias->data_ptr<float>() : nullptr, y, scratch_);
    if (!profile_) return 0.0;
    const double dt = now(cpu_) - t0;
    prof_[slot] += dt;
    return dt;
  }

  std::vector<Linear> lins_;
  std::vector<torch::Tensor> norms_;
  torch::Tensor k_, v_;
  int64_t n_heads_, n_kv_, hd_, d_ = 0, n_layers_ = 0, inter_ = 0, widest_ = 0;
  float eps_;
  bool has_head_, profile_ = false, cpu_ = false;
  std::vector<float> x_, q_, kk_, vv_, ctx_, y_, g_, u_, p_, scratch_;
  std::vector<int32_t> idx_;
  std::vector<double> prof_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gemv", &gemv, "input-sparse (or dense) GEMV over a transposed weight", py::arg("wt"), py::arg("x"),
        py::arg("sparse"), py::arg("threshold"), py::arg("colscale") = py::none(), py::arg("rowscale") = py::none(),
        py::arg("bias") = py::none());
  py::class_<Linear>(m, "Linear")
      .def(py::init<torch::Tensor, c10::optional<torch::Tensor>, c10::optional<torch::Tensor>, bool, double>(),
           py::arg("wt"), py::arg("scale"), py::arg("bias"), py::arg("sparse"), py::arg("threshold"));
  py::class_<Decoder>(m, "Decoder")
      .def(py::init<std::vector<Linear>, std::vector<torch::Tensor>, torch::Tensor, torch::Tensor, int64_t, int64_t,
                    int64_t, double, bool>())
      .def("step", &Decoder::step, "one token through every layer (and the head)",
           py::call_guard<py::gil_scoped_release>())
      .def("take_profile", &Decoder::take_profile);
}
