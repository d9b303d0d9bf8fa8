// The encoders against outside references, under mpirun with 1, 2 and 4 ranks (heads and MLP split
// tensor-parallel): BERT classifiers made and run by Hugging Face transformers, ModernBERT
// classifiers run by the independent implementation in encoder_checkpoints.py; logits within 1e-4
// and the loss of the labels, for one packed batch and for the same inputs in other batches.
// Cluster attention whose clusters cover whole sequences equals dense attention; streamed loading
// under a tiny budget loads the same weights; bad checkpoints fail with one line naming the tensor.
#include <gtest/gtest.h>
#include <torch/types.h>

#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "runtime/models/classifier_outputs.h"
#include "runtime/models/encoder_model.h"
#include "runtime/models/model_folder.h"
#include "runtime/models/safetensors.h"
#include "sharding/mpi/mpi_communicator.h"
#include "tests/runtime/models/encoder_reference.h"

namespace tessera::models {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

json manifest(sharding::Communicator& comm, std::string* skip) {
  *skip = testing::encoder_reference_skip();
  if (!skip->empty()) return {};
  std::string path, err;
  if (comm.rank() == 0) {
    try {
      path = testing::ensure_encoder_reference();
    } catch (const std::exception& e) {
      err = e.what();
    }
  }
  err = comm.agree_on_error(err);
  if (!err.empty()) throw std::runtime_error(err);
  return testing::read_manifest(testing::encoder_reference_dir() + "/manifest.json");
}

struct Loaded {
  EncoderConfig config;
  std::unique_ptr<EncoderModel> model;
};

Loaded load(const std::string& dir, sharding::Communicator* comm, WeightLoadOptions opts = {}) {
  Loaded l;
  auto folder = ModelFolder::open(dir);
  l.config = EncoderConfig::from_file(folder.config_json());
  WeightLoader w(folder, opts);
  l.model = std::make_unique<EncoderModel>(l.config, w, comm);
  return l;
}

EncoderBatch batch_of(const json& inputs, size_t begin, size_t end) {
  std::vector<std::vector<int32_t>> ids, types;
  for (size_t i = begin; i < end; ++i) {
    ids.push_back(inputs[i]["ids"].get<std::vector<int32_t>>());
    types.push_back(inputs[i]["types"].get<std::vector<int32_t>>());
  }
  return EncoderBatch::pack(ids, types);
}

torch::Tensor tensor_of(const json& rows) {
  std::vector<torch::Tensor> r;
  for (const auto& row : rows) r.push_back(torch::tensor(row.get<std::vector<double>>()));
  return torch::stack(r).to(torch::kFloat);
}

torch::Tensor logits_of(const Loaded& l, const EncoderBatch& b) {
  return l.model->classify(l.model->forward(b), b);
}

TEST(EncoderModel, LogitsAndLossMatchTheReferenceOnEveryRankCount) {
  torch::NoGradGuard g;
  sharding::MpiCommunicator comm;
  std::string skip;
  const json models = manifest(comm, &skip);
  if (!skip.empty()) GTEST_SKIP() << skip;
  for (const auto& m : models) {
    SCOPED_TRACE(m["name"].get<std::string>());
    const Loaded l = load(m["dir"], &comm);
    EXPECT_TRUE(l.config.has_classifier);
    EXPECT_EQ(l.config.num_labels, m["num_labels"].get<int64_t>());
    const auto& inputs = m["inputs"];
    const auto ref = tensor_of(m["logits"]);
    // All inputs in one packed batch.
    auto logits = logits_of(l, batch_of(inputs, 0, inputs.size()));
    const double err = (logits - ref).abs().max().item<double>();
    EXPECT_LT(err, 1e-4) << "max |logit error| " << err;
    // The same inputs in other batches of mixed lengths give the same logits (no padding, no
    // cross-talk between packed sequences).
    const size_t cut = inputs.size() / 3;
    auto a = logits_of(l, batch_of(inputs, 0, cut));
    auto b = logits_of(l, batch_of(inputs, cut, inputs.size()));
    EXPECT_LT((torch::cat({a, b}) - logits).abs().max().item<double>(), 1e-5);
    // The loss of the labels, as *ForSequenceClassification computes it.
    torch::Tensor labels;
    if (m["integer_labels"].get<bool>()) {
      labels = torch::tensor(m["labels"].get<std::vector<int64_t>>(), torch::kLong);
    } else if (m["labels"][0].is_array()) {
      labels = tensor_of(m["labels"]);
    } else {
      labels = torch::tensor(m["labels"].get<std::vector<double>>()).to(torch::kFloat);
    }
    const double loss = classifier_loss(logits, labels, l.config);
    EXPECT_NEAR(loss, m["loss"].get<double>(), 1e-4);
    if (comm.rank() == 0) {
      std::printf("[ figures  ] %s: max |logit - reference| = %.2e, loss %.6f vs %.6f (%d ranks)\n",
                  m["name"].get<std::string>().c_str(), err, loss, m["loss"].get<double>(),
                  comm.size());
    }
  }
}

TEST(EncoderModel, ClusterAttentionCoveringWholeSequencesEqualsDense) {
  torch::NoGradGuard g;
  sharding::MpiCommunicator comm;
  std::string skip;
  const json models = manifest(comm, &skip);
  if (!skip.empty()) GTEST_SKIP() << skip;
  for (const auto& m : models) {
    if (m["name"] != "bert_single" && m["name"] != "modernbert_cls") continue;
    SCOPED_TRACE(m["name"].get<std::string>());
    Loaded l = load(m["dir"], &comm);
    const auto batch = batch_of(m["inputs"], 0, m["inputs"].size());
    const auto dense = logits_of(l, batch);
    EncoderAttentionChoice all{EncoderAttentionChoice::Kind::kCluster, 4, 1000};
    l.model->set_attention(all);
    const auto cluster_all = logits_of(l, batch);
    EXPECT_LT((cluster_all - dense).abs().max().item<double>(), 1e-5);
    // Fewer clusters than a sequence has: a different (sparser) attention, still finite.
    l.model->set_attention({EncoderAttentionChoice::Kind::kCluster, 4, 2});
    const auto cluster_near = logits_of(l, batch);
    EXPECT_TRUE(torch::isfinite(cluster_near).all().item<bool>());
    EXPECT_GT((cluster_near - dense).abs().max().item<double>(), 1e-3);
  }
}

TEST(EncoderModel, ClusterNeighboursAreTheNearestClustersOfTheSequence) {
  // Sequences of 10 and 3 tokens, clusters of 4: [0-3][4-7][8-9] and [0-2].
  auto cu = torch::tensor(std::vector<int32_t>{0, 10, 13}, torch::kInt);
  auto [idx, mask] = cluster_neighbours(cu, 4, 2, -1);
  auto neighbours = [&](int64_t n) {
    std::vector<int64_t> out;
    for (int64_t j = 0; j < idx.size(2); ++j) {
      if (mask[0][0][n][j].item<bool>()) out.push_back(idx[0][n][j].item<int64_t>());
    }
    return out;
  };
  // Token 0 (cluster 0, centre 1.5): itself and cluster 1 (centre 5.5).
  EXPECT_EQ(neighbours(0), (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  // Token 9 (cluster 2, centre 8.5): cluster 1 (5.5) and itself.
  EXPECT_EQ(neighbours(9), (std::vector<int64_t>{4, 5, 6, 7, 8, 9}));
  // Token 11 (second sequence): only its own sequence.
  EXPECT_EQ(neighbours(11), (std::vector<int64_t>{10, 11, 12}));
  // A window keeps |i - j| <= w of the clusters' tokens.
  auto [widx, wmask] = cluster_neighbours(cu, 4, 2, 1);
  std::vector<int64_t> w0;
  for (int64_t j = 0; j < widx.size(2); ++j) {
    if (wmask[0][0][0][j].item<bool>()) w0.push_back(widx[0][0][j].item<int64_t>());
  }
  EXPECT_EQ(w0, (std::vector<int64_t>{0, 1}));
}

TEST(EncoderModel, StreamedLoadUnderATinyBudgetLoadsTheSameWeights) {
  torch::NoGradGuard g;
  sharding::MpiCommunicator comm;
  std::string skip;
  const json models = manifest(comm, &skip);
  if (!skip.empty()) GTEST_SKIP() << skip;
  for (const auto& m : models) {
    SCOPED_TRACE(m["name"].get<std::string>());
    const auto batch = batch_of(m["inputs"], 0, m["inputs"].size());
    const Loaded whole = load(m["dir"], &comm);
    // 4 KiB: chunks of a few rows, each released after its copy, into transposed destinations.
    const Loaded streamed = load(m["dir"], &comm, {.memory_budget = 4096});
    EXPECT_TRUE(torch::equal(logits_of(whole, batch), logits_of(streamed, batch)));
  }
}

// A copy of `dir` whose model.safetensors is rewritten by `edit` (over name -> tensor).
std::string edited_copy(const std::string& dir, const std::string& tag, int rank,
                        const std::function<void(std::vector<TensorToWrite>&)>& edit) {
  const std::string out =
      (fs::temp_directory_path() / ("tessera_bad_encoder_" + tag + "_" + std::to_string(rank)))
          .string();
  fs::remove_all(out);
  fs::create_directories(out);
  fs::copy_file(dir + "/config.json", out + "/config.json");
  auto f = SafetensorsFile::open(dir + "/model.safetensors");
  std::vector<TensorToWrite> tensors;
  for (const auto& name : f->names()) {
    const auto& e = f->get(name);
    tensors.push_back({name, e.dtype, e.shape, std::vector<uint8_t>(e.data, e.data + e.nbytes)});
  }
  edit(tensors);
  write_safetensors(out + "/model.safetensors", tensors);
  return out;
}

std::string load_error(const std::string& dir) {
  try {
    load(dir, nullptr);
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

TEST(EncoderModel, BadCheckpointsFailWithOneLineNamingTheTensor) {
  sharding::MpiCommunicator comm;
  std::string skip;
  const json models = manifest(comm, &skip);
  if (!skip.empty()) GTEST_SKIP() << skip;
  const std::string good = testing::encoder_reference_dir() + "/bert_single";
  const int r = comm.rank();
  const std::string missing = "encoder.layer.1.attention.self.key.weight";
  auto err = load_error(edited_copy(good, "missing", r, [&](auto& t) {
    std::erase_if(t, [&](const TensorToWrite& x) { return x.name == "bert." + missing; });
  }));
  EXPECT_NE(err.find("checkpoint has no tensor 'bert." + missing + "'"), std::string::npos) << err;
  EXPECT_EQ(err.find('\n'), std::string::npos);

  err = load_error(edited_copy(good, "shape", r, [&](auto& t) {
    for (auto& x : t) {
      if (x.name == "bert.encoder.layer.0.intermediate.dense.weight") {
        x.shape = {64, 128};  // transposed
      }
    }
  }));
  EXPECT_NE(err.find("tensor 'bert.encoder.layer.0.intermediate.dense.weight' has shape [64, 128] "
                     "but the config implies [128, 64]"),
            std::string::npos)
      << err;

  err = load_error(edited_copy(good, "extra", r, [&](auto& t) {
    t.push_back(
        {"bert.encoder.layer.7.output.dense.weight", DType::kF32, {1}, std::vector<uint8_t>(4, 0)});
  }));
  EXPECT_NE(err.find("checkpoint tensor 'bert.encoder.layer.7.output.dense.weight' is not used"),
            std::string::npos)
      << err;

  const std::string gpt = edited_copy(good, "arch", r, [](auto&) {});
  {
    std::ifstream in(gpt + "/config.json");
    auto j = json::parse(in);
    j["model_type"] = "gpt2";
    std::ofstream(gpt + "/config.json") << j.dump();
  }
  err = load_error(gpt);
  EXPECT_NE(err.find("model_type='gpt2' is not an encoder Tessera runs (bert, modernbert)"),
            std::string::npos)
      << err;
}

}  // namespace
}  // namespace tessera::models
