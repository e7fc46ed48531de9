// Fused exact per-token sparsity statistics for the recorder (sparsescope/kernels/stats.py holds the contract and
// the pure-torch fallback that must give the same numbers).
//
// One call handles every token of one hooked site for one batch: x is a strided view [B, T, G, n] (G rows per token:
// the heads of an attention pattern, 1 elsewhere), owner [B, T] says which tokens count (-1 = padding or skipped).
// Per token it writes C = M + D + 3 float64 columns: the M static metric values (mean over the G rows), the D delta
// (temporal) values against token t-1 of the same prompt, then flags ok (finite), bad (NaN/inf) and delta-ok.
// Optional per-neuron accumulators (fire counts, sum |x|) are updated in place.
//
// The energy metrics (mass_density, teal_sparsity) need "how many of the smallest squares fit an energy budget".
// Instead of sorting the row, vectorised probes count the entries <= v and sum their squares; a few probes (the first
// at the previous row's boundary, as a multiple of RMS) bracket the boundary, and only the few entries inside the
// bracket are sorted and added one by one. Squares of float32/bfloat16 values are exact in float64, so the counts
// equal those of a full sort + cumsum except when a partial energy sum lies within float64 rounding of the budget.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#if defined(__AVX512F__) && defined(__AVX512VL__)
#include <immintrin.h>
#endif
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

enum Kind : int64_t { kZero = 0, kNear = 1, kHoyer = 2, kMass = 3, kTeal = 4 };

struct Spec {
  std::vector<int64_t> kinds;   // static metric codes (Kind)
  std::vector<double> params;   // near: t; mass: p; teal: e^2
  std::vector<int> energy_cols; // columns of mass/teal metrics, by ascending budget (mass: 1 - p, teal: e^2)
  std::vector<double> delta_t;
  double fire_t = 0.1;
};

// The squares of the entries with lo < a <= hi, in row order; returns how many.
template <typename T>
inline size_t gather(const T* a, const double* sq, int64_t n, T lo, T hi, double* out) {
  size_t m = 0;
  int64_t i = 0;
#if defined(__AVX512F__) && defined(__AVX512VL__)
  for (; i + 8 <= n; i += 8) {  // compare 8 entries, compress-store the squares of those inside
    __mmask8 k;
    if constexpr (sizeof(T) == 4) {
      const __m256 v = _mm256_loadu_ps(reinterpret_cast<const float*>(a) + i);
      k = _mm256_cmp_ps_mask(v, _mm256_set1_ps(lo), _CMP_GT_OQ) & _mm256_cmp_ps_mask(v, _mm256_set1_ps(hi), _CMP_LE_OQ);
    } else {
      const __m512d v = _mm512_loadu_pd(reinterpret_cast<const double*>(a) + i);
      k = _mm512_cmp_pd_mask(v, _mm512_set1_pd(lo), _CMP_GT_OQ) & _mm512_cmp_pd_mask(v, _mm512_set1_pd(hi), _CMP_LE_OQ);
    }
    _mm512_storeu_pd(out + m, _mm512_maskz_compress_pd(k, _mm512_loadu_pd(sq + i)));  // out has 8 spare slots
    m += __builtin_popcount(k);
  }
#endif
  for (; i < n; ++i) {  // branch-free
    out[m] = sq[i];
    m += a[i] > lo && a[i] <= hi;
  }
  return m;
}

template <typename T>
struct Probe {
  T v;
  int64_t count;
  double energy;
};

template <typename T>
struct Scratch {
  std::vector<T> a;            // |x| over the row's valid entries
  std::vector<T> d;            // |x_t - x_{t-1}|
  std::vector<double> sq;      // a^2 in float64
  std::vector<double> pick;    // squares inside the final bracket
  std::vector<Probe<T>> probes;
  std::vector<double> ratio;   // per budget: the previous row's boundary value / RMS
  std::vector<double> row;     // one row's metric values
  std::vector<int64_t> counts; // energy counts per budget
  explicit Scratch(int64_t n, size_t m)
      : a(n), d(n), sq(n), pick(n + 8), row(m), counts(m), ratio(m, 0.0) {}
};

// Count and energy (sum of squares) of the entries <= v: one vectorised pass over an L1-resident row.
template <typename T>
inline void below(const T* a, const double* sq, int64_t n, T v, int64_t& count, double& energy) {
  int64_t k = 0, i = 0;
  double e = 0.0;
#if defined(__AVX512F__) && defined(__AVX512VL__)
  __m512d e0 = _mm512_setzero_pd(), e1 = _mm512_setzero_pd();
  for (; i + 16 <= n; i += 16) {  // 16 entries: two compare masks, masked adds of their float64 squares
    __mmask8 k0, k1;
    if constexpr (sizeof(T) == 4) {
      const __m256 lim = _mm256_set1_ps(v);
      k0 = _mm256_cmp_ps_mask(_mm256_loadu_ps(reinterpret_cast<const float*>(a) + i), lim, _CMP_LE_OQ);
      k1 = _mm256_cmp_ps_mask(_mm256_loadu_ps(reinterpret_cast<const float*>(a) + i + 8), lim, _CMP_LE_OQ);
    } else {
      const __m512d lim = _mm512_set1_pd(v);
      k0 = _mm512_cmp_pd_mask(_mm512_loadu_pd(reinterpret_cast<const double*>(a) + i), lim, _CMP_LE_OQ);
      k1 = _mm512_cmp_pd_mask(_mm512_loadu_pd(reinterpret_cast<const double*>(a) + i + 8), lim, _CMP_LE_OQ);
    }
    e0 = _mm512_mask_add_pd(e0, k0, e0, _mm512_loadu_pd(sq + i));
    e1 = _mm512_mask_add_pd(e1, k1, e1, _mm512_loadu_pd(sq + i + 8));
    k += __builtin_popcount(k0) + __builtin_popcount(k1);
  }
  e = _mm512_reduce_add_pd(_mm512_add_pd(e0, e1));
#endif
  for (; i < n; ++i) {
    const bool in = a[i] <= v;
    k += in;
    e += in ? sq[i] : 0.0;
  }
  count = k;
  energy = e;
}

// An energy budget: dropped energy S fits when S <= limit (teal), or when the kept energy total - S >= limit (mass:
// limit = p * total, written as the reference states it so exact ties at the boundary are decided the same way).
struct Budget {
  double limit;
  bool keep;
  double approx;  // the same budget as a dropped-energy bound, for ordering and interpolation
  bool fits(double dropped, double total) const { return keep ? total - dropped >= limit : dropped <= limit; }
};

// out[j] = largest k such that the k smallest a_i^2 fit budgets[j] (ascending). Brackets the boundary value between probes
// (count and energy of the entries <= v), starting from the previous row's boundary as a multiple of RMS (rows of
// one site look alike), then interpolating on the energy curve alternately with bisection; once at most max(48, n/32)
// entries lie inside the bracket they are sorted and added one by one, so ties count exactly as with a full sort.
template <typename T>
void energy_counts(const T* a, const double* sq, int64_t n, T amax, double total, T rms, const Budget* budgets,
                   int nb, int64_t* out, Scratch<T>& s) {
  const int64_t refine = std::max<int64_t>(48, n / 32);  // sort at most this many entries
  std::vector<Probe<T>>& probes = s.probes;
  probes.clear();
  probes.push_back({T(-1), 0, 0.0});  // below every entry
  probes.push_back({amax, n, total});
  for (int j = 0; j < nb; ++j) {
    const Budget& budget = budgets[j];
    if (budget.fits(total, total)) {  // everything fits (all-zero rows included)
      out[j] = n;
      continue;
    }
    auto bracket = [&](Probe<T>& lo, Probe<T>& hi) {
      lo = probes[0];
      hi = probes[1];
      for (const auto& p : probes) {
        const bool fits = budget.fits(p.energy, total);
        if (fits && p.v > lo.v) lo = p;
        if (!fits && p.v < hi.v) hi = p;
      }
    };
    auto probe = [&](T v) {
      Probe<T> p{v, 0, 0.0};
      below(a, sq, n, v, p.count, p.energy);
      probes.push_back(p);
    };
    Probe<T> lo, hi;
    bracket(lo, hi);
    const T guess = static_cast<T>(s.ratio[j] * rms);
    const bool guessed = s.ratio[j] > 0;
    for (int step = 0; hi.count - lo.count > refine && step < 64; ++step) {
      const T bisect = lo.v < T(0) ? hi.v / T(2) : lo.v + (hi.v - lo.v) / T(2);
      T v = bisect;
      if (step == 0 && guessed) {
        v = static_cast<T>(guess * T(0.97));
      } else if (step == 1 && guessed) {  // the other side of the guess
        v = static_cast<T>(guess * (budget.fits(probes.back().energy, total) ? T(1.03) : T(0.91)));
      } else if (step % 2 == 0) {  // interpolate the energy curve between the bracket ends
        const T base = std::max(lo.v, T(0));
        const double frac = (budget.approx - lo.energy) / (hi.energy - lo.energy);
        v = static_cast<T>(base + (hi.v - base) * static_cast<T>(frac));
      }
      if (!(v > lo.v && v < hi.v)) v = bisect;
      if (!(v > lo.v && v < hi.v)) break;  // no representable value in between: the rest are ties
      probe(v);
      bracket(lo, hi);
    }
    const size_t m = gather(a, sq, n, lo.v, hi.v, s.pick.data());
    std::sort(s.pick.begin(), s.pick.begin() + m);
    double c = lo.energy;
    int64_t k = lo.count;
    for (size_t i = 0; i < m; ++i) {
      c += s.pick[i];
      if (!budget.fits(c, total)) break;
      ++k;
    }
    out[j] = k;
    if (rms > T(0)) {  // remember where the boundary was, relative to RMS, for the next row
      const double edge = m && k > lo.count ? std::sqrt(s.pick[k - lo.count - 1]) : static_cast<double>(lo.v);
      s.ratio[j] = edge > 0 ? edge / static_cast<double>(rms) : 0.0;
    }
  }
}

// Metrics of one row of |x| (valid entries only); returns false when the row is not finite.
template <typename T>
bool row_metrics(const T* a, int64_t n, const Spec& sp, double* vals, T& rms_out, Scratch<T>& s) {
  double total = 0.0, l1 = 0.0;
  int64_t zeros = 0;
  T amax = T(0);
  double* __restrict sq = s.sq.data();
#pragma omp simd reduction(+ : total, l1, zeros) reduction(max : amax)
  for (int64_t i = 0; i < n; ++i) {
    const double v = a[i];
    sq[i] = v * v;
    total += v * v;
    l1 += v;
    zeros += a[i] == T(0);
    amax = a[i] > amax ? a[i] : amax;
  }
  if (!std::isfinite(l1)) return false;  // a NaN or inf entry (sum of |x| is finite otherwise)
  const double dn = static_cast<double>(n);
  const T rms = static_cast<T>(std::sqrt(total / dn));
  rms_out = rms;
  const size_t m = sp.kinds.size();
  for (size_t c = 0; c < m; ++c) {
    switch (sp.kinds[c]) {
      case kZero: vals[c] = static_cast<double>(zeros) / dn; break;
      case kNear: {
        const T thr = static_cast<T>(static_cast<T>(sp.params[c]) * rms);
        int64_t k = 0;
#pragma omp simd reduction(+ : k)
        for (int64_t i = 0; i < n; ++i) k += a[i] <= thr;
        vals[c] = static_cast<double>(k) / dn;
        break;
      }
      case kHoyer: {
        const double sqrt_n = std::sqrt(dn), l2 = std::sqrt(total);
        const double ratio = l2 > 0 ? l1 / std::max(l2, 1e-30) : 1.0;
        vals[c] = (sqrt_n - ratio) / std::max(sqrt_n - 1.0, 1e-12);
        break;
      }
      default: break;  // energy metrics below
    }
  }
  const int ne = static_cast<int>(sp.energy_cols.size());
  if (ne) {
    Budget budgets[64];
    for (int j = 0; j < ne; ++j) {
      const int c = sp.energy_cols[j];
      const double p = sp.params[c];
      budgets[j] = sp.kinds[c] == kMass ? Budget{p * total, true, (1.0 - p) * total} : Budget{p * total, false, p * total};
    }
    energy_counts(a, sq, n, amax, total, rms, budgets, ne, s.counts.data(), s);
    for (int j = 0; j < ne; ++j) {
      const int c = sp.energy_cols[j];
      const double k = static_cast<double>(s.counts[j]);
      vals[c] = sp.kinds[c] == kMass ? (dn - k) / dn : k / dn;
    }
  }
  return true;
}

template <typename S, typename T>
void run(const at::Tensor& x, const c10::optional<at::Tensor>& mask, const at::Tensor& owner, const Spec& sp,
         at::Tensor& out, c10::optional<at::Tensor>& fire, c10::optional<at::Tensor>& abs_sum) {
  const int64_t B = x.size(0), T_ = x.size(1), G = x.size(2), n = x.size(3);
  const int64_t sb = x.stride(0), st = x.stride(1), sg = x.stride(2);
  const S* xp = x.data_ptr<S>();
  const int64_t* own = owner.data_ptr<int64_t>();
  const bool* mp = mask ? mask->data_ptr<bool>() : nullptr;
  const int64_t mb = mask ? mask->stride(0) : 0, mt = mask ? mask->stride(1) : 0;
  const size_t M = sp.kinds.size(), D = sp.delta_t.size(), C = M + D + 3;
  double* op = out.data_ptr<double>();
  const bool neurons = fire.has_value();
  const int nthreads = at::get_num_threads();
  std::vector<double> fire_part(neurons ? nthreads * n : 0), abs_part(neurons ? nthreads * n : 0);

  at::parallel_for(0, B * T_, 1, [&](int64_t begin, int64_t end) {
    Scratch<T> s(n, std::max<size_t>(M, 64));
    const int tid = at::get_thread_num();
    double* fp = neurons ? fire_part.data() + tid * n : nullptr;
    double* ap = neurons ? abs_part.data() + tid * n : nullptr;
    std::vector<double> acc(M);
    for (int64_t tok = begin; tok < end; ++tok) {
      const int64_t b = tok / T_, t = tok % T_;
      double* o = op + tok * C;
      std::fill(o, o + C, 0.0);
      if (own[tok] < 0) continue;
      const bool* mrow = mp ? mp + b * mb + t * mt : nullptr;
      std::fill(acc.begin(), acc.end(), 0.0);
      bool ok = true;
      T rms = T(0);
      int64_t nv = n;
      for (int64_t gi = 0; gi < G && ok; ++gi) {
        const S* row = xp + b * sb + t * st + gi * sg;
        nv = 0;
        if (mrow) {
          for (int64_t i = 0; i < n; ++i)
            if (mrow[i]) s.a[nv++] = std::abs(static_cast<T>(row[i]));
        } else {
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) s.a[i] = std::abs(static_cast<T>(row[i]));
          nv = n;
        }
        ok = row_metrics<T>(s.a.data(), nv, sp, s.row.data(), rms, s);
        for (size_t c = 0; c < M && ok; ++c) acc[c] += s.row[c];
      }
      if (!ok) {
        o[M + D + 1] = 1.0;
        continue;
      }
      for (size_t c = 0; c < M; ++c) o[c] = G == 1 ? acc[c] : acc[c] / static_cast<double>(G);
      o[M + D] = 1.0;
      if (neurons) {  // G == 1 and no mask (checked in Python): s.a is the whole row
        const T thr = static_cast<T>(static_cast<T>(sp.fire_t) * rms);
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
          fp[i] += s.a[i] > thr ? 1.0 : 0.0;
          ap[i] += static_cast<double>(s.a[i]);
        }
      }
      if (D && t > 0 && own[tok - 1] >= 0) {  // G == 1 and no mask (checked in Python)
        const S* cur = xp + b * sb + t * st;
        const S* prv = cur - st;
        double prev_l1 = 0.0;
#pragma omp simd reduction(+ : prev_l1)
        for (int64_t i = 0; i < n; ++i) {
          const T p = static_cast<T>(prv[i]);
          s.d[i] = std::abs(static_cast<T>(cur[i]) - p);
          prev_l1 += std::abs(static_cast<double>(p));
        }
        if (std::isfinite(prev_l1)) {
          for (size_t k = 0; k < D; ++k) {
            const T thr = static_cast<T>(static_cast<T>(sp.delta_t[k]) * rms);
            int64_t cnt = 0;
#pragma omp simd reduction(+ : cnt)
            for (int64_t i = 0; i < n; ++i) cnt += s.d[i] <= thr;
            o[M + k] = static_cast<double>(cnt) / static_cast<double>(n);
          }
          o[M + D + 2] = 1.0;
        }
      }
    }
  });
  if (neurons) {
    double* f = fire->data_ptr<double>();
    double* a = abs_sum->data_ptr<double>();
    for (int th = 0; th < nthreads; ++th)
      for (int64_t i = 0; i < n; ++i) {
        f[i] += fire_part[th * n + i];
        a[i] += abs_part[th * n + i];
      }
  }
}

at::Tensor site_values(const at::Tensor& x, const c10::optional<at::Tensor>& mask, const at::Tensor& owner,
                       const std::vector<int64_t>& kinds, const std::vector<double>& params,
                       const std::vector<double>& delta_t, double fire_t, c10::optional<at::Tensor> fire,
                       c10::optional<at::Tensor> abs_sum) {
  TORCH_CHECK(x.dim() == 4 && x.stride(3) == 1, "x must be a [B, T, G, n] view with a contiguous last dim");
  TORCH_CHECK(x.device().is_cpu(), "the stats kernel runs on CPU tensors only");
  TORCH_CHECK(owner.dtype() == at::kLong && owner.is_contiguous() && owner.numel() == x.size(0) * x.size(1),
              "owner must be a contiguous int64 [B, T] tensor");
  TORCH_CHECK(kinds.size() == params.size() && kinds.size() <= 64, "kinds and params must match (at most 64)");
  if (mask) TORCH_CHECK(mask->dtype() == at::kBool && mask->dim() == 3 && mask->stride(2) == 1,
                        "mask must be a bool [B, T, n] view with a contiguous last dim");
  if (fire) TORCH_CHECK(fire->dtype() == at::kDouble && fire->is_contiguous() && fire->numel() == x.size(3) &&
                        abs_sum && abs_sum->dtype() == at::kDouble && abs_sum->is_contiguous() &&
                        abs_sum->numel() == x.size(3), "fire/abs_sum must be contiguous float64 [n]");
  Spec sp{kinds, params, {}, delta_t, fire_t};
  for (size_t c = 0; c < kinds.size(); ++c)
    if (kinds[c] == kMass || kinds[c] == kTeal) sp.energy_cols.push_back(static_cast<int>(c));
  auto share = [&](int c) { return kinds[c] == kMass ? 1.0 - params[c] : params[c]; };  // of the energy
  std::stable_sort(sp.energy_cols.begin(), sp.energy_cols.end(), [&](int i, int j) { return share(i) < share(j); });
  auto out = at::empty({x.size(0), x.size(1), static_cast<int64_t>(kinds.size() + delta_t.size() + 3)},
                       x.options().dtype(at::kDouble));
  switch (x.scalar_type()) {
    case at::kFloat: run<float, float>(x, mask, owner, sp, out, fire, abs_sum); break;
    case at::kDouble: run<double, double>(x, mask, owner, sp, out, fire, abs_sum); break;
    case at::kBFloat16: run<at::BFloat16, float>(x, mask, owner, sp, out, fire, abs_sum); break;
    case at::kHalf: run<at::Half, float>(x, mask, owner, sp, out, fire, abs_sum); break;
    default: TORCH_CHECK(false, "unsupported dtype ", x.scalar_type());
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("site_values", &site_values, "per-token sparsity metrics, delta sparsity and neuron counters of one site");
}
