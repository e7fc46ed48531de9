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
#include <cstdint>
#include <cstring>
#include <vector>

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

// Rows idx[lo:hi) (or lo:hi themselves when idx is null) of Wt, times x, added into acc [B, out].
template <typename W>
void accumulate(const W* __restrict wt, const float* __restrict x, const int32_t* idx, int64_t lo, int64_t hi,
                int64_t B, int64_t in, int64_t out, float* __restrict acc) {
  int64_t k = lo;
  for (; k + 4 <= hi; k += 4) {
    const int64_t j0 = idx ? idx[k] : k, j1 = idx ? idx[k + 1] : k + 1;
    const int64_t j2 = idx ? idx[k + 2] : k + 2, j3 = idx ? idx[k + 3] : k + 3;
    const W* __restrict r0 = wt + j0 * out;
    const W* __restrict r1 = wt + j1 * out;
    const W* __restrict r2 = wt + j2 * out;
    const W* __restrict r3 = wt + j3 * out;
    for (int64_t b = 0; b < B; ++b) {
      const float* xb = x + b * in;
      const float x0 = xb[j0], x1 = xb[j1], x2 = xb[j2], x3 = xb[j3];
      float* __restrict a = acc + b * out;
#pragma omp simd
      for (int64_t o = 0; o < out; ++o)
        a[o] += x0 * widen(r0[o]) + x1 * widen(r1[o]) + x2 * widen(r2[o]) + x3 * widen(r3[o]);
    }
  }
  for (; k < hi; ++k) {
    const int64_t j = idx ? idx[k] : k;
    const W* __restrict r = wt + j * out;
    for (int64_t b = 0; b < B; ++b) {
      const float xv = x[b * in + j];
      float* __restrict a = acc + b * out;
#pragma omp simd
      for (int64_t o = 0; o < out; ++o) a[o] += xv * widen(r[o]);
    }
  }
}

template <typename W>
void run(const W* wt, const float* x, const int32_t* idx, int64_t n, int64_t B, int64_t in, int64_t out,
         const float* colscale, const float* rowscale, const float* bias, float* y) {
  const int64_t bytes = n * out * static_cast<int64_t>(sizeof(W));
  int nt = bytes < kParallelBytes ? 1 : std::min<int64_t>(omp_get_max_threads(), std::max<int64_t>(1, n / 8));
  std::vector<float> scratch(static_cast<size_t>(nt - 1) * B * out);
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
  switch (wt.scalar_type()) {
    case torch::kFloat32: run(wt.data_ptr<float>(), xp, ip, n, B, in, out, cs, rs, bs, yp); break;
    case torch::kBFloat16:
      run(reinterpret_cast<const uint16_t*>(wt.data_ptr<at::BFloat16>()), xp, ip, n, B, in, out, cs, rs, bs, yp);
      break;
    case torch::kInt8: run(wt.data_ptr<int8_t>(), xp, ip, n, B, in, out, cs, rs, bs, yp); break;
    default: TORCH_CHECK(false, "Wt must be float32, bfloat16 or int8, got ", wt.scalar_type());
  }
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gemv", &gemv, "input-sparse (or dense) GEMV over a transposed weight", py::arg("wt"), py::arg("x"),
        py::arg("sparse"), py::arg("threshold"), py::arg("colscale") = py::none(), py::arg("rowscale") = py::none(),
        py::arg("bias") = py::none());
}
