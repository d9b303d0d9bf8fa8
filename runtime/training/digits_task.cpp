// The digits classifier as a training task: sklearn's 8x8 digits, cross-entropy, test accuracy.
#include "common/error.h"
#include "runtime/training/digits_data.h"
#include "runtime/training/digits_model.h"
#include "runtime/training/train_task.h"

namespace tessera::training {

namespace {

class DigitsTask final : public TrainTask {
 public:
  DigitsTask(const TrainConfig& c, sharding::Communicator* tp)
      : data_(load_digits(c.data.empty() ? default_data_path("digits") : c.data)),
        stream_(data_.train.size(), c.seed),
        model_(model_config_of(c), c.seed, tp),
        augment_(c.augment),
        seed_(c.seed) {
    train_x_ = torch::from_blob(data_.train.pixels.data(), {data_.train.size(), 64}, torch::kFloat)
                   .clone();
    train_y_ =
        torch::from_blob(data_.train.labels.data(), {data_.train.size()}, torch::kLong).clone();
    test_x_ =
        torch::from_blob(data_.test.pixels.data(), {data_.test.size(), 64}, torch::kFloat).clone();
    test_y_ = torch::from_blob(data_.test.labels.data(), {data_.test.size()}, torch::kLong).clone();
  }

  static DigitsModelConfig model_config_of(const TrainConfig& c) {
    DigitsModelConfig m;
    m.dim = c.dim;
    m.depth = c.depth;
    m.heads = c.heads;
    m.mlp_ratio = c.mlp_ratio;
    m.cluster_size = c.cluster_size;
    m.nearest = c.nearest;
    return m;
  }

  ShardedParams& params() override { return model_.params(); }

  torch::Tensor loss(int64_t begin, int64_t count) override {
    std::vector<int64_t> rows(count);
    std::vector<float> pixels(count * 64, 0.0f);
    for (int64_t i = 0; i < count; ++i) {
      rows[i] = stream_.at(begin + i);
      const float* src = data_.train.pixels.data() + rows[i] * 64;
      float* dst = pixels.data() + i * 64;
      // Augmentation: a shift by -1, 0 or +1 pixel in x and y drawn from (seed, stream
      // position), so it does not depend on how the batch is split over ranks.
      int sx = 0, sy = 0;
      if (augment_) {
        const uint64_t r = mix(seed_ ^ (static_cast<uint64_t>(begin + i) * 0x9e3779b97f4a7c15ull));
        sx = static_cast<int>(r % 3) - 1;
        sy = static_cast<int>((r / 3) % 3) - 1;
      }
      for (int y = 0; y < 8; ++y) {
        for (int x = 0; x < 8; ++x) {
          const int fx = x - sx, fy = y - sy;
          if (fx >= 0 && fx < 8 && fy >= 0 && fy < 8) dst[y * 8 + x] = src[fy * 8 + fx];
        }
      }
    }
    auto x = torch::from_blob(pixels.data(), {count, 64}, torch::kFloat).clone();
    auto logits = model_.forward(x);
    return at::cross_entropy_loss(logits, train_y_.index_select(0, torch::tensor(rows)), {},
                                  at::Reduction::Mean, -100, 0.0);
  }

  static uint64_t mix(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }

  nlohmann::json evaluate(sharding::Communicator& world, int dp_rank, int dp_size) override {
    torch::NoGradGuard no_grad;
    const int64_t n = test_y_.size(0);
    double correct = 0, total = 0;
    double loss_sum = 0;
    // This data-parallel rank's rows, in chunks.
    std::vector<int64_t> rows;
    for (int64_t i = dp_rank; i < n; i += dp_size) rows.push_back(i);
    for (size_t b = 0; b < rows.size(); b += 256) {
      const int64_t m = std::min<int64_t>(256, static_cast<int64_t>(rows.size() - b));
      auto index = torch::tensor(std::vector<int64_t>(rows.begin() + b, rows.begin() + b + m));
      auto logits = model_.forward(test_x_.index_select(0, index));
      auto y = test_y_.index_select(0, index);
      correct += logits.argmax(1).eq(y).sum().item<double>();
      loss_sum +=
          at::cross_entropy_loss(logits, y, {}, at::Reduction::Sum, -100, 0.0).item<double>();
      total += m;
    }
    // Every TP rank of a data-parallel rank computed the same: count one of them.
    auto t = torch::tensor({correct, total, loss_sum}, torch::kDouble);
    if (params().tp_rank() != 0) t.zero_();
    world.all_reduce(t, sharding::ReduceOp::kSum);
    return {{"test_accuracy", t[0].item<double>() / t[1].item<double>()},
            {"test_loss", t[2].item<double>() / t[1].item<double>()}};
  }

  nlohmann::json model_config() const override { return model_.config().to_json(); }

 private:
  DigitsData data_;
  SampleStream stream_;
  DigitsClassifier model_;
  torch::Tensor train_x_, train_y_, test_x_, test_y_;
  bool augment_ = false;
  uint64_t seed_ = 0;
};

}  // namespace

std::unique_ptr<TrainTask> make_digits_task(const TrainConfig& config, sharding::Communicator* tp) {
  return std::make_unique<DigitsTask>(config, tp);
}

}  // namespace tessera::training
