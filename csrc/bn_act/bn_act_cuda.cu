// CUDA kernels of the fused BatchNorm + activation ops. Generator layers have few channels (64..1024)
// and many elements per channel (N*H*W up to millions), so each per-channel reduction is cut into slices:
// a grid of (channel, slice) blocks writes partial results, and a small kernel merges the slices of each
// channel in a fixed order (deterministic, no atomics). Passes:
//   training forward: partial Welford statistics -> merge (+ running-stat update) -> act((y-mean)*scale+beta)
//   backward:         partial sums of dL/dz and dL/dz*(y-mean) -> merge (+ grad_weight/grad_bias) -> grad_y
// dL/dz is recomputed from y and the per-channel scale/shift: the BatchNorm output is never stored.
// Small layers (few elements per channel, as in a DCGAN generator's first layers) are bound by launches, not
// bytes: there one block per (output) channel does the whole op in one launch, statistics then output (or
// sums then grad_y), re-reading its channel from L2, in place of the three (forward) and four (backward)
// launches of the sliced path.
#include "bn_act.h"

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
#include <string_view>
#include <tuple>

namespace t2ifast {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpSize = 32;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kMergeThreads = 128;
constexpr int64_t kMinPerThread = 8;  // elements each thread of a slice handles at least
// Elements per channel up to which one block per channel runs the whole op (single_block_* kernels).
constexpr int64_t kSingleBlockMaxCount = 16384;

// Slices per channel: enough blocks to fill the GPU (a few per SM), never so many that a thread has
// fewer than kMinPerThread elements.
int64_t num_slices(int64_t count, int64_t channels, const at::Tensor& like) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, like.get_device()));
  const int64_t wanted = std::max<int64_t>(1, (4 * static_cast<int64_t>(sms) + channels - 1) / std::max<int64_t>(channels, 1));
  const int64_t most = std::max<int64_t>(1, count / (kThreads * kMinPerThread));
  return std::min(wanted, most);
}

// Index arithmetic runs in int32 when every offset fits (divisions by runtime values are several times
// cheaper than in int64), else in int64: see use_int32_indexing.
bool use_int32_indexing(const at::Tensor& t) {
  // grid-stride loops step past the end by at most the grid size (< 2^28 threads): stay below 2^31 - 1.
  return t.numel() < (int64_t(1) << 30);
}

// Offset of the element j (in [0, N*L)) of channel c of a [N, C, L] tensor.
template <typename index_t>
__device__ __forceinline__ index_t channel_offset(index_t j, index_t c, index_t C, index_t L) {
  const index_t n = j / L;
  return (n * C + c) * L + (j - n * L);
}

template <typename T>
__device__ __forceinline__ T shfl_down(T v, int offset) {
  return __shfl_down_sync(0xffffffff, v, offset);
}

// Block-wide Chan merge of per-thread (count, mean, M2); the result is valid in thread 0.
template <typename T>
__device__ void block_welford(T& count, T& mean, T& m2) {
  __shared__ T s_count[kWarps], s_mean[kWarps], s_m2[kWarps];
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    welford_merge(count, mean, m2, shfl_down(count, offset), shfl_down(mean, offset), shfl_down(m2, offset));
  }
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  if (lane == 0) {
    s_count[warp] = count;
    s_mean[warp] = mean;
    s_m2[warp] = m2;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarps; ++w) welford_merge(count, mean, m2, s_count[w], s_mean[w], s_m2[w]);
  }
}

// Block-wide sum; the result is valid in thread 0.
template <typename T>
__device__ T block_sum(T v) {
  __shared__ T shared[kWarps];
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += shfl_down(v, offset);
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  __syncthreads();  // shared may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarps; ++w) v += shared[w];
  }
  return v;
}

// This thread's Welford statistics of elements begin, begin + kThreads, ... < end of channel c.
template <typename scalar_t, typename acc_t, typename index_t>
__device__ void thread_welford(const scalar_t* __restrict__ y, index_t c, index_t C, index_t L, index_t begin,
                               index_t end, acc_t& count, acc_t& mean, acc_t& m2) {
  count = mean = m2 = 0;
  for (index_t j = begin + threadIdx.x; j < end; j += kThreads) {
    const acc_t x = static_cast<acc_t>(y[channel_offset(j, c, C, L)]);
    count += acc_t(1);
    const acc_t delta = x - mean;
    mean += delta / count;
    m2 += delta * (x - mean);
  }
}

// The per-channel affine map before the activation: z = (y - center) * scale + shift.
template <typename acc_t>
struct ChannelAffine {
  acc_t center, scale, shift;
  __device__ __forceinline__ acc_t operator()(acc_t y) const { return (y - center) * scale + shift; }
};

// The output of one element: act(a(ya)), or for GLU a(ya) * sigmoid(b(yb)) with yb from the pair channel.
template <typename acc_t>
__device__ __forceinline__ acc_t activated(acc_t ya, acc_t yb, const ChannelAffine<acc_t>& a,
                                           const ChannelAffine<acc_t>& b, Activation act, acc_t slope) {
  if (act == Activation::Glu) return a(ya) * sigmoid_of(b(yb));
  return activate(a(ya), act, slope);
}

// dL/dz of one element (ga) and of its GLU pair (gb; 0 for the other activations), recomputed from y.
template <typename acc_t>
__device__ __forceinline__ void recomputed_dz(acc_t g, acc_t ya, acc_t yb, const ChannelAffine<acc_t>& a,
                                              const ChannelAffine<acc_t>& b, Activation act, acc_t slope, acc_t& ga,
                                              acc_t& gb) {
  if (act == Activation::Glu) {
    glu_grad(g, a(ya), b(yb), ga, gb);
  } else {
    ga = activation_grad(g, a(ya), act, slope);
    gb = 0;
  }
}

// grid (C, slices): partial[c, s] = (count, mean, M2) of channel c over its slice s of the N*L elements.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
stats_partial_kernel(const scalar_t* __restrict__ y, acc_t* __restrict__ partial, index_t C, index_t L, index_t M,
                     index_t chunk) {
  const index_t c = blockIdx.x;
  const index_t s = blockIdx.y;
  const index_t begin = s * chunk;
  const index_t end = begin + chunk < M ? begin + chunk : M;
  acc_t count, mean, m2;
  thread_welford<scalar_t, acc_t, index_t>(y, c, C, L, begin, end, count, mean, m2);
  block_welford(count, mean, m2);
  if (threadIdx.x == 0) {
    acc_t* out = partial + (static_cast<int64_t>(c) * gridDim.y + s) * 3;
    out[0] = count;
    out[1] = mean;
    out[2] = m2;
  }
}

// A channel's statistics done: saves mean / invstd, updates the running statistics (momentum, unbiased variance)
// and returns (mean, scale, shift) of z = (y - mean) * scale + shift through params[0..2]. One thread per channel.
template <typename scalar_t, typename acc_t>
__device__ void finish_channel_stats(int64_t c, acc_t count, acc_t mean, acc_t m2, const scalar_t* __restrict__ gamma,
                                     const scalar_t* __restrict__ beta, scalar_t* __restrict__ running_mean,
                                     scalar_t* __restrict__ running_var, acc_t* __restrict__ save_mean,
                                     acc_t* __restrict__ save_invstd, double momentum, double eps, acc_t* params) {
  const acc_t invstd = acc_t(1) / ::sqrt(m2 / count + static_cast<acc_t>(eps));
  save_mean[c] = mean;
  save_invstd[c] = invstd;
  const acc_t m = static_cast<acc_t>(momentum);
  running_mean[c] = static_cast<scalar_t>((acc_t(1) - m) * static_cast<acc_t>(running_mean[c]) + m * mean);
  running_var[c] =
      static_cast<scalar_t>((acc_t(1) - m) * static_cast<acc_t>(running_var[c]) + m * m2 / (count - acc_t(1)));
  params[0] = mean;
  params[1] = static_cast<acc_t>(gamma[c]) * invstd;
  params[2] = static_cast<acc_t>(beta[c]);
}

// One thread per channel: merge the slices, save mean/invstd, form scale/shift, update the running stats.
template <typename scalar_t, typename acc_t>
__global__ void stats_merge_kernel(const acc_t* __restrict__ partial, int64_t slices, const scalar_t* __restrict__ gamma,
                                   const scalar_t* __restrict__ beta, scalar_t* __restrict__ running_mean,
                                   scalar_t* __restrict__ running_var, acc_t* __restrict__ save_mean,
                                   acc_t* __restrict__ save_invstd, acc_t* __restrict__ scale, acc_t* __restrict__ shift,
                                   int64_t C, double momentum, double eps) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  acc_t count = 0, mean = 0, m2 = 0;
  for (int64_t s = 0; s < slices; ++s) {
    const acc_t* p = partial + (c * slices + s) * 3;
    welford_merge(count, mean, m2, p[0], p[1], p[2]);
  }
  acc_t params[3];
  finish_channel_stats<scalar_t, acc_t>(c, count, mean, m2, gamma, beta, running_mean, running_var, save_mean,
                                        save_invstd, momentum, eps, params);
  scale[c] = params[1];
  shift[c] = params[2];  // z = (y - mean) * scale + beta: centred first, exact for |mean| >> std
}

// out[n, c, l] = act((y[n, c, l] - center[c]) * scale[c] + shift[c]); GLU reads channels c and c + C_out.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
affine_act_kernel(const scalar_t* __restrict__ y, const acc_t* __restrict__ scale, const acc_t* __restrict__ shift,
                  const acc_t* __restrict__ center, scalar_t* __restrict__ out, index_t C, index_t C_out, index_t L,
                  index_t total, Activation act, acc_t slope) {
  for (index_t i = blockIdx.x * static_cast<index_t>(kThreads) + threadIdx.x; i < total;
       i += static_cast<index_t>(gridDim.x) * kThreads) {
    const index_t row = i / L;
    const index_t pos = i - row * L;
    const index_t n = row / C_out;
    const index_t c = row - n * C_out;
    const index_t a_offset = (n * C + c) * L + pos;
    const bool glu = act == Activation::Glu;
    const index_t cb = glu ? c + C_out : c;
    const ChannelAffine<acc_t> a{center[c], scale[c], shift[c]}, b{center[cb], scale[cb], shift[cb]};
    const acc_t yb = glu ? static_cast<acc_t>(y[a_offset + C_out * L]) : acc_t(0);
    out[i] = static_cast<scalar_t>(activated(static_cast<acc_t>(y[a_offset]), yb, a, b, act, slope));
  }
}

// The block's sums of dL/dz and dL/dz * (y - center) over elements begin, begin + 1, ... < end of channel c (a) and,
// for GLU, of its pair c + C_out (b); valid in thread 0, as block_sum's.
template <typename acc_t>
struct GradSums {
  acc_t dz_a, dzy_a, dz_b, dzy_b;
};

template <typename scalar_t, typename acc_t, typename index_t>
__device__ GradSums<acc_t> block_grad_sums(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ y,
                                           index_t c, index_t C, index_t C_out, index_t L, index_t begin, index_t end,
                                           const ChannelAffine<acc_t>& a, const ChannelAffine<acc_t>& b,
                                           Activation act, acc_t slope) {
  const bool glu = act == Activation::Glu;
  GradSums<acc_t> sums{0, 0, 0, 0};
  for (index_t j = begin + threadIdx.x; j < end; j += kThreads) {
    const acc_t g = static_cast<acc_t>(grad_out[channel_offset(j, c, C_out, L)]);
    const index_t a_offset = channel_offset(j, c, C, L);
    const acc_t ya = static_cast<acc_t>(y[a_offset]);
    const acc_t yb = glu ? static_cast<acc_t>(y[a_offset + C_out * L]) : acc_t(0);
    acc_t ga, gb;
    recomputed_dz(g, ya, yb, a, b, act, slope, ga, gb);
    sums.dz_a += ga;
    sums.dzy_a += ga * (ya - a.center);
    sums.dz_b += gb;
    sums.dzy_b += gb * (yb - b.center);
  }
  sums.dz_a = block_sum(sums.dz_a);
  sums.dzy_a = block_sum(sums.dzy_a);
  if (glu) {
    sums.dz_b = block_sum(sums.dz_b);
    sums.dzy_b = block_sum(sums.dzy_b);
  }
  return sums;
}

// grid (C_out, slices): partial[c, s] = (sum dL/dz, sum dL/dz * (y - center)); GLU blocks also do c + C_out.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
backward_sums_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ y,
                     const acc_t* __restrict__ scale, const acc_t* __restrict__ shift, const acc_t* __restrict__ center,
                     acc_t* __restrict__ partial, index_t C, index_t C_out, index_t L, index_t M, index_t chunk,
                     Activation act, acc_t slope) {
  const index_t c = blockIdx.x;
  const index_t cb = c + C_out;
  const index_t s = blockIdx.y;
  const index_t begin = s * chunk;
  const index_t end = begin + chunk < M ? begin + chunk : M;
  const bool glu = act == Activation::Glu;
  const ChannelAffine<acc_t> a{center[c], scale[c], shift[c]};
  const ChannelAffine<acc_t> b = glu ? ChannelAffine<acc_t>{center[cb], scale[cb], shift[cb]} : a;
  const GradSums<acc_t> sums = block_grad_sums(grad_out, y, c, C, C_out, L, begin, end, a, b, act, slope);
  if (threadIdx.x == 0) {
    acc_t* out = partial + (static_cast<int64_t>(c) * gridDim.y + s) * 2;
    out[0] = sums.dz_a;
    out[1] = sums.dzy_a;
    if (glu) {
      acc_t* out_b = partial + (static_cast<int64_t>(cb) * gridDim.y + s) * 2;
      out_b[0] = sums.dz_b;
      out_b[1] = sums.dzy_b;
    }
  }
}

// The coefficients of BatchNorm's grad_y = scale * dz - alpha - beta * (y - mean) from a channel's sums of dz and
// dz * (y - mean): alpha = scale * sum_dz / M, beta = scale * invstd^2 * sum_dzy / M.
template <typename acc_t>
__device__ __forceinline__ void batch_norm_grad_coefficients(acc_t scale, acc_t invstd, acc_t sum_dz, acc_t sum_dzy,
                                                             acc_t inv_count, acc_t& alpha, acc_t& beta) {
  alpha = scale * sum_dz * inv_count;
  beta = scale * invstd * invstd * sum_dzy * inv_count;
}

// One thread per channel: sum the slices; gradients of the per-channel parameters and the coefficients
// of grad_y = scale * dz - alpha - beta * (y - center).
//   BatchNorm (batch_norm = true): grad_weight = invstd * sum_dzy, grad_bias = sum_dz,
//     alpha = scale * sum_dz / M, beta = scale * invstd^2 * sum_dzy / M;
//   affine map: grad_scale = sum_dzy, grad_shift = sum_dz, alpha = beta = 0.
template <typename scalar_t, typename acc_t>
__global__ void backward_merge_kernel(const acc_t* __restrict__ partial, int64_t slices, const acc_t* __restrict__ scale,
                                      const acc_t* __restrict__ invstd, bool batch_norm, int64_t C, int64_t M,
                                      scalar_t* __restrict__ grad_first, scalar_t* __restrict__ grad_second,
                                      acc_t* __restrict__ alpha, acc_t* __restrict__ beta) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  acc_t sum_dz = 0, sum_dzy = 0;
  for (int64_t s = 0; s < slices; ++s) {
    sum_dz += partial[(c * slices + s) * 2];
    sum_dzy += partial[(c * slices + s) * 2 + 1];
  }
  grad_second[c] = static_cast<scalar_t>(sum_dz);
  if (batch_norm) {
    const acc_t inv_count = acc_t(1) / static_cast<acc_t>(M);
    grad_first[c] = static_cast<scalar_t>(sum_dzy * invstd[c]);
    batch_norm_grad_coefficients(scale[c], invstd[c], sum_dz, sum_dzy, inv_count, alpha[c], beta[c]);
  } else {
    grad_first[c] = static_cast<scalar_t>(sum_dzy);
    alpha[c] = 0;
    beta[c] = 0;
  }
}

// grad_y from the merged coefficients; one thread per output element (GLU writes both channels).
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
backward_elementwise_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ y,
                            const acc_t* __restrict__ scale, const acc_t* __restrict__ shift,
                            const acc_t* __restrict__ center, const acc_t* __restrict__ alpha,
                            const acc_t* __restrict__ beta, scalar_t* __restrict__ grad_y, index_t C, index_t C_out,
                            index_t L, index_t total, Activation act, acc_t slope) {
  for (index_t i = blockIdx.x * static_cast<index_t>(kThreads) + threadIdx.x; i < total;
       i += static_cast<index_t>(gridDim.x) * kThreads) {
    const index_t row = i / L;
    const index_t pos = i - row * L;
    const index_t n = row / C_out;
    const index_t c = row - n * C_out;
    const index_t a_offset = (n * C + c) * L + pos;
    const bool glu = act == Activation::Glu;
    const index_t cb = glu ? c + C_out : c;
    const index_t b_offset = a_offset + C_out * L;
    const ChannelAffine<acc_t> a{center[c], scale[c], shift[c]}, b{center[cb], scale[cb], shift[cb]};
    const acc_t ya = static_cast<acc_t>(y[a_offset]);
    const acc_t yb = glu ? static_cast<acc_t>(y[b_offset]) : acc_t(0);
    acc_t ga, gb;
    recomputed_dz(static_cast<acc_t>(grad_out[i]), ya, yb, a, b, act, slope, ga, gb);
    if (glu) grad_y[b_offset] = static_cast<scalar_t>(b.scale * gb - alpha[cb] - beta[cb] * (yb - b.center));
    grad_y[a_offset] = static_cast<scalar_t>(a.scale * ga - alpha[c] - beta[c] * (ya - a.center));
  }
}

// Welford statistics of channel c over its M elements, in thread 0; every thread must call it.
template <typename scalar_t, typename acc_t, typename index_t>
__device__ void channel_welford(const scalar_t* __restrict__ y, index_t c, index_t C, index_t L, index_t M,
                                acc_t& count, acc_t& mean, acc_t& m2) {
  thread_welford<scalar_t, acc_t, index_t>(y, c, C, L, index_t(0), M, count, mean, m2);
  block_welford(count, mean, m2);
  __syncthreads();  // block_welford's shared arrays are free for the next call
}

// Training forward of small layers, grid (C_out): block c computes the statistics of channel c (and of its GLU
// pair c + C_out), then writes out[:, c]. Same results as stats_partial -> stats_merge -> affine_act.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
single_block_forward_kernel(const scalar_t* __restrict__ y, const scalar_t* __restrict__ gamma,
                            const scalar_t* __restrict__ beta, scalar_t* __restrict__ running_mean,
                            scalar_t* __restrict__ running_var, acc_t* __restrict__ save_mean,
                            acc_t* __restrict__ save_invstd, scalar_t* __restrict__ out, index_t C, index_t C_out,
                            index_t L, index_t M, double momentum, double eps, Activation act, acc_t slope) {
  __shared__ acc_t params[6];  // (mean, scale, shift) of channel c, then of its GLU pair
  const bool glu = act == Activation::Glu;
  const index_t c = blockIdx.x;
  const index_t pair[2] = {c, c + C_out};
  for (int k = 0; k < (glu ? 2 : 1); ++k) {
    acc_t count, mean, m2;
    channel_welford<scalar_t, acc_t, index_t>(y, pair[k], C, L, M, count, mean, m2);
    if (threadIdx.x == 0) {
      finish_channel_stats<scalar_t, acc_t>(pair[k], count, mean, m2, gamma, beta, running_mean, running_var,
                                            save_mean, save_invstd, momentum, eps, params + 3 * k);
    }
  }
  __syncthreads();
  const ChannelAffine<acc_t> a{params[0], params[1], params[2]};
  const ChannelAffine<acc_t> b = glu ? ChannelAffine<acc_t>{params[3], params[4], params[5]} : a;
  for (index_t j = threadIdx.x; j < M; j += kThreads) {
    const index_t a_offset = channel_offset(j, c, C, L);
    const acc_t yb = glu ? static_cast<acc_t>(y[a_offset + C_out * L]) : acc_t(0);
    out[channel_offset(j, c, C_out, L)] =
        static_cast<scalar_t>(activated(static_cast<acc_t>(y[a_offset]), yb, a, b, act, slope));
  }
}

// Backward of small layers, grid (C_out): block c sums dL/dz and dL/dz * (y - mean) over channel c (and its GLU
// pair), writes grad_weight / grad_bias, then grad_y. Same results as backward_sums -> merge -> elementwise.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
single_block_backward_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ y,
                             const scalar_t* __restrict__ gamma, const scalar_t* __restrict__ beta,
                             const acc_t* __restrict__ mean, const acc_t* __restrict__ invstd,
                             scalar_t* __restrict__ grad_y, scalar_t* __restrict__ grad_weight,
                             scalar_t* __restrict__ grad_bias, index_t C, index_t C_out, index_t L, index_t M,
                             Activation act, acc_t slope) {
  __shared__ acc_t coefficients[4];  // (alpha, beta) of grad_y = scale * dz - alpha - beta * (y - mean), a then b
  const bool glu = act == Activation::Glu;
  const index_t c = blockIdx.x;
  const index_t cb = glu ? c + C_out : c;
  const ChannelAffine<acc_t> a{mean[c], static_cast<acc_t>(gamma[c]) * invstd[c], static_cast<acc_t>(beta[c])};
  const ChannelAffine<acc_t> b{mean[cb], static_cast<acc_t>(gamma[cb]) * invstd[cb], static_cast<acc_t>(beta[cb])};
  const GradSums<acc_t> sums = block_grad_sums(grad_out, y, c, C, C_out, L, index_t(0), M, a, b, act, slope);
  if (threadIdx.x == 0) {
    const acc_t inv_count = acc_t(1) / static_cast<acc_t>(M);
    grad_weight[c] = static_cast<scalar_t>(sums.dzy_a * invstd[c]);
    grad_bias[c] = static_cast<scalar_t>(sums.dz_a);
    batch_norm_grad_coefficients(a.scale, invstd[c], sums.dz_a, sums.dzy_a, inv_count, coefficients[0],
                                 coefficients[1]);
    if (glu) {
      grad_weight[cb] = static_cast<scalar_t>(sums.dzy_b * invstd[cb]);
      grad_bias[cb] = static_cast<scalar_t>(sums.dz_b);
      batch_norm_grad_coefficients(b.scale, invstd[cb], sums.dz_b, sums.dzy_b, inv_count, coefficients[2],
                                   coefficients[3]);
    }
  }
  __syncthreads();
  for (index_t j = threadIdx.x; j < M; j += kThreads) {
    const index_t a_offset = channel_offset(j, c, C, L);
    const acc_t ya = static_cast<acc_t>(y[a_offset]);
    const acc_t yb = glu ? static_cast<acc_t>(y[a_offset + C_out * L]) : acc_t(0);
    acc_t ga, gb;
    recomputed_dz(static_cast<acc_t>(grad_out[channel_offset(j, c, C_out, L)]), ya, yb, a, b, act, slope, ga, gb);
    grad_y[a_offset] = static_cast<scalar_t>(a.scale * ga - coefficients[0] - coefficients[1] * (ya - a.center));
    if (glu) {
      grad_y[a_offset + C_out * L] =
          static_cast<scalar_t>(b.scale * gb - coefficients[2] - coefficients[3] * (yb - b.center));
    }
  }
}

// Whether one block per channel runs the op: few elements per channel, or too many channels to slice them.
bool use_single_block(int64_t count, int64_t channels, const at::Tensor& like) {
  return count > 0 && channels > 0 && (count <= kSingleBlockMaxCount || num_slices(count, channels, like) == 1);
}

int64_t elementwise_blocks(int64_t total) {
  return std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t(1) << 20));
}

int64_t merge_blocks(int64_t channels) { return (channels + kMergeThreads - 1) / kMergeThreads; }

template <typename scalar_t, typename acc_t>
void launch_affine_act(const at::Tensor& y, const at::Tensor& scale, const at::Tensor& shift, const at::Tensor& center,
                       at::Tensor& out,
                       const ChannelLayout& lay, Activation act, double slope) {
  const int64_t total = out.numel();
  if (total == 0) return;
  const auto launch = [&](auto index_zero) {
    using index_t = decltype(index_zero);
    affine_act_kernel<scalar_t, acc_t, index_t>
        <<<elementwise_blocks(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            y.const_data_ptr<scalar_t>(), scale.const_data_ptr<acc_t>(), shift.const_data_ptr<acc_t>(),
            center.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), static_cast<index_t>(lay.channels),
            static_cast<index_t>(lay.out_channels), static_cast<index_t>(lay.inner), static_cast<index_t>(total), act,
            static_cast<acc_t>(slope));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (use_int32_indexing(y)) {
    launch(int32_t{0});
  } else {
    launch(int64_t{0});
  }
}

// The shared backward: sums, merge (writing grad_first/grad_second), grad_y.
template <typename scalar_t, typename acc_t>
void launch_backward(const at::Tensor& grad_out, const at::Tensor& y, const at::Tensor& scale, const at::Tensor& shift,
                     const at::Tensor& center, const at::Tensor& invstd, bool batch_norm, at::Tensor& grad_y,
                     at::Tensor& grad_first, at::Tensor& grad_second, const ChannelLayout& lay, Activation act,
                     double slope) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t M = lay.count();
  const int64_t slices = M == 0 ? 1 : num_slices(M, lay.out_channels, y);
  const int64_t chunk = M == 0 ? 1 : (M + slices - 1) / slices;
  const auto acc_options = y.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  at::Tensor partial = at::empty({lay.channels, slices, 2}, acc_options);
  at::Tensor alpha = at::empty({lay.channels}, acc_options);
  at::Tensor beta = at::empty({lay.channels}, acc_options);
  const bool int32 = use_int32_indexing(y);
  const auto launch_sums = [&](auto index_zero) {
    using index_t = decltype(index_zero);
    backward_sums_kernel<scalar_t, acc_t, index_t><<<dim3(lay.out_channels, slices), kThreads, 0, stream>>>(
        grad_out.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), scale.const_data_ptr<acc_t>(),
        shift.const_data_ptr<acc_t>(), center.const_data_ptr<acc_t>(), partial.mutable_data_ptr<acc_t>(),
        static_cast<index_t>(lay.channels), static_cast<index_t>(lay.out_channels), static_cast<index_t>(lay.inner),
        static_cast<index_t>(M), static_cast<index_t>(chunk), act, static_cast<acc_t>(slope));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (lay.out_channels > 0) {
    if (int32) {
      launch_sums(int32_t{0});
    } else {
      launch_sums(int64_t{0});
    }
    backward_merge_kernel<scalar_t, acc_t><<<merge_blocks(lay.channels), kMergeThreads, 0, stream>>>(
        partial.const_data_ptr<acc_t>(), slices, scale.const_data_ptr<acc_t>(), invstd.const_data_ptr<acc_t>(),
        batch_norm, lay.channels, M, grad_first.mutable_data_ptr<scalar_t>(), grad_second.mutable_data_ptr<scalar_t>(),
        alpha.mutable_data_ptr<acc_t>(), beta.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const int64_t total = grad_out.numel();
  if (total == 0) return;
  const auto launch_elementwise = [&](auto index_zero) {
    using index_t = decltype(index_zero);
    backward_elementwise_kernel<scalar_t, acc_t, index_t><<<elementwise_blocks(total), kThreads, 0, stream>>>(
        grad_out.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), scale.const_data_ptr<acc_t>(),
        shift.const_data_ptr<acc_t>(), center.const_data_ptr<acc_t>(), alpha.const_data_ptr<acc_t>(),
        beta.const_data_ptr<acc_t>(), grad_y.mutable_data_ptr<scalar_t>(), static_cast<index_t>(lay.channels),
        static_cast<index_t>(lay.out_channels), static_cast<index_t>(lay.inner), static_cast<index_t>(total), act,
        static_cast<acc_t>(slope));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (int32) {
    launch_elementwise(int32_t{0});
  } else {
    launch_elementwise(int64_t{0});
  }
}

// Per-channel scale/shift of the backward of BatchNorm: z = (y - mean) * scale + shift, scale = gamma * invstd,
// shift = beta.
template <typename scalar_t, typename acc_t>
__global__ void bn_scale_shift_kernel(const scalar_t* __restrict__ gamma, const scalar_t* __restrict__ beta,
                                      const acc_t* __restrict__ mean, const acc_t* __restrict__ invstd,
                                      acc_t* __restrict__ scale, acc_t* __restrict__ shift, int64_t C) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  const acc_t sc = static_cast<acc_t>(gamma[c]) * invstd[c];
  scale[c] = sc;
  shift[c] = static_cast<acc_t>(beta[c]);
}

// Per-channel parameters of affine_act converted to the accumulator type (and a zero centre).
template <typename scalar_t, typename acc_t>
__global__ void affine_params_kernel(const scalar_t* __restrict__ scale_in, const scalar_t* __restrict__ shift_in,
                                     acc_t* __restrict__ scale, acc_t* __restrict__ shift, acc_t* __restrict__ zeros,
                                     int64_t C) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  scale[c] = static_cast<acc_t>(scale_in[c]);
  shift[c] = static_cast<acc_t>(shift_in[c]);
  zeros[c] = acc_t(0);
}

Activation activation_of(c10::string_view name) { return parse_activation(std::string_view(name.data(), name.size())); }

// ---- ops ------------------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_train_cuda(const at::Tensor& y_in, const at::Tensor& weight,
                                                                 const at::Tensor& bias, at::Tensor& running_mean,
                                                                 at::Tensor& running_var, double momentum, double eps,
                                                                 c10::string_view act_name, double slope) {
  const c10::cuda::CUDAGuard device_guard(y_in.device());
  const Activation act = activation_of(act_name);
  const ChannelLayout lay = check_bn_act_args(y_in, weight, bias, running_mean, running_var, act, "bn_act_train",
                                              "running_mean", "running_var");
  TORCH_CHECK(running_mean.scalar_type() == y_in.scalar_type() && running_var.scalar_type() == y_in.scalar_type(),
              "bn_act_train: running_mean and running_var must have the dtype of y (", y_in.scalar_type(), ")");
  TORCH_CHECK(running_mean.is_contiguous() && running_var.is_contiguous(),
              "bn_act_train: running_mean and running_var must be contiguous (they are updated in place)");
  const int64_t M = lay.count();
  TORCH_CHECK(M > 1, "bn_act_train: expected more than 1 value per channel when training, got y of size ",
              y_in.sizes());
  const at::Tensor y = y_in.contiguous();
  const at::Tensor w = weight.contiguous();
  const at::Tensor b = bias.contiguous();
  at::Tensor out = at::empty(output_sizes(y, lay), y.options());
  const auto stats_options = y.options().dtype(stats_dtype(y));
  at::Tensor save_mean = at::empty({lay.channels}, stats_options);
  at::Tensor save_invstd = at::empty({lay.channels}, stats_options);
  if (use_single_block(M, lay.out_channels, y)) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "bn_act_train_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto launch = [&](auto index_zero) {
        using index_t = decltype(index_zero);
        single_block_forward_kernel<scalar_t, acc_t, index_t>
            <<<lay.out_channels, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
                y.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
                running_mean.mutable_data_ptr<scalar_t>(), running_var.mutable_data_ptr<scalar_t>(),
                save_mean.mutable_data_ptr<acc_t>(), save_invstd.mutable_data_ptr<acc_t>(),
                out.mutable_data_ptr<scalar_t>(), static_cast<index_t>(lay.channels),
                static_cast<index_t>(lay.out_channels), static_cast<index_t>(lay.inner), static_cast<index_t>(M),
                momentum, eps, act, static_cast<acc_t>(slope));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      if (use_int32_indexing(y)) {
        launch(int32_t{0});
      } else {
        launch(int64_t{0});
      }
    });
    return {out, save_mean, save_invstd};
  }
  at::Tensor scale = at::empty({lay.channels}, stats_options);
  at::Tensor shift = at::empty({lay.channels}, stats_options);
  const int64_t slices = num_slices(M, lay.channels, y);
  const int64_t chunk = (M + slices - 1) / slices;
  at::Tensor partial = at::empty({lay.channels, slices, 3}, stats_options);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "bn_act_train_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto launch_stats = [&](auto index_zero) {
      using index_t = decltype(index_zero);
      stats_partial_kernel<scalar_t, acc_t, index_t><<<dim3(lay.channels, slices), kThreads, 0, stream>>>(
          y.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), static_cast<index_t>(lay.channels),
          static_cast<index_t>(lay.inner), static_cast<index_t>(M), static_cast<index_t>(chunk));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (use_int32_indexing(y)) {
      launch_stats(int32_t{0});
    } else {
      launch_stats(int64_t{0});
    }
    stats_merge_kernel<scalar_t, acc_t><<<merge_blocks(lay.channels), kMergeThreads, 0, stream>>>(
        partial.const_data_ptr<acc_t>(), slices, w.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
        running_mean.mutable_data_ptr<scalar_t>(), running_var.mutable_data_ptr<scalar_t>(),
        save_mean.mutable_data_ptr<acc_t>(), save_invstd.mutable_data_ptr<acc_t>(), scale.mutable_data_ptr<acc_t>(),
        shift.mutable_data_ptr<acc_t>(), lay.channels, momentum, eps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch_affine_act<scalar_t, acc_t>(y, scale, shift, save_mean, out, lay, act, slope);
  });
  return {out, save_mean, save_invstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_backward_cuda(const at::Tensor& grad_out_in,
                                                                    const at::Tensor& y_in, const at::Tensor& weight,
                                                                    const at::Tensor& bias, const at::Tensor& save_mean,
                                                                    const at::Tensor& save_invstd,
                                                                    c10::string_view act_name, double slope) {
  const c10::cuda::CUDAGuard device_guard(y_in.device());
  const Activation act = activation_of(act_name);
  const ChannelLayout lay =
      check_bn_act_args(y_in, weight, bias, save_mean, save_invstd, act, "bn_act_backward", "mean", "invstd");
  TORCH_CHECK(save_mean.scalar_type() == stats_dtype(y_in) && save_invstd.scalar_type() == stats_dtype(y_in),
              "bn_act_backward: mean and invstd must be ", stats_dtype(y_in), " (as bn_act_train returns them)");
  const at::Tensor y = y_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous();
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(output_sizes(y, lay)), "bn_act_backward: grad_out must have shape ",
              at::IntArrayRef(output_sizes(y, lay)), ", got ", grad_out.sizes());
  const at::Tensor mean = save_mean.contiguous();
  const at::Tensor invstd = save_invstd.contiguous();
  const at::Tensor w = weight.contiguous();
  const at::Tensor b = bias.contiguous();
  at::Tensor grad_y = at::empty_like(y);
  at::Tensor grad_weight = at::empty_like(w);
  at::Tensor grad_bias = at::empty_like(b);
  if (use_single_block(lay.count(), lay.out_channels, y)) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "bn_act_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto launch = [&](auto index_zero) {
        using index_t = decltype(index_zero);
        single_block_backward_kernel<scalar_t, acc_t, index_t>
            <<<lay.out_channels, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
                grad_out.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                b.const_data_ptr<scalar_t>(), mean.const_data_ptr<acc_t>(), invstd.const_data_ptr<acc_t>(),
                grad_y.mutable_data_ptr<scalar_t>(), grad_weight.mutable_data_ptr<scalar_t>(),
                grad_bias.mutable_data_ptr<scalar_t>(), static_cast<index_t>(lay.channels),
                static_cast<index_t>(lay.out_channels), static_cast<index_t>(lay.inner),
                static_cast<index_t>(lay.count()), act, static_cast<acc_t>(slope));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      if (use_int32_indexing(y)) {
        launch(int32_t{0});
      } else {
        launch(int64_t{0});
      }
    });
    return {grad_y, grad_weight, grad_bias};
  }
  at::Tensor scale = at::empty_like(mean);
  at::Tensor shift = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "bn_act_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (lay.channels > 0) {
      bn_scale_shift_kernel<scalar_t, acc_t>
          <<<merge_blocks(lay.channels), kMergeThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
              w.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), mean.const_data_ptr<acc_t>(),
              invstd.const_data_ptr<acc_t>(), scale.mutable_data_ptr<acc_t>(), shift.mutable_data_ptr<acc_t>(),
              lay.channels);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    launch_backward<scalar_t, acc_t>(grad_out, y, scale, shift, mean, invstd, /*batch_norm=*/true, grad_y,
                                     grad_weight, grad_bias, lay, act, slope);
  });
  return {grad_y, grad_weight, grad_bias};
}

at::Tensor affine_act_cuda(const at::Tensor& y_in, const at::Tensor& scale_in, const at::Tensor& shift_in,
                           c10::string_view act_name, double slope) {
  const c10::cuda::CUDAGuard device_guard(y_in.device());
  const Activation act = activation_of(act_name);
  const ChannelLayout lay = make_layout(y_in, act, "affine_act");
  check_per_channel(scale_in, "scale", y_in, lay.channels, "affine_act");
  check_per_channel(shift_in, "shift", y_in, lay.channels, "affine_act");
  TORCH_CHECK(scale_in.scalar_type() == y_in.scalar_type() && shift_in.scalar_type() == y_in.scalar_type(),
              "affine_act: scale and shift must have the dtype of y (", y_in.scalar_type(), ")");
  const at::Tensor y = y_in.contiguous();
  const at::Tensor scale_c = scale_in.contiguous();
  const at::Tensor shift_c = shift_in.contiguous();
  at::Tensor out = at::empty(output_sizes(y, lay), y.options());
  const auto stats_options = y.options().dtype(stats_dtype(y));
  at::Tensor scale = at::empty({lay.channels}, stats_options);
  at::Tensor shift = at::empty({lay.channels}, stats_options);
  at::Tensor zeros = at::empty({lay.channels}, stats_options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "affine_act_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (lay.channels > 0) {
      affine_params_kernel<scalar_t, acc_t>
          <<<merge_blocks(lay.channels), kMergeThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
              scale_c.const_data_ptr<scalar_t>(), shift_c.const_data_ptr<scalar_t>(), scale.mutable_data_ptr<acc_t>(),
              shift.mutable_data_ptr<acc_t>(), zeros.mutable_data_ptr<acc_t>(), lay.channels);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    launch_affine_act<scalar_t, acc_t>(y, scale, shift, zeros, out, lay, act, slope);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_act_backward_cuda(const at::Tensor& grad_out_in,
                                                                        const at::Tensor& y_in,
                                                                        const at::Tensor& scale_in,
                                                                        const at::Tensor& shift_in,
                                                                        c10::string_view act_name, double slope) {
  const c10::cuda::CUDAGuard device_guard(y_in.device());
  const Activation act = activation_of(act_name);
  const ChannelLayout lay = make_layout(y_in, act, "affine_act_backward");
  check_per_channel(scale_in, "scale", y_in, lay.channels, "affine_act_backward");
  check_per_channel(shift_in, "shift", y_in, lay.channels, "affine_act_backward");
  TORCH_CHECK(scale_in.scalar_type() == y_in.scalar_type() && shift_in.scalar_type() == y_in.scalar_type(),
              "affine_act_backward: scale and shift must have the dtype of y (", y_in.scalar_type(), ")");
  const at::Tensor y = y_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous();
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(output_sizes(y, lay)),
              "affine_act_backward: grad_out must have shape ", at::IntArrayRef(output_sizes(y, lay)), ", got ",
              grad_out.sizes());
  const at::Tensor scale_c = scale_in.contiguous();
  const at::Tensor shift_c = shift_in.contiguous();
  at::Tensor grad_y = at::empty_like(y);
  at::Tensor grad_scale = at::empty_like(scale_c);
  at::Tensor grad_shift = at::empty_like(shift_c);
  const auto stats_options = y.options().dtype(stats_dtype(y));
  at::Tensor scale = at::empty({lay.channels}, stats_options);
  at::Tensor shift = at::empty({lay.channels}, stats_options);
  at::Tensor zeros = at::empty({lay.channels}, stats_options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "affine_act_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (lay.channels > 0) {
      affine_params_kernel<scalar_t, acc_t>
          <<<merge_blocks(lay.channels), kMergeThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
              scale_c.const_data_ptr<scalar_t>(), shift_c.const_data_ptr<scalar_t>(), scale.mutable_data_ptr<acc_t>(),
              shift.mutable_data_ptr<acc_t>(), zeros.mutable_data_ptr<acc_t>(), lay.channels);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    launch_backward<scalar_t, acc_t>(grad_out, y, scale, shift, zeros, zeros, /*batch_norm=*/false, grad_y,
                                     grad_scale, grad_shift, lay, act, slope);
  });
  return {grad_y, grad_scale, grad_shift};
}

}  // namespace

TORCH_LIBRARY_IMPL(t2ifast, CUDA, m) {
  m.impl("bn_act_train", &bn_act_train_cuda);
  m.impl("bn_act_backward", &bn_act_backward_cuda);
  m.impl("affine_act", &affine_act_cuda);
  m.impl("affine_act_backward", &affine_act_backward_cuda);
}

}  // namespace t2ifast
