// CUDA kernels of t2ifast::damsm_word_scores and its backward: one block per (image, caption) pair, all
// pairs in one launch.
//
// The block stages the caption's words [D, T] in shared memory and walks the image's regions, one region
// per thread: the thread computes the region's scores against every word (registers), the softmax over
// the caption's words and exp(gamma1 * a), which needs no running maximum because a lies in [0, 1]. So a
// single pass gives every word's unnormalised region-context, summed over the block's threads per channel
// by a warp butterfly into shared memory. The cosines and the log-sum-exp over words finish the score.
//
// Backward recomputes the pair's forward, then walks the regions once more: once the per-word sums are
// known, the gradients of both softmaxes are local to a region. A pair's gradient of the caption is
// summed in shared memory; both inputs' gradients are then added to float32 (float64) buffers with
// atomics, since every image meets every caption (their order, and the last bits, may vary between runs).
#include "damsm_word_scores.h"

#include "../common/warp_sums.cuh"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <limits>
#include <tuple>
#include <type_traits>

namespace t2ifast {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxWords = 64;

// Per-word values of one pair, in static shared memory.
template <typename acc_t, int MAX_T>
struct WordStats {
  acc_t z[MAX_T];      // softmax-over-regions denominators
  acc_t u[MAX_T];      // word . context
  acc_t wn[MAX_T];     // |word|
  acc_t cn[MAX_T];     // |context|
  acc_t cos[MAX_T];
  acc_t kappa[MAX_T];  // backward: sum_d grad_context * context
  acc_t gu[MAX_T], g_wn[MAX_T], g_cn[MAX_T];
  acc_t score;
};

// For this thread's region n: a[t] = softmax over the valid words of the scores, e1[t] = exp(gamma1 a[t])
// (0 off the valid words and past N).
template <typename scalar_t, typename acc_t, int MAX_T>
__device__ void region_attention(acc_t (&a)[MAX_T], acc_t (&e1)[MAX_T], const acc_t* s_words, const scalar_t* r,
                                 int64_t dim, int64_t num_regions, int64_t n, bool active, int length,
                                 acc_t gamma1) {
#pragma unroll
  for (int t = 0; t < MAX_T; ++t) a[t] = 0;
  if (active) {
    for (int64_t d = 0; d < dim; ++d) {
      const acc_t rv = static_cast<acc_t>(r[d * num_regions + n]);
#pragma unroll
      for (int t = 0; t < MAX_T; ++t) a[t] += rv * s_words[d * MAX_T + t];
    }
  }
  acc_t m = -std::numeric_limits<acc_t>::infinity();
#pragma unroll
  for (int t = 0; t < MAX_T; ++t) m = t < length ? max(m, a[t]) : m;
  acc_t sum = 0;
#pragma unroll
  for (int t = 0; t < MAX_T; ++t) {
    a[t] = t < length ? ::exp(a[t] - m) : acc_t(0);
    sum += a[t];
  }
  const acc_t inv = sum > 0 ? acc_t(1) / sum : acc_t(0);
#pragma unroll
  for (int t = 0; t < MAX_T; ++t) {
    a[t] *= inv;
    e1[t] = (active && t < length) ? ::exp(gamma1 * a[t]) : acc_t(0);
  }
}

// Adds v[t] summed over the block's threads to out[t] (shared memory). Every thread must call it.
template <typename acc_t, int MAX_T>
__device__ void block_add_per_word(acc_t (&v)[MAX_T], acc_t* out, int lane) {
  int first = 0;
  warp_sum_per_word<acc_t, MAX_T>(v, lane, &first);
  if (lane_holds_word_sums<MAX_T>(lane)) {
#pragma unroll
    for (int k = 0; k < kWordsPerLane<MAX_T>; ++k) atomicAdd(&out[first + k], v[k]);
  }
}

// The pair's forward, left in shared memory: s_words [D][MAX_T], s_context [D][MAX_T] (normalised) and
// stats (z, u, norms, cos, score). s_context must be zero on entry.
template <typename scalar_t, typename acc_t, int MAX_T>
__device__ void pair_forward(const scalar_t* w, const scalar_t* r, int length, int64_t dim, int words_count,
                             int64_t num_regions, acc_t gamma1, acc_t gamma2, acc_t* s_words, acc_t* s_context,
                             WordStats<acc_t, MAX_T>& stats) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  for (int64_t k = threadIdx.x; k < dim * MAX_T; k += kThreads) {
    const int t = static_cast<int>(k % MAX_T);
    s_words[k] = t < words_count ? static_cast<acc_t>(w[(k / MAX_T) * words_count + t]) : acc_t(0);
  }
  for (int t = threadIdx.x; t < MAX_T; t += kThreads) stats.z[t] = 0;
  __syncthreads();

  acc_t z[MAX_T];
#pragma unroll
  for (int t = 0; t < MAX_T; ++t) z[t] = 0;
  for (int64_t n0 = 0; n0 < num_regions; n0 += kThreads) {  // uniform across the block
    const int64_t n = n0 + threadIdx.x;
    const bool active = n < num_regions;
    acc_t a[MAX_T], e1[MAX_T];
    region_attention<scalar_t, acc_t, MAX_T>(a, e1, s_words, r, dim, num_regions, n, active, length, gamma1);
#pragma unroll
    for (int t = 0; t < MAX_T; ++t) z[t] += e1[t];
    for (int64_t d = 0; d < dim; ++d) {  // context[d][t] += r[d, n] e1[t], summed over the block
      const acc_t rv = active ? static_cast<acc_t>(r[d * num_regions + n]) : acc_t(0);
      acc_t v[MAX_T];
#pragma unroll
      for (int t = 0; t < MAX_T; ++t) v[t] = rv * e1[t];
      block_add_per_word<acc_t, MAX_T>(v, s_context + d * MAX_T, lane);
    }
  }
  block_add_per_word<acc_t, MAX_T>(z, stats.z, lane);
  __syncthreads();
  for (int64_t k = threadIdx.x; k < dim * MAX_T; k += kThreads) {
    const acc_t zt = stats.z[k % MAX_T];
    s_context[k] /= zt > 0 ? zt : acc_t(1);
  }
  __syncthreads();
  for (int t = warp; t < MAX_T; t += kWarps) {  // one warp per word: sums over the channels
    acc_t u = 0, ww = 0, cc = 0;
    for (int64_t d = lane; d < dim; d += 32) {
      const acc_t wv = s_words[d * MAX_T + t];
      const acc_t cv = s_context[d * MAX_T + t];
      u += wv * cv;
      ww += wv * wv;
      cc += cv * cv;
    }
    u = warp_sum(u);
    ww = warp_sum(ww);
    cc = warp_sum(cc);
    if (lane == 0) {
      stats.u[t] = u;
      stats.wn[t] = ::sqrt(ww);
      stats.cn[t] = ::sqrt(cc);
      stats.cos[t] = u / max(stats.wn[t] * stats.cn[t], static_cast<acc_t>(kDamsmCosineEps));
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    acc_t m = -std::numeric_limits<acc_t>::infinity();
    for (int t = 0; t < length; ++t) m = max(m, gamma2 * stats.cos[t]);
    acc_t sum = 0;
    for (int t = 0; t < length; ++t) sum += ::exp(gamma2 * stats.cos[t] - m);
    stats.score = length > 0 ? m + ::log(sum) : -std::numeric_limits<acc_t>::infinity();
  }
  __syncthreads();
}

template <typename index_t>
__device__ int clamped_length(const index_t* lengths, int64_t j, int words_count) {
  const int64_t length = static_cast<int64_t>(lengths[j]);
  return static_cast<int>(length < 0 ? 0 : (length > words_count ? words_count : length));
}

template <typename scalar_t, typename index_t, int MAX_T>
__global__ void __launch_bounds__(kThreads)
forward_kernel(const scalar_t* __restrict__ words, const index_t* __restrict__ lengths,
               const scalar_t* __restrict__ regions, scalar_t* __restrict__ scores, int64_t captions, int64_t dim,
               int words_count, int64_t num_regions, double gamma1, double gamma2) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char dynamic_shared[];
  acc_t* s_words = reinterpret_cast<acc_t*>(dynamic_shared);  // [D][MAX_T]
  acc_t* s_context = s_words + dim * MAX_T;                     // [D][MAX_T]
  __shared__ WordStats<acc_t, MAX_T> stats;
  const int64_t pair = blockIdx.x;
  const int64_t i = pair / captions, j = pair % captions;
  for (int64_t k = threadIdx.x; k < dim * MAX_T; k += kThreads) s_context[k] = 0;
  pair_forward<scalar_t, acc_t, MAX_T>(words + j * dim * words_count, regions + i * dim * num_regions,
                                       clamped_length(lengths, j, words_count), dim, words_count, num_regions,
                                       static_cast<acc_t>(gamma1), static_cast<acc_t>(gamma2), s_words, s_context,
                                       stats);
  if (threadIdx.x == 0) scores[pair] = static_cast<scalar_t>(stats.score);
}

template <typename scalar_t, typename index_t, int MAX_T>
__global__ void __launch_bounds__(kThreads)
backward_kernel(const scalar_t* __restrict__ grad_scores, const scalar_t* __restrict__ words,
                const index_t* __restrict__ lengths, const scalar_t* __restrict__ regions,
                at::opmath_type<scalar_t>* __restrict__ grad_words, at::opmath_type<scalar_t>* __restrict__ grad_regions,
                int64_t captions, int64_t dim, int words_count, int64_t num_regions, double gamma1_in,
                double gamma2_in) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char dynamic_shared[];
  acc_t* s_words = reinterpret_cast<acc_t*>(dynamic_shared);  // [D][MAX_T]
  acc_t* s_context = s_words + dim * MAX_T;                     // [D][MAX_T]: the context, then its gradient
  acc_t* s_grad_words = s_context + dim * MAX_T;                // [D][MAX_T]
  __shared__ WordStats<acc_t, MAX_T> stats;
  const acc_t gamma1 = static_cast<acc_t>(gamma1_in), gamma2 = static_cast<acc_t>(gamma2_in);
  const acc_t eps = static_cast<acc_t>(kDamsmCosineEps);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int64_t pair = blockIdx.x;
  const int64_t i = pair / captions, j = pair % captions;
  const scalar_t* w = words + j * dim * words_count;
  const scalar_t* r = regions + i * dim * num_regions;
  const int length = clamped_length(lengths, j, words_count);
  for (int64_t k = threadIdx.x; k < dim * MAX_T; k += kThreads) s_context[k] = s_grad_words[k] = 0;
  pair_forward<scalar_t, acc_t, MAX_T>(w, r, length, dim, words_count, num_regions, gamma1, gamma2, s_words,
                                       s_context, stats);

  // score = logsumexp(gamma2 cos), cos = u / max(|w| |c|, eps): the coefficients of each word
  const acc_t grad = static_cast<acc_t>(grad_scores[pair]);
  for (int t = threadIdx.x; t < MAX_T; t += kThreads) {
    acc_t gu = 0, g_wn = 0, g_cn = 0;
    if (t < length) {
      const acc_t gcos = grad * gamma2 * ::exp(gamma2 * stats.cos[t] - stats.score);
      const acc_t den = stats.wn[t] * stats.cn[t];
      gu = gcos / max(den, eps);
      const acc_t gden = den > eps ? -gcos * stats.u[t] / (den * den) : acc_t(0);
      g_wn = stats.wn[t] > 0 ? gden * stats.cn[t] / stats.wn[t] : acc_t(0);
      g_cn = stats.cn[t] > 0 ? gden * stats.wn[t] / stats.cn[t] : acc_t(0);
    }
    stats.gu[t] = gu;
    stats.g_wn[t] = g_wn;
    stats.g_cn[t] = g_cn;
  }
  __syncthreads();
  for (int t = warp; t < MAX_T; t += kWarps) {  // direct gradient of the words; context -> its gradient
    acc_t kappa = 0;
    for (int64_t d = lane; d < dim; d += 32) {
      const int64_t k = d * MAX_T + t;
      const acc_t wv = s_words[k];
      const acc_t cv = s_context[k];
      s_grad_words[k] += stats.gu[t] * cv + stats.g_wn[t] * wv;
      const acc_t gc = stats.gu[t] * wv + stats.g_cn[t] * cv;
      kappa += gc * cv;
      s_context[k] = gc;
    }
    kappa = warp_sum(kappa);
    if (lane == 0) stats.kappa[t] = kappa;
  }
  __syncthreads();
  const acc_t* s_grad_context = s_context;

  for (int64_t n0 = 0; n0 < num_regions; n0 += kThreads) {  // uniform across the block
    const int64_t n = n0 + threadIdx.x;
    const bool active = n < num_regions;
    acc_t a[MAX_T], b[MAX_T], gs[MAX_T];
    region_attention<scalar_t, acc_t, MAX_T>(a, b, s_words, r, dim, num_regions, n, active, length, gamma1);
#pragma unroll
    for (int t = 0; t < MAX_T; ++t) {
      b[t] /= stats.z[t] > 0 ? stats.z[t] : acc_t(1);  // softmax over regions
      gs[t] = 0;
    }
    if (active) {
      for (int64_t d = 0; d < dim; ++d) {  // gb[t] = grad_context[:, t] . r[:, n]
        const acc_t rv = static_cast<acc_t>(r[d * num_regions + n]);
#pragma unroll
        for (int t = 0; t < MAX_T; ++t) gs[t] += s_grad_context[d * MAX_T + t] * rv;
      }
    }
    acc_t dot = 0;
#pragma unroll
    for (int t = 0; t < MAX_T; ++t) {
      gs[t] = gamma1 * b[t] * (gs[t] - stats.kappa[t]);  // through the softmax over regions
      dot += a[t] * gs[t];
    }
#pragma unroll
    for (int t = 0; t < MAX_T; ++t) gs[t] = a[t] * (gs[t] - dot);  // through the softmax over words
    for (int64_t d = 0; d < dim; ++d) {
      const acc_t rv = active ? static_cast<acc_t>(r[d * num_regions + n]) : acc_t(0);
      acc_t grad_region = 0;
      acc_t v[MAX_T];
#pragma unroll
      for (int t = 0; t < MAX_T; ++t) {
        grad_region += s_grad_context[d * MAX_T + t] * b[t] + s_words[d * MAX_T + t] * gs[t];
        v[t] = rv * gs[t];
      }
      if (active) atomicAdd(&grad_regions[(i * dim + d) * num_regions + n], grad_region);
      block_add_per_word<acc_t, MAX_T>(v, s_grad_words + d * MAX_T, lane);
    }
  }
  __syncthreads();
  for (int64_t k = threadIdx.x; k < dim * words_count; k += kThreads) {
    atomicAdd(&grad_words[j * dim * words_count + k], s_grad_words[(k / words_count) * MAX_T + k % words_count]);
  }
}

template <typename Body>
void dispatch_max_words(int64_t words_count, const Body& body) {
  TORCH_CHECK(words_count <= kMaxWords, "damsm_word_scores: the CUDA kernel supports at most ", kMaxWords,
              " words (T), got T = ", words_count, "; use the Triton backend");
  if (words_count <= 16) {
    body(std::integral_constant<int, 16>{});
  } else if (words_count <= 32) {
    body(std::integral_constant<int, 32>{});
  } else {
    body(std::integral_constant<int, 64>{});
  }
}

// Dynamic shared memory of `arrays` [D][MAX_T] arrays, with the opt-in above 48 KiB where the GPU allows it.
template <typename Kernel>
size_t prepare_shared_memory(Kernel kernel, int64_t dim, int max_words, size_t element, int arrays, int device) {
  const size_t bytes = static_cast<size_t>(arrays) * dim * max_words * element;
  int limit = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK(bytes + 16 * 1024 <= static_cast<size_t>(limit), "damsm_word_scores: the CUDA kernel keeps ", arrays,
              " [D, T] arrays in shared memory: D = ", dim, " needs ", bytes, " bytes, more than this GPU allows (",
              limit, "); use the Triton backend");
  if (bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }
  return bytes;
}

at::Tensor damsm_word_scores_cuda(const at::Tensor& words_in, const at::Tensor& lengths_in, const at::Tensor& regions_in,
                                  double gamma1, double gamma2) {
  const c10::cuda::CUDAGuard device_guard(words_in.device());
  const DamsmSizes s = check_damsm_inputs(words_in, lengths_in, regions_in);
  const at::Tensor words = words_in.contiguous(), regions = regions_in.contiguous();
  const at::Tensor lengths = lengths_in.to(at::kLong).contiguous();
  at::Tensor scores = at::empty({s.images, s.captions}, words.options());
  if (s.images * s.captions == 0) return scores;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, words.scalar_type(), "damsm_word_scores_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_max_words(s.words, [&](auto max_words) {
      constexpr int MAX_T = decltype(max_words)::value;
      const auto kernel = forward_kernel<scalar_t, int64_t, MAX_T>;
      const size_t bytes = prepare_shared_memory(kernel, s.dim, MAX_T, sizeof(acc_t), 2, words.get_device());
      kernel<<<static_cast<unsigned>(s.images * s.captions), kThreads, bytes, stream>>>(
          words.const_data_ptr<scalar_t>(), lengths.const_data_ptr<int64_t>(), regions.const_data_ptr<scalar_t>(),
          scores.mutable_data_ptr<scalar_t>(), s.captions, s.dim, static_cast<int>(s.words), s.regions, gamma1,
          gamma2);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return scores;
}

std::tuple<at::Tensor, at::Tensor> damsm_word_scores_backward_cuda(const at::Tensor& grad_scores_in,
                                                                   const at::Tensor& words_in,
                                                                   const at::Tensor& lengths_in,
                                                                   const at::Tensor& regions_in, double gamma1,
                                                                   double gamma2) {
  const c10::cuda::CUDAGuard device_guard(words_in.device());
  const DamsmSizes s = check_damsm_inputs(words_in, lengths_in, regions_in);
  TORCH_CHECK(grad_scores_in.dim() == 2 && grad_scores_in.size(0) == s.images && grad_scores_in.size(1) == s.captions,
              "damsm_word_scores_backward: grad_scores must be [M, B] = [", s.images, ", ", s.captions, "], got ",
              grad_scores_in.sizes());
  const at::Tensor words = words_in.contiguous(), regions = regions_in.contiguous();
  const at::Tensor grad_scores = grad_scores_in.contiguous();
  const at::Tensor lengths = lengths_in.to(at::kLong).contiguous();
  const auto accumulate = words.options().dtype(at::toOpMathType(words.scalar_type()));
  at::Tensor grad_words = at::zeros(words.sizes(), accumulate);
  at::Tensor grad_regions = at::zeros(regions.sizes(), accumulate);
  if (s.images * s.captions > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, words.scalar_type(), "damsm_word_scores_backward_cuda",
                                    [&] {
      using acc_t = at::opmath_type<scalar_t>;
      dispatch_max_words(s.words, [&](auto max_words) {
        constexpr int MAX_T = decltype(max_words)::value;
        const auto kernel = backward_kernel<scalar_t, int64_t, MAX_T>;
        const size_t bytes = prepare_shared_memory(kernel, s.dim, MAX_T, sizeof(acc_t), 3, words.get_device());
        kernel<<<static_cast<unsigned>(s.images * s.captions), kThreads, bytes, stream>>>(
            grad_scores.const_data_ptr<scalar_t>(), words.const_data_ptr<scalar_t>(),
            lengths.const_data_ptr<int64_t>(), regions.const_data_ptr<scalar_t>(), grad_words.mutable_data_ptr<acc_t>(),
            grad_regions.mutable_data_ptr<acc_t>(), s.captions, s.dim, static_cast<int>(s.words), s.regions, gamma1,
            gamma2);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return {grad_words.to(words.scalar_type()), grad_regions.to(regions.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(t2ifast, CUDA, m) {
  m.impl("damsm_word_scores", &damsm_word_scores_cuda);
  m.impl("damsm_word_scores_backward", &damsm_word_scores_backward_cuda);
}

}  // namespace t2ifast
