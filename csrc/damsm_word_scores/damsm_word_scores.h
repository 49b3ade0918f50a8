// What the kernels of t2ifast::damsm_word_scores share: argument checks and sizes.
//
// For image i (regions [D, N]) and caption j (words [D, T], lengths[j] valid words):
//   s[t, n] = words[:, t] . regions[:, n];  a = softmax over the valid t;  b = softmax over n of gamma1 * a;
//   context[:, t] = sum_n b[t, n] regions[:, n];  cos[t] = words[:, t] . context[:, t] / max(|w_t| |c_t|, eps);
//   score[i, j] = log sum_{valid t} exp(gamma2 * cos[t]).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace t2ifast {

// AttnGAN's cosine similarity clamps the product of the norms from below by this.
constexpr double kDamsmCosineEps = 1e-8;

struct DamsmSizes {
  int64_t captions;  // B
  int64_t images;    // M
  int64_t dim;       // D
  int64_t words;     // T
  int64_t regions;   // N
};

inline DamsmSizes check_damsm_inputs(const at::Tensor& words, const at::Tensor& lengths, const at::Tensor& regions) {
  TORCH_CHECK(words.dim() == 3, "damsm_word_scores: words must be [B, D, T], got shape ", words.sizes());
  TORCH_CHECK(regions.dim() == 3 && regions.size(1) == words.size(1), "damsm_word_scores: regions must be [M, D, N] = [M, ",
              words.size(1), ", N], got shape ", regions.sizes());
  TORCH_CHECK(at::isFloatingType(words.scalar_type()), "damsm_word_scores: words must be floating-point, got ",
              words.scalar_type());
  TORCH_CHECK(regions.scalar_type() == words.scalar_type(), "damsm_word_scores: regions has dtype ",
              regions.scalar_type(), " but words has ", words.scalar_type());
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == words.size(0) &&
                  (lengths.scalar_type() == at::kLong || lengths.scalar_type() == at::kInt),
              "damsm_word_scores: lengths must be an int32/int64 [B] = [", words.size(0), "] tensor, got ",
              lengths.scalar_type(), " of shape ", lengths.sizes());
  TORCH_CHECK(regions.device() == words.device() && lengths.device() == words.device(),
              "damsm_word_scores: words, lengths and regions must be on one device");
  return {words.size(0), regions.size(0), words.size(1), words.size(2), regions.size(2)};
}

}  // namespace t2ifast
