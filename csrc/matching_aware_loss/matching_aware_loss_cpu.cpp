// CPU kernel of t2ifast::matching_aware_loss: one pass over each pair group computes its loss term
// and the per-logit gradient of that term, so backward is a scale of what is saved here.
#include "matching_aware_loss.h"

#include "../common/logit_math.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <tuple>

namespace t2ifast {
namespace {

template <typename scalar_t>
void matching_aware_loss_cpu_kernel(const PairGroups& groups, bool average,
                                    scalar_t* values, std::array<at::Tensor, kNumPairGroups>& grads) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t loss = 0;
  for (int k = 0; k < kNumPairGroups; ++k) {
    const scalar_t* s = groups.logits[k].const_data_ptr<scalar_t>();
    scalar_t* g = grads[k].mutable_data_ptr<scalar_t>();
    const int64_t n = groups.logits[k].numel();
    const acc_t y = static_cast<acc_t>(groups.targets[k]);
    const acc_t scale = (average && n > 0) ? acc_t(1) / static_cast<acc_t>(n) : acc_t(1);
    acc_t sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      const acc_t x = static_cast<acc_t>(s[i]);
      sum += bce_with_logit(x, y);
      g[i] = static_cast<scalar_t>((sigmoid(x) - y) * scale);
    }
    const acc_t term = sum * scale;
    values[k + 1] = static_cast<scalar_t>(term);
    loss += static_cast<acc_t>(groups.weights[k]) * term;
  }
  values[0] = static_cast<scalar_t>(loss);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> matching_aware_loss_cpu(
    const at::Tensor& s_real, const at::Tensor& s_wrong, const at::Tensor& s_fake,
    double real_target, bool average) {
  PairGroups groups = make_pair_groups(s_real, s_wrong, s_fake, real_target);
  at::Tensor values = at::empty({kNumPairGroups + 1}, s_real.options());
  std::array<at::Tensor, kNumPairGroups> grads;
  for (int k = 0; k < kNumPairGroups; ++k) {
    grads[k] = at::empty_like(groups.logits[k]);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s_real.scalar_type(), "matching_aware_loss_cpu", [&] {
    matching_aware_loss_cpu_kernel<scalar_t>(groups, average, values.mutable_data_ptr<scalar_t>(), grads);
  });
  return {values, grads[0].view(s_real.sizes()), grads[1].view(s_wrong.sizes()), grads[2].view(s_fake.sizes())};
}

}  // namespace

TORCH_LIBRARY_IMPL(t2ifast, CPU, m) {
  m.impl("matching_aware_loss", &matching_aware_loss_cpu);
}

}  // namespace t2ifast
