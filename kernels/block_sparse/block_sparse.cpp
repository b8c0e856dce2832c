// Block-sparse exact attention on the CPU: MRA's high-resolution blocks, fused.
//
// For one (batch*head) slice with nb blocks of b tokens and a CSR list of selected (row, col)
// block pairs, every query row i of row block r attends to the real keys of its selected key
// blocks with one online softmax:
//     s_ij = scale * q_i . k_j,  lse_i = log sum_j exp(s_ij),  out_i = sum_j exp(s_ij - lse_i) v_j
// The (K, b, b) logits are never stored: the forward keeps a running max and sum per row, the
// backward recomputes each block's logits from q, k and lse (flash-attention style):
//     P = exp(S - lse),  dP = dO V^T,  dS = P * (dP - (rowsum(dO * O) - dlse)),
//     dQ = scale dS K,   dK = scale dS^T Q,   dV = P^T dO.
// A row with no real key gets out = 0 and lse = -inf.
//
// Threads: the forward runs OpenMP over (slice, row block); the backward over slices, so that
// the dK and dV of a slice have one writer. Tiles are fixed at compile time for b = 32 (the
// block size every MRA setting uses) and d in {32, 64}; other sizes take the same code with
// runtime bounds. With AVX2 and FMA (-march=native), fp32 blocks and head_dims that are
// multiples of 16 run every b x b x d product through one register-blocked micro-kernel
// (gemm_rows16) and the softmax rows through an 8-lane exp; fp64 and other sizes keep the
// portable loops, which the tests run too.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LRA_BLOCK_SPARSE_AVX2 1
#endif

namespace {

// exp for float that the compiler vectorises: 2^n * p(r) with n = round(x / ln 2) and a
// degree-6 polynomial on |r| <= ln(2) / 2 (relative error ~2e-7). Inputs below -87.3 (masked
// logits at -inf included) give exactly 0; no input here exceeds 0 by construction.
inline float fast_exp(float x) {
  const float lo = -87.3f;
  const float xc = x < lo ? lo : (x > 88.0f ? 88.0f : x);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (xc * 1.44269504088896341f + magic) - magic;
  const float r = (xc - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  float p = 1.3888889e-3f;
  p = p * r + 8.3333333e-3f;
  p = p * r + 4.1666667e-2f;
  p = p * r + 1.6666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float pow2;
  std::memcpy(&pow2, &bits, sizeof(float));
  return x < lo ? 0.0f : p * pow2;
}
inline double fast_exp(double x) { return std::exp(x); }

// x[j] += bias[j] for j < n; returns the largest of m and the x[j] (NaN never wins).
template <typename T>
inline T add_and_max(T* x, const T* bias, T m, int64_t n) {
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) {
    x[j] += bias[j];
    m = x[j] > m ? x[j] : m;
  }
  return m;
}

// x[j] = exp(x[j] - shift) for j < n; returns their sum (the forward's row of probabilities).
template <typename T>
inline T exp_and_sum(T* x, T shift, int64_t n) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    x[j] = fast_exp(x[j] - shift);
    sum += x[j];
  }
  return sum;
}

// p[j] = exp(p[j] + bias[j] - shift), then g[j] = p[j] (g[j] - delta): a backward row's
// probabilities and dS.
template <typename T>
inline void softmax_grad_row(T* p, T* g, const T* bias, T shift, T delta, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    p[j] = fast_exp(p[j] + bias[j] - shift);
    g[j] = p[j] * (g[j] - delta);
  }
}

#ifdef LRA_BLOCK_SPARSE_AVX2
// fast_exp on 8 lanes, the same steps (so the same values up to FMA contraction).
inline __m256 fast_exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.0f);
  const __m256 below = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);  // false for NaN, which propagates
  __m256 xc = _mm256_blendv_ps(x, lo, below);
  xc = _mm256_blendv_ps(xc, hi, _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
  const __m256 magic = _mm256_set1_ps(12582912.0f);
  const __m256 n = _mm256_sub_ps(_mm256_fmadd_ps(xc, _mm256_set1_ps(1.44269504088896341f), magic),
                                 magic);
  const __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f),
                                    _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), xc));
  __m256 p = _mm256_set1_ps(1.3888889e-3f);
  for (const float c : {8.3333333e-3f, 4.1666667e-2f, 1.6666667e-1f, 0.5f, 1.0f, 1.0f}) {
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
  }
  const __m256i bits = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(below, _mm256_mul_ps(p, _mm256_castsi256_ps(bits)));
}

// c[r][0, 16) = alpha * sum_t a[r * a_row + t * a_col] * m[t * m_row + (0, 16)] for r < R (added
// to c with ACCUMULATE). The R x 16 block of c lives in 2R registers (R = 6: 12 accumulators, m's
// two vectors and a broadcast fill 15 of the 16), and each row of m is loaded once per R rows.
// The portable tiles below kept 8 x 32 accumulators, twice the register file, so every FMA
// went through the stack.
template <int R, bool ACCUMULATE>
inline void gemm_rows16(const float* a, int64_t a_row, int64_t a_col, const float* m,
                        int64_t m_row, int64_t k, float* c, int64_t c_row, float alpha) {
  // Every loop over r and h is unrolled, so that the accumulators are registers: with a
  // variable index GCC kept the array in memory and stored it on every step.
  __m256 acc[R][2];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int64_t t = 0; t < k; ++t) {
    const __m256 m0 = _mm256_loadu_ps(m + t * m_row), m1 = _mm256_loadu_ps(m + t * m_row + 8);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 ar = _mm256_broadcast_ss(a + r * a_row + t * a_col);
      acc[r][0] = _mm256_fmadd_ps(ar, m0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(ar, m1, acc[r][1]);
    }
  }
  const __m256 scale = _mm256_set1_ps(alpha);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      float* cr = c + r * c_row + 8 * h;
      _mm256_storeu_ps(cr, ACCUMULATE ? _mm256_fmadd_ps(scale, acc[r][h], _mm256_loadu_ps(cr))
                                      : _mm256_mul_ps(scale, acc[r][h]));
    }
  }
}

// c (rows x cols, cols a multiple of 16) (+)= alpha * a m: a (rows x k) read through the strides
// (a_row, a_col), m (k x cols) row-major with row stride m_row.
template <bool ACCUMULATE>
inline void gemm_tile(const float* a, int64_t a_row, int64_t a_col, const float* m,
                      int64_t m_row, int64_t k, int64_t rows, int64_t cols, float* c,
                      int64_t c_row, float alpha) {
  for (int64_t j = 0; j < cols; j += 16) {
    int64_t i = 0;
    for (; i + 6 <= rows; i += 6) {
      gemm_rows16<6, ACCUMULATE>(a + i * a_row, a_row, a_col, m + j, m_row, k, c + i * c_row + j,
                                 c_row, alpha);
    }
    for (; i + 2 <= rows; i += 2) {
      gemm_rows16<2, ACCUMULATE>(a + i * a_row, a_row, a_col, m + j, m_row, k, c + i * c_row + j,
                                 c_row, alpha);
    }
    for (; i < rows; ++i) {
      gemm_rows16<1, ACCUMULATE>(a + i * a_row, a_row, a_col, m + j, m_row, k, c + i * c_row + j,
                                 c_row, alpha);
    }
  }
}

// The lanes' largest value, as a float.
inline float max_lanes(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

template <>
inline float add_and_max<float>(float* x, const float* bias, float m, int64_t n) {
  int64_t j = 0;
  __m256 best = _mm256_set1_ps(m);
  for (; j + 8 <= n; j += 8) {
    const __m256 xj = _mm256_add_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(bias + j));
    _mm256_storeu_ps(x + j, xj);
    best = _mm256_max_ps(xj, best);  // max_ps returns its second operand when one is NaN
  }
  m = max_lanes(best);
  for (; j < n; ++j) {
    x[j] += bias[j];
    m = x[j] > m ? x[j] : m;
  }
  return m;
}

// fp32 with n a multiple of 8: fast_exp8 (the compiler kept fast_exp scalar: its bit cast).
template <>
inline float exp_and_sum<float>(float* x, float shift, int64_t n) {
  if (n % 8 != 0) {
    float sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += (x[j] = fast_exp(x[j] - shift));
    return sum;
  }
  const __m256 s = _mm256_set1_ps(shift);
  __m256 sum = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; j += 8) {
    const __m256 e = fast_exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), s));
    _mm256_storeu_ps(x + j, e);
    sum = _mm256_add_ps(sum, e);
  }
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
  const __m128 pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)));
}

template <>
inline void softmax_grad_row<float>(float* p, float* g, const float* bias, float shift,
                                    float delta, int64_t n) {
  int64_t j = 0;
  const __m256 s = _mm256_set1_ps(shift), dl = _mm256_set1_ps(delta);
  for (; j + 8 <= n; j += 8) {
    const __m256 e = fast_exp8(
        _mm256_sub_ps(_mm256_add_ps(_mm256_loadu_ps(p + j), _mm256_loadu_ps(bias + j)), s));
    _mm256_storeu_ps(p + j, e);
    _mm256_storeu_ps(g + j, _mm256_mul_ps(e, _mm256_sub_ps(_mm256_loadu_ps(g + j), dl)));
  }
  for (; j < n; ++j) {
    p[j] = fast_exp(p[j] + bias[j] - shift);
    g[j] = p[j] * (g[j] - delta);
  }
}
#endif

// s[i][j] = scale * sum_t a[i][t] * bt[t][j]: a is (b, d) row-major, bt is (d, b) (a key or
// value block transposed), s is (b, b). ROWS rows at a time keep ROWS x B accumulators in
// registers, reading each row of bt once per ROWS rows.
template <typename T, int B>
inline void dot_tile(const T* a, const T* bt, T* s, int64_t b_rt, int64_t d, T scale) {
  const int64_t b = B > 0 ? B : b_rt;
#ifdef LRA_BLOCK_SPARSE_AVX2
  if constexpr (std::is_same_v<T, float>) {
    if (b % 16 == 0) return gemm_tile<false>(a, d, 1, bt, b, d, b, b, s, b, scale);
  }
#endif
  int64_t i = 0;
  if constexpr (B > 0) {
    constexpr int ROWS = 8;
    for (; i + ROWS <= b; i += ROWS) {
      T acc[ROWS][B] = {};
      for (int64_t t = 0; t < d; ++t) {
        const T* row = bt + t * b;
        for (int r = 0; r < ROWS; ++r) {
          const T ar = a[(i + r) * d + t];
          for (int j = 0; j < B; ++j) acc[r][j] += ar * row[j];
        }
      }
      for (int r = 0; r < ROWS; ++r)
        for (int j = 0; j < B; ++j) s[(i + r) * b + j] = scale * acc[r][j];
    }
  }
  for (; i < b; ++i) {
    T* out = s + i * b;
    for (int64_t j = 0; j < b; ++j) out[j] = 0;
    for (int64_t t = 0; t < d; ++t) {
      const T ai = a[i * d + t];
      const T* row = bt + t * b;
      for (int64_t j = 0; j < b; ++j) out[j] += ai * row[j];
    }
    for (int64_t j = 0; j < b; ++j) out[j] *= scale;
  }
}

// out[i][:] += alpha * sum_j w[i][j] * m[j][:]: w is (b, b), m and out are (b, d) row-major.
// With TRANSPOSE_W the weights are read as w[j][i] (for dK = dS^T Q and dV = P^T dO). With d
// fixed, ROWS output rows at a time stay in registers and each row of m is read once per ROWS.
template <typename T, int B, int D, bool TRANSPOSE_W>
inline void axpy_tile(const T* w, const T* m, T* out, int64_t b_rt, int64_t d_rt, T alpha) {
  const int64_t b = B > 0 ? B : b_rt;
  const int64_t d = D > 0 ? D : d_rt;
#ifdef LRA_BLOCK_SPARSE_AVX2
  if constexpr (std::is_same_v<T, float>) {  // row i of w is column i of w^T: strides swap
    if (d % 16 == 0) {
      return gemm_tile<true>(w, TRANSPOSE_W ? 1 : b, TRANSPOSE_W ? b : 1, m, d, b, b, d, out, d,
                             alpha);
    }
  }
#endif
  auto weight = [&](int64_t i, int64_t j) { return TRANSPOSE_W ? w[j * b + i] : w[i * b + j]; };
  int64_t i = 0;
  if constexpr (D > 0) {
    constexpr int ROWS = D > 32 ? 4 : 8;
    for (; i + ROWS <= b; i += ROWS) {
      T acc[ROWS][D] = {};
      for (int64_t j = 0; j < b; ++j) {
        const T* row = m + j * d;
        for (int r = 0; r < ROWS; ++r) {
          const T wr = weight(i + r, j);
          for (int t = 0; t < D; ++t) acc[r][t] += wr * row[t];
        }
      }
      for (int r = 0; r < ROWS; ++r)
        for (int t = 0; t < D; ++t) out[(i + r) * d + t] += alpha * acc[r][t];
    }
  }
  for (; i < b; ++i) {
    T* o = out + i * d;
    for (int64_t j = 0; j < b; ++j) {
      const T wij = alpha * weight(i, j);
      const T* row = m + j * d;
      for (int64_t t = 0; t < d; ++t) o[t] += wij * row[t];
    }
  }
}

// LRA_KERNELS_POISON=1 (the tests set it) fills every output with NaN before the kernel runs, so
// an element the kernel forgets to write fails the comparison with the reference.
void poison(std::initializer_list<at::Tensor*> outputs) {
  const char* flag = std::getenv("LRA_KERNELS_POISON");
  if (flag == nullptr || flag[0] != '1') return;
  for (at::Tensor* t : outputs) t->fill_(std::numeric_limits<double>::quiet_NaN());
}

struct Shapes {
  int64_t slices, heads, seq, d, b, nb, k_max;
};

// Threads pay off only past a few milliseconds of work; below that the parallel region's start
// (and spinning threads on a busy machine) costs more than it saves.
bool worth_threads(const Shapes& s, const at::Tensor& row_offsets) {
  const int64_t pairs = row_offsets.select(-1, s.nb).sum().item<int64_t>();
  return pairs * s.b * s.b * s.d > (int64_t{1} << 23);
}

Shapes check(const at::Tensor& q, const at::Tensor& key_real, const at::Tensor& row_offsets,
             const at::Tensor& col_index, int64_t block_size) {
  TORCH_CHECK(q.dim() == 4, "block_sparse: q must be (batch, heads, seq, head_dim)");
  TORCH_CHECK(q.is_contiguous(), "block_sparse: inputs must be contiguous");
  const int64_t batch = q.size(0), heads = q.size(1), seq = q.size(2), d = q.size(3);
  TORCH_CHECK(block_size > 0 && seq % block_size == 0,
              "block_sparse: seq must be a multiple of block_size");
  const int64_t nb = seq / block_size;
  TORCH_CHECK(key_real.dtype() == at::kBool && key_real.sizes() == at::IntArrayRef({batch, seq}),
              "block_sparse: key_real must be a (batch, seq) bool tensor");
  TORCH_CHECK(row_offsets.dtype() == at::kLong &&
                  row_offsets.sizes() == at::IntArrayRef({batch, heads, nb + 1}),
              "block_sparse: row_offsets must be (batch, heads, nb + 1) int64");
  TORCH_CHECK(col_index.dtype() == at::kLong && col_index.dim() == 3 &&
                  col_index.size(0) == batch && col_index.size(1) == heads,
              "block_sparse: col_index must be (batch, heads, K) int64");
  return {batch * heads, heads, seq, d, block_size, nb, col_index.size(2)};
}

template <typename T, int B, int D>
void forward_impl(const Shapes& s, bool threads, const T* q, const T* kt, const T* v,
                  const bool* key_real, const int64_t* offsets, const int64_t* cols, T scale,
                  T* out, T* lse) {
  const int64_t b = s.b, d = s.d, nb = s.nb;
  const T neg_inf = -std::numeric_limits<T>::infinity();
#pragma omp parallel for collapse(2) schedule(dynamic, 1) num_threads(at::get_num_threads()) \
    if (threads)
  for (int64_t sl = 0; sl < s.slices; ++sl) {
    for (int64_t r = 0; r < nb; ++r) {
      const int64_t base = sl * s.seq * d;
      const bool* real = key_real + (sl / s.heads) * s.seq;
      const int64_t* off = offsets + sl * (nb + 1);
      const T* qb = q + base + r * b * d;
      std::vector<T> logits(b * b), acc(b * d, T(0)), row_max(b, neg_inf), row_sum(b, T(0));
      std::vector<T> bias(b);
      for (int64_t p = off[r]; p < off[r + 1]; ++p) {
        const int64_t c = cols[sl * s.k_max + p];
        dot_tile<T, B>(qb, kt + base + c * d * b, logits.data(), b, d, scale);
        // Padded keys as an additive -inf: the loops below stay branch-free, and `omp simd`
        // reductions vectorise the row max and sum without -ffast-math.
        for (int64_t j = 0; j < b; ++j) bias[j] = real[c * b + j] ? T(0) : neg_inf;
        for (int64_t i = 0; i < b; ++i) {
          T* li = logits.data() + i * b;
          const T m = add_and_max(li, bias.data(), row_max[i], b);
          if (m == neg_inf) {  // no real key yet: nothing to add
            for (int64_t j = 0; j < b; ++j) li[j] = 0;
            continue;
          }
          const T rescale = fast_exp(row_max[i] - m);
          row_sum[i] = row_sum[i] * rescale + exp_and_sum(li, m, b);
          row_max[i] = m;
          if (rescale != T(1))
            for (int64_t t = 0; t < d; ++t) acc[i * d + t] *= rescale;
        }
        axpy_tile<T, B, D, false>(logits.data(), v + base + c * b * d, acc.data(), b, d, T(1));
      }
      T* ob = out + base + r * b * d;
      T* lb = lse + sl * s.seq + r * b;
      for (int64_t i = 0; i < b; ++i) {
        const bool empty = row_sum[i] == T(0);
        const T inv = empty ? T(0) : T(1) / row_sum[i];
        for (int64_t t = 0; t < d; ++t) ob[i * d + t] = acc[i * d + t] * inv;
        lb[i] = empty ? neg_inf : row_max[i] + std::log(row_sum[i]);
      }
    }
  }
}

template <typename T, int B, int D>
void backward_impl(const Shapes& s, bool threads, const T* q, const T* k, const T* kt,
                   const T* vt, const bool* key_real, const int64_t* offsets,
                   const int64_t* cols, T scale, const T* lse, const T* delta,
                   const T* grad_out, T* grad_q, T* grad_k, T* grad_v) {
  const int64_t b = s.b, d = s.d, nb = s.nb;
  const T neg_inf = -std::numeric_limits<T>::infinity();
#pragma omp parallel for schedule(dynamic, 1) num_threads(at::get_num_threads()) if (threads)
  for (int64_t sl = 0; sl < s.slices; ++sl) {
    const int64_t base = sl * s.seq * d;
    const bool* real = key_real + (sl / s.heads) * s.seq;
    const int64_t* off = offsets + sl * (nb + 1);
    std::vector<T> prob(b * b), dprob(b * b), bias(b);
    // The slice's gradients are zeroed by the thread that accumulates them (memory it then
    // finds in its cache), not in a separate pass.
    for (T* g : {grad_q, grad_k, grad_v}) std::fill(g + base, g + base + s.seq * d, T(0));
    for (int64_t r = 0; r < nb; ++r) {
      const T* qb = q + base + r * b * d;
      const T* gb = grad_out + base + r * b * d;
      const T* lb = lse + sl * s.seq + r * b;
      const T* db = delta + sl * s.seq + r * b;
      for (int64_t p = off[r]; p < off[r + 1]; ++p) {
        const int64_t c = cols[sl * s.k_max + p];
        dot_tile<T, B>(qb, kt + base + c * d * b, prob.data(), b, d, scale);
        dot_tile<T, B>(gb, vt + base + c * d * b, dprob.data(), b, d, T(1));
        for (int64_t j = 0; j < b; ++j) bias[j] = real[c * b + j] ? T(0) : neg_inf;
        for (int64_t i = 0; i < b; ++i) {
          T* pi = prob.data() + i * b;
          T* gi = dprob.data() + i * b;
          // A row with no real key (lse -inf) has P = 0 and must not compute -inf - -inf.
          const T shift = lb[i] == neg_inf ? -neg_inf : lb[i];
          softmax_grad_row(pi, gi, bias.data(), shift, db[i], b);  // P, then dS
        }
        // dV_c += P^T dO_r; dQ_r += scale dS K_c; dK_c += scale dS^T Q_r.
        axpy_tile<T, B, D, true>(prob.data(), gb, grad_v + base + c * b * d, b, d, T(1));
        axpy_tile<T, B, D, false>(dprob.data(), k + base + c * b * d, grad_q + base + r * b * d,
                                  b, d, scale);
        axpy_tile<T, B, D, true>(dprob.data(), qb, grad_k + base + c * b * d, b, d, scale);
      }
    }
  }
}

// Compile-time tiles for the common sizes, runtime bounds for the rest.
template <typename T, typename F>
void dispatch_tiles(int64_t b, int64_t d, F&& f) {
  using B32 = std::integral_constant<int, 32>;
  using Any = std::integral_constant<int, 0>;
  if (b == 32 && d == 32) return f(B32{}, B32{});
  if (b == 32 && d == 64) return f(B32{}, std::integral_constant<int, 64>{});
  if (b == 32) return f(B32{}, Any{});
  return f(Any{}, Any{});
}

// kt, vt: (batch, heads, nb, d, b), each key (value) block transposed so that the logits read
// its rows; made by the caller, like every temporary the size of an input, so that it is a
// tensor the memory accounting sees.
void check_transposed(const at::Tensor& xt, const at::Tensor& q, const Shapes& s) {
  TORCH_CHECK(xt.is_contiguous() && xt.dtype() == q.dtype() &&
                  xt.sizes() == at::IntArrayRef({q.size(0), q.size(1), s.nb, s.d, s.b}),
              "block_sparse: transposed blocks must be contiguous (batch, heads, nb, d, b)");
}

// k is not read: it is an input so that autograd routes the gradient of kt (a layout of k)
// to it.
std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& q, const at::Tensor& k,
                                           const at::Tensor& kt, const at::Tensor& v, const at::Tensor& key_real,
                                           const at::Tensor& row_offsets,
                                           const at::Tensor& col_index, int64_t block_size,
                                           double scale) {
  const Shapes s = check(q, key_real, row_offsets, col_index, block_size);
  TORCH_CHECK(v.sizes() == q.sizes() && k.sizes() == q.sizes() && v.is_contiguous() &&
                  v.dtype() == q.dtype(),
              "block_sparse: q, k and v must share one shape and dtype, v contiguous");
  check_transposed(kt, q, s);
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options());
  poison({&out, &lse});
  const at::Tensor offsets = row_offsets.contiguous(), cols = col_index.contiguous();
  const at::Tensor real = key_real.contiguous();
  const bool threads = worth_threads(s, offsets);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "block_sparse_forward", [&] {
    dispatch_tiles<scalar_t>(s.b, s.d, [&](auto B, auto D) {
      forward_impl<scalar_t, decltype(B)::value, decltype(D)::value>(
          s, threads, q.data_ptr<scalar_t>(), kt.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
          real.data_ptr<bool>(), offsets.data_ptr<int64_t>(), cols.data_ptr<int64_t>(),
          static_cast<scalar_t>(scale), out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>());
    });
  });
  return {out, lse};
}

// delta: (batch, heads, seq), dO_i . O_i - dlse_i, the row term of the softmax backward with
// lse's gradient folded in.
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_out, const at::Tensor& delta, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& kt, const at::Tensor& vt, const at::Tensor& lse,
    const at::Tensor& key_real, const at::Tensor& row_offsets, const at::Tensor& col_index,
    int64_t block_size, double scale) {
  const Shapes s = check(q, key_real, row_offsets, col_index, block_size);
  TORCH_CHECK(grad_out.is_contiguous() && k.is_contiguous() && delta.is_contiguous() &&
                  lse.is_contiguous() && grad_out.sizes() == q.sizes() && k.sizes() == q.sizes(),
              "block_sparse: backward inputs must be contiguous, shaped like q");
  check_transposed(kt, q, s);
  check_transposed(vt, q, s);
  const at::Tensor& g = grad_out;
  at::Tensor grad_q = at::empty_like(q), grad_k = at::empty_like(k), grad_v = at::empty_like(q);
  poison({&grad_q, &grad_k, &grad_v});
  const at::Tensor offsets = row_offsets.contiguous(), cols = col_index.contiguous();
  const at::Tensor real = key_real.contiguous();
  const bool threads = worth_threads(s, offsets);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "block_sparse_backward", [&] {
    dispatch_tiles<scalar_t>(s.b, s.d, [&](auto B, auto D) {
      backward_impl<scalar_t, decltype(B)::value, decltype(D)::value>(
          s, threads, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), kt.data_ptr<scalar_t>(),
          vt.data_ptr<scalar_t>(), real.data_ptr<bool>(), offsets.data_ptr<int64_t>(),
          cols.data_ptr<int64_t>(), static_cast<scalar_t>(scale), lse.data_ptr<scalar_t>(),
          delta.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), grad_q.data_ptr<scalar_t>(),
          grad_k.data_ptr<scalar_t>(), grad_v.data_ptr<scalar_t>());
    });
  });
  return {grad_q, grad_k, grad_v};
}

}  // namespace

TORCH_LIBRARY(lra_block_sparse, m) {
  m.def("forward(Tensor q, Tensor k, Tensor kt, Tensor v, Tensor key_real, Tensor row_offsets, "
        "Tensor col_index, int block_size, float scale) -> (Tensor, Tensor)");
  m.def("backward(Tensor grad_out, Tensor delta, Tensor q, Tensor k, Tensor kt, Tensor vt, "
        "Tensor lse, Tensor key_real, Tensor row_offsets, Tensor col_index, int block_size, "
        "float scale) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(lra_block_sparse, CPU, m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
}
