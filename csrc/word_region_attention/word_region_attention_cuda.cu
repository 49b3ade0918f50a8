// CUDA kernels of t2ifast::word_region_attention and its backward.
//
// Skinny attention: many regions (queries), few words (keys, T <= 64 here), small C. One thread owns
// one region: it reads its column of regions once (coalesced across the block), keeps the T scores in
// registers, and writes its column of context once. The words of the sample are staged through shared
// memory kChunk channels at a time, read by all threads as broadcasts. Nothing of size T x N is written
// in the forward unless the attention is asked for.
//
// Backward recomputes the attention from the saved lse (nothing of size T x N is written there either).
// A block walks several tiles of regions of one sample; per tile and channel, grad_regions is a per-thread
// sum over the words, and grad_words[c, t] = sum_n ds[t, n] regions[c, n] + attn[t, n] grad_context[c, n]
// is reduced across each warp by a transposing butterfly (lane l ends with the sums of words l, or
// 2l and 2l + 1 for T > 32) and accumulated in shared memory ([C, T] per block, shared atomics). Each
// block writes its [C, T] partial sum; the partials are added up afterwards.
#include "word_region_attention.h"

#include "../common/warp_sums.cuh"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
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
      // unrolled, so that p is indexed by constants and stays in registers
#pragma unroll
      for (int t = 0; t < MAX_T; ++t) {
        if (t < words_count) attn[(b * words_count + t) * num_regions + n] = static_cast<scalar_t>(p[t]);
      }
    }
  }
  combine_words<scalar_t, acc_t, MAX_T>(context + b * channels * num_regions, p, shared, w, channels, num_regions,
                                        words_count, n, active);
}

// grad_regions, and per block the partial sums of grad_words over the tiles it walked:
// word_partials[b, blockIdx.x, c, t].
template <typename scalar_t, int MAX_T>
__global__ void __launch_bounds__(kThreads)
backward_kernel(const scalar_t* __restrict__ grad_context, const scalar_t* __restrict__ grad_attn,
                const scalar_t* __restrict__ regions, const scalar_t* __restrict__ words,
                const bool* __restrict__ pad_mask, const at::opmath_type<scalar_t>* __restrict__ lse,
                scalar_t* __restrict__ grad_regions, at::opmath_type<scalar_t>* __restrict__ word_partials,
                int64_t channels, int64_t num_regions, int words_count) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t shared[kChunk][MAX_T];
  extern __shared__ __align__(16) unsigned char dynamic_shared[];
  acc_t* word_sums = reinterpret_cast<acc_t*>(dynamic_shared);  // [channels][MAX_T]
  for (int64_t k = threadIdx.x; k < channels * MAX_T; k += kThreads) word_sums[k] = 0;
  __syncthreads();

  const int64_t b = blockIdx.y;
  const int lane = threadIdx.x % 32;
  const scalar_t* r = regions + b * channels * num_regions;
  const scalar_t* g = grad_context + b * channels * num_regions;
  const scalar_t* w = words + b * channels * words_count;
  scalar_t* gr = grad_regions + b * channels * num_regions;
  bool valid[MAX_T];
  load_valid<MAX_T>(valid, pad_mask, b, words_count);

  const int64_t tiles = (num_regions + kThreads - 1) / kThreads;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {  // uniform across the block
    const int64_t n = tile * kThreads + threadIdx.x;
    const bool active = n < num_regions;
    acc_t p[MAX_T];
    acc_t ds[MAX_T];
#pragma unroll
    for (int t = 0; t < MAX_T; ++t) p[t] = ds[t] = 0;
    project_onto_words<scalar_t, acc_t, MAX_T>(p, shared, r, w, channels, num_regions, words_count, n, active);
    project_onto_words<scalar_t, acc_t, MAX_T>(ds, shared, g, w, channels, num_regions, words_count, n, active);
    const acc_t l = active ? lse[b * num_regions + n] : std::numeric_limits<acc_t>::infinity();
    acc_t delta = 0;
#pragma unroll
    for (int t = 0; t < MAX_T; ++t) {
      p[t] = valid[t] ? ::exp(p[t] - l) : acc_t(0);  // l = +inf (fully padded sample, or past N): p = 0
      if (grad_attn != nullptr && active && t < words_count) {
        ds[t] += static_cast<acc_t>(grad_attn[(b * words_count + t) * num_regions + n]);
      }
      delta += p[t] * ds[t];
    }
#pragma unroll
    for (int t = 0; t < MAX_T; ++t) ds[t] = p[t] * (ds[t] - delta);

    for (int64_t c0 = 0; c0 < channels; c0 += kChunk) {
      stage_words<scalar_t, acc_t, MAX_T>(shared, w, channels, words_count, c0);
      const int count = static_cast<int>(min(static_cast<int64_t>(kChunk), channels - c0));
      for (int c = 0; c < count; ++c) {  // every lane takes part: the warp sums below shuffle
        const int64_t at_c = (c0 + c) * num_regions + n;
        const acc_t rv = active ? static_cast<acc_t>(r[at_c]) : acc_t(0);
        const acc_t gv = active ? static_cast<acc_t>(g[at_c]) : acc_t(0);
        acc_t grad_region = 0;
        acc_t v[MAX_T];
#pragma unroll
        for (int t = 0; t < MAX_T; ++t) {
          grad_region += ds[t] * shared[c][t];
          v[t] = ds[t] * rv + p[t] * gv;
        }
        if (active) gr[at_c] = static_cast<scalar_t>(grad_region);
        int first_word = 0;
        warp_sum_per_word<acc_t, MAX_T>(v, lane, &first_word);
#pragma unroll
        for (int i = 0; i < kWordsPerLane<MAX_T>; ++i) {
          if (first_word + i < words_count && lane_holds_word_sums<MAX_T>(lane)) {
            atomicAdd(&word_sums[(c0 + c) * MAX_T + first_word + i], v[i]);
          }
        }
      }
    }
  }
  __syncthreads();
  acc_t* partial = word_partials + (b * gridDim.x + blockIdx.x) * channels * words_count;
  for (int64_t k = threadIdx.x; k < channels * words_count; k += kThreads) {
    partial[k] = word_sums[(k / words_count) * MAX_T + k % words_count];
  }
}

// Calls body(std::integral_constant<int, MAX_T>) with the smallest instantiated MAX_T >= T. kWith24 adds 24:
// AttnGAN's birds captions have T = 18, and the forward does MAX_T multiply-adds per channel and region
// whatever T is (the backward's per-word warp sums need a power of two).
template <bool kWith24 = false, typename Body>
void dispatch_max_words(int64_t words_count, const Body& body) {
  TORCH_CHECK(words_count <= kMaxWords, "word_region_attention: the CUDA kernel supports at most ", kMaxWords,
              " words (T), got T = ", words_count, "; use the Triton or reference backend");
  if (words_count <= 16) {
    body(std::integral_constant<int, 16>{});
    return;
  }
  if constexpr (kWith24) {
    if (words_count <= 24) {
      body(std::integral_constant<int, 24>{});
      return;
    }
  }
  if (words_count <= 32) {
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
    dispatch_max_words</*kWith24=*/true>(s.words, [&](auto max_words) {
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

int device_attribute(cudaDeviceAttr attribute, int device) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));
  return value;
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
  if (s.batch == 0 || s.regions == 0 || s.channels == 0) {
    return {grad_regions, at::zeros_like(words)};
  }
  TORCH_CHECK(s.batch <= 65535, "word_region_attention: the CUDA kernel supports B <= 65535, got ", s.batch);
  const int device = regions.get_device();
  // Enough blocks to fill the GPU a few times over; each walks its share of the sample's region tiles.
  const int64_t tiles = (s.regions + kThreads - 1) / kThreads;
  const int64_t target_blocks = 4 * static_cast<int64_t>(device_attribute(cudaDevAttrMultiProcessorCount, device));
  const int64_t blocks_per_sample = std::clamp<int64_t>((target_blocks + s.batch - 1) / s.batch, 1, tiles);
  const dim3 grid(static_cast<unsigned>(blocks_per_sample), static_cast<unsigned>(s.batch));
  const at::ScalarType stats_type = word_region_stats_type(regions.scalar_type());
  at::Tensor word_partials =
      at::empty({s.batch, blocks_per_sample, s.channels, s.words}, regions.options().dtype(stats_type));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, regions.scalar_type(),
                                  "word_region_attention_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_max_words(s.words, [&](auto max_words) {
      constexpr int MAX_T = decltype(max_words)::value;
      const auto kernel = backward_kernel<scalar_t, MAX_T>;
      const size_t shared_bytes = static_cast<size_t>(s.channels) * MAX_T * sizeof(acc_t);
      const size_t static_bytes = sizeof(acc_t) * kChunk * MAX_T;
      const size_t limit = static_cast<size_t>(device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
      TORCH_CHECK(shared_bytes + static_bytes <= limit, "word_region_attention: the CUDA backward keeps a [C, T] sum "
                  "in shared memory; C = ", s.channels, " with T = ", s.words, " needs ", shared_bytes + static_bytes,
                  " bytes, more than this GPU's ", limit, "; use the Triton backend");
      if (shared_bytes > 48 * 1024) {
        C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(shared_bytes)));
      }
      kernel<<<grid, kThreads, shared_bytes, stream>>>(
          grad_context.const_data_ptr<scalar_t>(), grad_attn.defined() ? grad_attn.const_data_ptr<scalar_t>() : nullptr,
          regions.const_data_ptr<scalar_t>(), words.const_data_ptr<scalar_t>(), mask, lse.const_data_ptr<acc_t>(),
          grad_regions.mutable_data_ptr<scalar_t>(), word_partials.mutable_data_ptr<acc_t>(), s.channels, s.regions,
          static_cast<int>(s.words));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  at::Tensor grad_words = at::sum(word_partials, {1}).to(regions.scalar_type());
  return {grad_regions, grad_words};
}

}  // namespace

TORCH_LIBRARY_IMPL(t2ifast, CUDA, m) {
  m.impl("word_region_attention", &word_region_attention_cuda);
  m.impl("word_region_attention_backward", &word_region_attention_backward_cuda);
}

}  // namespace t2ifast
