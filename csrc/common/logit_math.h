// Numerically stable scalar functions of a logit, shared by the CPU and CUDA kernels.
#pragma once

#include <c10/macros/Macros.h>
#include <cmath>

namespace t2ifast {

// log(1 + exp(x)) without overflow: for |x| up to 1e4 (and beyond) the result is finite.
template <typename T>
C10_HOST_DEVICE inline T softplus(T x) {
  return (x > T(0) ? x : T(0)) + ::log1p(::exp(-::fabs(x)));
}

// sigmoid(x) that never forms exp of a large positive number.
template <typename T>
C10_HOST_DEVICE inline T sigmoid(T x) {
  if (x >= T(0)) {
    return T(1) / (T(1) + ::exp(-x));
  }
  const T e = ::exp(x);
  return e / (T(1) + e);
}

// Binary cross-entropy on a logit with target y: softplus(x) - y * x, its derivative sigmoid(x) - y.
template <typename T>
C10_HOST_DEVICE inline T bce_with_logit(T x, T y) {
  return softplus(x) - y * x;
}

}  // namespace t2ifast
