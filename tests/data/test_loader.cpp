// ImageLoader: batch shapes and exact normalization, per-epoch shuffling, reproducibility across
// calls and thread counts, drop_last, and the crop / flip augmentation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "shiftq/core/parallel.hpp"
#include "testing/gradcheck.hpp"

namespace shiftq {
namespace {
using data::ImageBatch;
using data::ImageLoader;
using data::ImageLoaderOptions;
using data::LabeledImages;

// n images of shape `image_shape` ([H, W] or [C, H, W]) with pixels drawn from [lo, hi], and
// label i for image i (num_classes = n), so every sample is identifiable from its label.
LabeledImages random_images(std::int64_t n, const Shape& image_shape, std::uint64_t seed, int lo = 0, int hi = 255) {
  Shape shape{n};
  shape.insert(shape.end(), image_shape.begin(), image_shape.end());
  Tensor images = Tensor::zeros(shape, DType::u8);
  Generator gen(seed);
  std::uint8_t* p = images.data<std::uint8_t>();
  for (std::int64_t i = 0; i < images.numel(); ++i)
    p[i] = static_cast<std::uint8_t>(lo + static_cast<int>(gen.randint(static_cast<std::uint64_t>(hi - lo + 1))));
  std::vector<std::int32_t> labels(static_cast<std::size_t>(n));
  std::iota(labels.begin(), labels.end(), 0);
  return {images, Tensor::from_vector(labels, {n}), n};
}

float normalized(std::uint8_t v, float mean, float std) { return (static_cast<float>(v) / 255.0f - mean) / std; }

void expect_bit_identical(const ImageBatch& a, const ImageBatch& b) {
  ASSERT_EQ(a.images.shape(), b.images.shape());
  ASSERT_EQ(a.labels.shape(), b.labels.shape());
  EXPECT_EQ(std::memcmp(a.images.data<float>(), b.images.data<float>(), a.images.nbytes()), 0);
  EXPECT_EQ(a.labels.to_vector<std::int32_t>(), b.labels.to_vector<std::int32_t>());
}

std::vector<std::int32_t> epoch_labels(const ImageLoader& loader, std::int64_t epoch) {
  std::vector<std::int32_t> all;
  for (std::int64_t b = 0; b < loader.num_batches(); ++b) {
    const std::vector<std::int32_t> l = loader.batch(epoch, b).labels.to_vector<std::int32_t>();
    all.insert(all.end(), l.begin(), l.end());
  }
  return all;
}

TEST(ImageLoader, BatchShapesAndExactNormalization) {
  // 3 one-channel 2x2 images given as [N, H, W].
  Tensor images = Tensor::zeros({3, 2, 2}, DType::u8);
  const std::vector<std::uint8_t> px{0, 255, 51, 102, 1, 2, 3, 4, 200, 100, 50, 25};
  std::copy(px.begin(), px.end(), images.data<std::uint8_t>());
  LabeledImages d{images, Tensor::from_vector(std::vector<std::int32_t>{7, 0, 3}, {3}), 10};
  ImageLoader loader(d, ImageLoaderOptions(2).shuffle(false).mean({0.5f}).std({0.25f}));
  EXPECT_EQ(loader.size(), 3);
  EXPECT_EQ(loader.num_batches(), 2);
  EXPECT_EQ(loader.channels(), 1);

  const ImageBatch b0 = loader.batch(0, 0);
  ASSERT_EQ(b0.images.dtype(), DType::f32);
  ASSERT_EQ(b0.images.shape(), (Shape{2, 1, 2, 2}));
  ASSERT_EQ(b0.labels.dtype(), DType::s32);
  EXPECT_EQ(b0.labels.to_vector<std::int32_t>(), (std::vector<std::int32_t>{7, 0}));
  const std::vector<float> v0 = b0.images.to_vector<float>();
  for (std::size_t i = 0; i < 8; ++i) EXPECT_EQ(v0[i], normalized(px[i], 0.5f, 0.25f)) << i;
  EXPECT_EQ(v0[0], -2.0f);  // (0 - 0.5) / 0.25
  EXPECT_EQ(v0[1], 2.0f);   // (1 - 0.5) / 0.25

  const ImageBatch b1 = loader.batch(0, 1);  // the smaller last batch
  ASSERT_EQ(b1.images.shape(), (Shape{1, 1, 2, 2}));
  EXPECT_EQ(b1.labels.to_vector<std::int32_t>(), (std::vector<std::int32_t>{3}));
  const std::vector<float> v1 = b1.images.to_vector<float>();
  for (std::size_t i = 0; i < 4; ++i) EXPECT_EQ(v1[i], normalized(px[8 + i], 0.5f, 0.25f)) << i;

  // Defaults: plain scaling to [0, 1].
  ImageLoader plain(d, ImageLoaderOptions(3).shuffle(false));
  const std::vector<float> v = plain.batch(5, 0).images.to_vector<float>();
  for (std::size_t i = 0; i < px.size(); ++i) EXPECT_EQ(v[i], static_cast<float>(px[i]) / 255.0f) << i;
  EXPECT_EQ(v[1], 1.0f);
}

TEST(ImageLoader, PerChannelNormalization) {
  const LabeledImages d = random_images(4, {3, 5, 4}, 11);
  const std::vector<float> mean{0.1f, 0.2f, 0.3f}, stdev{0.5f, 0.25f, 2.0f};
  ImageLoader loader(d, ImageLoaderOptions(4).shuffle(false).mean(mean).std(stdev));
  const ImageBatch b = loader.batch(0, 0);
  ASSERT_EQ(b.images.shape(), (Shape{4, 3, 5, 4}));
  const std::uint8_t* src = d.images.data<std::uint8_t>();
  const float* out = b.images.data<float>();
  for (std::int64_t i = 0; i < b.images.numel(); ++i) {
    const std::size_t ch = static_cast<std::size_t>((i / 20) % 3);
    ASSERT_EQ(out[i], normalized(src[i], mean[ch], stdev[ch])) << "element " << i;
  }
  // A single value applies to every channel.
  ImageLoader shared(d, ImageLoaderOptions(4).shuffle(false).mean({0.5f}).std({0.5f}));
  const ImageBatch b2 = shared.batch(0, 0);
  const float* out2 = b2.images.data<float>();
  for (std::int64_t i = 0; i < b.images.numel(); ++i) ASSERT_EQ(out2[i], normalized(src[i], 0.5f, 0.5f));
}

TEST(ImageLoader, EveryEpochIsAPermutation) {
  const LabeledImages d = random_images(37, {3, 3}, 1);
  ImageLoader loader(d, ImageLoaderOptions(5).seed(42));
  EXPECT_EQ(loader.num_batches(), 8);
  std::vector<std::int32_t> identity(37);
  std::iota(identity.begin(), identity.end(), 0);
  for (std::int64_t epoch = 0; epoch < 4; ++epoch) {
    std::vector<std::int32_t> seen = epoch_labels(loader, epoch);
    ASSERT_EQ(seen.size(), 37u);
    // The batch holds the samples named by epoch_order(), with their own images.
    const std::vector<std::int64_t> order = loader.epoch_order(epoch);
    for (std::size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], order[i]);
    EXPECT_NE(seen, identity) << "epoch " << epoch << " is not shuffled";
    std::sort(seen.begin(), seen.end());
    EXPECT_EQ(seen, identity) << "epoch " << epoch << " is not a permutation";
  }
  const ImageBatch b = loader.batch(2, 3);
  const std::uint8_t* src = d.images.data<std::uint8_t>();
  for (std::int64_t i = 0; i < 5; ++i) {
    const std::int32_t id = b.labels.data<std::int32_t>()[i];
    for (std::int64_t p = 0; p < 9; ++p)
      EXPECT_EQ(b.images.data<float>()[i * 9 + p], static_cast<float>(src[id * 9 + p]) / 255.0f);
  }
}

TEST(ImageLoader, EpochsAndSeedsGiveDifferentOrders) {
  const LabeledImages d = random_images(50, {2, 2}, 2);
  ImageLoader loader(d, ImageLoaderOptions(10).seed(7));
  const auto e0 = epoch_labels(loader, 0), e1 = epoch_labels(loader, 1), e2 = epoch_labels(loader, 2);
  EXPECT_NE(e0, e1);
  EXPECT_NE(e1, e2);
  EXPECT_NE(e0, e2);
  ImageLoader other_seed(d, ImageLoaderOptions(10).seed(8));
  EXPECT_NE(epoch_labels(other_seed, 0), e0);
  // Without shuffle every epoch is in dataset order.
  ImageLoader ordered(d, ImageLoaderOptions(10).shuffle(false).seed(7));
  std::vector<std::int32_t> identity(50);
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_EQ(epoch_labels(ordered, 0), identity);
  EXPECT_EQ(epoch_labels(ordered, 3), identity);
}

TEST(ImageLoader, BatchesArePureFunctionsOfSeedEpochIndex) {
  const LabeledImages d = random_images(40, {3, 8, 8}, 3);
  const auto options = ImageLoaderOptions(16).seed(99).pad_crop(2).hflip(true).mean({0.4f}).std({0.2f});
  ImageLoader a(d, options);
  ImageLoader b(d, options);
  const ImageBatch first = a.batch(3, 1);
  // A fresh loader, or the same one after visiting other epochs, gives the same bits.
  expect_bit_identical(b.batch(3, 1), first);
  a.batch(0, 0);
  a.batch(4, 2);
  expect_bit_identical(a.batch(3, 1), first);
  ImageLoader copy = a;  // copies share the data and reproduce the batches
  expect_bit_identical(copy.batch(3, 1), first);
  // Another epoch or seed differs.
  const ImageBatch other_epoch = a.batch(4, 1);
  EXPECT_NE(std::memcmp(other_epoch.images.data<float>(), first.images.data<float>(), first.images.nbytes()), 0);
  ImageLoader c(d, ImageLoaderOptions(16).seed(100).pad_crop(2).hflip(true).mean({0.4f}).std({0.2f}));
  const ImageBatch other_seed = c.batch(3, 1);
  EXPECT_NE(std::memcmp(other_seed.images.data<float>(), first.images.data<float>(), first.images.nbytes()), 0);
}

TEST(ImageLoader, IndependentOfThreadCount) {
  const int saved = get_num_threads();
  const LabeledImages d = random_images(200, {3, 16, 16}, 4);
  ImageLoader loader(d, ImageLoaderOptions(96).seed(5).pad_crop(3).hflip(true).mean({0.5f, 0.4f, 0.3f}));
  std::vector<ImageBatch> one, two;
  set_num_threads(1);
  for (std::int64_t b = 0; b < loader.num_batches(); ++b) one.push_back(loader.batch(1, b));
  set_num_threads(2);
  for (std::int64_t b = 0; b < loader.num_batches(); ++b) two.push_back(loader.batch(1, b));
  set_num_threads(saved);
  ASSERT_EQ(one.size(), 3u);
  for (std::size_t b = 0; b < one.size(); ++b) expect_bit_identical(one[b], two[b]);
}

TEST(ImageLoader, DropLastCounts) {
  const LabeledImages d = random_images(10, {2, 2}, 5);
  ImageLoader keep(d, ImageLoaderOptions(3).shuffle(false));
  ImageLoader drop(d, ImageLoaderOptions(3).shuffle(false).drop_last(true));
  EXPECT_EQ(keep.num_batches(), 4);
  EXPECT_EQ(drop.num_batches(), 3);
  EXPECT_EQ(keep.batch(0, 3).labels.to_vector<std::int32_t>(), (std::vector<std::int32_t>{9}));
  EXPECT_EQ(drop.batch(0, 2).labels.to_vector<std::int32_t>(), (std::vector<std::int32_t>{6, 7, 8}));
  EXPECT_THROW(drop.batch(0, 3), ValueError);
  EXPECT_THROW(keep.batch(0, 4), ValueError);
  EXPECT_THROW(keep.batch(0, -1), ValueError);
  EXPECT_THROW(keep.batch(-1, 0), ValueError);
  EXPECT_EQ(ImageLoader(d, ImageLoaderOptions(5).drop_last(true)).num_batches(), 2);
  EXPECT_EQ(ImageLoader(d, ImageLoaderOptions(10).drop_last(true)).num_batches(), 1);
  EXPECT_EQ(ImageLoader(d, ImageLoaderOptions(64)).num_batches(), 1);
  EXPECT_THROW(ImageLoader(d, ImageLoaderOptions(11).drop_last(true)), ValueError);  // no batch at all
}

TEST(ImageLoader, PadZeroWithoutFlipIsIdentity) {
  const LabeledImages d = random_images(12, {3, 7, 5}, 6);
  ImageLoader augmenting(d, ImageLoaderOptions(12).shuffle(false).pad_crop(0).hflip(false).seed(3));
  const ImageBatch b = augmenting.batch(2, 0);
  const std::uint8_t* src = d.images.data<std::uint8_t>();
  for (std::int64_t i = 0; i < b.images.numel(); ++i)
    ASSERT_EQ(b.images.data<float>()[i], static_cast<float>(src[i]) / 255.0f) << i;
}

// For each sample of `b` (dataset order, one channel of h x w, pixels >= 1), the crop shift and
// flip that explain it: out(y, x) = orig(y + sy, xs + sx) with xs = flip ? w - 1 - x : x, and the
// padding value outside the image. Fails unless exactly one (sy, sx, flip) with |s| <= pad fits.
struct Placement {
  std::int64_t sy, sx;
  bool flip;
};
std::vector<Placement> find_placements(const ImageBatch& b, const LabeledImages& d, std::int64_t pad, float mean,
                                       float std, bool allow_flip) {
  const std::int64_t n = b.images.size(0), h = b.images.size(2), w = b.images.size(3);
  const std::uint8_t* src = d.images.data<std::uint8_t>();
  const float* out = b.images.data<float>();
  const float padding = normalized(0, mean, std);
  std::vector<Placement> found;
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int32_t id = b.labels.data<std::int32_t>()[i];
    std::vector<Placement> fits;
    for (int f = 0; f <= (allow_flip ? 1 : 0); ++f)
      for (std::int64_t sy = -pad; sy <= pad; ++sy)
        for (std::int64_t sx = -pad; sx <= pad; ++sx) {
          bool ok = true;
          for (std::int64_t y = 0; y < h && ok; ++y)
            for (std::int64_t x = 0; x < w && ok; ++x) {
              const std::int64_t ys = y + sy, xs = (f ? w - 1 - x : x) + sx;
              const float expected = ys >= 0 && ys < h && xs >= 0 && xs < w
                                         ? normalized(src[(id * h + ys) * w + xs], mean, std)
                                         : padding;
              ok = out[(i * h + y) * w + x] == expected;
            }
          if (ok) fits.push_back({sy, sx, f == 1});
        }
    // Several placements fit only an all-padding output (a shift by at least the image size).
    const bool all_padding = std::all_of(fits.begin(), fits.end(), [&](const Placement& p) {
      return std::abs(p.sy) >= h || std::abs(p.sx) >= w;
    });
    EXPECT_TRUE(fits.size() == 1 || (fits.size() > 1 && all_padding))
        << "sample " << i << " (image " << id << ") matches " << fits.size() << " placements";
    if (!fits.empty()) found.push_back(fits[0]);
  }
  return found;
}

TEST(ImageLoader, FlipMirrorsTheImage) {
  const LabeledImages d = random_images(64, {1, 4, 6}, 7, 1, 255);
  ImageLoader loader(d, ImageLoaderOptions(64).shuffle(false).hflip(true).seed(1));
  const ImageBatch b = loader.batch(0, 0);
  const std::uint8_t* src = d.images.data<std::uint8_t>();
  int flipped = 0, kept = 0;
  for (std::int64_t i = 0; i < 64; ++i) {
    const float* out = b.images.data<float>() + i * 24;
    bool same = true, mirrored = true;
    for (std::int64_t y = 0; y < 4; ++y)
      for (std::int64_t x = 0; x < 6; ++x) {
        same = same && out[y * 6 + x] == static_cast<float>(src[i * 24 + y * 6 + x]) / 255.0f;
        mirrored = mirrored && out[y * 6 + x] == static_cast<float>(src[i * 24 + y * 6 + (5 - x)]) / 255.0f;
      }
    EXPECT_TRUE(same != mirrored) << "sample " << i << " is neither the image nor its mirror";
    flipped += mirrored;
    kept += same;
  }
  EXPECT_GT(flipped, 10);  // p = 0.5 each
  EXPECT_GT(kept, 10);
}

TEST(ImageLoader, CropIsAShiftedWindowWithZeroPadding) {
  const std::int64_t pad = 2;
  const LabeledImages d = random_images(60, {6, 7}, 8, 1, 255);  // no pixel is 0, so padding stands out
  ImageLoader loader(d, ImageLoaderOptions(30).shuffle(false).pad_crop(pad).seed(2));
  std::set<std::pair<std::int64_t, std::int64_t>> shifts;
  for (std::int64_t batch = 0; batch < 2; ++batch) {
    const ImageBatch b = loader.batch(0, batch);
    ASSERT_EQ(b.images.shape(), (Shape{30, 1, 6, 7}));
    for (const Placement& p : find_placements(b, d, pad, 0.0f, 1.0f, false)) shifts.insert({p.sy, p.sx});
  }
  EXPECT_GT(shifts.size(), 8u) << "crop offsets do not vary";  // 25 possible shifts, 60 draws
  bool padded = false;
  for (const auto& [sy, sx] : shifts) padded = padded || sy != 0 || sx != 0;
  EXPECT_TRUE(padded);

  // With a flip and a mean: padding is raw pixel value 0, normalized like every pixel.
  ImageLoader both(d, ImageLoaderOptions(60).shuffle(false).pad_crop(pad).hflip(true).mean({0.5f}).std({0.5f}).seed(4));
  const std::vector<Placement> placements = find_placements(both.batch(1, 0), d, pad, 0.5f, 0.5f, true);
  ASSERT_EQ(placements.size(), 60u);
  const auto flips = std::count_if(placements.begin(), placements.end(), [](const Placement& p) { return p.flip; });
  EXPECT_GT(flips, 10);
  EXPECT_LT(flips, 50);
}

TEST(ImageLoader, PaddingLargerThanTheImage) {
  const LabeledImages d = random_images(20, {3, 3}, 9, 1, 255);
  ImageLoader loader(d, ImageLoaderOptions(20).shuffle(false).pad_crop(5).hflip(true));
  const std::vector<Placement> placements = find_placements(loader.batch(0, 0), d, 5, 0.0f, 1.0f, true);
  EXPECT_EQ(placements.size(), 20u);
  const auto blank = std::count_if(placements.begin(), placements.end(),
                                   [](const Placement& p) { return std::abs(p.sy) >= 3 || std::abs(p.sx) >= 3; });
  EXPECT_GT(blank, 0);  // most windows miss the 3x3 image entirely (P = 1 - (5/11)^2)
  EXPECT_LT(blank, 20);
}

TEST(ImageLoader, BadInputsThrow) {
  const LabeledImages d = random_images(6, {3, 4, 4}, 10);
  EXPECT_THROW(ImageLoader(d, ImageLoaderOptions(0)), ValueError);
  EXPECT_THROW(ImageLoader(d, ImageLoaderOptions(-2)), ValueError);
  EXPECT_THROW(ImageLoader(d, ImageLoaderOptions(2).mean({0.1f, 0.2f})), ValueError);  // 2 values, 3 channels
  EXPECT_THROW(ImageLoader(d, ImageLoaderOptions(2).std({1.0f, 1.0f, 1.0f, 1.0f})), ValueError);
  EXPECT_THROW(ImageLoader(d, ImageLoaderOptions(2).std({0.0f})), ValueError);
  EXPECT_THROW(ImageLoader(d, ImageLoaderOptions(2).std({1.0f, -1.0f, 1.0f})), ValueError);
  EXPECT_THROW(ImageLoader(d, ImageLoaderOptions(2).mean({NAN})), ValueError);
  EXPECT_THROW(ImageLoader(d, ImageLoaderOptions(2).pad_crop(-1)), ValueError);
  EXPECT_NO_THROW(ImageLoader(d, ImageLoaderOptions(2).mean({0.1f, 0.2f, 0.3f}).std({0.5f})));
  try {
    ImageLoader(d, ImageLoaderOptions(2).mean({0.1f, 0.2f}));
    ADD_FAILURE() << "no ValueError for 2 mean values and 3 channels";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("mean"), std::string::npos) << e.what();
  }

  LabeledImages f32 = d;
  f32.images = d.images.to(DType::f32);
  EXPECT_THROW(ImageLoader(f32, ImageLoaderOptions(2)), DTypeError);
  LabeledImages rank2 = d;
  rank2.images = Tensor::zeros({6, 48}, DType::u8);
  EXPECT_THROW(ImageLoader(rank2, ImageLoaderOptions(2)), ShapeError);
  LabeledImages rank5 = d;
  rank5.images = Tensor::zeros({6, 1, 3, 4, 4}, DType::u8);
  EXPECT_THROW(ImageLoader(rank5, ImageLoaderOptions(2)), ShapeError);
  LabeledImages few_labels = d;
  few_labels.labels = Tensor::from_vector(std::vector<std::int32_t>{0, 1, 2}, {3});
  EXPECT_THROW(ImageLoader(few_labels, ImageLoaderOptions(2)), ShapeError);
  LabeledImages labels2d = d;
  labels2d.labels = Tensor::from_vector(std::vector<std::int32_t>{0, 1, 2, 3, 4, 5}, {6, 1});
  EXPECT_THROW(ImageLoader(labels2d, ImageLoaderOptions(2)), ShapeError);
  LabeledImages float_labels = d;
  float_labels.labels = d.labels.to(DType::f32);
  EXPECT_THROW(ImageLoader(float_labels, ImageLoaderOptions(2)), DTypeError);
  LabeledImages bad_label = d;
  bad_label.labels = Tensor::from_vector(std::vector<std::int32_t>{0, 1, 2, 3, 4, 6}, {6});  // num_classes 6
  EXPECT_THROW(ImageLoader(bad_label, ImageLoaderOptions(2)), ValueError);
  bad_label.labels = Tensor::from_vector(std::vector<std::int32_t>{0, 1, -1, 3, 4, 5}, {6});
  EXPECT_THROW(ImageLoader(bad_label, ImageLoaderOptions(2)), ValueError);
  LabeledImages empty = d;
  empty.images = Tensor::zeros({0, 3, 4, 4}, DType::u8);
  empty.labels = Tensor::zeros({0}, DType::s32);
  EXPECT_THROW(ImageLoader(empty, ImageLoaderOptions(2)), ValueError);
  EXPECT_THROW(ImageLoader(LabeledImages{}, ImageLoaderOptions(2)), ValueError);
}

TEST(ImageLoader, OptionsAreChainable) {
  const auto o = ImageLoaderOptions(8).shuffle(false).drop_last(true).seed(5).mean({0.5f}).std({0.2f}).pad_crop(4).hflip(true);
  EXPECT_EQ(o.batch_size(), 8);
  EXPECT_FALSE(o.shuffle());
  EXPECT_TRUE(o.drop_last());
  EXPECT_EQ(o.seed(), 5u);
  EXPECT_EQ(o.mean(), std::vector<float>{0.5f});
  EXPECT_EQ(o.std(), std::vector<float>{0.2f});
  EXPECT_EQ(o.pad_crop(), 4);
  EXPECT_TRUE(o.hflip());
  const ImageLoaderOptions defaults(3);
  EXPECT_TRUE(defaults.shuffle());
  EXPECT_FALSE(defaults.drop_last());
  EXPECT_EQ(defaults.seed(), 0u);
  EXPECT_TRUE(defaults.mean().empty());
  EXPECT_EQ(defaults.pad_crop(), 0);
  EXPECT_FALSE(defaults.hflip());
}

}  // namespace
}  // namespace shiftq
