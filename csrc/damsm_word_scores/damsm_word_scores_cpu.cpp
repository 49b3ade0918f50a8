// CPU kernels of t2ifast::damsm_word_scores and its backward: the pairs are independent, so tasks are
// pairs (forward) or images (backward: a task owns its image's gradient and meets every caption; the
// captions' gradients are summed per worker thread, then across threads in a fixed order).
// Rows are laid out so the innermost loops run along contiguous memory (regions along N, words along T).
#include "damsm_word_scores.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

namespace t2ifast {
namespace {

// One (image, caption) pair: its forward intermediates, kept for the pair's backward.
template <typename acc_t>
struct Pair {
  std::vector<acc_t> a;        // [T][N] softmax over words
  std::vector<acc_t> b;        // [T][N] softmax over regions
  std::vector<acc_t> context;  // [D][T]
  std::vector<acc_t> u, wn, cn, cos;  // [T]
  acc_t score = 0;

  explicit Pair(const DamsmSizes& s)
      : a(s.words * s.regions), b(s.words * s.regions), context(s.dim * s.words), u(s.words), wn(s.words),
        cn(s.words), cos(s.words) {}
};

template <typename scalar_t, typename acc_t>
void pair_forward(const scalar_t* w, int64_t length, const scalar_t* r, const DamsmSizes& s, double gamma1,
                  double gamma2, Pair<acc_t>& pair) {
  const int64_t T = s.words, N = s.regions, D = s.dim;
  const int64_t L = std::clamp<int64_t>(length, 0, T);
  std::fill(pair.a.begin(), pair.a.end(), acc_t(0));
  for (int64_t d = 0; d < D; ++d) {  // scores of the valid words
    for (int64_t t = 0; t < L; ++t) {
      const acc_t wv = static_cast<acc_t>(w[d * T + t]);
      acc_t* row = pair.a.data() + t * N;
      for (int64_t n = 0; n < N; ++n) row[n] += wv * static_cast<acc_t>(r[d * N + n]);
    }
  }
  for (int64_t n = 0; n < N; ++n) {  // softmax over the valid words
    acc_t m = -std::numeric_limits<acc_t>::infinity();
    for (int64_t t = 0; t < L; ++t) m = std::max(m, pair.a[t * N + n]);
    acc_t sum = 0;
    for (int64_t t = 0; t < L; ++t) sum += (pair.a[t * N + n] = std::exp(pair.a[t * N + n] - m));
    for (int64_t t = 0; t < L; ++t) pair.a[t * N + n] /= sum;
  }
  std::fill(pair.b.begin(), pair.b.end(), acc_t(0));
  for (int64_t t = 0; t < L; ++t) {  // softmax over regions of gamma1 * a, which lies in [0, gamma1]
    acc_t* row = pair.b.data() + t * N;
    const acc_t* at = pair.a.data() + t * N;
    acc_t sum = 0;
    for (int64_t n = 0; n < N; ++n) sum += (row[n] = std::exp(static_cast<acc_t>(gamma1) * at[n]));
    for (int64_t n = 0; n < N; ++n) row[n] /= sum;
  }
  std::fill(pair.context.begin(), pair.context.end(), acc_t(0));
  for (int64_t d = 0; d < D; ++d) {
    for (int64_t t = 0; t < L; ++t) {
      const acc_t* row = pair.b.data() + t * N;
      acc_t v = 0;
      for (int64_t n = 0; n < N; ++n) v += static_cast<acc_t>(r[d * N + n]) * row[n];
      pair.context[d * T + t] = v;
    }
  }
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  for (int64_t t = 0; t < L; ++t) {
    acc_t u = 0, ww = 0, cc = 0;
    for (int64_t d = 0; d < D; ++d) {
      const acc_t wv = static_cast<acc_t>(w[d * T + t]);
      const acc_t cv = pair.context[d * T + t];
      u += wv * cv;
      ww += wv * wv;
      cc += cv * cv;
    }
    pair.u[t] = u;
    pair.wn[t] = std::sqrt(ww);
    pair.cn[t] = std::sqrt(cc);
    pair.cos[t] = u / std::max(pair.wn[t] * pair.cn[t], static_cast<acc_t>(kDamsmCosineEps));
    m = std::max(m, static_cast<acc_t>(gamma2) * pair.cos[t]);
  }
  acc_t sum = 0;
  for (int64_t t = 0; t < L; ++t) sum += std::exp(static_cast<acc_t>(gamma2) * pair.cos[t] - m);
  pair.score = L > 0 ? m + std::log(sum) : -std::numeric_limits<acc_t>::infinity();
}

// Adds the pair's contributions to the image's and the caption's gradients.
template <typename scalar_t, typename acc_t>
void pair_backward(const scalar_t* w, int64_t length, const scalar_t* r, const DamsmSizes& s, double gamma1,
                   double gamma2, acc_t grad, const Pair<acc_t>& pair, acc_t* grad_w, acc_t* grad_r,
                   std::vector<acc_t>& gc, std::vector<acc_t>& gs) {
  const int64_t T = s.words, N = s.regions, D = s.dim;
  const int64_t L = std::clamp<int64_t>(length, 0, T);
  const acc_t eps = static_cast<acc_t>(kDamsmCosineEps);
  std::fill(gc.begin(), gc.end(), acc_t(0));  // [D][T]: gradient of the context
  std::vector<acc_t> kappa(T, acc_t(0));
  for (int64_t t = 0; t < L; ++t) {
    // score = logsumexp(gamma2 cos); cos = u / max(|w| |c|, eps)
    const acc_t gcos = grad * static_cast<acc_t>(gamma2) * std::exp(static_cast<acc_t>(gamma2) * pair.cos[t] - pair.score);
    const acc_t den = pair.wn[t] * pair.cn[t];
    const acc_t gu = gcos / std::max(den, eps);
    const acc_t gden = den > eps ? -gcos * pair.u[t] / (den * den) : acc_t(0);
    const acc_t g_wn = pair.wn[t] > 0 ? gden * pair.cn[t] / pair.wn[t] : acc_t(0);
    const acc_t g_cn = pair.cn[t] > 0 ? gden * pair.wn[t] / pair.cn[t] : acc_t(0);
    for (int64_t d = 0; d < D; ++d) {
      const acc_t wv = static_cast<acc_t>(w[d * T + t]);
      const acc_t cv = pair.context[d * T + t];
      grad_w[d * T + t] += gu * cv + g_wn * wv;
      gc[d * T + t] = gu * wv + g_cn * cv;
      kappa[t] += gc[d * T + t] * cv;
    }
  }
  // gb[t][n] = gc[:, t] . r[:, n], then through the softmax over regions (ga) and over words (gs)
  std::fill(gs.begin(), gs.end(), acc_t(0));
  for (int64_t d = 0; d < D; ++d) {
    for (int64_t t = 0; t < L; ++t) {
      const acc_t g = gc[d * T + t];
      acc_t* row = gs.data() + t * N;
      for (int64_t n = 0; n < N; ++n) row[n] += g * static_cast<acc_t>(r[d * N + n]);
    }
  }
  for (int64_t t = 0; t < L; ++t) {
    for (int64_t n = 0; n < N; ++n) {
      gs[t * N + n] = static_cast<acc_t>(gamma1) * pair.b[t * N + n] * (gs[t * N + n] - kappa[t]);
    }
  }
  for (int64_t n = 0; n < N; ++n) {
    acc_t dot = 0;
    for (int64_t t = 0; t < L; ++t) dot += pair.a[t * N + n] * gs[t * N + n];
    for (int64_t t = 0; t < L; ++t) gs[t * N + n] = pair.a[t * N + n] * (gs[t * N + n] - dot);
  }
  for (int64_t d = 0; d < D; ++d) {
    acc_t* gr = grad_r + d * N;
    for (int64_t t = 0; t < L; ++t) {
      const acc_t g = gc[d * T + t];
      const acc_t wv = static_cast<acc_t>(w[d * T + t]);
      const acc_t* brow = pair.b.data() + t * N;
      const acc_t* srow = gs.data() + t * N;
      acc_t gw = 0;
      for (int64_t n = 0; n < N; ++n) {
        gr[n] += g * brow[n] + wv * srow[n];
        gw += static_cast<acc_t>(r[d * N + n]) * srow[n];
      }
      grad_w[d * T + t] += gw;
    }
  }
}

int64_t length_at(const at::Tensor& lengths, int64_t j) {
  return lengths.scalar_type() == at::kLong ? lengths.const_data_ptr<int64_t>()[j]
                                            : static_cast<int64_t>(lengths.const_data_ptr<int32_t>()[j]);
}

at::Tensor damsm_word_scores_cpu(const at::Tensor& words_in, const at::Tensor& lengths_in, const at::Tensor& regions_in,
                                 double gamma1, double gamma2) {
  const DamsmSizes s = check_damsm_inputs(words_in, lengths_in, regions_in);
  const at::Tensor words = words_in.contiguous(), lengths = lengths_in.contiguous(), regions = regions_in.contiguous();
  at::Tensor scores = at::empty({s.images, s.captions}, words.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, words.scalar_type(), "damsm_word_scores_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* w = words.const_data_ptr<scalar_t>();
    const scalar_t* r = regions.const_data_ptr<scalar_t>();
    scalar_t* out = scores.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, s.images * s.captions, 1, [&](int64_t begin, int64_t end) {
      Pair<acc_t> pair(s);
      for (int64_t k = begin; k < end; ++k) {
        const int64_t i = k / s.captions, j = k % s.captions;
        pair_forward(w + j * s.dim * s.words, length_at(lengths, j), r + i * s.dim * s.regions, s, gamma1, gamma2,
                     pair);
        out[k] = static_cast<scalar_t>(pair.score);
      }
    });
  });
  return scores;
}

std::tuple<at::Tensor, at::Tensor> damsm_word_scores_backward_cpu(const at::Tensor& grad_scores_in,
                                                                  const at::Tensor& words_in,
                                                                  const at::Tensor& lengths_in,
                                                                  const at::Tensor& regions_in, double gamma1,
                                                                  double gamma2) {
  const DamsmSizes s = check_damsm_inputs(words_in, lengths_in, regions_in);
  TORCH_CHECK(grad_scores_in.dim() == 2 && grad_scores_in.size(0) == s.images && grad_scores_in.size(1) == s.captions,
              "damsm_word_scores_backward: grad_scores must be [M, B] = [", s.images, ", ", s.captions, "], got ",
              grad_scores_in.sizes());
  const at::Tensor words = words_in.contiguous(), lengths = lengths_in.contiguous(), regions = regions_in.contiguous();
  const at::Tensor grad_scores = grad_scores_in.contiguous();
  at::Tensor grad_words = at::empty_like(words);
  at::Tensor grad_regions = at::empty_like(regions);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, words.scalar_type(), "damsm_word_scores_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* w = words.const_data_ptr<scalar_t>();
    const scalar_t* r = regions.const_data_ptr<scalar_t>();
    const scalar_t* g = grad_scores.const_data_ptr<scalar_t>();
    const int64_t word_size = s.captions * s.dim * s.words;
    const int64_t image_size = s.dim * s.regions;
    // grad_words summed per worker thread; grad_regions accumulated by the task that owns the image
    std::vector<acc_t> word_sums(static_cast<size_t>(at::get_num_threads()) * word_size, acc_t(0));
    std::vector<acc_t> region_sums(s.images * image_size, acc_t(0));
    at::parallel_for(0, s.images, 1, [&](int64_t begin, int64_t end) {
      Pair<acc_t> pair(s);
      std::vector<acc_t> gc(s.dim * s.words), gs(s.words * s.regions);
      acc_t* grad_w = word_sums.data() + at::get_thread_num() * word_size;
      for (int64_t i = begin; i < end; ++i) {
        for (int64_t j = 0; j < s.captions; ++j) {
          const scalar_t* wj = w + j * s.dim * s.words;
          const scalar_t* ri = r + i * image_size;
          pair_forward(wj, length_at(lengths, j), ri, s, gamma1, gamma2, pair);
          pair_backward(wj, length_at(lengths, j), ri, s, gamma1, gamma2,
                        static_cast<acc_t>(g[i * s.captions + j]), pair, grad_w + j * s.dim * s.words,
                        region_sums.data() + i * image_size, gc, gs);
        }
      }
    });
    scalar_t* gw = grad_words.mutable_data_ptr<scalar_t>();
    for (int64_t k = 0; k < word_size; ++k) {
      acc_t v = 0;
      for (int thread = 0; thread < at::get_num_threads(); ++thread) v += word_sums[thread * word_size + k];
      gw[k] = static_cast<scalar_t>(v);
    }
    scalar_t* gr = grad_regions.mutable_data_ptr<scalar_t>();
    for (int64_t k = 0; k < s.images * image_size; ++k) gr[k] = static_cast<scalar_t>(region_sums[k]);
  });
  return {grad_words, grad_regions};
}

}  // namespace

TORCH_LIBRARY_IMPL(t2ifast, CPU, m) {
  m.impl("damsm_word_scores", &damsm_word_scores_cpu);
  m.impl("damsm_word_scores_backward", &damsm_word_scores_backward_cpu);
}

}  // namespace t2ifast
