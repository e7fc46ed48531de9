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
// bracket are sorted and added one by one. For float rows the probes sum float32 squares (cheap) and one exact
// float64 pass checks the final bracket. Squares of float32/bfloat16 values are exact in float64, so the counts
// equal those of a full sort + cumsum except when a partial energy sum lies within float64 rounding of the budget.
//
// logit_values does the same service for the logits: next-token NLL and max-softmax per token in one pass over the
// vocabulary (max, then a vectorised exp-sum), without materialising a log-softmax.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#if defined(__AVX512F__) && defined(__AVX512VL__)
#include <immintrin.h>
#endif
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

enum Kind : int64_t { kZero = 0, kNear = 1, kHoyer = 2, kMass = 3, kTeal = 4 };

struct Spec {
  std::vector<int64_t> kinds;   // static metric codes (Kind)
  std::vector<double> params;   // near: t; mass: p; teal: e^2
  std::vector<int> energy_cols; // columns of mass/teal metrics, by ascending budget (mass: 1 - p, teal: e^2)
  std::vector<int> near_cols;   // columns of near-zero metrics
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
    if (k) {  // usually few entries lie in the bracket
      _mm512_storeu_pd(out + m, _mm512_maskz_compress_pd(k, _mm512_loadu_pd(sq + i)));  // out has 8 spare slots
      m += __builtin_popcount(k);
    }
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
  std::vector<float> sqf;      // a^2 rounded to float32: cheap approximate probes
  std::vector<double> pick;    // squares inside the final bracket
  std::vector<Probe<T>> probes;
  std::vector<Probe<T>> fprobes;  // approximate probes (float32 energies)
  std::vector<double> ratio;   // per budget: the previous row's boundary value / RMS
  std::vector<double> row;     // one row's metric values
  std::vector<int64_t> counts; // energy counts per budget
  explicit Scratch(int64_t n, size_t m)
      : a(n), d(n), sq(n), sqf(n), pick(n + 8), row(m), counts(m), ratio(m, 0.0) {}
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

// Count and approximate energy of the entries <= v from float32 squares summed in float32 (16 lanes): about three
// times cheaper than `below`, used only to bracket the boundary; the energy is within n * 2^-23 of the exact one.
inline void below_approx(const float* a, const float* sqf, int64_t n, float v, int64_t& count, double& energy) {
  int64_t k = 0, i = 0;
  float e = 0.0f;
#if defined(__AVX512F__) && defined(__AVX512VL__)
  const __m512 lim = _mm512_set1_ps(v);
  __m512 e0 = _mm512_setzero_ps(), e1 = _mm512_setzero_ps();
  for (; i + 32 <= n; i += 32) {
    const __mmask16 k0 = _mm512_cmp_ps_mask(_mm512_loadu_ps(a + i), lim, _CMP_LE_OQ);
    const __mmask16 k1 = _mm512_cmp_ps_mask(_mm512_loadu_ps(a + i + 16), lim, _CMP_LE_OQ);
    e0 = _mm512_mask_add_ps(e0, k0, e0, _mm512_loadu_ps(sqf + i));
    e1 = _mm512_mask_add_ps(e1, k1, e1, _mm512_loadu_ps(sqf + i + 16));
    k += __builtin_popcount(k0) + __builtin_popcount(k1);
  }
  e = _mm512_reduce_add_ps(_mm512_add_ps(e0, e1));
#endif
  for (; i < n; ++i) {
    const bool in = a[i] <= v;
    k += in;
    e += in ? sqf[i] : 0.0f;
  }
  count = k;
  energy = e;
}

// One exact pass: count and float64 energy of the entries <= lo, and the squares of those with lo < a <= hi.
template <typename T>
inline size_t below_and_gather(const T* a, const double* sq, int64_t n, T lo, T hi, int64_t& count, double& energy,
                               double* out) {
  size_t m = 0;
  int64_t k = 0, i = 0;
  double e = 0.0;
#if defined(__AVX512F__) && defined(__AVX512VL__)
  __m512d e0 = _mm512_setzero_pd();
  for (; i + 8 <= n; i += 8) {
    __mmask8 le, in;
    if constexpr (sizeof(T) == 4) {
      const __m256 v = _mm256_loadu_ps(reinterpret_cast<const float*>(a) + i);
      le = _mm256_cmp_ps_mask(v, _mm256_set1_ps(lo), _CMP_LE_OQ);
      in = _mm256_cmp_ps_mask(v, _mm256_set1_ps(hi), _CMP_LE_OQ) & static_cast<__mmask8>(~le);
    } else {
      const __m512d v = _mm512_loadu_pd(reinterpret_cast<const double*>(a) + i);
      le = _mm512_cmp_pd_mask(v, _mm512_set1_pd(lo), _CMP_LE_OQ);
      in = _mm512_cmp_pd_mask(v, _mm512_set1_pd(hi), _CMP_LE_OQ) & static_cast<__mmask8>(~le);
    }
    const __m512d q = _mm512_loadu_pd(sq + i);
    e0 = _mm512_mask_add_pd(e0, le, e0, q);
    k += __builtin_popcount(le);
    if (in) {  // rare: the bracket holds a few entries, so skip the compress and the store
      _mm512_storeu_pd(out + m, _mm512_maskz_compress_pd(in, q));  // out has 8 spare slots
      m += __builtin_popcount(in);
    }
  }
  e = _mm512_reduce_add_pd(e0);
#endif
  for (; i < n; ++i) {
    const bool le = a[i] <= lo;
    k += le;
    e += le ? sq[i] : 0.0;
    out[m] = sq[i];
    m += !le && a[i] <= hi;
  }
  count = k;
  energy = e;
  return m;
}

// An energy budget: dropped energy S fits when S <= limit (teal), or when the kept energy total - S >= limit (mass:
// limit = p * total, written as the reference states it so exact ties at the boundary are decided the same way).
struct Budget {
  double limit;
  bool keep;
  double approx;  // the same budget as a dropped-energy bound, for ordering and interpolation
  bool fits(double dropped, double total) const { return keep ? total - dropped >= limit : dropped <= limit; }
};

// Narrows [lo, hi] around a budget's boundary value with probes (count and energy of the entries <= v) until at most
// `refine` entries lie inside, or `steps` probes were made. The first probes go to the previous row's boundary as a
// multiple of RMS (rows of one site look alike), then it interpolates the energy curve alternately with bisection.
// side(p) is +1 when probe p surely fits the budget, -1 when it surely does not, 0 when it cannot tell.
template <typename T, typename Side, typename ProbeFn>
void narrow(std::vector<Probe<T>>& probes, Side side, ProbeFn probe, double approx, T guess, int64_t refine, int steps,
            Probe<T>& lo, Probe<T>& hi) {
  auto bracket = [&]() {
    lo = probes[0];
    hi = probes[1];
    for (const auto& p : probes) {
      const int sd = side(p);
      if (sd > 0 && p.v > lo.v) lo = p;
      if (sd < 0 && p.v < hi.v) hi = p;
    }
  };
  bracket();
  for (int step = 0; hi.count - lo.count > refine && step < steps; ++step) {
    const T bisect = lo.v < T(0) ? hi.v / T(2) : lo.v + (hi.v - lo.v) / T(2);
    T v = bisect;
    if (step == 0 && guess > T(0)) {
      v = static_cast<T>(guess * T(0.97));
    } else if (step == 1 && guess > T(0)) {  // the other side of the guess
      v = static_cast<T>(guess * (side(probes.back()) > 0 ? T(1.03) : T(0.91)));
    } else if (step % 2 == 0) {  // interpolate the energy curve between the bracket ends
      const T base = std::max(lo.v, T(0));
      const double frac = (approx - lo.energy) / (hi.energy - lo.energy);
      v = static_cast<T>(base + (hi.v - base) * static_cast<T>(frac));
    }
    if (!(v > lo.v && v < hi.v)) v = bisect;
    if (!(v > lo.v && v < hi.v)) break;  // no representable value in between: the rest are ties
    probes.push_back(probe(v));
    bracket();
  }
}

// out[j] = largest k such that the k smallest a_i^2 fit budgets[j] (ascending). Float rows bracket the boundary with
// cheap float32 probes (a probe bounds it only when it clears the budget by more than float32 rounding can move a
// sum), then one exact float64 pass takes the count and energy below the bracket and the squares inside it, and
// checks the bracket; float64 rows, and any bracket that fails the check, use exact probes throughout. The few
// entries inside the final bracket are sorted and added one by one, so ties count exactly as with a full sort.
template <typename T>
void energy_counts(const T* a, const double* sq, int64_t n, T amax, double total, T rms, const Budget* budgets,
                   int nb, int64_t* out, Scratch<T>& s) {
  const int64_t refine = 8;  // sort at most this many entries (a probe costs less than sorting more)
  std::vector<Probe<T>>& probes = s.probes;
  std::vector<Probe<T>>& fprobes = s.fprobes;
  probes.clear();
  probes.push_back({T(-1), 0, 0.0});  // below every entry
  probes.push_back({amax, n, total});
  fprobes.assign(probes.begin(), probes.end());
  // Bound on float32 rounding of a partial sum in below_approx: each of 32 lanes adds <= n/32 rounded squares, then
  // a 5-level reduction and a scalar tail of < 32 terms; each step errs by at most 2^-24 of the total.
  const double margin = total * 0x1p-24 * (static_cast<double>(n) / 32.0 + 40.0);
  for (int j = 0; j < nb; ++j) {
    const Budget& budget = budgets[j];
    if (budget.fits(total, total)) {  // everything fits (all-zero rows included)
      out[j] = n;
      continue;
    }
    const T guess = static_cast<T>(s.ratio[j] * rms);
    Probe<T> lo, hi;
    size_t m = 0;
    bool exact = true;
    if constexpr (std::is_same<T, float>::value) {
      auto side = [&](const Probe<T>& p) {
        if (p.v < T(0)) return 1;
        if (p.count == n) return -1;
        return p.energy <= budget.approx - margin ? 1 : p.energy > budget.approx + margin ? -1 : 0;
      };
      auto probe = [&](T v) {
        Probe<T> p{v, 0, 0.0};
        below_approx(a, s.sqf.data(), n, v, p.count, p.energy);
        return p;
      };
      narrow(fprobes, side, probe, budget.approx, guess, refine, 24, lo, hi);
      Probe<T> at{lo.v, 0, 0.0};
      m = below_and_gather(a, sq, n, lo.v, hi.v, at.count, at.energy, s.pick.data());
      double top = at.energy;
      for (size_t i = 0; i < m; ++i) top += s.pick[i];
      exact = !(budget.fits(at.energy, total) && (hi.count == n || !budget.fits(top, total)));
      lo = at;
    }
    if (exact) {
      auto side = [&](const Probe<T>& p) { return budget.fits(p.energy, total) ? 1 : -1; };
      auto probe = [&](T v) {
        Probe<T> p{v, 0, 0.0};
        below(a, sq, n, v, p.count, p.energy);
        return p;
      };
      narrow(probes, side, probe, budget.approx, guess, refine, 64, lo, hi);
      m = gather(a, sq, n, lo.v, hi.v, s.pick.data());
    }
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

// k[j] = number of entries <= t[j], four thresholds in one pass (a threshold of -1 counts nothing: |x| >= 0).
template <typename T>
inline void count_le4(const T* a, int64_t n, const T* t, int64_t* k) {
  const T t0 = t[0], t1 = t[1], t2 = t[2], t3 = t[3];
  int64_t k0 = 0, k1 = 0, k2 = 0, k3 = 0;
#pragma omp simd reduction(+ : k0, k1, k2, k3)
  for (int64_t i = 0; i < n; ++i) {
    const T v = a[i];
    k0 += v <= t0;
    k1 += v <= t1;
    k2 += v <= t2;
    k3 += v <= t3;
  }
  k[0] = k0;
  k[1] = k1;
  k[2] = k2;
  k[3] = k3;
}

// Metrics of one row of |x| (valid entries only); returns false when the row is not finite.
template <typename T>
bool row_metrics(const T* a, int64_t n, const Spec& sp, double* vals, T& rms_out, Scratch<T>& s) {
  double total = 0.0, l1 = 0.0;
  int64_t zeros = 0;
  T amax = T(0);
  double* __restrict sq = s.sq.data();
  float* __restrict sqf = s.sqf.data();
  const int ne = static_cast<int>(sp.energy_cols.size());
  if (ne) {  // the energy metrics probe the squares: keep them (float64 exact, float32 for cheap probes)
#pragma omp simd reduction(+ : total, l1, zeros) reduction(max : amax)
    for (int64_t i = 0; i < n; ++i) {
      const double v = a[i];
      sq[i] = v * v;
      sqf[i] = static_cast<float>(v * v);
      total += v * v;
      l1 += v;
      zeros += a[i] == T(0);
      amax = a[i] > amax ? a[i] : amax;
    }
  } else {
#pragma omp simd reduction(+ : total, l1, zeros) reduction(max : amax)
    for (int64_t i = 0; i < n; ++i) {
      const double v = a[i];
      total += v * v;
      l1 += v;
      zeros += a[i] == T(0);
      amax = a[i] > amax ? a[i] : amax;
    }
  }
  if (!std::isfinite(l1)) return false;  // a NaN or inf entry (sum of |x| is finite otherwise)
  const double dn = static_cast<double>(n);
  const T rms = static_cast<T>(std::sqrt(total / dn));
  rms_out = rms;
  const size_t m = sp.kinds.size();
  for (size_t c0 = 0; c0 < sp.near_cols.size(); c0 += 4) {  // near-zero thresholds, four per pass
    T thr[4];
    int64_t k[4];
    for (size_t j = 0; j < 4; ++j)
      thr[j] = c0 + j < sp.near_cols.size() ? static_cast<T>(static_cast<T>(sp.params[sp.near_cols[c0 + j]]) * rms) : T(-1);
    count_le4(a, n, thr, k);
    for (size_t j = 0; j < 4 && c0 + j < sp.near_cols.size(); ++j)
      vals[sp.near_cols[c0 + j]] = static_cast<double>(k[j]) / dn;
  }
  for (size_t c = 0; c < m; ++c) {
    switch (sp.kinds[c]) {
      case kZero: vals[c] = static_cast<double>(zeros) / dn; break;
      case kHoyer: {
        const double sqrt_n = std::sqrt(dn), l2 = std::sqrt(total);
        const double ratio = l2 > 0 ? l1 / std::max(l2, 1e-30) : 1.0;
        vals[c] = (sqrt_n - ratio) / std::max(sqrt_n - 1.0, 1e-12);
        break;
      }
      default: break;  // near-zero above, energy metrics below
    }
  }
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
          for (size_t k0 = 0; k0 < D; k0 += 4) {  // four thresholds per pass
            T thr[4];
            int64_t cnt[4];
            for (size_t j = 0; j < 4; ++j)
              thr[j] = k0 + j < D ? static_cast<T>(static_cast<T>(sp.delta_t[k0 + j]) * rms) : T(-1);
            count_le4(s.d.data(), n, thr, cnt);
            for (size_t j = 0; j < 4 && k0 + j < D; ++j)
              o[M + k0 + j] = static_cast<double>(cnt[j]) / static_cast<double>(n);
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
  Spec sp{kinds, params, {}, {}, delta_t, fire_t};
  for (size_t c = 0; c < kinds.size(); ++c)
    if (kinds[c] == kMass || kinds[c] == kTeal) sp.energy_cols.push_back(static_cast<int>(c));
    else if (kinds[c] == kNear) sp.near_cols.push_back(static_cast<int>(c));
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


#if defined(__AVX512F__) && defined(__AVX512VL__)
// e^x for x <= 0 (clamped at -87, where e^x is below every float32 normal): Cephes' expf polynomial on 16 lanes,
// within 2 ulp of std::exp.
inline __m512 exp_neg(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(y, k);
}
#endif

// max_i x_i and sum_i e^(x_i - max) of one float32 row (the sum in float64); false when a logit is NaN or inf.
inline bool softmax_stats(const float* x, int64_t v, float& mx, double& se) {
  float m = -INFINITY, lo = INFINITY;
  bool nan = false;
  int64_t i = 0;
#if defined(__AVX512F__) && defined(__AVX512VL__)
  __m512 vm = _mm512_set1_ps(-INFINITY), vl = _mm512_set1_ps(INFINITY);
  __mmask16 un = 0;
  for (; i + 16 <= v; i += 16) {
    const __m512 xi = _mm512_loadu_ps(x + i);
    un |= _mm512_cmp_ps_mask(xi, xi, _CMP_UNORD_Q);
    vm = _mm512_max_ps(vm, xi);
    vl = _mm512_min_ps(vl, xi);
  }
  m = _mm512_reduce_max_ps(vm);
  lo = _mm512_reduce_min_ps(vl);
  nan = un != 0;
#endif
  for (; i < v; ++i) {
    nan |= std::isnan(x[i]);
    m = std::max(m, x[i]);
    lo = std::min(lo, x[i]);
  }
  if (nan || !std::isfinite(m) || !std::isfinite(lo)) return false;
  double s = 0.0;
  i = 0;
#if defined(__AVX512F__) && defined(__AVX512VL__)
  const __m512 vmax = _mm512_set1_ps(m);
  __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
  for (; i + 16 <= v; i += 16) {
    const __m512 e = exp_neg(_mm512_sub_ps(_mm512_loadu_ps(x + i), vmax));
    s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
    s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
  }
  s = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
#endif
  for (; i < v; ++i) s += std::exp(static_cast<double>(x[i] - m));
  mx = m;
  se = s;
  return true;
}

// Per predicted token (row t of logits predicts target t), float64: next-token NLL, max-softmax probability and an
// ok flag; rows with want == false and rows with a non-finite logit are all 0.
at::Tensor logit_values(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& want) {
  TORCH_CHECK(logits.device().is_cpu() && logits.scalar_type() == at::kFloat && logits.dim() == 3 &&
              logits.stride(2) == 1, "logits must be a float32 [B, T, V] CPU view with a contiguous last dim");
  const int64_t B = logits.size(0), T = logits.size(1), V = logits.size(2);
  TORCH_CHECK(targets.scalar_type() == at::kLong && targets.is_contiguous() && targets.numel() == B * T &&
              want.scalar_type() == at::kBool && want.is_contiguous() && want.numel() == B * T,
              "targets (int64) and want (bool) must be contiguous [B, T]");
  auto out = at::zeros({B, T, 3}, logits.options().dtype(at::kDouble));
  const float* lp = logits.data_ptr<float>();
  const int64_t sb = logits.stride(0), st = logits.stride(1);
  const int64_t* tp = targets.data_ptr<int64_t>();
  const bool* wp = want.data_ptr<bool>();
  double* op = out.data_ptr<double>();
  at::parallel_for(0, B * T, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      if (!wp[r]) continue;
      const float* row = lp + (r / T) * sb + (r % T) * st;
      float mx;
      double se;
      const int64_t tgt = tp[r];
      if (tgt < 0 || tgt >= V || !softmax_stats(row, V, mx, se)) continue;  // out of range (checked in Python), NaN/inf
      op[3 * r] = static_cast<double>(mx) - static_cast<double>(row[tgt]) + std::log(se);
      op[3 * r + 1] = 1.0 / se;
      op[3 * r + 2] = 1.0;
    }
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("logit_values", &logit_values, "per-token next-token NLL and max-softmax probability");
  m.def("site_values", &site_values, "per-token sparsity metrics, delta sparsity and neuron counters of one site");
}
