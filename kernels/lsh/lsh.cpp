// YOSO's bucket cumulation and its q/k gradient estimators on the CPU (ops lra_lsh::*).
//
// Shapes: codes (rounds, batch, heads, n) int64 in [0, 2^31); vectors (batch, heads, n, dim);
// bits (batch,) int64. Work is split with at::parallel_for (OpenMP in torch's CPU builds, so
// torch.set_num_threads applies): the forward over (batch * heads), the weighted backward over
// (batch * heads, rows). Per (batch, head) and round the input side is sorted by code once
// (std::sort, so no 2^tau table, whatever tau is); an output row then finds its bucket by binary
// search. The forward sums each bucket once (O(n d) per round); the weighted backward walks the
// colliding pairs (O(collisions) integer work, O(pairs kept * d) arithmetic), never an (e x d)
// bucket table.
// The estimators are described in kernels/lsh/__init__.py; reference.py is the oracle.
//
// Every output element is written exactly once at the end of its row's work; with the
// environment variable LRA_KERNELS_POISON=1 outputs start as NaN, so a test sees any element a
// bug leaves unwritten.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace {

constexpr double kV2Scale = 0.99;       // the published kernel's similarity scale
constexpr double kV2InvSqrtClip = 10.0;  // ... and its clip on 1 / sqrt(1 - x^2)

// Input rows of one (batch, head) and round, sorted by code, ties by row: codes[s] is the code
// of row index[s]. Codes of at most 2 n + kTableSlack (SimHash codes of tau bits when 2^tau is
// about n or less, as YOSO's per-example tau keeps them) are ordered by a counting sort, which
// leaves each code's first position in `start`, so a bucket is two loads; larger codes by
// std::sort, a bucket then being a binary search.
constexpr int64_t kTableSlack = 1024;

struct SortedRound {
  std::vector<int64_t> codes;
  std::vector<int32_t> index;
  std::vector<int32_t> start;  // table: code c at positions [start[c], start[c + 1]); else empty

  void build(const int64_t* row_codes, int64_t n) {
    codes.resize(n);
    index.resize(n);
    const int64_t top = n == 0 ? 0 : *std::max_element(row_codes, row_codes + n);
    if (top > 2 * n + kTableSlack) {
      start.clear();
      std::vector<uint64_t> packed(n);  // code in the high half: one sort orders (code, row)
      for (int64_t j = 0; j < n; ++j) {
        packed[j] = (static_cast<uint64_t>(row_codes[j]) << 32) | static_cast<uint64_t>(j);
      }
      std::sort(packed.begin(), packed.end());
      for (int64_t s = 0; s < n; ++s) {
        codes[s] = static_cast<int64_t>(packed[s] >> 32);
        index[s] = static_cast<int32_t>(packed[s] & 0xffffffffu);
      }
      return;
    }
    start.assign(top + 2, 0);
    for (int64_t j = 0; j < n; ++j) ++start[row_codes[j] + 1];
    for (int64_t c = 0; c <= top; ++c) start[c + 1] += start[c];
    for (int64_t j = 0; j < n; ++j) {  // rows in order, so ties stay by row
      const int32_t s = start[row_codes[j]]++;
      codes[s] = row_codes[j];
      index[s] = static_cast<int32_t>(j);
    }
    for (int64_t c = top; c > 0; --c) start[c] = start[c - 1];  // the fill moved each start up
    start[0] = 0;
  }

  // [lo, hi): the sorted positions whose code is `code`.
  std::pair<int64_t, int64_t> bucket(int64_t code) const {
    if (!start.empty()) {
      if (code + 1 >= static_cast<int64_t>(start.size())) return {0, 0};
      return {start[code], start[code + 1]};
    }
    auto range = std::equal_range(codes.begin(), codes.end(), code);
    return {range.first - codes.begin(), range.second - codes.begin()};
  }
};

template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

template <typename T>
inline void axpy(T alpha, const T* x, T* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// out[i] = a . b_i for the four rows b_0..b_3 (independent sums in flight).
template <typename T>
inline void dot4(const T* a, const T* b0, const T* b1, const T* b2, const T* b3, int64_t width,
                 T* out) {
  T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int64_t t = 0; t < width; ++t) {
    s0 += a[t] * b0[t];
    s1 += a[t] * b1[t];
    s2 += a[t] * b2[t];
    s3 += a[t] * b3[t];
  }
  out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
}

// The two dots of the pairs (a, b = keys[p]) of one output row a: sim[p] = s_a . z_b (width d,
// the similarity the weight is taken at) and coef[p] = x_a . y_b (width e). Four keys at a time:
// independent sums in flight instead of one dependent chain per dot (the gathered key rows come
// from L2, and a lone chain waited on each).
template <typename T>
void row_dots_any(const T* s_a, const T* x_a, const T* z, const T* y, const int32_t* keys,
                  int64_t count, int64_t d, int64_t e, T* sim, T* coef) {
  int64_t p = 0;
  for (; p + 4 <= count; p += 4) {
    const int32_t* kp = keys + p;
    dot4(s_a, z + kp[0] * d, z + kp[1] * d, z + kp[2] * d, z + kp[3] * d, d, sim + p);
    dot4(x_a, y + kp[0] * e, y + kp[1] * e, y + kp[2] * e, y + kp[3] * e, e, coef + p);
  }
  for (; p < count; ++p) {
    sim[p] = dot(s_a, z + keys[p] * d, d);
    coef[p] = dot(x_a, y + keys[p] * e, e);
  }
}

template <typename T>
void row_dots(const T* s_a, const T* x_a, const T* z, const T* y, const int32_t* keys,
              int64_t count, int64_t d, int64_t e, T* sim, T* coef) {
  row_dots_any(s_a, x_a, z, y, keys, count, d, e, sim, coef);
}

#if defined(__AVX2__) && defined(__FMA__)
// The sums of the 8 lanes of each of s0..s3, as one 4-lane vector (three hadds and an add): the
// compiler's reduction epilogue for `omp simd` went lane by lane through the stack and took a
// third of the dots' time.
inline __m128 sum_lanes4(__m256 s0, __m256 s1, __m256 s2, __m256 s3) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(s0, s1), _mm256_hadd_ps(s2, s3));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// fp32 with d == e, a multiple of 8: both dots of four keys in one pass (eight independent
// sums), the row's chunks loaded once for the four keys.
template <>
void row_dots<float>(const float* s_a, const float* x_a, const float* z, const float* y,
                     const int32_t* keys, int64_t count, int64_t d, int64_t e, float* sim,
                     float* coef) {
  if (d != e || d % 8 != 0) return row_dots_any(s_a, x_a, z, y, keys, count, d, e, sim, coef);
  int64_t p = 0;
  for (; p + 4 <= count; p += 4) {
    const float *z0 = z + keys[p] * d, *z1 = z + keys[p + 1] * d, *z2 = z + keys[p + 2] * d,
                *z3 = z + keys[p + 3] * d;
    const float *y0 = y + keys[p] * d, *y1 = y + keys[p + 1] * d, *y2 = y + keys[p + 2] * d,
                *y3 = y + keys[p + 3] * d;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    __m256 c0 = s0, c1 = s0, c2 = s0, c3 = s0;
    for (int64_t t = 0; t < d; t += 8) {
      const __m256 sa = _mm256_loadu_ps(s_a + t), xa = _mm256_loadu_ps(x_a + t);
      s0 = _mm256_fmadd_ps(sa, _mm256_loadu_ps(z0 + t), s0);
      s1 = _mm256_fmadd_ps(sa, _mm256_loadu_ps(z1 + t), s1);
      s2 = _mm256_fmadd_ps(sa, _mm256_loadu_ps(z2 + t), s2);
      s3 = _mm256_fmadd_ps(sa, _mm256_loadu_ps(z3 + t), s3);
      c0 = _mm256_fmadd_ps(xa, _mm256_loadu_ps(y0 + t), c0);
      c1 = _mm256_fmadd_ps(xa, _mm256_loadu_ps(y1 + t), c1);
      c2 = _mm256_fmadd_ps(xa, _mm256_loadu_ps(y2 + t), c2);
      c3 = _mm256_fmadd_ps(xa, _mm256_loadu_ps(y3 + t), c3);
    }
    _mm_storeu_ps(sim + p, sum_lanes4(s0, s1, s2, s3));
    _mm_storeu_ps(coef + p, sum_lanes4(c0, c1, c2, c3));
  }
  for (; p < count; ++p) {
    sim[p] = dot(s_a, z + keys[p] * d, d);
    coef[p] = dot(x_a, y + keys[p] * d, d);
  }
}
#endif

// out += sum_p coef[p] z[keys[p]] over the pairs of one output row: four keys per pass, so the
// row's sum is loaded and stored once per four keys, not once per key.
template <typename T>
void accumulate_row(T* out, const T* z, const int32_t* keys, const T* coef, int64_t count,
                    int64_t width) {
  int64_t p = 0;
  for (; p + 4 <= count; p += 4) {
    const T c0 = coef[p], c1 = coef[p + 1], c2 = coef[p + 2], c3 = coef[p + 3];
    const T *z0 = z + keys[p] * width, *z1 = z + keys[p + 1] * width,
            *z2 = z + keys[p + 2] * width, *z3 = z + keys[p + 3] * width;
#pragma omp simd
    for (int64_t t = 0; t < width; ++t) {
      out[t] += (c0 * z0[t] + c1 * z1[t]) + (c2 * z2[t] + c3 * z3[t]);
    }
  }
  for (; p < count; ++p) axpy(coef[p], z + keys[p] * width, out, width);
}

// arccos: std::acos in fp64 (the oracle's precision); in fp32 the polynomial of Abramowitz and
// Stegun 4.4.46 (absolute error <= 2e-8 on [0, 1], acos(-x) = pi - acos(x)), because libm's
// scalar acosf was a quarter of the v2 backward's time and this form vectorises.
template <typename T>
inline T arccos(T x) {
  return std::acos(x);
}

template <>
inline float arccos(float x) {
  const float a = std::fabs(x);
  float p = -0.0012624911f;
  p = p * a + 0.0066700901f;
  p = p * a - 0.0170881256f;
  p = p * a + 0.0308918810f;
  p = p * a - 0.0501743046f;
  p = p * a + 0.0889789874f;
  p = p * a - 0.2145988016f;
  p = p * a + 1.5707963050f;
  const float r = std::sqrt(1.0f - a) * p;
  const float negative = x < 0 ? 1.0f : 0.0f;  // a blend, not a branch: the loop vectorises
  return r + negative * (static_cast<float>(M_PI) - 2 * r);
}

// coef[t] *= dB/dx of B(x) = (1 - arccos(x) / pi)^tau at x = 0.99 sim[t], with 1 / sqrt(1 - x^2)
// clipped at 10 (tau == tau_int, the integer for the power), over a tile's pairs. The power's
// exponent is the same for every pair, so its square-and-multiply steps are passes over the
// pairs, each a loop the compiler vectorises (a per-element power loop kept the whole pass
// scalar). sim is overwritten. (A pragma cannot sit inside AT_DISPATCH's macro argument.)
template <typename T>
void scale_by_v2_weights(T* coef, T* sim, int64_t count, T tau, int64_t tau_int) {
  const T pi = static_cast<T>(M_PI), clip = static_cast<T>(kV2InvSqrtClip);
  const T scale = static_cast<T>(kV2Scale);
#pragma omp simd
  for (int64_t t = 0; t < count; ++t) {
    const T x = scale * sim[t];
    coef[t] *= tau * std::min(clip, 1 / std::sqrt(1 - x * x)) / pi;
    sim[t] = 1 - arccos(x) / pi;  // the power's base
  }
  for (int64_t exponent = tau_int - 1; exponent > 0; exponent >>= 1) {
    if (exponent & 1) {
#pragma omp simd
      for (int64_t t = 0; t < count; ++t) coef[t] *= sim[t];
    }
    if (exponent > 1) {
#pragma omp simd
      for (int64_t t = 0; t < count; ++t) sim[t] *= sim[t];
    }
  }
}

at::Tensor new_output(const at::Tensor& like, at::IntArrayRef sizes) {
  const char* poison = std::getenv("LRA_KERNELS_POISON");
  if (poison != nullptr && std::string(poison) == "1") {
    return at::full(sizes, std::numeric_limits<double>::quiet_NaN(), like.options());
  }
  return at::empty(sizes, like.options());
}

void check_codes(const at::Tensor& codes, const char* name, int64_t rounds, int64_t batch,
                 int64_t heads) {
  TORCH_CHECK(codes.scalar_type() == at::kLong && codes.dim() == 4,
              "lra_lsh: ", name, " must be int64 (rounds, batch, heads, n), got ",
              codes.scalar_type(), " of shape ", codes.sizes());
  TORCH_CHECK(codes.size(0) == rounds && codes.size(1) == batch && codes.size(2) == heads,
              "lra_lsh: ", name, " has shape ", codes.sizes(), "; expected (", rounds, ", ", batch,
              ", ", heads, ", n)");
  if (codes.numel() > 0) {
    TORCH_CHECK(codes.min().item<int64_t>() >= 0 &&
                    codes.max().item<int64_t>() <= std::numeric_limits<int32_t>::max(),
                "lra_lsh: ", name, " must lie in [0, 2^31)");
  }
}

void check_rows(const at::Tensor& x, const char* name, int64_t batch, int64_t heads, int64_t n,
                const at::Tensor& like) {
  TORCH_CHECK(x.dim() == 4 && x.size(0) == batch && x.size(1) == heads && x.size(2) == n,
              "lra_lsh: ", name, " has shape ", x.sizes(), "; expected (", batch, ", ", heads,
              ", ", n, ", dim)");
  TORCH_CHECK(x.scalar_type() == like.scalar_type() && x.device().is_cpu(),
              "lra_lsh: ", name, " must be a CPU tensor of ", like.scalar_type(), ", got ",
              x.scalar_type(), " on ", x.device());
}

// The shapes both cumulations share: codes (rounds, batch, heads, n_out|n_in) and the keyed rows
// (batch, heads, n_in, width) they sum, `rows` naming those rows in errors.
struct CumulationShape {
  int64_t batch, heads, n_in, width, rounds, n_out;
};

CumulationShape check_cumulation(const at::Tensor& codes_out, const at::Tensor& codes_in,
                                 const at::Tensor& rows, const char* name) {
  TORCH_CHECK(rows.dim() == 4, "lra_lsh: ", name, " must be (batch, heads, n_in, dim), got ",
              rows.sizes());
  const CumulationShape s{rows.size(0), rows.size(1), rows.size(2), rows.size(3),
                          codes_out.size(0), codes_out.size(3)};
  TORCH_CHECK(s.rounds > 0, "lra_lsh: need at least one round of codes");
  check_codes(codes_out, "codes_out", s.rounds, s.batch, s.heads);
  check_codes(codes_in, "codes_in", s.rounds, s.batch, s.heads);
  TORCH_CHECK(codes_in.size(3) == s.n_in, "lra_lsh: codes_in has ", codes_in.size(3),
              " rows, ", name, " has ", s.n_in);
  TORCH_CHECK(rows.device().is_cpu(), "lra_lsh: ", name, " must be on the CPU");
  return s;
}

// mean_r sum_j [codes_out[r, i] == codes_in[r, j]] values_j.
at::Tensor cumulation(const at::Tensor& codes_out_, const at::Tensor& codes_in_,
                      const at::Tensor& values_) {
  const auto [batch, heads, n_in, e, rounds, n_out] =
      check_cumulation(codes_out_, codes_in_, values_, "values");
  const at::Tensor codes_out = codes_out_.contiguous(), codes_in = codes_in_.contiguous(),
                   values = values_.contiguous();
  at::Tensor out = new_output(values, {batch, heads, n_out, e});
  const int64_t bh_count = batch * heads;

  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "lra_lsh::cumulation", [&] {
    const int64_t* co = codes_out.data_ptr<int64_t>();
    const int64_t* ci = codes_in.data_ptr<int64_t>();
    const scalar_t* val = values.data_ptr<scalar_t>();
    scalar_t* res = out.data_ptr<scalar_t>();
    at::parallel_for(0, bh_count, 1, [&](int64_t begin, int64_t end) {
      SortedRound sorted;
      std::vector<int32_t> segment;   // segment[s]: the bucket number of sorted position s
      std::vector<scalar_t> seg_sum;  // (buckets, e): sum of the values in each bucket
      std::vector<scalar_t> acc(n_out * e);
      for (int64_t bh = begin; bh < end; ++bh) {
        const scalar_t* v_bh = val + bh * n_in * e;
        std::fill(acc.begin(), acc.end(), scalar_t(0));
        for (int64_t r = 0; r < rounds; ++r) {
          sorted.build(ci + (r * bh_count + bh) * n_in, n_in);
          segment.resize(n_in);
          seg_sum.clear();
          for (int64_t s = 0; s < n_in; ++s) {
            if (s == 0 || sorted.codes[s] != sorted.codes[s - 1]) {
              seg_sum.resize(seg_sum.size() + e, scalar_t(0));
            }
            segment[s] = static_cast<int32_t>(seg_sum.size() / e - 1);
            axpy(scalar_t(1), v_bh + sorted.index[s] * e, seg_sum.data() + seg_sum.size() - e, e);
          }
          const int64_t* co_r = co + (r * bh_count + bh) * n_out;
          for (int64_t i = 0; i < n_out; ++i) {
            const auto [lo, hi] = sorted.bucket(co_r[i]);
            if (lo < hi) axpy(scalar_t(1), seg_sum.data() + segment[lo] * e, acc.data() + i * e, e);
          }
        }
        scalar_t* res_bh = res + bh * n_out * e;
        const scalar_t scale = scalar_t(1) / static_cast<scalar_t>(rounds);
        for (int64_t t = 0; t < n_out * e; ++t) res_bh[t] = acc[t] * scale;
      }
    });
  });
  return out;
}

// The published v2 workspace's survivor draw (reference.slot_survivors): a 32-bit mixer.
constexpr uint32_t kMixA = 0x7FEB352Du, kMixB = 0x2C1B3C6Du;
inline uint32_t mix32(uint32_t x) {
  x = (x ^ (x >> 16)) * kMixA;
  x = (x ^ (x >> 15)) * kMixB;
  return x ^ (x >> 16);
}

// keys[s] = the draw key (mix of (per_a, b, r) << 31 | b) of event (b = index[s], r), over one
// bucket's rows: a loop the compiler vectorises. per_a: the mix of (seed, head, output row a).
void event_keys(const int32_t* index, int64_t count, uint32_t per_a, uint32_t r, uint64_t* keys) {
#pragma omp simd
  for (int64_t s = 0; s < count; ++s) {
    const uint32_t b = static_cast<uint32_t>(index[s]);
    keys[s] = (static_cast<uint64_t>(mix32(mix32(per_a ^ b) ^ r)) << 31) | b;
  }
}

// A free slot's key: above every draw key (those are below 2^63).
constexpr uint64_t kNoKey = ~uint64_t{0};

// Writes the key b of every occupied slot of slot_best[0, count) to out, in slot order, frees the
// slots, and returns how many it wrote: branch-free (a slot is occupied about half the time).
inline int64_t take_slots(uint64_t* slot_best, int64_t count, int32_t* out) {
  int64_t taken = 0;
  for (int64_t s = 0; s < count; ++s) {
    const uint64_t key = slot_best[s];
    out[taken] = static_cast<int32_t>(key & 0x7fffffffu);
    taken += key != kNoKey;
    slot_best[s] = kNoKey;
  }
  return taken;
}

// v1: (tau / 2) mean_r sum_b S^r_ab (x_a . y_b) z_b;
// v2: sum_{b in U_a} w(sim_a . z_b) (x_a . y_b) z_b, U_a = {b : S^r_ab = 1 for some r}, cut to
// one survivor per slot b mod `slots` when 0 < slots < n_in (see reference.slot_survivors).
// The input side of every (batch, head) and round is sorted once; output rows are then
// independent. v1 is split over (batch * heads * rows). v2 over (batch * heads, block of
// kRowBlock rows). Row a keeps at most one key per slot (slot b mod `slots` when capped, slot b
// otherwise), so reading its slots in order gives its kept keys grouped by slot range; a tile
// is the slot range whose keys' y and z rows take about kTileBytes, and the block is computed
// tile by tile, so those gathered rows stay in L2 while every row of the block uses them
// (gathering them from the whole head, 2 MB at n = 4,096, d = 64, missed L2).
constexpr int64_t kRowBlock = 128;
constexpr int64_t kTileBytes = 192 * 1024;

at::Tensor weighted_cumulation(const at::Tensor& codes_out_, const at::Tensor& sim_out_,
                               const at::Tensor& x_out_, const at::Tensor& codes_in_,
                               const at::Tensor& y_in_, const at::Tensor& z_in_,
                               const at::Tensor& bits_, c10::string_view estimator,
                               int64_t slots, int64_t seed) {
  const bool v2 = estimator == "v2";
  TORCH_CHECK(v2 || estimator == "v1", "lra_lsh: estimator must be 'v1' or 'v2', got '",
              std::string(estimator), "'");
  TORCH_CHECK(slots >= 0, "lra_lsh: slots must be >= 0 (0: no cap), got ", slots);
  const auto [batch, heads, n_in, d, rounds, n_out] =
      check_cumulation(codes_out_, codes_in_, z_in_, "z_in");
  check_rows(x_out_, "x_out", batch, heads, n_out, z_in_);
  check_rows(y_in_, "y_in", batch, heads, n_in, z_in_);
  TORCH_CHECK(x_out_.size(3) == y_in_.size(3), "lra_lsh: x_out and y_in differ in width");
  if (v2) {
    check_rows(sim_out_, "sim_out", batch, heads, n_out, z_in_);
    TORCH_CHECK(sim_out_.size(3) == d, "lra_lsh: sim_out and z_in differ in width");
  }
  TORCH_CHECK(bits_.dim() == 1 && bits_.size(0) == batch,
              "lra_lsh: bits must be (batch,), got ", bits_.sizes());
  const at::Tensor codes_out = codes_out_.contiguous(), codes_in = codes_in_.contiguous(),
                   x_out = x_out_.contiguous(), y_in = y_in_.contiguous(),
                   z_in = z_in_.contiguous(), sim_out = sim_out_.contiguous(),
                   bits = bits_.to(at::kLong).contiguous();
  const int64_t e = x_out.size(3), bh_count = batch * heads;
  const bool capped = v2 && slots > 0 && slots < n_in;
  const bool pow2_slots = capped && (slots & (slots - 1)) == 0;
  const uint32_t seed32 = static_cast<uint32_t>(seed & 0xffffffff);
  at::Tensor out = new_output(z_in, {batch, heads, n_out, d});

  const int64_t* ci = codes_in.data_ptr<int64_t>();
  const int64_t* co = codes_out.data_ptr<int64_t>();
  std::vector<SortedRound> sorted(rounds * bh_count);  // [r * bh_count + bh], as codes_in
  at::parallel_for(0, rounds * bh_count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) sorted[t].build(ci + t * n_in, n_in);
  });
  // fn(index, count, r) for each round r, with the `count` input rows index[0..count) that share
  // output row a's bucket in that round (head bh).
  auto for_each_bucket = [&](int64_t bh, int64_t a, auto&& fn) {
    for (int64_t r = 0; r < rounds; ++r) {
      const SortedRound& round = sorted[r * bh_count + bh];
      const auto [lo, hi] = round.bucket(co[(r * bh_count + bh) * n_out + a]);
      fn(round.index.data() + lo, hi - lo, r);
    }
  };

  AT_DISPATCH_FLOATING_TYPES(z_in.scalar_type(), "lra_lsh::weighted_cumulation", [&] {
    const scalar_t* xo = x_out.data_ptr<scalar_t>();
    const scalar_t* yi = y_in.data_ptr<scalar_t>();
    const scalar_t* zi = z_in.data_ptr<scalar_t>();
    const scalar_t* so = v2 ? sim_out.data_ptr<scalar_t>() : nullptr;
    const int64_t* tau_of = bits.data_ptr<int64_t>();
    scalar_t* res = out.data_ptr<scalar_t>();
    if (!v2) {
      at::parallel_for(0, bh_count * n_out, 16, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> acc(d);
        for (int64_t row = begin; row < end; ++row) {
          const int64_t bh = row / n_out;
          const scalar_t* x_a = xo + row * e;
          const scalar_t* y_bh = yi + bh * n_in * e;
          const scalar_t* z_bh = zi + bh * n_in * d;
          std::fill(acc.begin(), acc.end(), scalar_t(0));
          for_each_bucket(bh, row % n_out, [&](const int32_t* index, int64_t count, int64_t) {
            for (int64_t s = 0; s < count; ++s) {
              axpy(dot(x_a, y_bh + index[s] * e, e), z_bh + index[s] * d, acc.data(), d);
            }
          });
          const scalar_t scale =
              static_cast<scalar_t>(tau_of[bh / heads]) / 2 / static_cast<scalar_t>(rounds);
          for (int64_t t = 0; t < d; ++t) res[row * d + t] = acc[t] * scale;
        }
      });
      return;
    }
    const int64_t blocks = (n_out + kRowBlock - 1) / kRowBlock;  // per (batch, head)
    const int64_t slot_count = capped ? slots : n_in;
    const int64_t keys_per_slot = (n_in + slot_count - 1) / slot_count;
    const int64_t tile_slots = std::max<int64_t>(
        1, kTileBytes / (keys_per_slot * (d + e) * static_cast<int64_t>(sizeof(scalar_t))));
    const int64_t tiles = (slot_count + tile_slots - 1) / tile_slots;
    at::parallel_for(0, bh_count * blocks, 1, [&](int64_t begin, int64_t end) {
      // slot_best[s]: the smallest draw key among row a's events in slot s (kNoKey: none; freed
      // after each row). Capped, event (b, r)'s key is mix(seed, head, a, b, r) << 31 | b, so
      // the slot's survivor is the b of its smallest key (reference.slot_survivors); uncapped,
      // slot b holds key b. The updates are branch-free (a min per event, a kept key counted by
      // a comparison): which slot an event finds free is a coin toss, and as branches the
      // mispredictions cost more than all the other work of the walk.
      std::vector<uint64_t> slot_best(slot_count, kNoKey);
      std::vector<uint64_t> events;  // capped: one row's event keys
      std::vector<int32_t> kept;     // the block's kept keys, row by row, each row in slot order
      // row i = a - a0 keeps kept[span[i * (tiles + 1) + t], span[i * (tiles + 1) + t + 1])
      // in tile t
      std::vector<int64_t> span(kRowBlock * (tiles + 1));
      std::vector<scalar_t> sim, coef, acc;  // per pair of a tile: sim_a . z_b, then its weight
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bh = task / blocks, a0 = (task % blocks) * kRowBlock;
        const int64_t rows = std::min(n_out, a0 + kRowBlock) - a0;
        const int64_t tau_int = tau_of[bh / heads];
        const scalar_t tau = static_cast<scalar_t>(tau_int);
        int64_t used = 0;  // kept[0, used): the block's rows so far
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t a = a0 + i;
          if (capped) {
            const uint32_t per_a = mix32(mix32(seed32 ^ static_cast<uint32_t>(bh % heads)) ^
                                         static_cast<uint32_t>(a));
            events.clear();
            for_each_bucket(bh, a, [&](const int32_t* index, int64_t count, int64_t r) {
              const size_t at = events.size();
              events.resize(at + count);
              event_keys(index, count, per_a, static_cast<uint32_t>(r), events.data() + at);
            });
            for (const uint64_t key : events) {
              const int64_t b = static_cast<int64_t>(key & 0x7fffffffu);
              uint64_t& best = slot_best[pow2_slots ? (b & (slots - 1)) : (b % slots)];
              best = std::min(best, key);
            }
          } else {
            for_each_bucket(bh, a, [&](const int32_t* index, int64_t count, int64_t) {
              for (int64_t s = 0; s < count; ++s) slot_best[index[s]] = index[s];
            });
          }
          // The row's kept keys, slot by slot (so tile by tile); each slot freed for the next row.
          if (static_cast<int64_t>(kept.size()) < used + slot_count) {
            kept.resize(std::max<int64_t>(2 * kept.size(), used + slot_count));
          }
          int64_t* row_span = span.data() + i * (tiles + 1);
          for (int64_t t = 0; t < tiles; ++t) {
            row_span[t] = used;
            const int64_t s0 = t * tile_slots, s1 = std::min(slot_count, s0 + tile_slots);
            used += take_slots(slot_best.data() + s0, s1 - s0, kept.data() + used);
          }
          row_span[tiles] = used;
        }
        const scalar_t* s_block = so + (bh * n_out + a0) * d;
        const scalar_t* x_block = xo + (bh * n_out + a0) * e;
        const scalar_t* y_bh = yi + bh * n_in * e;
        const scalar_t* z_bh = zi + bh * n_in * d;
        // fn(i, keys, count, p): the `count` kept keys of row i in tile t, the tile's pairs p..
        auto for_each_row = [&](int64_t t, auto&& fn) {
          for (int64_t i = 0, p = 0; i < rows; ++i) {
            const int64_t* row_span = span.data() + i * (tiles + 1);
            const int64_t lo = row_span[t], count = row_span[t + 1] - lo;
            fn(i, kept.data() + lo, count, p);
            p += count;
          }
        };
        acc.assign(rows * d, scalar_t(0));
        for (int64_t t = 0; t < tiles; ++t) {
          // The dots row by row, then the weights in one vectorisable pass, then the sums.
          int64_t pairs = 0;
          for_each_row(t, [&](int64_t, const int32_t*, int64_t count, int64_t) { pairs += count; });
          sim.resize(pairs);
          coef.resize(pairs);
          for_each_row(t, [&](int64_t i, const int32_t* keys, int64_t count, int64_t p) {
            row_dots(s_block + i * d, x_block + i * e, z_bh, y_bh, keys, count, d, e,
                     sim.data() + p, coef.data() + p);
          });
          scale_by_v2_weights(coef.data(), sim.data(), pairs, tau, tau_int);
          for_each_row(t, [&](int64_t i, const int32_t* keys, int64_t count, int64_t p) {
            accumulate_row(acc.data() + i * d, z_bh, keys, coef.data() + p, count, d);
          });
        }
        std::copy(acc.begin(), acc.end(), res + (bh * n_out + a0) * d);
      }
    });
  });
  return out;
}

// The differentiable entry point: q and k only feed the backward (see cpu.py).
at::Tensor lsh_cumulation(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const at::Tensor& q_codes, const at::Tensor& k_codes,
                          const at::Tensor& bits, c10::string_view estimator, int64_t slots,
                          int64_t seed) {
  TORCH_CHECK(estimator == "v1" || estimator == "v2",
              "lra_lsh: estimator must be 'v1' or 'v2', got '", std::string(estimator), "'");
  TORCH_CHECK(v.dim() == 4, "lra_lsh: v must be (batch, heads, n_k, d), got ", v.sizes());
  check_rows(q, "q", v.size(0), v.size(1), q_codes.size(3), v);
  check_rows(k, "k", v.size(0), v.size(1), v.size(2), v);
  TORCH_CHECK(bits.dim() == 1 && bits.size(0) == v.size(0),
              "lra_lsh: bits must be (batch,), got ", bits.sizes());
  TORCH_CHECK(slots >= 0, "lra_lsh: slots must be >= 0 (0: no cap), got ", slots);
  (void)seed;  // the backward's survivor draw
  return cumulation(q_codes, k_codes, v);
}

}  // namespace

TORCH_LIBRARY(lra_lsh, m) {
  m.def("cumulation(Tensor codes_out, Tensor codes_in, Tensor values) -> Tensor");
  m.def("weighted_cumulation(Tensor codes_out, Tensor sim_out, Tensor x_out, Tensor codes_in, "
        "Tensor y_in, Tensor z_in, Tensor bits, str estimator, int slots, int seed) -> Tensor");
  m.def("lsh_cumulation(Tensor q, Tensor k, Tensor v, Tensor q_codes, Tensor k_codes, "
        "Tensor bits, str estimator, int slots, int seed) -> Tensor");
}

TORCH_LIBRARY_IMPL(lra_lsh, CPU, m) {
  m.impl("cumulation", &cumulation);
  m.impl("weighted_cumulation", &weighted_cumulation);
  m.impl("lsh_cumulation", &lsh_cumulation);
}
