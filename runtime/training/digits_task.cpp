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
        model_(model_config_of(c), c.seed, tp) {
    train_x_ = torch::from_blob(data_.train.pixels.data(), {data_.train.size(), 64}, torch::kFloat)
                   .clone();
    train_y_ = torch::from_blob(data_.train.labels.data(), {data_.train.size()}, torch::kLong)
                   .clone();
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
    for (int64_t i = 0; i < count; ++i) rows[i] = stream_.at(begin + i);
    auto index = torch::tensor(rows, torch::kLong);
    auto logits = model_.forward(train_x_.index_select(0, index));
    return at::cross_entropy_loss(logits, train_y_.index_select(0, index), {},
                                  at::Reduction::Mean, -100, 0.0);
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
      loss_sum += at::cross_entropy_loss(logits, y, {}, at::Reduction::Sum, -100, 0.0)
                      .item<double>();
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
};

}  // namespace

std::unique_ptr<TrainTask> make_digits_task(const TrainConfig& config,
                                            sharding::Communicator* tp) {
  return std::make_unique<DigitsTask>(config, tp);
}

}  // namespace tessera::training
