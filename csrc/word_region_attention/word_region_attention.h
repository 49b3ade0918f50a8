// What the CPU and CUDA kernels of t2ifast::word_region_attention share: argument checks, the sizes,
// and the conventions of the saved softmax statistics.
//
// Forward:  scores[t, n] = sum_c regions[c, n] * words[c, t]  (per sample), padded words excluded,
//           attn[t, n]   = softmax over t,   context[c, n] = sum_t attn[t, n] * words[c, t].
// Saved:    lse[b, n] = log sum_t exp(scores[t, n]) over the valid words, in the accumulation type; +inf
//           when every word of the sample is padding, so that exp(score - lse) is 0 there (zero
//           attention, zero context, zero gradient) without a special case in backward.
// Backward: dp[t, n] = sum_c grad_context[c, n] * words[c, t] (+ grad_attn[t, n]),
//           ds = attn * (dp - sum_t attn * dp),
//           grad_regions[c, n] = sum_t ds[t, n] * words[c, t],
//           grad_words[c, t] = sum_n ds[t, n] * regions[c, n] + attn[t, n] * grad_context[c, n].
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>

#include <optional>

namespace t2ifast {

struct WordRegionSizes {
  int64_t batch;     // B
  int64_t channels;  // C
  int64_t regions;   // N
  int64_t words;     // T
};

inline WordRegionSizes check_word_region_inputs(const at::Tensor& regions, const at::Tensor& words,
                                                const std::optional<at::Tensor>& pad_mask) {
  TORCH_CHECK(regions.dim() == 3, "word_region_attention: regions must be [B, C, N], got shape ", regions.sizes());
  TORCH_CHECK(words.dim() == 3, "word_region_attention: words must be [B, C, T], got shape ", words.sizes());
  TORCH_CHECK(at::isFloatingType(regions.scalar_type()),
              "word_region_attention: regions must be a floating-point tensor, got ", regions.scalar_type());
  TORCH_CHECK(words.scalar_type() == regions.scalar_type(), "word_region_attention: words has dtype ",
              words.scalar_type(), " but regions has ", regions.scalar_type());
  TORCH_CHECK(words.device() == regions.device(), "word_region_attention: words is on ", words.device(),
              " but regions is on ", regions.device());
  const WordRegionSizes sizes{regions.size(0), regions.size(1), regions.size(2), words.size(2)};
  TORCH_CHECK(words.size(0) == sizes.batch && words.size(1) == sizes.channels,
              "word_region_attention: words must be [B, C, T] = [", sizes.batch, ", ", sizes.channels,
              ", T] to match regions, got shape ", words.sizes());
  if (pad_mask.has_value()) {
    TORCH_CHECK(pad_mask->scalar_type() == at::kBool, "word_region_attention: pad_mask must be bool, got ",
                pad_mask->scalar_type());
    TORCH_CHECK(pad_mask->device() == regions.device(), "word_region_attention: pad_mask is on ",
                pad_mask->device(), " but regions is on ", regions.device());
    TORCH_CHECK(pad_mask->dim() == 2 && pad_mask->size(0) == sizes.batch && pad_mask->size(1) == sizes.words,
                "word_region_attention: pad_mask must be [B, T] = [", sizes.batch, ", ", sizes.words, "], got shape ",
                pad_mask->sizes());
  }
  return sizes;
}

// The dtype of the saved statistics (lse): float for half/bfloat16/float inputs, double for double.
inline at::ScalarType word_region_stats_type(at::ScalarType input) { return at::toOpMathType(input); }

// The backward's extra inputs must agree with the forward's.
inline void check_word_region_backward_inputs(const WordRegionSizes& sizes, const at::Tensor& regions,
                                              const at::Tensor& grad_context,
                                              const std::optional<at::Tensor>& grad_attn, const at::Tensor& lse) {
  TORCH_CHECK(grad_context.sizes() == regions.sizes() && grad_context.scalar_type() == regions.scalar_type(),
              "word_region_attention_backward: grad_context must match regions (", regions.sizes(), ", ",
              regions.scalar_type(), "), got ", grad_context.sizes(), ", ", grad_context.scalar_type());
  if (grad_attn.has_value()) {
    TORCH_CHECK(grad_attn->dim() == 3 && grad_attn->size(0) == sizes.batch && grad_attn->size(1) == sizes.words &&
                    grad_attn->size(2) == sizes.regions && grad_attn->scalar_type() == regions.scalar_type(),
                "word_region_attention_backward: grad_attn must be [B, T, N] = [", sizes.batch, ", ", sizes.words,
                ", ", sizes.regions, "] of dtype ", regions.scalar_type(), ", got ", grad_attn->sizes());
  }
  TORCH_CHECK(lse.dim() == 2 && lse.size(0) == sizes.batch && lse.size(1) == sizes.regions &&
                  lse.scalar_type() == word_region_stats_type(regions.scalar_type()),
              "word_region_attention_backward: lse must be [B, N] = [", sizes.batch, ", ", sizes.regions,
              "] of the accumulation dtype, got ", lse.sizes(), ", ", lse.scalar_type());
}

}  // namespace t2ifast
