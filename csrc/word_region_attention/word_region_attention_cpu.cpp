// CPU kernels of t2ifast::word_region_attention and its backward. Work is split into (sample, tile of
// regions) tasks; inside a task the innermost loops run along the regions, which are contiguous, so they
// vectorise. The attention of a tile lives in a small per-task buffer and is written out only on request.
#include "word_region_attention.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

namespace t2ifast {
namespace {

constexpr int64_t kTile = 64;  // regions per task

template <typename acc_t>
struct TileBuffers {
  std::vector<acc_t> attn;   // [T][kTile]: scores, then the attention
  std::vector<acc_t> dattn;  // [T][kTile]: backward only: dp, then ds
  std::vector<acc_t> row;    // [kTile]
};

// attn[t][n] <- regions[:, n0 + n] . words[:, t] for the valid words (-inf for the padded ones).
template <typename scalar_t, typename acc_t>
void tile_scores(const scalar_t* regions, const scalar_t* words, const bool* valid, const WordRegionSizes& s,
                 int64_t n0, int64_t count, acc_t* scores) {
  std::fill(scores, scores + s.words * kTile, acc_t(0));
  for (int64_t c = 0; c < s.channels; ++c) {
    const scalar_t* r = regions + c * s.regions + n0;
    for (int64_t t = 0; t < s.words; ++t) {
      const acc_t w = static_cast<acc_t>(words[c * s.words + t]);
      acc_t* out = scores + t * kTile;
      for (int64_t n = 0; n < count; ++n) out[n] += w * static_cast<acc_t>(r[n]);
    }
  }
  for (int64_t t = 0; t < s.words; ++t) {
    if (!valid[t]) std::fill(scores + t * kTile, scores + (t + 1) * kTile, -std::numeric_limits<acc_t>::infinity());
  }
}

template <typename scalar_t>
void forward_kernel(const scalar_t* regions, const scalar_t* words, const bool* valid_words, const WordRegionSizes& s,
                    scalar_t* context, scalar_t* attn_out, at::opmath_type<scalar_t>* lse) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t tiles = (s.regions + kTile - 1) / kTile;
  at::parallel_for(0, s.batch * tiles, 1, [&](int64_t begin, int64_t end) {
    TileBuffers<acc_t> buf{std::vector<acc_t>(s.words * kTile), {}, std::vector<acc_t>(kTile)};
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tiles;
      const int64_t n0 = (task % tiles) * kTile;
      const int64_t count = std::min(kTile, s.regions - n0);
      const scalar_t* r = regions + b * s.channels * s.regions;
      const scalar_t* w = words + b * s.channels * s.words;
      const bool* valid = valid_words + b * s.words;
      acc_t* p = buf.attn.data();
      tile_scores(r, w, valid, s, n0, count, p);
      for (int64_t n = 0; n < count; ++n) {  // softmax over the words of each region
        acc_t m = -std::numeric_limits<acc_t>::infinity();
        for (int64_t t = 0; t < s.words; ++t) m = std::max(m, p[t * kTile + n]);
        if (m == -std::numeric_limits<acc_t>::infinity()) {  // every word is padding
          for (int64_t t = 0; t < s.words; ++t) p[t * kTile + n] = acc_t(0);
          lse[b * s.regions + n0 + n] = std::numeric_limits<acc_t>::infinity();
          continue;
        }
        acc_t sum = 0;
        for (int64_t t = 0; t < s.words; ++t) {
          const acc_t e = std::exp(p[t * kTile + n] - m);
          p[t * kTile + n] = e;
          sum += e;
        }
        for (int64_t t = 0; t < s.words; ++t) p[t * kTile + n] /= sum;
        lse[b * s.regions + n0 + n] = m + std::log(sum);
      }
      scalar_t* ctx = context + b * s.channels * s.regions + n0;
      for (int64_t c = 0; c < s.channels; ++c) {
        std::fill(buf.row.begin(), buf.row.end(), acc_t(0));
        for (int64_t t = 0; t < s.words; ++t) {
          const acc_t wt = static_cast<acc_t>(w[c * s.words + t]);
          for (int64_t n = 0; n < count; ++n) buf.row[n] += wt * p[t * kTile + n];
        }
        for (int64_t n = 0; n < count; ++n) ctx[c * s.regions + n] = static_cast<scalar_t>(buf.row[n]);
      }
      if (attn_out != nullptr) {
        scalar_t* a = attn_out + b * s.words * s.regions + n0;
        for (int64_t t = 0; t < s.words; ++t) {
          for (int64_t n = 0; n < count; ++n) a[t * s.regions + n] = static_cast<scalar_t>(p[t * kTile + n]);
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const scalar_t* grad_context, const scalar_t* grad_attn, const scalar_t* regions,
                     const scalar_t* words, const bool* valid_words, const at::opmath_type<scalar_t>* lse,
                     const WordRegionSizes& s, scalar_t* grad_regions, at::opmath_type<scalar_t>* word_partials) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t tiles = (s.regions + kTile - 1) / kTile;
  const int64_t CT = s.channels * s.words;
  at::parallel_for(0, s.batch * tiles, 1, [&](int64_t begin, int64_t end) {
    TileBuffers<acc_t> buf{std::vector<acc_t>(s.words * kTile), std::vector<acc_t>(s.words * kTile),
                           std::vector<acc_t>(kTile)};
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tiles;
      const int64_t n0 = (task % tiles) * kTile;
      const int64_t count = std::min(kTile, s.regions - n0);
      const scalar_t* r = regions + b * s.channels * s.regions;
      const scalar_t* g = grad_context + b * s.channels * s.regions;
      const scalar_t* w = words + b * s.channels * s.words;
      const bool* valid = valid_words + b * s.words;
      acc_t* p = buf.attn.data();
      acc_t* dp = buf.dattn.data();
      tile_scores(r, w, valid, s, n0, count, p);  // padded words: -inf, so exp gives 0
      const acc_t* l = lse + b * s.regions + n0;
      for (int64_t t = 0; t < s.words; ++t) {
        for (int64_t n = 0; n < count; ++n) p[t * kTile + n] = std::exp(p[t * kTile + n] - l[n]);
      }
      // dp[t][n] = grad_context[:, n] . words[:, t] (+ grad_attn)
      tile_scores(g, w, valid, s, n0, count, dp);
      for (int64_t t = 0; t < s.words; ++t) {
        const scalar_t* ga = grad_attn == nullptr ? nullptr : grad_attn + (b * s.words + t) * s.regions + n0;
        for (int64_t n = 0; n < count; ++n) {
          // padded words have p = 0: keep their dp finite (it was -inf) so that p * dp is 0
          acc_t v = valid[t] ? dp[t * kTile + n] : acc_t(0);
          if (ga != nullptr) v += static_cast<acc_t>(ga[n]);
          dp[t * kTile + n] = v;
        }
      }
      std::fill(buf.row.begin(), buf.row.end(), acc_t(0));  // delta[n] = sum_t p dp
      for (int64_t t = 0; t < s.words; ++t) {
        for (int64_t n = 0; n < count; ++n) buf.row[n] += p[t * kTile + n] * dp[t * kTile + n];
      }
      for (int64_t t = 0; t < s.words; ++t) {
        for (int64_t n = 0; n < count; ++n) dp[t * kTile + n] = p[t * kTile + n] * (dp[t * kTile + n] - buf.row[n]);
      }
      const acc_t* ds = dp;
      acc_t* partial = word_partials + task * CT;
      scalar_t* gr = grad_regions + b * s.channels * s.regions + n0;
      for (int64_t c = 0; c < s.channels; ++c) {
        const scalar_t* rc = r + c * s.regions + n0;
        const scalar_t* gc = g + c * s.regions + n0;
        std::fill(buf.row.begin(), buf.row.end(), acc_t(0));
        for (int64_t t = 0; t < s.words; ++t) {
          const acc_t wt = static_cast<acc_t>(w[c * s.words + t]);
          acc_t dw = 0;
          for (int64_t n = 0; n < count; ++n) {
            buf.row[n] += wt * ds[t * kTile + n];
            dw += ds[t * kTile + n] * static_cast<acc_t>(rc[n]) + p[t * kTile + n] * static_cast<acc_t>(gc[n]);
          }
          partial[c * s.words + t] = dw;
        }
        for (int64_t n = 0; n < count; ++n) gr[c * s.regions + n] = static_cast<scalar_t>(buf.row[n]);
      }
    }
  });
}

// All-false mask rows when no mask is given; kernels read "valid" = not padding.
at::Tensor valid_words(const std::optional<at::Tensor>& pad_mask, const WordRegionSizes& s,
                       const at::Tensor& like) {
  at::Tensor valid = at::empty({s.batch, s.words}, like.options().dtype(at::kBool));
  bool* out = valid.mutable_data_ptr<bool>();
  if (pad_mask.has_value()) {
    const at::Tensor mask = pad_mask->contiguous();
    const bool* in = mask.const_data_ptr<bool>();
    for (int64_t i = 0; i < s.batch * s.words; ++i) out[i] = !in[i];
  } else {
    std::fill(out, out + s.batch * s.words, true);
  }
  return valid;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> word_region_attention_cpu(const at::Tensor& regions_in,
                                                                         const at::Tensor& words_in,
                                                                         const std::optional<at::Tensor>& pad_mask,
                                                                         bool return_attn) {
  const WordRegionSizes s = check_word_region_inputs(regions_in, words_in, pad_mask);
  const at::Tensor regions = regions_in.contiguous();
  const at::Tensor words = words_in.contiguous();
  const at::Tensor valid = valid_words(pad_mask, s, regions);
  at::Tensor context = at::empty({s.batch, s.channels, s.regions}, regions.options());
  at::Tensor attn = at::empty({return_attn ? s.batch : 0, s.words, s.regions}, regions.options());
  at::Tensor lse = at::empty({s.batch, s.regions}, regions.options().dtype(word_region_stats_type(regions.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, regions.scalar_type(), "word_region_attention_cpu", [&] {
    forward_kernel<scalar_t>(regions.const_data_ptr<scalar_t>(), words.const_data_ptr<scalar_t>(),
                             valid.const_data_ptr<bool>(), s, context.mutable_data_ptr<scalar_t>(),
                             return_attn ? attn.mutable_data_ptr<scalar_t>() : nullptr,
                             lse.mutable_data_ptr<at::opmath_type<scalar_t>>());
  });
  return {context, attn, lse};
}

std::tuple<at::Tensor, at::Tensor> word_region_attention_backward_cpu(
    const at::Tensor& grad_context_in, const std::optional<at::Tensor>& grad_attn_in, const at::Tensor& regions_in,
    const at::Tensor& words_in, const std::optional<at::Tensor>& pad_mask, const at::Tensor& lse_in) {
  const WordRegionSizes s = check_word_region_inputs(regions_in, words_in, pad_mask);
  check_word_region_backward_inputs(s, regions_in, grad_context_in, grad_attn_in, lse_in);
  const at::Tensor regions = regions_in.contiguous();
  const at::Tensor words = words_in.contiguous();
  const at::Tensor grad_context = grad_context_in.contiguous();
  const at::Tensor lse = lse_in.contiguous();
  const std::optional<at::Tensor> grad_attn =
      grad_attn_in.has_value() ? std::optional<at::Tensor>(grad_attn_in->contiguous()) : std::nullopt;
  const at::Tensor valid = valid_words(pad_mask, s, regions);
  at::Tensor grad_regions = at::empty_like(regions);
  at::Tensor grad_words = at::empty_like(words);
  const int64_t tiles = (s.regions + kTile - 1) / kTile;
  // One partial sum of grad_words per task, added up in a fixed order: deterministic for any thread count.
  at::Tensor partials = at::zeros({s.batch, tiles, s.channels, s.words}, lse.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, regions.scalar_type(), "word_region_attention_backward_cpu",
                                  [&] {
                                    using acc_t = at::opmath_type<scalar_t>;
                                    backward_kernel<scalar_t>(
                                        grad_context.const_data_ptr<scalar_t>(),
                                        grad_attn.has_value() ? grad_attn->const_data_ptr<scalar_t>() : nullptr,
                                        regions.const_data_ptr<scalar_t>(), words.const_data_ptr<scalar_t>(),
                                        valid.const_data_ptr<bool>(), lse.const_data_ptr<acc_t>(), s,
                                        grad_regions.mutable_data_ptr<scalar_t>(), partials.mutable_data_ptr<acc_t>());
                                    const acc_t* part = partials.const_data_ptr<acc_t>();
                                    scalar_t* gw = grad_words.mutable_data_ptr<scalar_t>();
                                    const int64_t CT = s.channels * s.words;
                                    for (int64_t b = 0; b < s.batch; ++b) {
                                      for (int64_t i = 0; i < CT; ++i) {
                                        acc_t sum = 0;
                                        for (int64_t k = 0; k < tiles; ++k) sum += part[(b * tiles + k) * CT + i];
                                        gw[b * CT + i] = static_cast<scalar_t>(sum);
                                      }
                                    }
                                  });
  return {grad_regions, grad_words};
}

}  // namespace

TORCH_LIBRARY_IMPL(t2ifast, CPU, m) {
  m.impl("word_region_attention", &word_region_attention_cpu);
  m.impl("word_region_attention_backward", &word_region_attention_backward_cpu);
}

}  // namespace t2ifast
