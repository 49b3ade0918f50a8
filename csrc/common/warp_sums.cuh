// Warp-level sums shared by the CUDA kernels.
#pragma once

#include <c10/macros/Macros.h>

namespace t2ifast {

constexpr unsigned kFullWarpMask = 0xffffffffu;

// The sum of v over the 32 lanes of a warp, in every lane.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset >= 1; offset /= 2) v += __shfl_xor_sync(kFullWarpMask, v, offset);
  return v;
}

// How many of the MAX_T sums a lane holds after warp_sum_per_word.
template <int MAX_T>
constexpr int kWordsPerLane = MAX_T >= 32 ? MAX_T / 32 : 1;

// Sums v[t] over the 32 lanes of a warp for every t < MAX_T (MAX_T in {16, 32, 64}), a transposing
// butterfly: at each step a lane keeps one half of its values, sends the other half to its partner and
// adds what it receives, so 31 shuffles reduce 32 values. Afterwards v[k], k < kWordsPerLane<MAX_T>,
// holds the total for t = *first + k (with MAX_T = 16, lanes 16..31 hold copies of lanes 0..15).
// Every lane of the warp must call it.
template <typename T, int MAX_T>
__device__ __forceinline__ void warp_sum_per_word(T (&v)[MAX_T], int lane, int* first) {
  static_assert(MAX_T == 16 || MAX_T == 32 || MAX_T == 64, "MAX_T must be 16, 32 or 64");
  int base = 0;
  int count = MAX_T;
#pragma unroll
  for (int offset = (MAX_T >= 32 ? 16 : 8); offset >= 1; offset /= 2) {
    const bool upper = (lane & offset) != 0;
    const int half = count / 2;
#pragma unroll
    for (int k = 0; k < MAX_T / 2; ++k) {
      if (k < half) {
        const T send = upper ? v[k] : v[k + half];
        const T keep = upper ? v[k + half] : v[k];
        v[k] = keep + __shfl_xor_sync(kFullWarpMask, send, offset);
      }
    }
    base += upper ? half : 0;
    count = half;
  }
  if (MAX_T < 32) v[0] += __shfl_xor_sync(kFullWarpMask, v[0], 16);
  *first = base;
}

// Whether this lane holds sums after warp_sum_per_word (with MAX_T = 16 only lanes 0..15 add them up).
template <int MAX_T>
__device__ __forceinline__ bool lane_holds_word_sums(int lane) {
  return MAX_T >= 32 || lane < 16;
}

}  // namespace t2ifast
