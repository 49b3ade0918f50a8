// CUDA kernel of t2ifast::matching_aware_loss. Discriminator logits number a batch (tens to a few
// thousand), so one block walks the three pair groups in turn: a single launch, no atomics, and a
// deterministic sum. Each logit is read once; its loss enters the block sum and its gradient is written.
#include "matching_aware_loss.h"

#include "../common/logit_math.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

namespace t2ifast {
namespace {

constexpr int kThreads = 512;
constexpr int kWarpSize = 32;

template <typename scalar_t>
struct GroupArgs {
  const scalar_t* logits[kNumPairGroups];
  scalar_t* grads[kNumPairGroups];
  int64_t numel[kNumPairGroups];
  float targets[kNumPairGroups];
  float weights[kNumPairGroups];
};

template <typename T>
__device__ T block_sum(T v, T* shared) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v += __shfl_down_sync(0xffffffff, v, offset);
  }
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / kWarpSize ? shared[threadIdx.x] : T(0);
  if (warp == 0) {
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      v += __shfl_down_sync(0xffffffff, v, offset);
    }
  }
  __syncthreads();  // shared is reused by the next group
  return v;       // the total, in thread 0
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
matching_aware_loss_kernel(GroupArgs<scalar_t> args, bool average, scalar_t* values) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t shared[kThreads / kWarpSize];
  acc_t loss = 0;
  for (int k = 0; k < kNumPairGroups; ++k) {
    const int64_t n = args.numel[k];
    const acc_t y = static_cast<acc_t>(args.targets[k]);
    const acc_t scale = (average && n > 0) ? acc_t(1) / static_cast<acc_t>(n) : acc_t(1);
    acc_t partial = 0;
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
      const acc_t x = static_cast<acc_t>(args.logits[k][i]);
      partial += bce_with_logit(x, y);
      args.grads[k][i] = static_cast<scalar_t>((sigmoid(x) - y) * scale);
    }
    const acc_t term = block_sum(partial, shared) * scale;
    if (threadIdx.x == 0) {
      values[k + 1] = static_cast<scalar_t>(term);
      loss += static_cast<acc_t>(args.weights[k]) * term;
    }
  }
  if (threadIdx.x == 0) values[0] = static_cast<scalar_t>(loss);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> matching_aware_loss_cuda(
    const at::Tensor& s_real, const at::Tensor& s_wrong, const at::Tensor& s_fake,
    double real_target, bool average) {
  const c10::cuda::CUDAGuard device_guard(s_real.device());
  PairGroups groups = make_pair_groups(s_real, s_wrong, s_fake, real_target);
  at::Tensor values = at::empty({kNumPairGroups + 1}, s_real.options());
  std::array<at::Tensor, kNumPairGroups> grads;
  for (int k = 0; k < kNumPairGroups; ++k) {
    grads[k] = at::empty_like(groups.logits[k]);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s_real.scalar_type(), "matching_aware_loss_cuda", [&] {
    GroupArgs<scalar_t> args;
    for (int k = 0; k < kNumPairGroups; ++k) {
      args.logits[k] = groups.logits[k].const_data_ptr<scalar_t>();
      args.grads[k] = grads[k].mutable_data_ptr<scalar_t>();
      args.numel[k] = groups.logits[k].numel();
      args.targets[k] = static_cast<float>(groups.targets[k]);
      args.weights[k] = static_cast<float>(groups.weights[k]);
    }
    matching_aware_loss_kernel<scalar_t><<<1, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        args, average, values.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {values, grads[0].view(s_real.sizes()), grads[1].view(s_wrong.sizes()), grads[2].view(s_fake.sizes())};
}

}  // namespace

TORCH_LIBRARY_IMPL(t2ifast, CUDA, m) {
  m.impl("matching_aware_loss", &matching_aware_loss_cuda);
}

}  // namespace t2ifast
