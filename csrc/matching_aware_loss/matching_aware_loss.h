// What the CPU and CUDA kernels of t2ifast::matching_aware_loss share: the three pair groups,
// their targets and the weights with which their terms enter the discriminator loss.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <array>

namespace t2ifast {

// The groups in the order of the schema: (real, right text), (real, wrong text), (fake, right text).
constexpr int kNumPairGroups = 3;

struct PairGroups {
  std::array<at::Tensor, kNumPairGroups> logits;   // contiguous
  std::array<double, kNumPairGroups> targets;      // 1 - smoothing, 0, 0
  std::array<double, kNumPairGroups> weights;      // weight of each term in the loss
};

// Checks the inputs and computes targets and weights. An empty group contributes a zero term;
// the wrong and fake terms share the negative half of the loss when both are present
// (L = L_real + (L_wrong + L_fake) / 2), else the one present has weight 1 (plain GAN).
inline PairGroups make_pair_groups(
    const at::Tensor& s_real, const at::Tensor& s_wrong, const at::Tensor& s_fake, double real_target) {
  const std::array<const at::Tensor*, kNumPairGroups> in = {&s_real, &s_wrong, &s_fake};
  const char* names[kNumPairGroups] = {"s_real", "s_wrong", "s_fake"};
  PairGroups g;
  for (int k = 0; k < kNumPairGroups; ++k) {
    TORCH_CHECK(in[k]->scalar_type() == s_real.scalar_type(), "matching_aware_loss: ", names[k],
                " has dtype ", in[k]->scalar_type(), " but s_real has ", s_real.scalar_type());
    TORCH_CHECK(in[k]->device() == s_real.device(), "matching_aware_loss: ", names[k], " is on ",
                in[k]->device(), " but s_real is on ", s_real.device());
    TORCH_CHECK(at::isFloatingType(in[k]->scalar_type()), "matching_aware_loss: ", names[k],
                " must be a floating-point tensor, got ", in[k]->scalar_type());
    g.logits[k] = in[k]->contiguous();
  }
  g.targets = {real_target, 0.0, 0.0};
  const bool has_wrong = s_wrong.numel() > 0;
  const bool has_fake = s_fake.numel() > 0;
  const double negative_weight = (has_wrong && has_fake) ? 0.5 : 1.0;
  g.weights = {1.0, negative_weight, negative_weight};
  return g;
}

}  // namespace t2ifast
