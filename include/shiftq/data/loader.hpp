// Mini-batches of labeled images for training and evaluation: shuffling, normalization and
// random crop / horizontal flip augmentation, reproducible from (seed, epoch, batch index).
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "shiftq/core/arg.hpp"
#include "shiftq/core/tensor.hpp"
#include "shiftq/data/idx.hpp"

namespace shiftq::data {

// One process's part of every batch in data-parallel training (rank in [0, world)).
struct Shard {
  std::int64_t rank = 0;
  std::int64_t world = 1;
};

// The samples [begin, end) of a batch of `count` that `shard` takes: consecutive slices in rank
// order, the first count % world ranks one sample larger (a rank may get none when count < world).
// Over the ranks, every sample of the batch is taken exactly once. ValueError for a bad shard.
std::pair<std::int64_t, std::int64_t> shard_range(std::int64_t count, Shard shard);

struct ImageBatch {
  Tensor images;  // f32 [B, C, H, W], normalized (and augmented)
  Tensor labels;  // s32 [B]
};

// Options of an ImageLoader. Chainable: `ImageLoaderOptions(128).shuffle(true).seed(7)`;
// `name(value)` sets an option and returns *this, `name()` reads it.
struct ImageLoaderOptions {
  explicit ImageLoaderOptions(std::int64_t batch_size) : batch_size_(batch_size) {}

  // Samples per batch; > 0.
  SHIFTQ_ARG(std::int64_t, batch_size);
  // Visit the samples in a new random order every epoch (otherwise in dataset order).
  SHIFTQ_ARG(bool, shuffle) = true;
  // Drop the last, incomplete batch of an epoch (otherwise it is returned smaller).
  SHIFTQ_ARG(bool, drop_last) = false;
  // Seeds the shuffle order and the augmentation draws.
  SHIFTQ_ARG(std::uint64_t, seed) = 0;
  // Per-channel normalization, one value or one per channel; empty = {0} / {1}. Pixels are scaled
  // to [0, 1] (v / 255) and then mapped to (x - mean[c]) / std[c]. std > 0.
  SHIFTQ_ARG(std::vector<float>, mean);
  SHIFTQ_ARG(std::vector<float>, std);
  // Random crop augmentation: the image is zero-padded (pixel value 0, before normalization) by
  // pad_crop pixels on each side and a random window of the original size is cut out. 0 = off.
  SHIFTQ_ARG(std::int64_t, pad_crop) = 0;
  // Random horizontal flip with probability 0.5 (applied after the crop).
  SHIFTQ_ARG(bool, hflip) = false;
};

// Serves the batches of one split. batch(epoch, index) is a pure function of (seed, epoch, index)
// and of the data: a resumed run sees exactly the batches of an uninterrupted one, whatever the
// thread count. The loader is safe to use from several threads; copies share the data.
class ImageLoader {
 public:
  // data.images: u8 [N, H, W] (one channel) or [N, C, H, W]; data.labels: s32 [N], in
  // [0, num_classes) when num_classes > 0. Throws ShapeError/DTypeError for tensors that do not
  // fit, ValueError for bad options (batch_size <= 0, mean/std sizes other than 1 or C, std <= 0,
  // pad_crop < 0), an empty dataset, out-of-range labels, or drop_last with fewer than batch_size
  // samples (an epoch without batches).
  ImageLoader(LabeledImages data, ImageLoaderOptions options);

  std::int64_t size() const { return n_; }  // N
  // Batches per epoch: ceil(N / batch_size), or floor with drop_last.
  std::int64_t num_batches() const;
  std::int64_t channels() const { return c_; }
  std::int64_t height() const { return h_; }
  std::int64_t width() const { return w_; }
  std::int64_t num_classes() const { return data_.num_classes; }
  const ImageLoaderOptions& options() const { return options_; }

  // Batch `index` (in [0, num_batches())) of epoch `epoch` (>= 0): images f32 [B, C, H, W],
  // labels s32 [B], with B = batch_size except for a smaller last batch. ValueError when out of range.
  ImageBatch batch(std::int64_t epoch, std::int64_t index) const;
  // The part of batch(epoch, index) that `shard` takes (shard_range): the same samples with the same
  // augmentation as in the whole batch, so the shards of all ranks together are that batch. B may be 0.
  ImageBatch batch(std::int64_t epoch, std::int64_t index, Shard shard) const;

  // The order in which epoch `epoch` visits the samples (a permutation of [0, N), or the identity
  // without shuffle): batch b holds samples order[b * batch_size ...].
  std::vector<std::int64_t> epoch_order(std::int64_t epoch) const;

 private:
  struct OrderCache;
  std::shared_ptr<const std::vector<std::int64_t>> order_for(std::int64_t epoch) const;

  LabeledImages data_;
  ImageLoaderOptions options_;
  std::int64_t n_ = 0, c_ = 1, h_ = 0, w_ = 0;
  std::vector<float> lut_;  // [C, 256]: normalized value of each pixel value per channel
  std::uint64_t shuffle_key_ = 0, augment_key_ = 0;
  std::shared_ptr<OrderCache> cache_;  // the last epoch's order (shuffling costs O(N) per epoch)
};

}  // namespace shiftq::data
