// CUDA kernels of t2ifast::word_region_attention and its backward.
//
// Skinny attention: many regions (queries), few words (keys, T <= 64 here), small C. One thread owns
// one region: it reads its column of regions once (coalesced across the block), keeps the T scores in
// registers, and writes its column of context once. The words of the sample are staged through shared
// memory kChunk channels at a time, read by all threads as broadcasts. Nothing of size T x N is written
// in the forward unless the attention is asked for.
//
// Backward recomputes the attention from the saved lse. grad_regions comes out of the same per-thread
// pass; grad_words = regions . ds^T + grad_context . attn^T is a reduction over all regions, done by
// cuBLAS from ds and the attention, which this backward writes transiently ([B, T, N] each).
#include "word_region_attention.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <tuple>
#include <type_traits>

namespace t2ifast {
namespace {

constexpr int kThreads = 128;  // regions per block
constexpr int kChunk = 32;     // channels of words staged in shared memory at a time
constexpr int kMaxWords = 64;  // largest T the register arrays are instantiated for

// Stages words[c0 : c0 + kChunk, :] of one sample into shared memory (zeros past C and T).
template <typename scalar_t, typename acc_t, int MAX_T>
__device__ void stage_words(acc_t (&shared)[kChunk][MAX_T], const scalar_t* words, int64_t channels, int words_count,
                            int64_t c0) {
  __syncthreads();  // the previous chunk is no longer read
  for (int k = threadIdx.x; k < kChunk * MAX_T; k += blockDim.x) {
    const int c = k / MAX_T;
    const int t = k % MAX_T;
    shared[c][t] = (c0 + c < channels && t < words_count) ? static_cast<acc_t>(words[(c0 + c) * words_count + t])
                                                          : acc_t(0);
  }
  __syncthreads();
}

// acc[t] += sum_c x[c, n] * words[c, t] for this thread's region n: the scores (x = regions) or dp
// (x = grad_context). Every thread of the block must call it (it synchronises).
template <typename scalar_t, typename acc_t, int MAX_T>
__device__ void project_onto_words(acc_t (&acc)[MAX_T], acc_t (&shared)[kChunk][MAX_T], const scalar_t* x,
                                   const scalar_t* words, int64_t channels, int64_t regions, int words_count,
                                   int64_t n, bool active) {
  for (int64_t c0 = 0; c0 < channels; c0 += kChunk) {
    stage_words<scalar_t, acc_t, MAX_T>(shared, words, channels, words_count, c0);
    if (active) {
      const int count = static_cast<int>(min(static_cast<int64_t>(kChunk), channels - c0));
      for (int c = 0; c < count; ++c) {
        const acc_t v = static_cast<acc_t>(x[(c0 + c) * regions + n]);
#pragma unroll
        for (int t = 0; t < MAX_T; ++t) acc[t] += v * shared[c][t];
      }
    }
  }
}

// out[c, n] = sum_t coeff[t] * words[c, t] for this thread's region n.
template <typename scalar_t, typename acc_t, int MAX_T>
__device__ void combine_words(scalar_t* out, const acc_t (&coeff)[MAX_T], acc_t (&shared)[kChunk][MAX_T],
                              const scalar_t* words, int64_t channels, int64_t regions, int words_count, int64_t n,
                              bool active) {
  for (int64_t c0 = 0; c0 < channels; c0 += kChunk) {
    stage_words<scalar_t, acc_t, MAX_T>(shared, words, channels, words_count, c0);
    if (active) {
      const int count = static_cast<int>(min(static_cast<int64_t>(kChunk), channels - c0));
      for (int c = 0; c < count; ++c) {
        acc_t v = 0;
#pragma unroll
        for (int t = 0; t < MAX_T; ++t) v += coeff[t] * shared[c][t];
        out[(c0 + c) * regions + n] = static_cast<scalar_t>(v);
      }
    }
  }
}

template <int MAX_T>
__device__ void load_valid(bool (&valid)[MAX_T], const bool* pad_mask, int64_t b, int words_count) {
#pragma unroll
  for (int t = 0; t < MAX_T; ++t) valid[t] = t < words_count && (pad_mask == nullptr || !pad_mask[b * words_count + t]);
}

template <typename scalar_t, int MAX_T>
__global__ void __launch_bounds__(kThreads)
forward_kernel(const scalar_t* __restrict__ regions, const scalar_t* __restrict__ words,
               const bool* __restrict__ pad_mask, scalar_t* __restrict__ context, scalar_t* __restrict__ attn,
               at::opmath_type<scalar_t>* __restrict__ lse, int64_t channels, int64_t num_regions, int words_count) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t shared[kChunk][MAX_T];
  const int64_t b = blockIdx.y;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const bool active = n < num_regions;
  const scalar_t* r = regions + b * channels * num_regions;
  const scalar_t* w = words + b * channels * words_count;

  bool valid[MAX_T];
  load_valid<MAX_T>(valid, pad_mask, b, words_count);
  acc_t p[MAX_T];
#pragma unroll
  for (int t = 0; t < MAX_T; ++t) p[t] = 0;
  project_onto_words<scalar_t, acc_t, MAX_T>(p, shared, r, w, channels, num_regions, words_count, n, active);

  // softmax over the valid words; a sample whose words are all padding gets p = 0 and lse = +inf
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  acc_t m = -kInf;
#pragma unroll
  for (int t = 0; t < MAX_T; ++t) m = valid[t] ? max(m, p[t]) : m;
  acc_t sum = 0;
#pragma unroll
  for (int t = 0; t < MAX_T; ++t) {
    p[t] = valid[t] ? ::exp(p[t] - m) : acc_t(0);
    sum += p[t];
  }
  const bool empty = m == -kInf;
  const acc_t inv = empty ? acc_t(0) : acc_t(1) / sum;
#pragma unroll
  for (int t = 0; t < MAX_T; ++t) p[t] *= inv;
  if (active) {
    lse[b * num_regions + n] = empty ? kInf : m + ::log(sum);
    if (attn != nullptr) {
      for (int t = 0; t < words_count && t < MAX_T; ++t) {
        attn[(b * words_count + t) * num_regions + n] = static_cast<scalar_t>(p[t]);
      }
    }
  }
  combine_words<scalar_t, acc_t, MAX_T>(context + b * channels * num_regions, p, shared, w, channels, num_regions,
                                        words_count, n, active);
}

// Writes attn and ds = attn * (dp - sum_t attn dp) as [B, T, N], and grad_regions.
template <typename scalar_t, int MAX_T>
__global__ void __launch_bounds__(kThreads)
backward_kernel(const scalar_t* __restrict__ grad_context, const scalar_t* __restrict__ grad_attn,
                const scalar_t* __restrict__ regions, const scalar_t* __restrict__ words,
                const bool* __restrict__ pad_mask, const at::opmath_type<scalar_t>* __restrict__ lse,
                scalar_t* __restrict__ grad_regions, scalar_t* __restrict__ attn_out, scalar_t* __restrict__ ds_out,
                int64_t channels, int64_t num_regions, int words_count) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t shared[kChunk][MAX_T];
  const int64_t b = blockIdx.y;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const bool active = n < num_regions;
  const scalar_t* w = words + b * channels * words_count;

  bool valid[MAX_T];
  load_valid<MAX_T>(valid, pad_mask, b, words_count);
  acc_t p[MAX_T];
  acc_t dp[MAX_T];
#pragma unroll
  for (int t = 0; t < MAX_T; ++t) p[t] = dp[t] = 0;
  project_onto_words<scalar_t, acc_t, MAX_T>(p, shared, regions + b * channels * num_regions, w, channels,
                                             num_regions, words_count, n, active);
  project_onto_words<scalar_t, acc_t, MAX_T>(dp, shared, grad_context + b * channels * num_regions, w, channels,
                                             num_regions, words_count, n, active);
  const acc_t l = active ? lse[b * num_regions + n] : std::numeric_limits<acc_t>::infinity();
  acc_t delta = 0;
#pragma unroll
  for (int t = 0; t < MAX_T; ++t) {
    p[t] = valid[t] ? ::exp(p[t] - l) : acc_t(0);  // l = +inf for a fully padded sample: p = 0
    if (grad_attn != nullptr && active && t < words_count) {
      dp[t] += static_cast<acc_t>(grad_attn[(b * words_count + t) * num_regions + n]);
    }
    delta += p[t] * dp[t];
  }
#pragma unroll
  for (int t = 0; t < MAX_T; ++t) dp[t] = p[t] * (dp[t] - delta);  // now ds
  if (active) {
    for (int t = 0; t < words_count && t < MAX_T; ++t) {
      const int64_t index = (b * words_count + t) * num_regions + n;
      attn_out[index] = static_cast<scalar_t>(p[t]);
      ds_out[index] = static_cast<scalar_t>(dp[t]);
    }
  }
  combine_words<scalar_t, acc_t, MAX_T>(grad_regions + b * channels * num_regions, dp, shared, w, channels,
                                        num_regions, words_count, n, active);
}

// Calls body(std::integral_constant<int, MAX_T>) with the smallest instantiated MAX_T >= T.
template <typename Body>
void dispatch_max_words(int64_t words_count, const Body& body) {
  TORCH_CHECK(words_count <= kMaxWords, "word_region_attention: the CUDA kernel supports at most ", kMaxWords,
              " words (T), got T = ", words_count, "; use the Triton or reference backend");
  if (words_count <= 16) {
    body(std::integral_constant<int, 16>{});
  } else if (words_count <= 32) {
    body(std::integral_constant<int, 32>{});
  } else {
    body(std::integral_constant<int, 64>{});
  }
}

const bool* mask_pointer(const std::optional<at::Tensor>& pad_mask, at::Tensor& holder) {
  if (!pad_mask.has_value()) return nullptr;
  holder = pad_mask->contiguous();
  return holder.const_data_ptr<bool>();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> word_region_attention_cuda(const at::Tensor& regions_in,
                                                                          const at::Tensor& words_in,
                                                                          const std::optional<at::Tensor>& pad_mask,
                                                                          bool return_attn) {
  const c10::cuda::CUDAGuard device_guard(regions_in.device());
  const WordRegionSizes s = check_word_region_inputs(regions_in, words_in, pad_mask);
  const at::Tensor regions = regions_in.contiguous();
  const at::Tensor words = words_in.contiguous();
  at::Tensor mask_holder;
  const bool* mask = mask_pointer(pad_mask, mask_holder);
  at::Tensor context = at::empty({s.batch, s.channels, s.regions}, regions.options());
  at::Tensor attn = at::empty({return_attn ? s.batch : 0, s.words, s.regions}, regions.options());
  at::Tensor lse = at::empty({s.batch, s.regions}, regions.options().dtype(word_region_stats_type(regions.scalar_type())));
  if (s.batch == 0 || s.regions == 0) return {context, attn, lse};
  TORCH_CHECK(s.batch <= 65535, "word_region_attention: the CUDA kernel supports B <= 65535, got ", s.batch);
  const dim3 grid(static_cast<unsigned>((s.regions + kThreads - 1) / kThreads), static_cast<unsigned>(s.batch));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, regions.scalar_type(), "word_region_attention_cuda", [&] {
    dispatch_max_words(s.words, [&](auto max_words) {
      constexpr int MAX_T = decltype(max_words)::value;
      forward_kernel<scalar_t, MAX_T><<<grid, kThreads, 0, stream>>>(
          regions.const_data_ptr<scalar_t>(), words.const_data_ptr<scalar_t>(), mask,
          context.mutable_data_ptr<scalar_t>(), return_attn ? attn.mutable_data_ptr<scalar_t>() : nullptr,
          lse.mutable_data_ptr<at::opmath_type<scalar_t>>(), s.channels, s.regions, static_cast<int>(s.words));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {context, attn, lse};
}

std::tuple<at::Tensor, at::Tensor> word_region_attention_backward_cuda(
    const at::Tensor& grad_context_in, const std::optional<at::Tensor>& grad_attn_in, const at::Tensor& regions_in,
    const at::Tensor& words_in, const std::optional<at::Tensor>& pad_mask, const at::Tensor& lse_in) {
  const c10::cuda::CUDAGuard device_guard(regions_in.device());
  const WordRegionSizes s = check_word_region_inputs(regions_in, words_in, pad_mask);
  check_word_region_backward_inputs(s, regions_in, grad_context_in, grad_attn_in, lse_in);
  const at::Tensor regions = regions_in.contiguous();
  const at::Tensor words = words_in.contiguous();
  const at::Tensor grad_context = grad_context_in.contiguous();
  const at::Tensor lse = lse_in.contiguous();
  at::Tensor grad_attn;
  if (grad_attn_in.has_value()) grad_attn = grad_attn_in->contiguous();
  at::Tensor mask_holder;
  const bool* mask = mask_pointer(pad_mask, mask_holder);
  at::Tensor grad_regions = at::empty_like(regions);
  at::Tensor attn = at::empty({s.batch, s.words, s.regions}, regions.options());
  at::Tensor ds = at::empty({s.batch, s.words, s.regions}, regions.options());
  if (s.batch > 0 && s.regions > 0) {
    TORCH_CHECK(s.batch <= 65535, "word_region_attention: the CUDA kernel supports B <= 65535, got ", s.batch);
    const dim3 grid(static_cast<unsigned>((s.regions + kThreads - 1) / kThreads), static_cast<unsigned>(s.batch));
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, regions.scalar_type(),
                                    "word_region_attention_backward_cuda", [&] {
                                      dispatch_max_words(s.words, [&](auto max_words) {
      constexpr int MAX_T = decltype(max_words)::value;
                                        backward_kernel<scalar_t, MAX_T><<<grid, kThreads, 0, stream>>>(
                                            grad_context.const_data_ptr<scalar_t>(),
                                            grad_attn.defined() ? grad_attn.const_data_ptr<scalar_t>() : nullptr,
                                            regions.const_data_ptr<scalar_t>(), words.const_data_ptr<scalar_t>(),
                                            mask, lse.const_data_ptr<at::opmath_type<scalar_t>>(),
                                            grad_regions.mutable_data_ptr<scalar_t>(),
                                            attn.mutable_data_ptr<scalar_t>(), ds.mutable_data_ptr<scalar_t>(),
                                            s.channels, s.regions, static_cast<int>(s.words));
                                        C10_CUDA_KERNEL_LAUNCH_CHECK();
                                      });
                                    });
  } else {
    attn.zero_();
    ds.zero_();
  }
  // grad_words[b] = regions[b] . ds[b]^T + grad_context[b] . attn[b]^T   ([C, N] x [N, T])
  at::Tensor grad_words = at::bmm(regions, ds.transpose(1, 2));
  grad_words.add_(at::bmm(grad_context, attn.transpose(1, 2)));
  return {grad_regions, grad_words};
}

}  // namespace

TORCH_LIBRARY_IMPL(t2ifast, CUDA, m) {
  m.impl("word_region_attention", &word_region_attention_cuda);
  m.impl("word_region_attention_backward", &word_region_attention_backward_cuda);
}

}  // namespace t2ifast
