// CPU kernels of the fused BatchNorm + activation ops. Channels are independent, so every pass runs
// in parallel over channels (statistics, backward sums) or over (sample, output channel) rows
// (elementwise passes). The statistics are two-pass (mean first, then the sum of squared deviations),
// never E[y^2] - E[y]^2. Sums run in vectorised opmath partial sums over chunks of at most kChunk elements,
// and the chunks add up in double: exact enough for any batch. The activation is a template argument, so the
// per-element loops of ReLU / LeakyReLU / none have no branch on it and vectorise too.
#include "bn_act.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

namespace t2ifast {
namespace {

constexpr int64_t kGrain = 1;  // one channel of a generator layer is already thousands of elements
constexpr int64_t kChunk = 1024;  // elements summed in opmath before the partial sum is added in double

template <Activation A>
using ActivationTag = std::integral_constant<Activation, A>;

// Calls body(ActivationTag<act>{}): the activation becomes a compile-time constant inside body.
template <typename Body>
void with_activation(Activation act, const Body& body) {
  switch (act) {
    case Activation::Relu:
      return body(ActivationTag<Activation::Relu>{});
    case Activation::LeakyRelu:
      return body(ActivationTag<Activation::LeakyRelu>{});
    case Activation::Glu:
      return body(ActivationTag<Activation::Glu>{});
    default:
      return body(ActivationTag<Activation::None>{});
  }
}

// The sums below run over chunks of at most kChunk elements. Each chunk sums in acc_t under `omp simd`, which
// lets the compiler split a floating-point sum into vector lanes (it never reorders a plain loop's sum), and
// the chunks add up in double. Their loops stay simple on purpose: GCC leaves a reduction loop scalar when it
// also holds the activation's comparison, so dL/dz is formed in a loop of its own first.

// sum of x[i] for i < len.
template <typename acc_t, typename scalar_t>
inline acc_t chunk_sum(const scalar_t* x, int64_t len) {
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < len; ++i) sum += static_cast<acc_t>(x[i]);
  return sum;
}

// sum of (x[i] - center) and of (x[i] - center)^2 for i < len.
template <typename acc_t, typename scalar_t>
inline void add_chunk_deviations(const scalar_t* x, int64_t len, acc_t center, double& sum, double& squares) {
  acc_t first = 0, second = 0;
#pragma omp simd reduction(+ : first, second)
  for (int64_t i = 0; i < len; ++i) {
    const acc_t centred = static_cast<acc_t>(x[i]) - center;
    first += centred;
    second += centred * centred;
  }
  sum += static_cast<double>(first);
  squares += static_cast<double>(second);
}

// sum of w[i] and of w[i] * (x[i] - center) for i < len.
template <typename acc_t, typename scalar_t>
inline void add_chunk_weighted_sums(const acc_t* w, const scalar_t* x, int64_t len, acc_t center, double& sum_w,
                                    double& sum_wx) {
  acc_t first = 0, second = 0;
#pragma omp simd reduction(+ : first, second)
  for (int64_t i = 0; i < len; ++i) {
    first += w[i];
    second += w[i] * (static_cast<acc_t>(x[i]) - center);
  }
  sum_w += static_cast<double>(first);
  sum_wx += static_cast<double>(second);
}

// Channel c's batch mean and sum of squared deviations from it, in two passes over the channel. The second
// pass centres on the mean rounded to acc_t (m) and corrects exactly: sum (y - mean)^2 = sum (y - m)^2 -
// (sum (y - m))^2 / count, where sum (y - m) is tiny, so nothing cancels.
template <typename scalar_t>
void channel_moments(const scalar_t* y, const ChannelLayout& lay, int64_t c, double& mean, double& m2) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t L = lay.inner;
  double sum = 0;
  for (int64_t n = 0; n < lay.batch; ++n) {
    const scalar_t* row = y + (n * lay.channels + c) * L;
    for (int64_t start = 0; start < L; start += kChunk) {
      sum += static_cast<double>(chunk_sum<acc_t>(row + start, std::min(kChunk, L - start)));
    }
  }
  const double count = static_cast<double>(lay.count());
  mean = sum / count;
  const acc_t m = static_cast<acc_t>(mean);
  double deviations = 0, squares = 0;
  for (int64_t n = 0; n < lay.batch; ++n) {
    const scalar_t* row = y + (n * lay.channels + c) * L;
    for (int64_t start = 0; start < L; start += kChunk) {
      add_chunk_deviations(row + start, std::min(kChunk, L - start), m, deviations, squares);
    }
  }
  m2 = std::max(0.0, squares - deviations * deviations / count);
}

// Calls body(ActivationTag<act>{}, n, c, row) for every (sample n, output channel c) row of the output, rows
// split over torch's threads.
template <typename Body>
void for_each_output_row(const ChannelLayout& lay, Activation act, const Body& body) {
  with_activation(act, [&](auto tag) {
    at::parallel_for(0, lay.batch * lay.out_channels, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) body(tag, row / lay.out_channels, row % lay.out_channels, row);
    });
  });
}

// out = act((y - center[c]) * scale[c] + shift[c]) (GLU: over channel pairs).
template <typename scalar_t>
void affine_act_forward_kernel(const scalar_t* y, const double* scale, const double* shift, const double* center,
                               scalar_t* out, const ChannelLayout& lay, Activation act, double slope) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t L = lay.inner;
  for_each_output_row(lay, act, [&](auto tag, int64_t n, int64_t c, int64_t row) {
    constexpr Activation kAct = decltype(tag)::value;
    const scalar_t* ya = y + (n * lay.channels + c) * L;
    scalar_t* o = out + row * L;
    const opmath_t sa = static_cast<opmath_t>(scale[c]);
    const opmath_t ta = static_cast<opmath_t>(shift[c]);
    const opmath_t ma = static_cast<opmath_t>(center[c]);
    if constexpr (kAct == Activation::Glu) {
      const int64_t cb = c + lay.out_channels;
      const scalar_t* yb = y + (n * lay.channels + cb) * L;
      const opmath_t sb = static_cast<opmath_t>(scale[cb]);
      const opmath_t tb = static_cast<opmath_t>(shift[cb]);
      const opmath_t mb = static_cast<opmath_t>(center[cb]);
      for (int64_t l = 0; l < L; ++l) {
        const opmath_t a = (static_cast<opmath_t>(ya[l]) - ma) * sa + ta;
        const opmath_t b = (static_cast<opmath_t>(yb[l]) - mb) * sb + tb;
        o[l] = static_cast<scalar_t>(a * sigmoid_of(b));
      }
    } else {
      const opmath_t s = static_cast<opmath_t>(slope);
      for (int64_t l = 0; l < L; ++l) {
        o[l] = static_cast<scalar_t>(activate((static_cast<opmath_t>(ya[l]) - ma) * sa + ta, kAct, s));
      }
    }
  });
}

// Per input channel c: sum_dz[c] = sum of dL/dz, sum_dzy[c] = sum of dL/dz * (y - center[c]), where
// dL/dz is recomputed from y: z = (y - center) * scale + shift.
template <typename scalar_t>
void backward_sums_kernel(const scalar_t* grad_out, const scalar_t* y, const double* scale, const double* shift,
                          const double* center, double* sum_dz, double* sum_dzy, const ChannelLayout& lay,
                          Activation act, double slope) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t L = lay.inner;
  with_activation(act, [&](auto tag) {
    constexpr Activation kAct = decltype(tag)::value;
    at::parallel_for(0, lay.out_channels, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const int64_t cb = c + lay.out_channels;  // GLU's gate channel
        const opmath_t sa = static_cast<opmath_t>(scale[c]), ta = static_cast<opmath_t>(shift[c]);
        const opmath_t ma = static_cast<opmath_t>(center[c]);
        const opmath_t s = static_cast<opmath_t>(slope);
        double sums[4] = {0, 0, 0, 0};  // dz and dz * (y - center) of channel c, then of GLU's gate channel cb
        opmath_t dz_a[kChunk], dz_b[kChunk];  // dL/dz of a chunk of channel c (and of cb)
        for (int64_t n = 0; n < lay.batch; ++n) {
          const scalar_t* g = grad_out + (n * lay.out_channels + c) * L;
          const scalar_t* ya = y + (n * lay.channels + c) * L;
          for (int64_t start = 0; start < L; start += kChunk) {
            const int64_t len = std::min(kChunk, L - start);
            if constexpr (kAct == Activation::Glu) {
              const scalar_t* yb = y + (n * lay.channels + cb) * L;
              const opmath_t sb = static_cast<opmath_t>(scale[cb]), tb = static_cast<opmath_t>(shift[cb]);
              const opmath_t mb = static_cast<opmath_t>(center[cb]);
              for (int64_t i = 0; i < len; ++i) {
                const int64_t l = start + i;
                const opmath_t a = (static_cast<opmath_t>(ya[l]) - ma) * sa + ta;
                const opmath_t b = (static_cast<opmath_t>(yb[l]) - mb) * sb + tb;
                glu_grad(static_cast<opmath_t>(g[l]), a, b, dz_a[i], dz_b[i]);
              }
              add_chunk_weighted_sums(dz_b, yb + start, len, mb, sums[2], sums[3]);
            } else {
              for (int64_t i = 0; i < len; ++i) {
                const opmath_t z = (static_cast<opmath_t>(ya[start + i]) - ma) * sa + ta;
                dz_a[i] = activation_grad(static_cast<opmath_t>(g[start + i]), z, kAct, s);
              }
            }
            add_chunk_weighted_sums(dz_a, ya + start, len, ma, sums[0], sums[1]);
          }
        }
        sum_dz[c] = sums[0];
        sum_dzy[c] = sums[1];
        if constexpr (kAct == Activation::Glu) {
          sum_dz[cb] = sums[2];
          sum_dzy[cb] = sums[3];
        }
      }
    });
  });
}

// grad_y = scale[c] * dL/dz - alpha[c] - beta[c] * (y - center[c]).
template <typename scalar_t>
void backward_elementwise_kernel(const scalar_t* grad_out, const scalar_t* y, const double* scale,
                                 const double* shift, const double* center, const double* alpha, const double* beta,
                                 scalar_t* grad_y, const ChannelLayout& lay, Activation act, double slope) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t L = lay.inner;
  for_each_output_row(lay, act, [&](auto tag, int64_t n, int64_t c, int64_t row) {
    constexpr Activation kAct = decltype(tag)::value;
    const int64_t cb = c + lay.out_channels;
    const scalar_t* g = grad_out + row * L;
    const scalar_t* ya = y + (n * lay.channels + c) * L;
    scalar_t* gya = grad_y + (n * lay.channels + c) * L;
    const opmath_t sa = scale[c], ta = shift[c], ma = center[c], aa = alpha[c], ba = beta[c];
    if constexpr (kAct == Activation::Glu) {
      const scalar_t* yb = y + (n * lay.channels + cb) * L;
      scalar_t* gyb = grad_y + (n * lay.channels + cb) * L;
      const opmath_t sb = scale[cb], tb = shift[cb], mb = center[cb], ab = alpha[cb], bb = beta[cb];
      for (int64_t l = 0; l < L; ++l) {
        const opmath_t yav = static_cast<opmath_t>(ya[l]);
        const opmath_t ybv = static_cast<opmath_t>(yb[l]);
        opmath_t ga, gb;
        glu_grad(static_cast<opmath_t>(g[l]), (yav - ma) * sa + ta, (ybv - mb) * sb + tb, ga, gb);
        gya[l] = static_cast<scalar_t>(sa * ga - aa - ba * (yav - ma));
        gyb[l] = static_cast<scalar_t>(sb * gb - ab - bb * (ybv - mb));
      }
    } else {
      const opmath_t s = static_cast<opmath_t>(slope);
      for (int64_t l = 0; l < L; ++l) {
        const opmath_t centred = static_cast<opmath_t>(ya[l]) - ma;
        const opmath_t dz = activation_grad(static_cast<opmath_t>(g[l]), centred * sa + ta, kAct, s);
        gya[l] = static_cast<scalar_t>(sa * dz - aa - ba * centred);
      }
    }
  });
}

template <typename scalar_t>
std::vector<double> to_double(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  const scalar_t* p = c.const_data_ptr<scalar_t>();
  return std::vector<double>(p, p + c.numel());
}

// ---- ops ------------------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_train_cpu(const at::Tensor& y_in, const at::Tensor& weight,
                                                                const at::Tensor& bias, at::Tensor& running_mean,
                                                                at::Tensor& running_var, double momentum, double eps,
                                                                c10::string_view act_name, double slope) {
  const Activation act = parse_activation(std::string_view(act_name.data(), act_name.size()));
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
  at::Tensor out = at::empty(output_sizes(y, lay), y.options());
  at::Tensor save_mean = at::empty({lay.channels}, y.options().dtype(stats_dtype(y)));
  at::Tensor save_invstd = at::empty({lay.channels}, y.options().dtype(stats_dtype(y)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "bn_act_train_cpu", [&] {
    using stat_t = at::opmath_type<scalar_t>;  // float, or double for double inputs
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const std::vector<double> gamma = to_double<scalar_t>(weight);
    const std::vector<double> beta = to_double<scalar_t>(bias);
    std::vector<double> scale(lay.channels), shift(lay.channels), center(lay.channels);
    scalar_t* rm = running_mean.mutable_data_ptr<scalar_t>();
    scalar_t* rv = running_var.mutable_data_ptr<scalar_t>();
    stat_t* sm = save_mean.mutable_data_ptr<stat_t>();
    stat_t* si = save_invstd.mutable_data_ptr<stat_t>();
    at::parallel_for(0, lay.channels, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        double mean, m2;
        channel_moments(yp, lay, c, mean, m2);
        const double invstd = 1.0 / std::sqrt(m2 / static_cast<double>(M) + eps);
        // Saved statistics are rounded to stat_t; z = (y - mean) * scale + beta is formed from the rounded
        // values, as backward will form it. Centring first keeps z exact when |mean| >> std.
        sm[c] = static_cast<stat_t>(mean);
        si[c] = static_cast<stat_t>(invstd);
        scale[c] = gamma[c] * static_cast<double>(si[c]);
        shift[c] = beta[c];
        center[c] = static_cast<double>(sm[c]);
        const double unbiased = m2 / static_cast<double>(M - 1);
        rm[c] = static_cast<scalar_t>((1.0 - momentum) * static_cast<double>(rm[c]) + momentum * mean);
        rv[c] = static_cast<scalar_t>((1.0 - momentum) * static_cast<double>(rv[c]) + momentum * unbiased);
      }
    });
    affine_act_forward_kernel<scalar_t>(yp, scale.data(), shift.data(), center.data(), out.mutable_data_ptr<scalar_t>(),
                                        lay, act, slope);
  });
  return {out, save_mean, save_invstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_backward_cpu(const at::Tensor& grad_out_in,
                                                                   const at::Tensor& y_in, const at::Tensor& weight,
                                                                   const at::Tensor& bias, const at::Tensor& save_mean,
                                                                   const at::Tensor& save_invstd,
                                                                   c10::string_view act_name, double slope) {
  const Activation act = parse_activation(std::string_view(act_name.data(), act_name.size()));
  const ChannelLayout lay =
      check_bn_act_args(y_in, weight, bias, save_mean, save_invstd, act, "bn_act_backward", "mean", "invstd");
  TORCH_CHECK(save_mean.scalar_type() == stats_dtype(y_in) && save_invstd.scalar_type() == stats_dtype(y_in),
              "bn_act_backward: mean and invstd must be ", stats_dtype(y_in), " (as bn_act_train returns them)");
  const at::Tensor y = y_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous();
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(output_sizes(y, lay)), "bn_act_backward: grad_out must have shape ",
              at::IntArrayRef(output_sizes(y, lay)), ", got ", grad_out.sizes());
  at::Tensor grad_y = at::empty_like(y);
  at::Tensor grad_weight = at::empty_like(weight);
  at::Tensor grad_bias = at::empty_like(bias);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "bn_act_backward_cpu", [&] {
    using stat_t = at::opmath_type<scalar_t>;
    const int64_t C = lay.channels;
    const std::vector<double> gamma = to_double<scalar_t>(weight);
    const std::vector<double> beta = to_double<scalar_t>(bias);
    const std::vector<double> mean = to_double<stat_t>(save_mean);
    const std::vector<double> invstd = to_double<stat_t>(save_invstd);
    std::vector<double> scale(C), shift(C), sum_dz(C), sum_dzy(C), alpha(C), coef(C);
    for (int64_t c = 0; c < C; ++c) {
      scale[c] = gamma[c] * invstd[c];
      shift[c] = beta[c];
    }
    backward_sums_kernel<scalar_t>(grad_out.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), scale.data(),
                                   shift.data(), mean.data(), sum_dz.data(), sum_dzy.data(), lay, act, slope);
    // grad_y = scale * (dz - mean(dz) - xhat * mean(dz * xhat)) with xhat = (y - mean) * invstd.
    const double inv_count = 1.0 / static_cast<double>(lay.count());
    scalar_t* gw = grad_weight.mutable_data_ptr<scalar_t>();
    scalar_t* gb = grad_bias.mutable_data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) {
      gb[c] = static_cast<scalar_t>(sum_dz[c]);
      gw[c] = static_cast<scalar_t>(sum_dzy[c] * invstd[c]);
      alpha[c] = scale[c] * sum_dz[c] * inv_count;
      coef[c] = scale[c] * invstd[c] * invstd[c] * sum_dzy[c] * inv_count;
    }
    backward_elementwise_kernel<scalar_t>(grad_out.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
                                          scale.data(), shift.data(), mean.data(), alpha.data(), coef.data(),
                                          grad_y.mutable_data_ptr<scalar_t>(), lay, act, slope);
  });
  return {grad_y, grad_weight, grad_bias};
}

at::Tensor affine_act_cpu(const at::Tensor& y_in, const at::Tensor& scale, const at::Tensor& shift,
                          c10::string_view act_name, double slope) {
  const Activation act = parse_activation(std::string_view(act_name.data(), act_name.size()));
  const ChannelLayout lay = make_layout(y_in, act, "affine_act");
  check_per_channel(scale, "scale", y_in, lay.channels, "affine_act");
  check_per_channel(shift, "shift", y_in, lay.channels, "affine_act");
  const at::Tensor y = y_in.contiguous();
  at::Tensor out = at::empty(output_sizes(y, lay), y.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "affine_act_cpu", [&] {
    TORCH_CHECK(scale.scalar_type() == y.scalar_type() && shift.scalar_type() == y.scalar_type(),
                "affine_act: scale and shift must have the dtype of y (", y.scalar_type(), ")");
    const std::vector<double> s = to_double<scalar_t>(scale);
    const std::vector<double> t = to_double<scalar_t>(shift);
    const std::vector<double> zeros(lay.channels, 0.0);
    affine_act_forward_kernel<scalar_t>(y.const_data_ptr<scalar_t>(), s.data(), t.data(), zeros.data(),
                                        out.mutable_data_ptr<scalar_t>(), lay, act, slope);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_act_backward_cpu(const at::Tensor& grad_out_in,
                                                                       const at::Tensor& y_in, const at::Tensor& scale,
                                                                       const at::Tensor& shift,
                                                                       c10::string_view act_name, double slope) {
  const Activation act = parse_activation(std::string_view(act_name.data(), act_name.size()));
  const ChannelLayout lay = make_layout(y_in, act, "affine_act_backward");
  check_per_channel(scale, "scale", y_in, lay.channels, "affine_act_backward");
  check_per_channel(shift, "shift", y_in, lay.channels, "affine_act_backward");
  const at::Tensor y = y_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous();
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(output_sizes(y, lay)),
              "affine_act_backward: grad_out must have shape ", at::IntArrayRef(output_sizes(y, lay)), ", got ",
              grad_out.sizes());
  at::Tensor grad_y = at::empty_like(y);
  at::Tensor grad_scale = at::empty_like(scale);
  at::Tensor grad_shift = at::empty_like(shift);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "affine_act_backward_cpu", [&] {
    const int64_t C = lay.channels;
    const std::vector<double> s = to_double<scalar_t>(scale);
    const std::vector<double> t = to_double<scalar_t>(shift);
    const std::vector<double> zeros(C, 0.0);
    std::vector<double> sum_dz(C), sum_dzy(C);
    backward_sums_kernel<scalar_t>(grad_out.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), s.data(),
                                   t.data(), zeros.data(), sum_dz.data(), sum_dzy.data(), lay, act, slope);
    scalar_t* gs = grad_scale.mutable_data_ptr<scalar_t>();
    scalar_t* gt = grad_shift.mutable_data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) {
      gs[c] = static_cast<scalar_t>(sum_dzy[c]);
      gt[c] = static_cast<scalar_t>(sum_dz[c]);
    }
    backward_elementwise_kernel<scalar_t>(grad_out.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
                                          s.data(), t.data(), zeros.data(), zeros.data(), zeros.data(),
                                          grad_y.mutable_data_ptr<scalar_t>(), lay, act, slope);
  });
  return {grad_y, grad_scale, grad_shift};
}

}  // namespace

TORCH_LIBRARY_IMPL(t2ifast, CPU, m) {
  m.impl("bn_act_train", &bn_act_train_cpu);
  m.impl("bn_act_backward", &bn_act_backward_cpu);
  m.impl("affine_act", &affine_act_cpu);
  m.impl("affine_act_backward", &affine_act_backward_cpu);
}

}  // namespace t2ifast
