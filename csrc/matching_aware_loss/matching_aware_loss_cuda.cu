// CUDA kernel of t2ifast::matching_aware_loss: each logit is read once; its loss enters a sum and its
// gradient (sigmoid(x) - y) * scale is written in the same pass.
//
// Work split. The three pair groups are laid end to end, [real | wrong | fake], and this index space is
// cut into contiguous chunks, one per block: the grid has ceil(total / kElementsPerBlock) blocks, capped
// at kBlocksPerSm blocks per SM (so a huge input makes each block walk a longer chunk, not more blocks).
// A block walks the part of each group that its chunk covers (threads stride by kThreads) and sums each
// group's losses in the accumulation type (float; double for double inputs) with a fixed tree.
//
// Final values. Discriminator logits number a batch (64 to a few thousand per group), which fits in one
// block: that block writes loss and terms itself, so training sizes stay a single launch. With more than
// one block, each block writes its three group sums to a small buffer, partials[block][group], and a
// second one-block kernel on the same stream sums them in block order and writes the values. We chose
// the second kernel over "last block done" (threadfence + atomic counter) because the counter would have
// to be zeroed before every launch (a memset: an extra operation anyway) or live in a persistent buffer
// shared by launches on concurrent streams; a second launch needs neither, and only inputs of more than
// kElementsPerBlock logits pay for it.
//
// Determinism. No atomics: the split depends only on the group sizes and the device's SM count, each
// thread sums its elements in index order, block and partial sums use fixed trees, so a given input on a
// given device gives the same bits on every run (another GPU model may split differently).
#include "matching_aware_loss.h"

#include "../common/logit_math.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <tuple>

namespace t2ifast {
namespace {

constexpr int kThreads = 512;
constexpr int kWarpSize = 32;
// Elements per block before a second block is used: 32 per thread. Up to 16,384 logits in all (about
// 5,000 per group) run as one block and one launch.
constexpr int64_t kElementsPerBlock = int64_t{kThreads} * 32;
constexpr int kBlocksPerSm = 4;  // 4 blocks of 512 threads fill an SM's 2,048 threads
// Chunk lengths are multiples of this many elements, so a block's walk through a group starts as aligned
// as the group's offset in [real | wrong | fake] allows (on a 128-byte line in the real group).
constexpr int64_t kChunkAlign = 128;

template <typename acc_t>
struct GroupScalars {
  acc_t targets[kNumPairGroups];
  acc_t weights[kNumPairGroups];
  acc_t scales[kNumPairGroups];  // 1 / n for a mean over a non-empty group, else 1
};

template <typename scalar_t, typename acc_t>
struct GroupArgs {
  const scalar_t* logits[kNumPairGroups];
  scalar_t* grads[kNumPairGroups];
  int64_t numel[kNumPairGroups];
  int64_t begin[kNumPairGroups];  // where the group starts in [real | wrong | fake]
  int64_t total;                  // all logits
  int64_t chunk;                  // elements per block
  GroupScalars<acc_t> scalars;
};

// The sum of v over the block, in thread 0. Every thread of the block must call it.
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
  __syncthreads();  // shared is reused by the next call
  return v;
}

// values = [loss, L_real, L_wrong, L_fake] from the three groups' loss sums. Thread 0 only.
template <typename scalar_t, typename acc_t>
__device__ void write_values(const acc_t (&sums)[kNumPairGroups], const GroupScalars<acc_t>& s, scalar_t* values) {
  acc_t loss = 0;
  for (int k = 0; k < kNumPairGroups; ++k) {
    const acc_t term = sums[k] * s.scales[k];
    values[k + 1] = static_cast<scalar_t>(term);
    loss += s.weights[k] * term;
  }
  values[0] = static_cast<scalar_t>(loss);
}

// One block per chunk of [real | wrong | fake]. With one block it writes `values`; otherwise block b
// writes its group sums to partials[b * kNumPairGroups + k] and leaves `values` to the finish kernel.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
matching_aware_loss_kernel(GroupArgs<scalar_t, acc_t> args, acc_t* partials, scalar_t* values) {
  __shared__ acc_t shared[kThreads / kWarpSize];
  const int64_t chunk_begin = static_cast<int64_t>(blockIdx.x) * args.chunk;
  const int64_t chunk_end = ::min(chunk_begin + args.chunk, args.total);
  acc_t sums[kNumPairGroups];
  for (int k = 0; k < kNumPairGroups; ++k) {
    // The chunk's part of group k, in the group's own indices: empty (first >= last) when they miss.
    const int64_t n = args.numel[k];
    const int64_t first = ::min(::max(chunk_begin - args.begin[k], int64_t{0}), n);
    const int64_t last = ::min(::max(chunk_end - args.begin[k], int64_t{0}), n);
    const acc_t y = args.scalars.targets[k];
    const acc_t scale = args.scalars.scales[k];
    const scalar_t* logits = args.logits[k];
    scalar_t* grads = args.grads[k];
    acc_t partial = 0;
    for (int64_t i = first + threadIdx.x; i < last; i += kThreads) {
      const acc_t x = static_cast<acc_t>(logits[i]);
      partial += bce_with_logit(x, y);
      grads[i] = static_cast<scalar_t>((sigmoid(x) - y) * scale);
    }
    sums[k] = block_sum(partial, shared);  // outside any branch: every thread takes part
  }
  if (threadIdx.x == 0) {
    if (gridDim.x == 1) {
      write_values(sums, args.scalars, values);
    } else {
      for (int k = 0; k < kNumPairGroups; ++k) {
        partials[static_cast<int64_t>(blockIdx.x) * kNumPairGroups + k] = sums[k];
      }
    }
  }
}

// One block: sums the num_blocks partial sums of each group in block order (thread t takes blocks t,
// t + kThreads, ... in turn, then a fixed tree) and writes `values`.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
matching_aware_loss_finish_kernel(const acc_t* partials, int num_blocks, GroupScalars<acc_t> scalars,
                                  scalar_t* values) {
  __shared__ acc_t shared[kThreads / kWarpSize];
  acc_t sums[kNumPairGroups];
  for (int k = 0; k < kNumPairGroups; ++k) {
    acc_t partial = 0;
    for (int b = threadIdx.x; b < num_blocks; b += kThreads) {
      partial += partials[static_cast<int64_t>(b) * kNumPairGroups + k];
    }
    sums[k] = block_sum(partial, shared);
  }
  if (threadIdx.x == 0) write_values(sums, scalars, values);
}

// The device's SM count, asked of the driver once per device.
int multiprocessor_count(int device) {
  constexpr int kCachedDevices = 64;
  static std::array<std::atomic<int>, kCachedDevices> cache{};  // 0: not asked yet
  if (device >= 0 && device < kCachedDevices) {
    const int cached = cache[device].load(std::memory_order_relaxed);
    if (cached > 0) return cached;
  }
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  TORCH_CHECK(count > 0, "matching_aware_loss: device ", device, " reports ", count, " SMs");
  if (device >= 0 && device < kCachedDevices) cache[device].store(count, std::memory_order_relaxed);
  return count;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct Grid {
  int blocks;
  int64_t chunk;  // elements per block, a multiple of kChunkAlign; blocks * chunk >= total
};

// ceil(total / kElementsPerBlock) blocks, at least 1 and at most kBlocksPerSm per SM; the chunk is rounded
// up to kChunkAlign and the block count recomputed from it, so no block is left without elements.
Grid make_grid(int64_t total, int sm_count) {
  const int64_t max_blocks = int64_t{kBlocksPerSm} * sm_count;
  const int64_t wanted = std::clamp<int64_t>(ceil_div(total, kElementsPerBlock), 1, max_blocks);
  // at least kChunkAlign: not 0 when all three groups are empty
  const int64_t chunk = std::max<int64_t>(ceil_div(ceil_div(total, wanted), kChunkAlign), 1) * kChunkAlign;
  const int64_t blocks = std::max<int64_t>(ceil_div(total, chunk), 1);
  return {static_cast<int>(blocks), chunk};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> matching_aware_loss_cuda(
    const at::Tensor& s_real, const at::Tensor& s_wrong, const at::Tensor& s_fake,
    double real_target, bool average) {
  const c10::cuda::CUDAGuard device_guard(s_real.device());
  PairGroups groups = make_pair_groups(s_real, s_wrong, s_fake, real_target);
  at::Tensor values = at::empty({kNumPairGroups + 1}, s_real.options());
  std::array<at::Tensor, kNumPairGroups> grads;
  int64_t total = 0;
  for (int k = 0; k < kNumPairGroups; ++k) {
    grads[k] = at::empty_like(groups.logits[k]);
    total += groups.logits[k].numel();
  }
  const Grid grid = make_grid(total, multiprocessor_count(s_real.get_device()));
  // Partial sums in the accumulation type: float, double for double inputs.
  at::Tensor partials;
  if (grid.blocks > 1) {
    partials = at::empty({int64_t{grid.blocks} * kNumPairGroups},
                         s_real.options().dtype(at::toOpMathType(s_real.scalar_type())));
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s_real.scalar_type(), "matching_aware_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    GroupArgs<scalar_t, acc_t> args;
    int64_t begin = 0;
    for (int k = 0; k < kNumPairGroups; ++k) {
      const int64_t n = groups.logits[k].numel();
      args.logits[k] = groups.logits[k].const_data_ptr<scalar_t>();
      args.grads[k] = grads[k].mutable_data_ptr<scalar_t>();
      args.numel[k] = n;
      args.begin[k] = begin;
      begin += n;
      // in acc_t (double for double inputs): a float target 1 - smoothing would be off by ~1e-8
      args.scalars.targets[k] = static_cast<acc_t>(groups.targets[k]);
      args.scalars.weights[k] = static_cast<acc_t>(groups.weights[k]);
      args.scalars.scales[k] = (average && n > 0) ? acc_t(1) / static_cast<acc_t>(n) : acc_t(1);
    }
    args.total = total;
    args.chunk = grid.chunk;
    acc_t* partials_ptr = grid.blocks > 1 ? partials.mutable_data_ptr<acc_t>() : nullptr;
    scalar_t* values_ptr = values.mutable_data_ptr<scalar_t>();
    matching_aware_loss_kernel<scalar_t, acc_t><<<grid.blocks, kThreads, 0, stream>>>(args, partials_ptr, values_ptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (grid.blocks > 1) {
      matching_aware_loss_finish_kernel<scalar_t, acc_t><<<1, kThreads, 0, stream>>>(
          partials_ptr, grid.blocks, args.scalars, values_ptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {values, grads[0].view(s_real.sizes()), grads[1].view(s_wrong.sizes()), grads[2].view(s_fake.sizes())};
}

}  // namespace

TORCH_LIBRARY_IMPL(t2ifast, CUDA, m) {
  m.impl("matching_aware_loss", &matching_aware_loss_cuda);
}

}  // namespace t2ifast
