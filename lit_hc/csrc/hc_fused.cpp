// Hyper-connections' stream work on the CPU, one pass over the stream state per token (HCConfig.fused): dynamic HC's
// whole width connection (Zhu et al. 2025, Eq. 10-13), mHC's (Manifold, below), the width connection's mix alone for
// coefficients computed elsewhere (static HC), and the depth connection's backward.
//
// The PyTorch form (lit_hc/hyper_connections.py, _DynamicWidth, _StreamMix, _StreamAdd) reads H (tokens, n, d) four
// times in DHC's forward (mean, mean square, projection, mix) and runs each step as a whole-tensor op; its small
// matmuls ((n+1) x n by n x d per token, batched) go through BLAS, which is slow at that shape. Here a token's n x d
// block, a few KB, stays in L1 while every step runs on it: forward reads H once and writes x and R once; backward
// reads H and the incoming gradients once and writes the gradient of H once, recomputing the norm statistics and
// coefficients on the way (cheaper than saving and reading them back), so DHC's forward keeps only H for backward.
//
// DHC per token, for each stream row h_i (d values):
//   xhat_i = (h_i - mean_i) * rstd_i                 LayerNorm without its gain (folded into Wg)
//   z[i, k] = <xhat_i, Wg[k]> + bW[k]                 k < n + 2; Wg = (g * W)^T, bW = b @ W
//   p = tanh(z) (or z),  alpha[i, j] = A[i, j] + sa * p[i, j] (j <= n),  beta[i] = B[i] + sb * p[i, n + 1]
//   x = sum_i alpha[i, 0] h_i,  R_j = sum_i alpha[i, j + 1] h_i
// The parameter gradients are summed per chunk of kChunk tokens and the chunks in order, so the result does not
// depend on the number of threads. The sums run in another order than the PyTorch form's (BLAS), so the values
// agree with it to float rounding, not bit for bit (tests/test_fused_kernels.py).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kChunk = 64;  // tokens per chunk of the parameter-gradient sums
constexpr int64_t kMaxStreams = 16;  // n at most (the per-token buffers are on the stack)

// tanh in float32 as a rational function that vectorises (Eigen's fast tanh, generic_fast_tanh_float: odd degree-13
// numerator over even degree-6 denominator, |x| clamped to 7.905); within 4e-7 of tanh (tested). glibc's scalar tanhf
// costs ~20 ns a call, which was half of this kernel's time. Float64 keeps std::tanh.
inline float fast_tanh(float x) {
  x = std::min(std::max(x, -7.90531110763549805f), 7.90531110763549805f);
  const float x2 = x * x;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return x * p / q;
}
inline double fast_tanh(double x) { return std::tanh(x); }

// 32 bytes of T (AVX2's width; the compiler splits or joins it for another target) as a GCC/Clang vector type, so
// that the loops below keep their partial sums in registers: `#pragma omp simd` gave each dot product a single
// accumulator, a chain of dependent FMAs (latency-bound at d = 64), and each row of a combine a load and a store of
// the output per input row.
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int64_t kLanes = 32 / sizeof(T);
  static type load(const T* p) {
    type v;
    __builtin_memcpy(&v, p, sizeof v);  // an unaligned load
    return v;
  }
  static void store(T* p, const type& v) { __builtin_memcpy(p, &v, sizeof v); }
  static T sum(const type& v) {
    T s = 0;
    for (int64_t l = 0; l < kLanes; ++l) s += v[l];
    return s;
  }
};

// out[k] = the sum of acc[k]'s lanes, k < G.
template <typename T, int G>
inline void lane_sums(const typename Vec<T>::type* acc, T* out) {
  for (int k = 0; k < G; ++k) out[k] = Vec<T>::sum(acc[k]);
}
#if defined(__AVX__)
// Four float vectors at once: three horizontal adds and a 128-bit add, not four chains of seven dependent adds (which
// were a third of the dot products' time at d = 64).
template <>
inline void lane_sums<float, 4>(const Vec<float>::type* acc, float* out) {
  const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
}
#endif

// out[k] = <a, rows[k]> for G rows side by side: 2 G independent chains of vector FMAs, a read once per block.
template <typename T, int G>
inline void dots_group(const T* a, const T* const* rows, int64_t d, T* out) {
  using V = Vec<T>;
  using v = typename V::type;
  constexpr int64_t W = V::kLanes;
  v acc0[G], acc1[G];
  for (int k = 0; k < G; ++k) acc0[k] = acc1[k] = v{};
  int64_t c = 0;
  for (; c + 2 * W <= d; c += 2 * W) {
    const v a0 = V::load(a + c), a1 = V::load(a + c + W);
    for (int k = 0; k < G; ++k) {
      acc0[k] += a0 * V::load(rows[k] + c);
      acc1[k] += a1 * V::load(rows[k] + c + W);
    }
  }
  if (c + W <= d) {
    const v a0 = V::load(a + c);
    for (int k = 0; k < G; ++k) acc0[k] += a0 * V::load(rows[k] + c);
    c += W;
  }
  for (int k = 0; k < G; ++k) acc0[k] += acc1[k];
  lane_sums<T, G>(acc0, out);
  for (int k = 0; k < G; ++k)
    for (int64_t e = c; e < d; ++e) out[k] += a[e] * rows[k][e];
}

// out[k] = <a, rows[k]> for k < m (m rows of d channels), four rows at a time.
template <typename T>
inline void dots(const T* a, const T* const* rows, int64_t m, int64_t d, T* out) {
  int64_t k = 0;
  for (; k + 4 <= m; k += 4) dots_group<T, 4>(a, rows + k, d, out + k);
  switch (m - k) {
    case 3: dots_group<T, 3>(a, rows + k, d, out + k); break;
    case 2: dots_group<T, 2>(a, rows + k, d, out + k); break;
    case 1: dots_group<T, 1>(a, rows + k, d, out + k); break;
    default: break;
  }
}

// out (+)= sum_j w[j] * rows[j] (m rows of d channels): per block of B vectors of channels the partial sums stay in
// registers through all m rows (B independent chains), and out is written once.
template <typename T, int B>
inline int64_t combine_blocks(T* out, const T* w, const T* const* rows, int64_t m, int64_t d, int64_t c,
                              bool accumulate) {
  using V = Vec<T>;
  using v = typename V::type;
  constexpr int64_t W = V::kLanes;
  for (; c + B * W <= d; c += B * W) {
    v o[B];
    for (int b = 0; b < B; ++b) o[b] = accumulate ? V::load(out + c + b * W) : v{};
    for (int64_t j = 0; j < m; ++j) {
      const T a = w[j];
      for (int b = 0; b < B; ++b) o[b] += a * V::load(rows[j] + c + b * W);
    }
    for (int b = 0; b < B; ++b) V::store(out + c + b * W, o[b]);
  }
  return c;
}

template <typename T>
inline void combine(T* out, const T* w, const T* const* rows, int64_t m, int64_t d, bool accumulate = false) {
  int64_t c = combine_blocks<T, 4>(out, w, rows, m, d, 0, accumulate);
  c = combine_blocks<T, 1>(out, w, rows, m, d, c, accumulate);
  for (; c < d; ++c) {
    T o = accumulate ? out[c] : T(0);
    for (int64_t j = 0; j < m; ++j) o += w[j] * rows[j][c];
    out[c] = o;
  }
}

// LayerNorm's statistics of G rows side by side: mean[k] and rstd[k] = 1 / sqrt(var + eps) of rows[k], two sweeps
// (the rows are in L1; no E[h^2] - mean^2 cancellation).
template <typename T, int G>
inline void stats_group(const T* const* rows, int64_t d, T eps, T* mean, T* rstd) {
  using V = Vec<T>;
  using v = typename V::type;
  constexpr int64_t W = V::kLanes;
  const int64_t full = d - d % W;
  v acc[G];
  for (int k = 0; k < G; ++k) acc[k] = v{};
  for (int64_t c = 0; c < full; c += W)
    for (int k = 0; k < G; ++k) acc[k] += V::load(rows[k] + c);
  lane_sums<T, G>(acc, mean);
  for (int k = 0; k < G; ++k) {
    for (int64_t c = full; c < d; ++c) mean[k] += rows[k][c];
    mean[k] /= d;
    acc[k] = v{};
  }
  for (int64_t c = 0; c < full; c += W)
    for (int k = 0; k < G; ++k) {
      const v x = V::load(rows[k] + c) - mean[k];
      acc[k] += x * x;
    }
  lane_sums<T, G>(acc, rstd);
  for (int k = 0; k < G; ++k) {
    for (int64_t c = full; c < d; ++c) rstd[k] += (rows[k][c] - mean[k]) * (rows[k][c] - mean[k]);
    rstd[k] = T(1) / std::sqrt(rstd[k] / d + eps);
  }
}

template <typename T>
inline void stats(const T* const* rows, int64_t m, int64_t d, T eps, T* mean, T* rstd) {
  int64_t k = 0;
  for (; k + 4 <= m; k += 4) stats_group<T, 4>(rows + k, d, eps, mean + k, rstd + k);
  switch (m - k) {
    case 3: stats_group<T, 3>(rows + k, d, eps, mean + k, rstd + k); break;
    case 2: stats_group<T, 2>(rows + k, d, eps, mean + k, rstd + k); break;
    case 1: stats_group<T, 1>(rows + k, d, eps, mean + k, rstd + k); break;
    default: break;
  }
}

// p[e] = fast_tanh(p[e]) for e < m.
template <typename T>
inline void tanh_all(T* p, int64_t m) {
  for (int64_t e = 0; e < m; ++e) p[e] = fast_tanh(p[e]);
}
#if defined(__AVX__)
// fast_tanh's arithmetic eight lanes at a time (the loop above stays scalar: GCC does not vectorise its division).
template <>
inline void tanh_all<float>(float* p, int64_t m) {
  using v = Vec<float>::type;
  int64_t e = 0;
  for (; e + 8 <= m; e += 8) {
    const __m256 lim = _mm256_set1_ps(7.90531110763549805f);
    const v x = _mm256_min_ps(_mm256_max_ps(_mm256_loadu_ps(p + e), -lim), lim);
    const v x2 = x * x;
    v q = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
    q = q * x2 + -8.60467152213735e-11f;
    q = q * x2 + 5.12229709037114e-08f;
    q = q * x2 + 1.48572235717979e-05f;
    q = q * x2 + 6.37261928875436e-04f;
    q = q * x2 + 4.89352455891786e-03f;
    v r = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
    r = r * x2 + 2.26843463243900e-03f;
    r = r * x2 + 4.89352518554385e-03f;
    _mm256_storeu_ps(p + e, x * q / r);
  }
  for (; e < m; ++e) p[e] = fast_tanh(p[e]);
}
#endif

// The per-token work. A token's n x d block and its normalised copy stay in L1 through every step; each step sweeps
// the d channels of a few rows at once with explicit vector accumulators (dots, stats, combine). An earlier try that
// left the per-lane accumulators to `#pragma omp simd` vectorised worse than one row per sweep; with the vector
// types it is the faster form (measured: results/bench-fused/bench_connections.md against the commit before).
template <typename T>
struct Token {
  int64_t n, d;

  // Norm statistics, normalised rows xhat (n, d), activations p (n, n+2), alpha (n, n+1) and beta (n) of token h.
  void coefficients(const T* h, const T* Wg, const T* bW, const T* A, const T* B, T sa, T sb, bool use_tanh, T eps,
                    T* xhat, T* rstd, T* p, T* alpha, T* beta) const {
    const int64_t k_n = n + 2;
    const T* Wrows[kMaxStreams + 2];
    for (int64_t k = 0; k < k_n; ++k) Wrows[k] = Wg + k * d;
    const T* rows[kMaxStreams];
    T mean[kMaxStreams];
    for (int64_t i = 0; i < n; ++i) rows[i] = h + i * d;
    stats(rows, n, d, eps, mean, rstd);
    for (int64_t i = 0; i < n; ++i) {
      const T* row = rows[i];
      const T m = mean[i], r = rstd[i];
      T* xh = xhat + i * d;
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) xh[c] = (row[c] - m) * r;
      dots(xh, Wrows, k_n, d, p + i * k_n);
      for (int64_t k = 0; k < k_n; ++k) p[i * k_n + k] += bW[k];
    }
    if (use_tanh) tanh_all(p, n * k_n);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j <= n; ++j) alpha[i * (n + 1) + j] = A[i * (n + 1) + j] + sa * p[i * k_n + j];
      if (beta) beta[i] = B[i] + sb * p[i * k_n + n + 1];
    }
  }

  // x = sum_i alpha[i, 0] h_i and R_j = sum_i alpha[i, j+1] h_i.
  void mix(const T* h, const T* alpha, T* x, T* R) const {
    const T* rows[kMaxStreams];
    T w[kMaxStreams];
    for (int64_t i = 0; i < n; ++i) rows[i] = h + i * d;
    for (int64_t j = 0; j <= n; ++j) {
      for (int64_t i = 0; i < n; ++i) w[i] = alpha[i * (n + 1) + j];
      combine(j == 0 ? x : R + (j - 1) * d, w, rows, n, d);
    }
  }

  // The mix's backward: gH_i = sum_j alpha[i, j] g_j and galpha[i, j] = <h_i, g_j> (the n rows' dot products with
  // each g_j side by side).
  void mix_backward(const T* h, const T* alpha, const T* const* g, T* gH, T* galpha) const {
    const T* rows[kMaxStreams];
    T col[kMaxStreams];
    for (int64_t i = 0; i < n; ++i) {
      rows[i] = h + i * d;
      combine(gH + i * d, alpha + i * (n + 1), g, n + 1, d);
    }
    for (int64_t j = 0; j <= n; ++j) {
      dots(g[j], rows, n, d, col);
      for (int64_t i = 0; i < n; ++i) galpha[i * (n + 1) + j] = col[i];
    }
  }

  // The gradients of one token: g[j] the gradient of output row j (x, then R's rows), gbeta (n) or null; writes
  // gH (n, d) and adds the parameter gradients into the chunk's sums.
  void backward(const T* h, const T* const* g, const T* gbeta, const T* Wg, const T* bW, const T* A, const T* B, T sa,
                T sb, bool use_tanh, T eps, T* xhat, T* gxh, T* gH, T* sWg, T* sbW, T* sA, T* sB, T* sS) const {
    const int64_t k_n = n + 2;
    T rstd[kMaxStreams], p[kMaxStreams * (kMaxStreams + 2)], alpha[kMaxStreams * (kMaxStreams + 1)];
    const T* Wrows[kMaxStreams + 2];
    for (int64_t k = 0; k < k_n; ++k) Wrows[k] = Wg + k * d;
    coefficients(h, Wg, bW, A, B, sa, sb, use_tanh, eps, xhat, rstd, p, alpha, nullptr);
    T gzT[(kMaxStreams + 2) * kMaxStreams];  // dL/dz transposed, (k_n, n): the weights of dL/dWg's update below
    T s_alpha = 0, s_beta = 0;               // this token's part of dL/dsa and dL/dsb
    // the mix's part: dL/dh_i = sum_j alpha[i, j] g_j, dL/dalpha[i, j] = <h_i, g_j>
    T galpha[kMaxStreams * (kMaxStreams + 1)];
    mix_backward(h, alpha, g, gH, galpha);
    for (int64_t i = 0; i < n; ++i) {
      T* out = gH + i * d;
      const T* ga_i = galpha + i * (n + 1);
      // through the coefficients: dL/dp, then dL/dz
      T gz[kMaxStreams + 2];
      for (int64_t j = 0; j <= n; ++j) {
        const T ga = ga_i[j];
        gz[j] = ga * sa;
        sA[i * (n + 1) + j] += ga;
        s_alpha += ga * p[i * k_n + j];
      }
      const T gb = gbeta ? gbeta[i] : T(0);
      gz[n + 1] = gb * sb;
      sB[i] += gb;
      s_beta += gb * p[i * k_n + n + 1];
      for (int64_t k = 0; k < k_n; ++k) {
        const T q = p[i * k_n + k];
        if (use_tanh) gz[k] *= T(1) - q * q;
        sbW[k] += gz[k];
        gzT[k * n + i] = gz[k];
      }
      // z[k] = <xhat_i, Wg[k]> + bW[k]: dL/dxhat_i = sum_k gz[k] Wg[k] (dL/dWg after the loop)
      const T* xh = xhat + i * d;
      combine(gxh, gz, Wrows, k_n, d);
      // LayerNorm's backward without gain, rstd * (gxh - mean(gxh) - xhat * mean(gxh * xhat)), into the mix's part
      T m1 = 0, m2 = 0;
#pragma omp simd reduction(+ : m1, m2)
      for (int64_t c = 0; c < d; ++c) {
        m1 += gxh[c];
        m2 += gxh[c] * xh[c];
      }
      m1 /= d;
      m2 /= d;
      const T r = rstd[i];
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) out[c] += r * (gxh[c] - m1 - xh[c] * m2);
    }
    sS[0] += s_alpha;
    sS[1] += s_beta;
    // dL/dWg[k] += sum_i gz[i, k] xhat_i: each row of the sums read and written once per token, not once per stream
    const T* xrows[kMaxStreams];
    for (int64_t i = 0; i < n; ++i) xrows[i] = xhat + i * d;
    for (int64_t k = 0; k < k_n; ++k) combine(sWg + k * d, gzT + k * n, xrows, n, d, /*accumulate=*/true);
  }

  // The depth connection's backward: out = sum_j beta_j g_j and gbeta_j = <g_j, y>.
  void depth_backward(const T* g, const T* y, const T* beta, T* out, T* gbeta) const {
    const T* rows[kMaxStreams];
    for (int64_t j = 0; j < n; ++j) rows[j] = g + j * d;
    combine(out, beta, rows, n, d);
    dots(y, rows, n, d, gbeta);
  }
};

// mHC's width connection (DeepSeek-AI 2025, arXiv:2512.24880; ManifoldHyperConnection in hyper_connections.py),
// one pass per block of kLanes tokens:
//   r = 1 / sqrt(mean(vec(H)^2) + eps),  u = vec(H) phi  (m = 2n + n^2 columns; RMSNorm's division applied to u)
//   pre = sigmoid(a_pre r u[:n] + b_pre),  post = 2 sigmoid(a_post r u[n:2n] + b_post)
//   res = Sinkhorn(exp(a_res r u[2n:] + b_res - max)),  x = sum_i pre[i] h_i,  R_j = sum_i res[j, i] h_i
// The projection is a real matrix product (m x n d per token, 6k multiply-adds at n = 4, d = 64, four times DHC's),
// so it runs as one BLAS product per chunk of kChunk tokens (forward, and in backward the recomputation, dL/dH and
// dL/dphi), single-threaded inside the chunk loop so the sums do not depend on the thread count; a per-token loop,
// which re-read phi (400 KB at d = 1024) for every token, was slower (the width connection 16.8 against 13.7 ms at
// d = 1024, 1 thread). The sigmoids and the Sinkhorn
// iterations run with the block's tokens as the lanes of a vector ((n, n, lanes) layout, as lit_hc/csrc/sinkhorn.cpp),
// so each step of the iterations is a few vector operations for kLanes tokens. Backward recomputes the block's
// coefficients and the iterations (keeping every step's result and divisors, ~20 KB at n = 4) and runs their exact
// reverse; like DHC's, forward keeps only H. The parameter gradients are summed per chunk of kChunk tokens (a
// multiple of kLanes).
constexpr int64_t kLanes = 8;

// kLanes values of T, one per token of a block, as one GCC/Clang vector (8 floats: AVX2's width; 8 doubles: two
// registers, or one AVX-512 register): every lane runs the scalar code's arithmetic in its order, so the results
// are those of a loop over the lanes.
template <typename T>
struct LaneVec {
  typedef T type __attribute__((vector_size(kLanes * sizeof(T))));
  static type load(const T* p) {
    type v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(T* p, const type& v) { __builtin_memcpy(p, &v, sizeof v); }
};
constexpr int64_t kMaxCoef = 2 * kMaxStreams + kMaxStreams * kMaxStreams;

template <typename T>
struct Manifold {
  int64_t n, d, iters;
  T a_pre, a_post, a_res, eps;
  const T *b_pre, *b_post, *b_res;

  int64_t m() const { return 2 * n + n * n; }

  // r[l] for the block's B tokens from h0, and their projections U (B rows of m, vec(h_l) phi) with the tokens as
  // lanes, u[k * kLanes + l]; lanes >= B get zeros.
  void project(const T* h0, const T* U, int64_t B, T* u, T* r) const {
    const int64_t nd = n * d, mm = m();
    for (int64_t l = 0; l < kLanes; ++l) {
      if (l >= B) {
        r[l] = 0;
        for (int64_t k = 0; k < mm; ++k) u[k * kLanes + l] = 0;
        continue;
      }
      const T* v = h0 + l * nd;
      T ss;
      dots(v, &v, 1, nd, &ss);
      r[l] = T(1) / std::sqrt(ss / nd + eps);
      for (int64_t k = 0; k < mm; ++k) u[k * kLanes + l] = U[l * mm + k];
    }
  }

  // pre (n, lanes), post (n, lanes) and the Sinkhorn input M0 (n * n, lanes) from u and r.
  void activations(const T* u, const T* r, T* pre, T* post, T* M0) const {
    const int64_t nn = n * n;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t l = 0; l < kLanes; ++l) {
        pre[i * kLanes + l] = T(1) / (T(1) + std::exp(-(a_pre * (u[i * kLanes + l] * r[l]) + b_pre[i])));
        post[i * kLanes + l] = T(2) / (T(1) + std::exp(-(a_post * (u[(n + i) * kLanes + l] * r[l]) + b_post[i])));
      }
    T top[kLanes];
    for (int64_t l = 0; l < kLanes; ++l) top[l] = -std::numeric_limits<T>::infinity();
    for (int64_t e = 0; e < nn; ++e)
      for (int64_t l = 0; l < kLanes; ++l) {
        const T z = a_res * (u[(2 * n + e) * kLanes + l] * r[l]) + b_res[e];
        M0[e * kLanes + l] = z;
        top[l] = std::max(top[l], z);
      }
    for (int64_t e = 0; e < nn; ++e)
      for (int64_t l = 0; l < kLanes; ++l) M0[e * kLanes + l] = std::exp(M0[e * kLanes + l] - top[l]);
  }

  // One Sinkhorn step on M (n * n, lanes): divide by the sums over j (rows) or over i (columns); the reciprocals
  // of the divisors to inv. One division per sum and a product per entry (n times fewer divisions, the costliest
  // instruction here; the PyTorch loop divides each entry, so the two differ by rounding). Each line is one
  // operation on the kLanes tokens' vector: a loop over the lanes had been compiled to scalar instructions.
  void normalise(T* M, T* inv, bool rows) const {
    using L = LaneVec<T>;
    for (int64_t q = 0; q < n; ++q) {
      typename L::type s{};
      for (int64_t p = 0; p < n; ++p) s += L::load(M + (rows ? q * n + p : p * n + q) * kLanes);
      s = T(1) / s;
      for (int64_t p = 0; p < n; ++p) {
        T* x = M + (rows ? q * n + p : p * n + q) * kLanes;
        L::store(x, L::load(x) * s);
      }
      L::store(inv + q * kLanes, s);
    }
  }

  // Token l's mixing matrix in HC's layout: alpha[i, 0] = pre[i], alpha[i, j + 1] = res[j, i].
  void alpha_of(const T* pre, const T* M, int64_t l, T* alpha) const {
    for (int64_t i = 0; i < n; ++i) {
      alpha[i * (n + 1)] = pre[i * kLanes + l];
      for (int64_t j = 0; j < n; ++j) alpha[i * (n + 1) + 1 + j] = M[(j * n + i) * kLanes + l];
    }
  }
};

void check(const torch::Tensor& x, const char* name, int64_t dims) {
  TORCH_CHECK(x.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(x.dim() == dims, name, " must have ", dims, " dims");
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kDouble, name,
              " must be float32 or float64");
}

template <typename T>
void width_forward_impl(const torch::Tensor& H, const torch::Tensor& Wg, const torch::Tensor& bW,
                        const torch::Tensor& A, const torch::Tensor& B, const torch::Tensor& scales, bool use_tanh,
                        double eps, torch::Tensor& x, torch::Tensor& R, torch::Tensor& beta) {
  const int64_t T_ = H.size(0), n = H.size(1), d = H.size(2);
  const T *h0 = H.data_ptr<T>(), *Wg_ = Wg.data_ptr<T>(), *bW_ = bW.data_ptr<T>(), *A_ = A.data_ptr<T>(),
          *B_ = B.data_ptr<T>();
  const T sa = scales.data_ptr<T>()[0], sb = scales.data_ptr<T>()[1];
  T *x0 = x.data_ptr<T>(), *R0 = R.data_ptr<T>(), *beta0 = beta.data_ptr<T>();
  const Token<T> token{n, d};
  {
    at::parallel_for(0, T_, 16, [&](int64_t t0, int64_t t1) {
      std::vector<T> xhat(n * d);
      T rstd[kMaxStreams], p[kMaxStreams * (kMaxStreams + 2)], alpha[kMaxStreams * (kMaxStreams + 1)];
      for (int64_t t = t0; t < t1; ++t) {
        const T* h = h0 + t * n * d;
        token.coefficients(h, Wg_, bW_, A_, B_, sa, sb, use_tanh, T(eps), xhat.data(), rstd, p, alpha, beta0 + t * n);
        token.mix(h, alpha, x0 + t * d, R0 + t * n * d);
      }
    });
  }
}

template <typename T>
void width_backward_impl(const torch::Tensor& H, const torch::Tensor& Wg, const torch::Tensor& bW,
                         const torch::Tensor& A, const torch::Tensor& B, const torch::Tensor& scales, bool use_tanh,
                         double eps, const torch::Tensor& gx, const torch::Tensor& gR, const torch::Tensor& gbeta,
                         torch::Tensor& gH, torch::Tensor& sums) {
  const int64_t T_ = H.size(0), n = H.size(1), d = H.size(2), k_n = n + 2;
  const int64_t chunks = sums.size(0), acc = sums.size(1);
  const bool has_x = gx.numel() > 0, has_R = gR.numel() > 0, has_beta = gbeta.numel() > 0;
  const T *h0 = H.data_ptr<T>(), *Wg_ = Wg.data_ptr<T>(), *bW_ = bW.data_ptr<T>(), *A_ = A.data_ptr<T>(),
          *B_ = B.data_ptr<T>();
  const T sa = scales.data_ptr<T>()[0], sb = scales.data_ptr<T>()[1];
  const T* gx0 = has_x ? gx.data_ptr<T>() : nullptr;
  const T* gR0 = has_R ? gR.data_ptr<T>() : nullptr;
  const T* gb0 = has_beta ? gbeta.data_ptr<T>() : nullptr;
  T *gH0 = gH.data_ptr<T>(), *sums0 = sums.data_ptr<T>();
  const Token<T> token{n, d};
  {
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      std::vector<T> xhat(n * d), gxh(d), zeros(d, T(0));
      const T* g[kMaxStreams + 1];
      for (int64_t chunk = c0; chunk < c1; ++chunk) {
        T* s = sums0 + chunk * acc;  // grad Wg (k_n, d), grad bW (k_n), grad A (n, n+1), grad B (n), grad scales (2)
        T *sWg = s, *sbW = s + k_n * d, *sA = sbW + k_n, *sB = sA + n * (n + 1), *sS = sB + n;
        for (int64_t t = chunk * kChunk; t < std::min(T_, (chunk + 1) * kChunk); ++t) {
          g[0] = has_x ? gx0 + t * d : zeros.data();
          for (int64_t j = 1; j <= n; ++j) g[j] = has_R ? gR0 + (t * n + j - 1) * d : zeros.data();
          token.backward(h0 + t * n * d, g, has_beta ? gb0 + t * n : nullptr, Wg_, bW_, A_, B_, sa, sb, use_tanh,
                         T(eps), xhat.data(), gxh.data(), gH0 + t * n * d, sWg, sbW, sA, sB, sS);
        }
      }
    });
  }
}

template <typename T>
void depth_backward_impl(const torch::Tensor& grad, const torch::Tensor& y, const torch::Tensor& beta,
                         int64_t beta_stride, torch::Tensor& gy, torch::Tensor& gbeta) {
  const int64_t T_ = grad.size(0), n = grad.size(1), d = grad.size(2);
  const T *g0 = grad.data_ptr<T>(), *y0 = y.data_ptr<T>(), *b0 = beta.data_ptr<T>();
  T *gy0 = gy.data_ptr<T>(), *gb0 = gbeta.data_ptr<T>();
  const Token<T> token{n, d};
  {
    at::parallel_for(0, T_, 16, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t)
        token.depth_backward(g0 + t * n * d, y0 + t * d, b0 + t * beta_stride, gy0 + t * d, gb0 + t * n);
    });
  }
}

}  // namespace

// H (T, n, d); Wg (n+2, d); bW (n+2); A (n, n+1); B (n); scales (2) = [sa, sb]. Returns x (T, d), R (T, n, d),
// beta (T, n).
std::vector<torch::Tensor> width_forward(torch::Tensor H, torch::Tensor Wg, torch::Tensor bW, torch::Tensor A,
                                         torch::Tensor B, torch::Tensor scales, bool use_tanh, double eps) {
  check(H, "H", 3);
  const int64_t T = H.size(0), n = H.size(1), d = H.size(2);
  TORCH_CHECK(n <= kMaxStreams, "at most ", kMaxStreams, " streams");
  auto x = torch::empty({T, d}, H.options());
  auto R = torch::empty({T, n, d}, H.options());
  auto beta = torch::empty({T, n}, H.options());
  AT_DISPATCH_FLOATING_TYPES(H.scalar_type(), "hc_width_forward", [&] {
    width_forward_impl<scalar_t>(H, Wg, bW, A, B, scales, use_tanh, eps, x, R, beta);
  });
  return {x, R, beta};
}

// The gradients of width_forward from those of x (T, d), R (T, n, d) and beta (T, n) (an empty one is zero).
// Returns grad H (T, n, d), grad Wg (n+2, d), grad bW (n+2), grad A (n, n+1), grad B (n), grad scales (2).
std::vector<torch::Tensor> width_backward(torch::Tensor H, torch::Tensor Wg, torch::Tensor bW, torch::Tensor A,
                                          torch::Tensor B, torch::Tensor scales, bool use_tanh, double eps,
                                          torch::Tensor gx, torch::Tensor gR, torch::Tensor gbeta) {
  check(H, "H", 3);
  const int64_t T = H.size(0), n = H.size(1), d = H.size(2), k_n = n + 2;
  TORCH_CHECK(n <= kMaxStreams, "at most ", kMaxStreams, " streams");
  auto gH = torch::empty_like(H);
  const int64_t chunks = (T + kChunk - 1) / kChunk;
  // Per chunk: grad Wg (k_n * d), grad bW (k_n), grad A (n * (n+1)), grad B (n), grad scales (2).
  const int64_t acc = k_n * d + k_n + n * (n + 1) + n + 2;
  auto sums = torch::zeros({chunks, acc}, H.options());
  AT_DISPATCH_FLOATING_TYPES(H.scalar_type(), "hc_width_backward", [&] {
    width_backward_impl<scalar_t>(H, Wg, bW, A, B, scales, use_tanh, eps, gx, gR, gbeta, gH, sums);
  });
  auto total = sums.sum(0);  // the chunks in order: the same sums on any number of threads
  return {gH,
          total.narrow(0, 0, k_n * d).view({k_n, d}),
          total.narrow(0, k_n * d, k_n),
          total.narrow(0, k_n * d + k_n, n * (n + 1)).view({n, n + 1}),
          total.narrow(0, k_n * d + k_n + n * (n + 1), n),
          total.narrow(0, k_n * d + k_n + n * (n + 1) + n, 2)};
}

// The depth connection H'_j = R_j + beta_j y backward, one pass: from grad (T, n, d), y (T, d), beta (T, n) or (n),
// returns grad y (T, d) = sum_j beta_j grad_j and grad beta (T, n) = <grad_j, y> (grad R is grad itself).
std::vector<torch::Tensor> depth_backward(torch::Tensor grad, torch::Tensor y, torch::Tensor beta) {
  check(grad, "grad", 3);
  check(y, "y", 2);
  TORCH_CHECK(beta.is_contiguous() && (beta.dim() == 1 || beta.dim() == 2), "beta must be (n,) or (T, n), contiguous");
  const int64_t T = grad.size(0), n = grad.size(1), d = grad.size(2);
  TORCH_CHECK(n <= kMaxStreams, "at most ", kMaxStreams, " streams");
  const int64_t beta_stride = beta.dim() == 2 ? n : 0;
  auto gy = torch::empty_like(y);
  auto gbeta = torch::empty({T, n}, grad.options());
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "hc_depth_backward", [&] {
    depth_backward_impl<scalar_t>(grad, y, beta, beta_stride, gy, gbeta);
  });
  return {gy, gbeta};
}

// The width connection's mix alone, x = sum_i alpha[i, 0] h_i and R_j = sum_i alpha[i, j+1] h_i, for coefficients
// computed elsewhere (SHC's static ones, mHC's): H (T, n, d), alpha (T, n, n+1), or (n, n+1) for every token.
std::vector<torch::Tensor> mix_forward(torch::Tensor H, torch::Tensor alpha) {
  check(H, "H", 3);
  const int64_t T = H.size(0), n = H.size(1), d = H.size(2);
  TORCH_CHECK(n <= kMaxStreams, "at most ", kMaxStreams, " streams");
  TORCH_CHECK(alpha.is_contiguous() && alpha.numel() % (n * (n + 1)) == 0, "alpha must be (T, n, n+1) or (n, n+1)");
  const int64_t stride = alpha.dim() == 3 ? n * (n + 1) : 0;
  auto x = torch::empty({T, d}, H.options());
  auto R = torch::empty({T, n, d}, H.options());
  AT_DISPATCH_FLOATING_TYPES(H.scalar_type(), "hc_mix_forward", [&] {
    const Token<scalar_t> token{n, d};
    const scalar_t *h0 = H.data_ptr<scalar_t>(), *a0 = alpha.data_ptr<scalar_t>();
    scalar_t *x0 = x.data_ptr<scalar_t>(), *R0 = R.data_ptr<scalar_t>();
    at::parallel_for(0, T, 16, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) token.mix(h0 + t * n * d, a0 + t * stride, x0 + t * d, R0 + t * n * d);
    });
  });
  return {x, R};
}

// Its backward from the gradients of x (T, d) and R (T, n, d) (an empty one is zero): grad H (T, n, d) and grad
// alpha per token (T, n, n+1) (the caller sums it for static coefficients).
std::vector<torch::Tensor> mix_backward(torch::Tensor H, torch::Tensor alpha, torch::Tensor gx, torch::Tensor gR) {
  check(H, "H", 3);
  const int64_t T = H.size(0), n = H.size(1), d = H.size(2);
  TORCH_CHECK(n <= kMaxStreams, "at most ", kMaxStreams, " streams");
  TORCH_CHECK(alpha.is_contiguous() && alpha.numel() % (n * (n + 1)) == 0, "alpha must be (T, n, n+1) or (n, n+1)");
  const int64_t stride = alpha.dim() == 3 ? n * (n + 1) : 0;
  const bool has_x = gx.numel() > 0, has_R = gR.numel() > 0;
  auto gH = torch::empty_like(H);
  auto galpha = torch::empty({T, n, n + 1}, H.options());
  AT_DISPATCH_FLOATING_TYPES(H.scalar_type(), "hc_mix_backward", [&] {
    const Token<scalar_t> token{n, d};
    const scalar_t *h0 = H.data_ptr<scalar_t>(), *a0 = alpha.data_ptr<scalar_t>();
    const scalar_t* gx0 = has_x ? gx.data_ptr<scalar_t>() : nullptr;
    const scalar_t* gR0 = has_R ? gR.data_ptr<scalar_t>() : nullptr;
    scalar_t *gH0 = gH.data_ptr<scalar_t>(), *ga0 = galpha.data_ptr<scalar_t>();
    at::parallel_for(0, T, 16, [&](int64_t t0, int64_t t1) {
      std::vector<scalar_t> zeros(d, scalar_t(0));
      const scalar_t* g[kMaxStreams + 1];
      for (int64_t t = t0; t < t1; ++t) {
        g[0] = has_x ? gx0 + t * d : zeros.data();
        for (int64_t j = 1; j <= n; ++j) g[j] = has_R ? gR0 + (t * n + j - 1) * d : zeros.data();
        token.mix_backward(h0 + t * n * d, a0 + t * stride, g, gH0 + t * n * d, ga0 + t * n * (n + 1));
      }
    });
  });
  return {gH, galpha};
}

namespace {

template <typename T>
Manifold<T> manifold(const torch::Tensor& H, const torch::Tensor& scalars, const torch::Tensor& b_pre,
                     const torch::Tensor& b_post, const torch::Tensor& b_res, int64_t iters) {
  const T* s = scalars.data_ptr<T>();
  return Manifold<T>{H.size(1), H.size(2), iters, s[0], s[1], s[2],
                     std::numeric_limits<T>::epsilon(), b_pre.data_ptr<T>(), b_post.data_ptr<T>(),
                     b_res.data_ptr<T>()};
}

void check_manifold(const torch::Tensor& H, const torch::Tensor& phi, const torch::Tensor& scalars,
                    const torch::Tensor& b_pre, const torch::Tensor& b_post, const torch::Tensor& b_res) {
  check(H, "H", 3);
  const int64_t n = H.size(1), d = H.size(2);
  TORCH_CHECK(n <= kMaxStreams, "at most ", kMaxStreams, " streams");
  check(phi, "phi", 2);
  TORCH_CHECK(phi.size(0) == n * d && phi.size(1) == 2 * n + n * n && phi.scalar_type() == H.scalar_type(),
              "phi must be (n d, 2n + n^2), of H's dtype");
  for (const auto* t : {&scalars, &b_pre, &b_post, &b_res}) {
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == H.scalar_type(), "mHC's parameters must be contiguous and "
                "of H's dtype");
  }
  TORCH_CHECK(scalars.numel() == 3 && b_pre.numel() == n && b_post.numel() == n && b_res.numel() == n * n,
              "scalars (3) = [a_pre, a_post, a_res], b_pre (n), b_post (n), b_res (n, n)");
}

}  // namespace

// mHC's width connection (Manifold): H (T, n, d), phi (n d, 2n + n^2), scalars (3) = [a_pre, a_post, a_res],
// b_pre (n), b_post (n), b_res (n, n). Returns x (T, d), R (T, n, d) and post (T, n), the depth weights.
std::vector<torch::Tensor> mhc_width_forward(torch::Tensor H, torch::Tensor phi, torch::Tensor scalars,
                                             torch::Tensor b_pre, torch::Tensor b_post, torch::Tensor b_res,
                                             int64_t iters) {
  const at::NoGradGuard no_grad;
  check_manifold(H, phi, scalars, b_pre, b_post, b_res);
  const int64_t T = H.size(0), n = H.size(1), d = H.size(2), nd = n * d;
  auto x = torch::empty({T, d}, H.options());
  auto R = torch::empty({T, n, d}, H.options());
  auto post = torch::empty({T, n}, H.options());
  const auto H2 = H.view({T, nd});
  AT_DISPATCH_FLOATING_TYPES(H.scalar_type(), "hc_mhc_width_forward", [&] {
    using T_ = scalar_t;
    const auto mf = manifold<T_>(H, scalars, b_pre, b_post, b_res, iters);
    const Token<T_> token{n, d};
    const T_* h0 = H.data_ptr<T_>();
    T_ *x0 = x.data_ptr<T_>(), *R0 = R.data_ptr<T_>(), *post0 = post.data_ptr<T_>();
    const int64_t nn = n * n, mm = mf.m();
    at::parallel_for(0, (T + kChunk - 1) / kChunk, 1, [&](int64_t c0, int64_t c1) {
      const at::NoGradGuard no_grad;  // grad mode is per thread: the products below are not autograd's to record
      std::vector<T_> u(mm * kLanes), buf((2 * n + nn) * kLanes), div(n * kLanes);
      T_ r[kLanes], alpha[kMaxStreams * (kMaxStreams + 1)];
      T_ *pre = buf.data(), *pst = pre + n * kLanes, *M = pst + n * kLanes;
      for (int64_t chunk = c0; chunk < c1; ++chunk) {
        const int64_t s0 = chunk * kChunk, len = std::min(kChunk, T - s0);
        const auto U = at::mm(H2.narrow(0, s0, len), phi);  // (len, m); one thread inside the chunk loop
        for (int64_t t0 = s0; t0 < s0 + len; t0 += kLanes) {
          const int64_t B = std::min(kLanes, s0 + len - t0);
          mf.project(h0 + t0 * nd, U.data_ptr<T_>() + (t0 - s0) * mm, B, u.data(), r);
          mf.activations(u.data(), r, pre, pst, M);
          for (int64_t it = 0; it < iters; ++it) {
            mf.normalise(M, div.data(), /*rows=*/true);
            mf.normalise(M, div.data(), /*rows=*/false);
          }
          for (int64_t l = 0; l < B; ++l) {
            const int64_t t = t0 + l;
            mf.alpha_of(pre, M, l, alpha);
            token.mix(h0 + t * nd, alpha, x0 + t * d, R0 + t * nd);
            for (int64_t i = 0; i < n; ++i) post0[t * n + i] = pst[i * kLanes + l];
          }
        }
      }
    });
  });
  return {x, R, post};
}

// Its gradients from those of x (T, d), R (T, n, d) and post (T, n) (an empty one is zero): grad H (T, n, d),
// grad phi (n d, 2n + n^2), grad scalars (3), grad b_pre (n), grad b_post (n), grad b_res (n, n).
std::vector<torch::Tensor> mhc_width_backward(torch::Tensor H, torch::Tensor phi, torch::Tensor scalars,
                                              torch::Tensor b_pre, torch::Tensor b_post, torch::Tensor b_res,
                                              int64_t iters, torch::Tensor gx, torch::Tensor gR, torch::Tensor gpost) {
  const at::NoGradGuard no_grad;
  check_manifold(H, phi, scalars, b_pre, b_post, b_res);
  const int64_t T = H.size(0), n = H.size(1), d = H.size(2), nd = n * d, nn = n * n, mm = 2 * n + nn;
  const bool has_x = gx.numel() > 0, has_R = gR.numel() > 0, has_post = gpost.numel() > 0;
  auto gH = torch::empty_like(H);
  const int64_t chunks = (T + kChunk - 1) / kChunk, steps = 2 * iters;
  // Per chunk: grad phi transposed (m * n d), grad scalars (3), grad b_pre (n), grad b_post (n), grad b_res (n * n).
  const int64_t acc = nd * mm + 3 + 2 * n + nn;
  auto sums = torch::zeros({chunks, acc}, H.options());
  const auto H2 = H.view({T, nd});
  auto gH2 = gH.view({T, nd});
  AT_DISPATCH_FLOATING_TYPES(H.scalar_type(), "hc_mhc_width_backward", [&] {
    using T_ = scalar_t;
    const auto mf = manifold<T_>(H, scalars, b_pre, b_post, b_res, iters);
    const Token<T_> token{n, d};
    const T_* h0 = H.data_ptr<T_>();
    const T_* gx0 = has_x ? gx.data_ptr<T_>() : nullptr;
    const T_* gR0 = has_R ? gR.data_ptr<T_>() : nullptr;
    const T_* gp0 = has_post ? gpost.data_ptr<T_>() : nullptr;
    T_ *gH0 = gH.data_ptr<T_>(), *sums0 = sums.data_ptr<T_>();
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      const at::NoGradGuard no_grad;  // grad mode is per thread: the products below are not autograd's to record
      std::vector<T_> u(mm * kLanes), pre(n * kLanes), pst(n * kLanes), gpre(n * kLanes), gpst(n * kLanes),
          Ms((steps + 1) * nn * kLanes), divs(std::max<int64_t>(steps, 1) * n * kLanes), gM(nn * kLanes),
          zeros(d, T_(0));
      T_ r[kLanes], alpha[kMaxStreams * (kMaxStreams + 1)], galpha[kMaxStreams * (kMaxStreams + 1)];
      const T_* g[kMaxStreams + 1];
      for (int64_t chunk = c0; chunk < c1; ++chunk) {
        T_* s = sums0 + chunk * acc;
        T_ *sS = s + nd * mm, *sbp = sS + 3, *sbq = sbp + n, *sbr = sbq + n;
        const int64_t s0 = chunk * kChunk, len = std::min(kChunk, T - s0);
        const auto Hc = H2.narrow(0, s0, len);
        const auto U = at::mm(Hc, phi);  // the forward's projection again (the same product, the same bits)
        auto gU = at::empty({len, mm}, H.options());  // dL/dU, U = Hc phi
        T_* gU0 = gU.data_ptr<T_>();
        for (int64_t t0 = s0; t0 < s0 + len; t0 += kLanes) {
          const int64_t B = std::min(kLanes, s0 + len - t0);
          // the forward again, every Sinkhorn step kept: Ms[k + 1] = step k's result
          mf.project(h0 + t0 * nd, U.data_ptr<T_>() + (t0 - s0) * mm, B, u.data(), r);
          mf.activations(u.data(), r, pre.data(), pst.data(), Ms.data());
          for (int64_t k = 0; k < steps; ++k) {
            std::copy(Ms.begin() + k * nn * kLanes, Ms.begin() + (k + 1) * nn * kLanes,
                      Ms.begin() + (k + 1) * nn * kLanes);
            mf.normalise(Ms.data() + (k + 1) * nn * kLanes, divs.data() + k * n * kLanes, /*rows=*/k % 2 == 0);
          }
          const T_* M = Ms.data() + steps * nn * kLanes;
          // the mix's backward per token: grad H (its mix part) and dL/dalpha -> dL/dpre, dL/dres
          std::fill(gpre.begin(), gpre.end(), T_(0));
          std::fill(gpst.begin(), gpst.end(), T_(0));
          std::fill(gM.begin(), gM.end(), T_(0));
          for (int64_t l = 0; l < B; ++l) {
            const int64_t t = t0 + l;
            g[0] = has_x ? gx0 + t * d : zeros.data();
            for (int64_t j = 1; j <= n; ++j) g[j] = has_R ? gR0 + (t * n + j - 1) * d : zeros.data();
            mf.alpha_of(pre.data(), M, l, alpha);
            token.mix_backward(h0 + t * nd, alpha, g, gH0 + t * nd, galpha);
            for (int64_t i = 0; i < n; ++i) {
              gpre[i * kLanes + l] = galpha[i * (n + 1)];
              for (int64_t j = 0; j < n; ++j) gM[(j * n + i) * kLanes + l] = galpha[i * (n + 1) + 1 + j];
              if (has_post) gpst[i * kLanes + l] = gp0[t * n + i];
            }
          }
          // Sinkhorn's exact reverse, last step first: M = P / P.sum(dim) => dL/dP = (g - sum_dim(g M)) / P.sum(dim)
          using L = LaneVec<T_>;
          for (int64_t k = steps - 1; k >= 0; --k) {
            const bool rows = k % 2 == 0;
            const T_* Mk = Ms.data() + (k + 1) * nn * kLanes;
            const T_* div = divs.data() + k * n * kLanes;  // 1 / P.sum(dim)
            for (int64_t q = 0; q < n; ++q) {  // kLanes tokens per vector operation, as in normalise
              typename L::type sg{};
              for (int64_t p = 0; p < n; ++p) {
                const int64_t e = (rows ? q * n + p : p * n + q) * kLanes;
                sg += L::load(gM.data() + e) * L::load(Mk + e);
              }
              const auto dv = L::load(div + q * kLanes);
              for (int64_t p = 0; p < n; ++p) {
                const int64_t e = (rows ? q * n + p : p * n + q) * kLanes;
                L::store(gM.data() + e, (L::load(gM.data() + e) - sg) * dv);
              }
            }
          }
          // through exp (the max's shift has no gradient: the result does not change when M0 is scaled), the
          // sigmoids and the scales: dL/d(r u) per coefficient (into gproj, lanes layout), and the scales' and
          // biases' gradients
          // (the block's sums in locals: through the pointers, which may alias, each += was a load and a store)
          T_ gproj[kMaxCoef * kLanes], s_pre = 0, s_post = 0, s_res = 0;
          const T_* M0 = Ms.data();
          for (int64_t i = 0; i < n; ++i) {
            T_ b_p = 0, b_q = 0;
            for (int64_t l = 0; l < kLanes; ++l) {
              const T_ p = pre[i * kLanes + l], q = pst[i * kLanes + l];
              const T_ gzp = gpre[i * kLanes + l] * p * (T_(1) - p);
              const T_ gzq = gpst[i * kLanes + l] * q * (T_(1) - q / 2);  // post = 2 sigmoid(z)
              s_pre += gzp * (u[i * kLanes + l] * r[l]);
              s_post += gzq * (u[(n + i) * kLanes + l] * r[l]);
              b_p += gzp;
              b_q += gzq;
              gproj[i * kLanes + l] = mf.a_pre * gzp;
              gproj[(n + i) * kLanes + l] = mf.a_post * gzq;
            }
            sbp[i] += b_p;
            sbq[i] += b_q;
          }
          for (int64_t e = 0; e < nn; ++e) {
            T_ b_r = 0;
            for (int64_t l = 0; l < kLanes; ++l) {
              const T_ gz = gM[e * kLanes + l] * M0[e * kLanes + l];
              s_res += gz * (u[(2 * n + e) * kLanes + l] * r[l]);
              b_r += gz;
              gproj[(2 * n + e) * kLanes + l] = mf.a_res * gz;
            }
            sbr[e] += b_r;
          }
          sS[0] += s_pre;
          sS[1] += s_post;
          sS[2] += s_res;
          // proj = r u: dL/du = r dL/dproj (into gU), dL/dr = <dL/dproj, u>; r = (|v|^2 / nd + eps)^(-1/2) gives
          // dL/dv its own term, -dL/dr r^3 / nd v (dL/dv's phi term is gU phi^T, below)
          for (int64_t l = 0; l < B; ++l) {
            T_ gr = 0;
            T_* gu = gU0 + (t0 - s0 + l) * mm;
            for (int64_t k = 0; k < mm; ++k) {
              gr += gproj[k * kLanes + l] * u[k * kLanes + l];
              gu[k] = gproj[k * kLanes + l] * r[l];
            }
            const T_* v = h0 + (t0 + l) * nd;
            T_* out = gH0 + (t0 + l) * nd;
            const T_ c = -gr * r[l] * r[l] * r[l] / nd;
            for (int64_t e = 0; e < nd; ++e) out[e] += c * v[e];  // (no pragma inside the dispatch macro)
          }
        }
        // the projection's backward as two products for the chunk: dL/dH += dL/dU phi^T, dL/dphi = H^T dL/dU,
        // the latter as its transpose dL/dU^T H (m x n d), which MKL computes in ~0.6x the time of H^T dL/dU (a
        // result of only m = 24 columns; 1 thread, 64 tokens: 1.58 against 2.80 ms per 2,048 tokens at d = 256)
        auto gHc = gH2.narrow(0, s0, len);
        gHc.addmm_(gU, phi.t());
        auto sphiT = sums.select(0, chunk).narrow(0, 0, nd * mm).view({mm, nd});
        at::mm_out(sphiT, gU.t(), Hc);
      }
    });
  });
  auto total = sums.sum(0);  // the chunks in order: the same sums on any number of threads
  return {gH,
          total.narrow(0, 0, nd * mm).view({mm, nd}).t().contiguous(),
          total.narrow(0, nd * mm, 3),
          total.narrow(0, nd * mm + 3, n),
          total.narrow(0, nd * mm + 3 + n, n),
          total.narrow(0, nd * mm + 3 + 2 * n, nn).view({n, n})};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("mix_forward", &mix_forward, "the width connection's mix, forward (x, R)");
  m.def("mix_backward", &mix_backward, "the width connection's mix, backward (grad H, grad alpha per token)");
  m.def("width_forward", &width_forward, "DHC width connection, forward (x, R, beta)");
  m.def("width_backward", &width_backward, "DHC width connection, backward");
  m.def("depth_backward", &depth_backward, "depth connection, backward (grad y, grad beta)");
  m.def("mhc_width_forward", &mhc_width_forward, "mHC width connection, forward (x, R, post)");
  m.def("mhc_width_backward", &mhc_width_backward, "mHC width connection, backward");
}
