// CIFAR-style ResNet (He et al. 2016, section 4.2): a 3x3 stem, three stages of basic blocks with
// 16/32/64 channels (x width), the second and third starting with stride 2, global average pooling
// and a linear classifier. depth = 6n + 2 (20, 32, 56, ...). Downsampling shortcuts are 1x1
// convolution + norm ("option B"). BatchNorm2d (L2) or L1BatchNorm2d by `norm`. With
// ImageLayout::nhwc the network runs channels-last after one permute of its input.
#pragma once

#include <memory>
#include <string>

#include <shiftq/shiftq.hpp>

namespace shiftq::examples {

struct ResNetOptions {
  std::int64_t depth = 20;
  std::int64_t in_channels = 1;
  std::int64_t num_classes = 10;
  std::int64_t width = 16;   // channels of the first stage
  std::string norm = "l2";   // "l2": BatchNorm2d, "l1": L1BatchNorm2d
  ImageLayout layout = ImageLayout::nchw;  // of the activations inside; the input is NCHW either way
};

inline std::shared_ptr<nn::Module> make_norm2d(const std::string& norm, std::int64_t channels, ImageLayout layout) {
  if (norm == "l1") return std::make_shared<nn::L1BatchNorm2d>(nn::L1BatchNormOptions{channels}.layout(layout));
  if (norm == "l2") return std::make_shared<nn::BatchNorm2d>(nn::BatchNormOptions{channels}.layout(layout));
  throw ValueError("unknown norm '" + norm + "' (expected l1 or l2)");
}

inline std::shared_ptr<nn::Conv2d> conv3x3(std::int64_t in, std::int64_t out, std::int64_t stride, ImageLayout layout,
                                           Generator& gen) {
  return std::make_shared<nn::Conv2d>(
      nn::Conv2dOptions{in, out, 3}.stride(stride).padding(1).bias(false).layout(layout), gen);
}

// out = relu(norm2(conv2(relu(norm1(conv1(x))))) + shortcut(x))
class BasicBlock : public nn::Module {
 public:
  BasicBlock(std::int64_t in, std::int64_t out, std::int64_t stride, const std::string& norm, ImageLayout layout,
             Generator& gen)
      : Module("BasicBlock") {
    conv1_ = register_module("conv1", conv3x3(in, out, stride, layout, gen));
    norm1_ = register_module("norm1", make_norm2d(norm, out, layout));
    conv2_ = register_module("conv2", conv3x3(out, out, 1, layout, gen));
    norm2_ = register_module("norm2", make_norm2d(norm, out, layout));
    if (stride != 1 || in != out) {
      shortcut_conv_ = register_module(
          "shortcut_conv",
          std::make_shared<nn::Conv2d>(nn::Conv2dOptions{in, out, 1}.stride(stride).bias(false).layout(layout), gen));
      shortcut_norm_ = register_module("shortcut_norm", make_norm2d(norm, out, layout));
    }
  }

  // x: [N, in, H, W] -> [N, out, H / stride, W / stride] (NHWC: [N, H, W, in] -> [N, H / stride, W / stride, out])
  Tensor forward(const Tensor& x) override {
    // conv2(relu(norm1(.))): with a quantized L1 norm the norm writes conv2's int8 input codes
    const Tensor y = nn::norm_relu_conv2d(*norm1_, *conv2_, (*conv1_)(x));
    const Tensor shortcut = shortcut_conv_ ? (*shortcut_norm_)((*shortcut_conv_)(x)) : x;
    // relu(norm2(y) + shortcut): one pass over norm2's codes with a quantized L1 norm
    return nn::norm_add_relu(*norm2_, y, shortcut);
  }

 private:
  std::shared_ptr<nn::Conv2d> conv1_, conv2_, shortcut_conv_;
  std::shared_ptr<nn::Module> norm1_, norm2_, shortcut_norm_;
};

class ResNet : public nn::Module {
 public:
  ResNet(const ResNetOptions& options, Generator& gen) : Module("ResNet"), options_(options) {
    if (options.depth < 8 || (options.depth - 2) % 6 != 0)
      throw ValueError("ResNet depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 56, ...), got " +
                       std::to_string(options.depth));
    const std::int64_t blocks_per_stage = (options.depth - 2) / 6, w = options.width;
    stem_ = register_module("stem", conv3x3(options.in_channels, w, 1, options.layout, gen));
    stem_norm_ = register_module("stem_norm", make_norm2d(options.norm, w, options.layout));
    body_ = register_module("body", std::make_shared<nn::Sequential>());
    std::int64_t channels = w;
    for (std::int64_t stage = 0; stage < 3; ++stage) {
      const std::int64_t out = w << stage;
      for (std::int64_t b = 0; b < blocks_per_stage; ++b) {
        const std::int64_t stride = (stage > 0 && b == 0) ? 2 : 1;
        body_->push_back(std::make_shared<BasicBlock>(channels, out, stride, options.norm, options.layout, gen));
        channels = out;
      }
    }
    pool_ = register_module("pool", std::make_shared<nn::GlobalAvgPool2d>(options.layout));
    fc_ = register_module("fc", std::make_shared<nn::Linear>(nn::LinearOptions{channels, options.num_classes}, gen));
  }

  // x: [N, C_in, H, W] -> logits [N, num_classes]
  Tensor forward(const Tensor& x) override {
    const Tensor input = options_.layout == ImageLayout::nhwc ? permute(x, {0, 2, 3, 1}) : x;
    Tensor y = relu((*stem_norm_)((*stem_)(input)));
    y = (*body_)(y);
    return (*fc_)(flatten((*pool_)(y), 1));
  }

  const ResNetOptions& options() const { return options_; }

 private:
  ResNetOptions options_;
  std::shared_ptr<nn::Conv2d> stem_;
  std::shared_ptr<nn::Module> stem_norm_;
  std::shared_ptr<nn::Sequential> body_;
  std::shared_ptr<nn::GlobalAvgPool2d> pool_;
  std::shared_ptr<nn::Linear> fc_;
};

}  // namespace shiftq::examples
