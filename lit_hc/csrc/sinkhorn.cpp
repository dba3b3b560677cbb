// Sinkhorn-Knopp iterations for mHC's residual matrices on CPU, fused per block of tokens.
//
// The eager path (lit_hc/hyper_connections.py, _Sinkhorn) runs every iteration as whole-tensor ops on an
// (n, n, tokens) layout: 2 x iters sums and divisions forward, as many again to recompute them in backward, and
// 4 ops per step in reverse. At mHC's size (n = 4, iters = 20) each op moves a few hundred KB and costs ~10 us, so
// one sub-layer's Sinkhorn is ~300 ops and ~4 ms. Here a block of tokens is copied to a buffer that stays in L1/L2
// and every iteration runs on it: one pass over memory forward, one backward.
//
// Bit for bit the eager path's arithmetic: the same divisions (no reciprocals), the sums in the same sequential
// order torch.sum uses over a non-innermost dim of this size (((x0 + x1) + x2) + ...), the products of the
// backward rounded before they are summed. The build turns off floating-point contraction (-ffp-contract=off),
// which would fuse a product and a sum into an FMA and round once instead of twice; the tests check equality.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace {

constexpr int64_t kBlock = 32;  // tokens per block: with n = 4, 20 iterations, the backward's saved steps are ~100 KB

// One normalisation of a block buf[(i * n + j) * B + t]: divide by the sums over j (row sums, dim 1 of the
// (n, n, tokens) layout) or over i (column sums, dim 0). Writes the divisors to div[k * B + t], k the kept index.
template <typename scalar_t>
inline void normalise(scalar_t* buf, scalar_t* div, int64_t n, int64_t B, bool rows) {
  for (int64_t k = 0; k < n; ++k) {
    scalar_t* d = div + k * B;
    for (int64_t t = 0; t < B; ++t) d[t] = 0;
    for (int64_t m = 0; m < n; ++m) {
      const scalar_t* x = buf + (rows ? k * n + m : m * n + k) * B;
      for (int64_t t = 0; t < B; ++t) d[t] = d[t] + x[t];
    }
    for (int64_t m = 0; m < n; ++m) {
      scalar_t* x = buf + (rows ? k * n + m : m * n + k) * B;
      for (int64_t t = 0; t < B; ++t) x[t] = x[t] / d[t];
    }
  }
}

template <typename scalar_t>
void load_block(const scalar_t* src, scalar_t* buf, int64_t nn, int64_t T, int64_t t0, int64_t B) {
  for (int64_t e = 0; e < nn; ++e) std::copy(src + e * T + t0, src + e * T + t0 + B, buf + e * B);
}

template <typename scalar_t>
void store_block(const scalar_t* buf, scalar_t* dst, int64_t nn, int64_t T, int64_t t0, int64_t B) {
  for (int64_t e = 0; e < nn; ++e) std::copy(buf + e * B, buf + (e + 1) * B, dst + e * T + t0);
}

void check(const torch::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(x.dim() == 3 && x.size(0) == x.size(1), name, " must be (n, n, tokens)");
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kDouble, name, " must be float32 or float64");
}

}  // namespace

// M0: (n, n, tokens), positive. Returns M after `iters` row and column normalisations (rows first).
torch::Tensor sinkhorn_forward(const torch::Tensor& M0, int64_t iters) {
  check(M0, "M0");
  const int64_t n = M0.size(0), nn = n * n, T = M0.size(2);
  auto out = torch::empty_like(M0);
  AT_DISPATCH_FLOATING_TYPES(M0.scalar_type(), "sinkhorn_forward", [&] {
    const scalar_t* src = M0.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, (T + kBlock - 1) / kBlock, 1, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> buf(nn * kBlock), div(n * kBlock);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t t0 = b * kBlock, B = std::min(kBlock, T - t0);
        load_block(src, buf.data(), nn, T, t0, B);
        for (int64_t it = 0; it < iters; ++it) {
          normalise(buf.data(), div.data(), n, B, /*rows=*/true);
          normalise(buf.data(), div.data(), n, B, /*rows=*/false);
        }
        store_block(buf.data(), dst, nn, T, t0, B);
      }
    });
  });
  return out;
}

// The exact reverse of sinkhorn_forward: recomputes the iterations (keeping each step's result and divisors) and
// runs, last step first, M = P / P.sum(dim)  =>  dL/dP = (g - sum_dim(g * M)) / P.sum(dim). Returns dL/dM0.
torch::Tensor sinkhorn_backward(const torch::Tensor& M0, const torch::Tensor& grad, int64_t iters) {
  check(M0, "M0");
  check(grad, "grad");
  TORCH_CHECK(grad.sizes() == M0.sizes() && grad.scalar_type() == M0.scalar_type(), "grad must match M0");
  const int64_t n = M0.size(0), nn = n * n, T = M0.size(2), steps = 2 * iters;
  auto out = torch::empty_like(M0);
  AT_DISPATCH_FLOATING_TYPES(M0.scalar_type(), "sinkhorn_backward", [&] {
    const scalar_t* src = M0.data_ptr<scalar_t>();
    const scalar_t* gsrc = grad.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, (T + kBlock - 1) / kBlock, 1, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> Ms((steps + 1) * nn * kBlock), divs(steps * n * kBlock), g(nn * kBlock), s(kBlock);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t t0 = b * kBlock, B = std::min(kBlock, T - t0);
        load_block(src, Ms.data(), nn, T, t0, B);
        for (int64_t k = 0; k < steps; ++k) {  // Ms[k + 1] = step k's result
          std::copy(Ms.begin() + k * nn * B, Ms.begin() + (k + 1) * nn * B, Ms.begin() + (k + 1) * nn * B);
          normalise(Ms.data() + (k + 1) * nn * B, divs.data() + k * n * B, n, B, /*rows=*/k % 2 == 0);
        }
        load_block(gsrc, g.data(), nn, T, t0, B);
        for (int64_t k = steps - 1; k >= 0; --k) {
          const bool rows = k % 2 == 0;
          const scalar_t* M = Ms.data() + (k + 1) * nn * B;
          const scalar_t* div = divs.data() + k * n * B;
          for (int64_t q = 0; q < n; ++q) {  // q: the index the sum keeps
            for (int64_t t = 0; t < B; ++t) s[t] = 0;
            for (int64_t m = 0; m < n; ++m) {
              const int64_t e = (rows ? q * n + m : m * n + q) * B;
              for (int64_t t = 0; t < B; ++t) {
                const scalar_t product = g[e + t] * M[e + t];  // rounded, as torch's g * M
                s[t] = s[t] + product;
              }
            }
            for (int64_t m = 0; m < n; ++m) {
              const int64_t e = (rows ? q * n + m : m * n + q) * B;
              for (int64_t t = 0; t < B; ++t) g[e + t] = (g[e + t] - s[t]) / div[q * B + t];
            }
          }
        }
        store_block(g.data(), dst, nn, T, t0, B);
      }
    });
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &sinkhorn_forward, "Sinkhorn-Knopp forward on (n, n, tokens)");
  m.def("backward", &sinkhorn_backward, "its exact reverse, recomputing the iterations");
}
