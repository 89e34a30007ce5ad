#include "shiftq/data/loader.hpp"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <numeric>
#include <string>

#include "core/parallel_for.hpp"
#include "shiftq/core/generator.hpp"

namespace shiftq::data {
namespace {
// Independent Philox streams derived from the user's seed.
constexpr std::uint64_t kShuffleStream = 0x53485546464C4531ull;  // "SHUFFLE1"
constexpr std::uint64_t kAugmentStream = 0x4155474D454E5431ull;  // "AUGMENT1"

std::uint64_t derive_key(std::uint64_t seed, std::uint64_t stream, std::uint64_t index) {
  const auto w = philox4x32(seed, stream, index);
  return (std::uint64_t{w[0]} << 32) | w[1];
}

// Maps a uniform 32-bit word to [0, n) (multiply-shift; the bias is below 2^-32 * n).
std::int64_t scale_u32(std::uint32_t word, std::int64_t n) {
  return static_cast<std::int64_t>((std::uint64_t{word} * static_cast<std::uint64_t>(n)) >> 32);
}

std::string floats_str(const std::vector<float>& v) {
  std::string s = "{";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "}";
}
}  // namespace

struct ImageLoader::OrderCache {
  std::mutex mutex;
  std::int64_t epoch = -1;
  std::shared_ptr<const std::vector<std::int64_t>> order;
};

ImageLoader::ImageLoader(LabeledImages data, ImageLoaderOptions options)
    : data_(std::move(data)), options_(std::move(options)), cache_(std::make_shared<OrderCache>()) {
  const Tensor& images = data_.images;
  const Tensor& labels = data_.labels;
  check_defined(images, "ImageLoader", "images");
  check_defined(labels, "ImageLoader", "labels");
  check_dtype(images, DType::u8, "ImageLoader", "images");
  check_dtype(labels, DType::s32, "ImageLoader", "labels");
  SHIFTQ_CHECK(images.dim() == 3 || images.dim() == 4, ShapeError,
               "ImageLoader: images must be u8 [N, H, W] or [N, C, H, W], got ", images.str());
  check_rank(labels, 1, "ImageLoader", "labels");
  n_ = images.size(0);
  c_ = images.dim() == 4 ? images.size(1) : 1;
  h_ = images.size(-2);
  w_ = images.size(-1);
  SHIFTQ_CHECK(labels.size(0) == n_, ShapeError, "ImageLoader: ", labels.size(0), " labels for ", n_,
               " images (", images.str(), ")");
  SHIFTQ_CHECK(n_ > 0, ValueError, "ImageLoader: the dataset is empty (", images.str(), ")");
  SHIFTQ_CHECK(c_ > 0 && h_ > 0 && w_ > 0, ShapeError, "ImageLoader: images have an empty dimension: ",
               images.str());
  SHIFTQ_CHECK(data_.num_classes >= 0, ValueError, "ImageLoader: num_classes must be >= 0, got ",
               data_.num_classes);
  const std::int32_t* l = labels.data<std::int32_t>();
  for (std::int64_t i = 0; i < n_; ++i) {
    SHIFTQ_CHECK(l[i] >= 0 && (data_.num_classes == 0 || l[i] < data_.num_classes), ValueError,
                 "ImageLoader: label ", l[i], " of sample ", i, " is outside [0, ",
                 data_.num_classes == 0 ? std::string("inf") : std::to_string(data_.num_classes), ")");
  }

  const std::int64_t bs = options_.batch_size();
  SHIFTQ_CHECK(bs > 0, ValueError, "ImageLoader: batch_size must be > 0, got ", bs);
  SHIFTQ_CHECK(!options_.drop_last() || bs <= n_, ValueError, "ImageLoader: drop_last with batch_size ", bs,
               " and only ", n_, " samples gives no batch at all");
  SHIFTQ_CHECK(options_.pad_crop() >= 0, ValueError, "ImageLoader: pad_crop must be >= 0, got ",
               options_.pad_crop());
  auto per_channel = [&](const std::vector<float>& v, float fallback, const char* what) {
    SHIFTQ_CHECK(v.empty() || v.size() == 1 || static_cast<std::int64_t>(v.size()) == c_, ValueError,
                 "ImageLoader: ", what, " needs 1 or ", c_, " (channels) values, got ", v.size(), " ",
                 floats_str(v));
    std::vector<float> out(static_cast<std::size_t>(c_), v.empty() ? fallback : v[0]);
    if (static_cast<std::int64_t>(v.size()) == c_) out = v;
    return out;
  };
  const std::vector<float> mean = per_channel(options_.mean(), 0.0f, "mean");
  const std::vector<float> stdev = per_channel(options_.std(), 1.0f, "std");
  for (std::size_t ch = 0; ch < mean.size(); ++ch) {
    SHIFTQ_CHECK(std::isfinite(mean[ch]), ValueError, "ImageLoader: mean must be finite, got ",
                 floats_str(options_.mean()));
    SHIFTQ_CHECK(std::isfinite(stdev[ch]) && stdev[ch] > 0.0f, ValueError,
                 "ImageLoader: std must be finite and > 0, got ", floats_str(options_.std()));
  }

  // One lookup table per channel: the hot loop is then a gather, with results identical to
  // (v / 255 - mean) / std evaluated in f32.
  lut_.resize(static_cast<std::size_t>(c_) * 256);
  for (std::int64_t ch = 0; ch < c_; ++ch)
    for (int v = 0; v < 256; ++v)
      lut_[static_cast<std::size_t>(ch * 256 + v)] =
          (static_cast<float>(v) / 255.0f - mean[static_cast<std::size_t>(ch)]) / stdev[static_cast<std::size_t>(ch)];

  shuffle_key_ = derive_key(options_.seed(), kShuffleStream, 0);
  augment_key_ = derive_key(options_.seed(), kAugmentStream, 0);
}

std::int64_t ImageLoader::num_batches() const {
  const std::int64_t bs = options_.batch_size();
  return options_.drop_last() ? n_ / bs : (n_ + bs - 1) / bs;
}

std::vector<std::int64_t> ImageLoader::epoch_order(std::int64_t epoch) const {
  SHIFTQ_CHECK(epoch >= 0, ValueError, "ImageLoader: epoch must be >= 0, got ", epoch);
  return *order_for(epoch);
}

std::shared_ptr<const std::vector<std::int64_t>> ImageLoader::order_for(std::int64_t epoch) const {
  std::lock_guard<std::mutex> lock(cache_->mutex);
  if (cache_->order && cache_->epoch == epoch) return cache_->order;
  auto order = std::make_shared<std::vector<std::int64_t>>(static_cast<std::size_t>(n_));
  std::iota(order->begin(), order->end(), std::int64_t{0});
  if (options_.shuffle()) {
    // Fisher-Yates with a generator keyed by (seed, epoch) alone.
    Generator gen(derive_key(shuffle_key_, kShuffleStream, static_cast<std::uint64_t>(epoch)));
    for (std::int64_t i = n_ - 1; i > 0; --i) {
      const auto j = static_cast<std::int64_t>(gen.randint(static_cast<std::uint64_t>(i + 1)));
      std::swap((*order)[static_cast<std::size_t>(i)], (*order)[static_cast<std::size_t>(j)]);
    }
  }
  cache_->epoch = epoch;
  cache_->order = std::move(order);
  return cache_->order;
}

std::pair<std::int64_t, std::int64_t> shard_range(std::int64_t count, Shard shard) {
  SHIFTQ_CHECK(shard.world >= 1 && shard.rank >= 0 && shard.rank < shard.world, ValueError, "shard_range: rank ",
               shard.rank, " of world ", shard.world, " is not a shard (need 0 <= rank < world)");
  SHIFTQ_CHECK(count >= 0, ValueError, "shard_range: count must be >= 0, got ", count);
  const std::int64_t base = count / shard.world, extra = count % shard.world;
  const std::int64_t begin = shard.rank * base + std::min(shard.rank, extra);
  return {begin, begin + base + (shard.rank < extra ? 1 : 0)};
}

ImageBatch ImageLoader::batch(std::int64_t epoch, std::int64_t index) const { return batch(epoch, index, Shard{}); }

ImageBatch ImageLoader::batch(std::int64_t epoch, std::int64_t index, Shard shard) const {
  SHIFTQ_CHECK(epoch >= 0, ValueError, "ImageLoader::batch: epoch must be >= 0, got ", epoch);
  const std::int64_t nb = num_batches();
  SHIFTQ_CHECK(index >= 0 && index < nb, ValueError, "ImageLoader::batch: index ", index, " is outside [0, ", nb,
               ") (", n_, " samples, batch_size ", options_.batch_size(), ")");
  const std::shared_ptr<const std::vector<std::int64_t>> order = order_for(epoch);
  const auto [part_begin, part_end] =
      shard_range(std::min(options_.batch_size(), n_ - index * options_.batch_size()), shard);
  const std::int64_t start = index * options_.batch_size() + part_begin;  // epoch position of the first sample
  const std::int64_t b = part_end - part_begin;

  ImageBatch out{Tensor::uninitialized({b, c_, h_, w_}, DType::f32), Tensor::uninitialized({b}, DType::s32)};
  const std::int64_t* ord = order->data() + start;
  std::int32_t* labels = out.labels.data<std::int32_t>();
  const std::int32_t* src_labels = data_.labels.data<std::int32_t>();
  for (std::int64_t i = 0; i < b; ++i) labels[i] = src_labels[ord[i]];

  const std::uint8_t* images = data_.images.data<std::uint8_t>();
  float* dst_all = out.images.data<float>();
  const std::int64_t h = h_, w = w_, c = c_, plane = h_ * w_, sample = c_ * plane;
  const std::int64_t pad = options_.pad_crop();
  const bool hflip = options_.hflip();
  const float* lut_all = lut_.data();
  const std::uint64_t key = augment_key_;

  detail::parallel_for(b, std::max<std::int64_t>(1, 16384 / sample), [&](std::int64_t b0, std::int64_t b1) {
    for (std::int64_t i = b0; i < b1; ++i) {
      const std::uint8_t* src = images + ord[i] * sample;
      float* dst = dst_all + i * sample;
      // Augmentation draws of the sample at position start + i of this epoch.
      std::int64_t sy = 0, sx = 0;  // source offset of the crop window
      bool flip = false;
      if (pad > 0 || hflip) {
        const auto r = philox4x32(key, static_cast<std::uint64_t>(epoch), static_cast<std::uint64_t>(start + i));
        if (pad > 0) {
          sy = scale_u32(r[0], 2 * pad + 1) - pad;
          sx = scale_u32(r[1], 2 * pad + 1) - pad;
        }
        flip = hflip && (r[2] >> 31) != 0;
      }
      if (sy == 0 && sx == 0 && !flip) {
        for (std::int64_t ch = 0; ch < c; ++ch) {
          const float* lut = lut_all + ch * 256;
          const std::uint8_t* s = src + ch * plane;
          float* d = dst + ch * plane;
          for (std::int64_t p = 0; p < plane; ++p) d[p] = lut[s[p]];
        }
        continue;
      }
      // Output column x reads source column x + sx (or w - 1 + sx - x when flipped); the columns
      // [x0, x1) are inside the source, the rest is padding.
      const std::int64_t x0 = std::clamp<std::int64_t>(flip ? sx : -sx, 0, w);
      const std::int64_t x1 = std::max(x0, std::clamp<std::int64_t>(flip ? w + sx : w - sx, 0, w));
      for (std::int64_t ch = 0; ch < c; ++ch) {
        const float* lut = lut_all + ch * 256;
        const float zero = lut[0];
        for (std::int64_t y = 0; y < h; ++y) {
          float* d = dst + ch * plane + y * w;
          const std::int64_t ys = y + sy;
          if (ys < 0 || ys >= h) {
            std::fill(d, d + w, zero);
            continue;
          }
          const std::uint8_t* s = src + ch * plane + ys * w;
          std::fill(d, d + x0, zero);
          if (flip) {
            const std::int64_t last = w - 1 + sx;
            for (std::int64_t x = x0; x < x1; ++x) d[x] = lut[s[last - x]];
          } else {
            for (std::int64_t x = x0; x < x1; ++x) d[x] = lut[s[x + sx]];
          }
          std::fill(d + x1, d + w, zero);
        }
      }
    }
  });
  return out;
}

}  // namespace shiftq::data
