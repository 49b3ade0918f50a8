// What the CPU and CUDA kernels of the fused BatchNorm + activation ops share: the activation codes,
// the per-element math of each activation and of its backward, and the checks on the arguments.
//
// The ops see the convolution output y as [N, C, L] (L = H*W, or 1 for BatchNorm1d). The per-channel
// affine map z = y * scale[c] + shift[c] (BatchNorm: scale = gamma * invstd, shift = beta - mean * scale)
// is followed by the activation. GLU splits the channels in half after the affine map:
// out[:, c] = z[:, c] * sigmoid(z[:, c + C/2]), so it has C/2 output channels and each output element
// reads the "pair" of channels (c, c + C/2). The other activations are elementwise (pair size 1).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <string_view>
#include <vector>

namespace t2ifast {

enum class Activation : int { None = 0, Relu = 1, LeakyRelu = 2, Glu = 3 };

inline Activation parse_activation(std::string_view act) {
  if (act == "none") return Activation::None;
  if (act == "relu") return Activation::Relu;
  if (act == "leaky_relu") return Activation::LeakyRelu;
  if (act == "glu") return Activation::Glu;
  TORCH_CHECK(false, "act must be one of 'relu', 'leaky_relu', 'glu', 'none'; got '", act, "'");
}

// Shape of y seen as [N, C, L] and of the output as [N, C_out, L] (C_out = C / 2 for GLU).
struct ChannelLayout {
  int64_t batch;
  int64_t channels;
  int64_t inner;  // elements per (sample, channel): H * W
  int64_t out_channels;
  int64_t count() const { return batch * inner; }  // elements per channel
};

inline ChannelLayout make_layout(const at::Tensor& y, Activation act, const char* op) {
  TORCH_CHECK(y.dim() >= 2, op, ": y must be [N, C, ...] (at least 2-D), got ", y.dim(), " dimensions");
  TORCH_CHECK(at::isFloatingType(y.scalar_type()), op, ": y must be a floating-point tensor, got ", y.scalar_type());
  ChannelLayout layout;
  layout.batch = y.size(0);
  layout.channels = y.size(1);
  layout.inner = layout.batch == 0 || layout.channels == 0 ? 0 : y.numel() / (layout.batch * layout.channels);
  if (act == Activation::Glu) {
    TORCH_CHECK(layout.channels % 2 == 0, op, ": act='glu' needs an even number of channels in y, got ",
                layout.channels);
    layout.out_channels = layout.channels / 2;
  } else {
    layout.out_channels = layout.channels;
  }
  return layout;
}

// The sizes of the output: those of y with C_out channels.
inline std::vector<int64_t> output_sizes(const at::Tensor& y, const ChannelLayout& layout) {
  std::vector<int64_t> sizes(y.sizes().begin(), y.sizes().end());
  sizes[1] = layout.out_channels;
  return sizes;
}

inline void check_per_channel(const at::Tensor& t, const char* name, const at::Tensor& y, int64_t channels,
                              const char* op) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == channels, op, ": ", name, " must have shape [", channels,
              "] (one value per channel of y), got ", t.sizes());
  TORCH_CHECK(t.device() == y.device(), op, ": ", name, " is on ", t.device(), " but y is on ", y.device());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be floating point, got ",
              t.scalar_type());
}

template <typename T>
C10_HOST_DEVICE inline T sigmoid_of(T x) {
  if (x >= T(0)) return T(1) / (T(1) + ::exp(-x));
  const T e = ::exp(x);
  return e / (T(1) + e);
}

// act(z) for the elementwise activations.
template <typename T>
C10_HOST_DEVICE inline T activate(T z, Activation act, T negative_slope) {
  switch (act) {
    case Activation::Relu:
      return z > T(0) ? z : T(0);
    case Activation::LeakyRelu:
      return z > T(0) ? z : z * negative_slope;
    default:
      return z;
  }
}

// d act / d z times the incoming gradient, recomputed from z (nothing of the forward output is kept).
template <typename T>
C10_HOST_DEVICE inline T activation_grad(T grad, T z, Activation act, T negative_slope) {
  switch (act) {
    case Activation::Relu:
      return z > T(0) ? grad : T(0);
    case Activation::LeakyRelu:
      return z > T(0) ? grad : grad * negative_slope;
    default:
      return grad;
  }
}

// GLU: out = a * sigmoid(b); gradients with respect to a and b.
template <typename T>
C10_HOST_DEVICE inline void glu_grad(T grad, T a, T b, T& grad_a, T& grad_b) {
  const T s = sigmoid_of(b);
  grad_a = grad * s;
  grad_b = grad * a * s * (T(1) - s);
}

// Chan et al.'s merge of two (count, mean, M2) partial statistics: exact, with no E[x^2] - E[x]^2 cancellation.
template <typename T>
C10_HOST_DEVICE inline void welford_merge(T& count, T& mean, T& m2, T other_count, T other_mean, T other_m2) {
  const T total = count + other_count;
  if (other_count == T(0)) return;
  const T delta = other_mean - mean;
  const T ratio = other_count / total;
  mean += delta * ratio;
  m2 += other_m2 + delta * delta * count * ratio;
  count = total;
}

}  // namespace t2ifast

namespace t2ifast {

// Checks shared by the CPU and CUDA entry points; returns the layout of y.
inline ChannelLayout check_bn_act_args(const at::Tensor& y, const at::Tensor& weight, const at::Tensor& bias,
                                       const at::Tensor& mean_like, const at::Tensor& var_like, Activation act,
                                       const char* op, const char* mean_name, const char* var_name) {
  ChannelLayout layout = make_layout(y, act, op);
  check_per_channel(weight, "weight", y, layout.channels, op);
  check_per_channel(bias, "bias", y, layout.channels, op);
  check_per_channel(mean_like, mean_name, y, layout.channels, op);
  check_per_channel(var_like, var_name, y, layout.channels, op);
  TORCH_CHECK(weight.scalar_type() == y.scalar_type() && bias.scalar_type() == y.scalar_type(), op,
              ": weight and bias must have the dtype of y (", y.scalar_type(), "), got ", weight.scalar_type(),
              " and ", bias.scalar_type());
  return layout;
}

// The dtype of the saved per-channel statistics: float for half/bfloat16/float, double for double.
inline at::ScalarType stats_dtype(const at::Tensor& y) {
  return y.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace t2ifast
