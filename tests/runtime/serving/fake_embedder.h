// An EmbeddingClient for tests of the serving layer (api_server_test, the test server, the
// http_request fuzz target): embeds ids as [length, sum of ids, first id] (enough to check the
// plumbing), and classifies into 3 labels with those numbers as logits.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "runtime/serving/serving_backend.h"

namespace tessera::serving::testing {

class FakeEmbedder : public EmbeddingClient {
 public:
  void embed(std::vector<std::vector<int32_t>> inputs, Done done) override {
    std::vector<std::vector<float>> out;
    for (const auto& v : inputs) {
      float sum = 0;
      for (int32_t id : v) sum += static_cast<float>(id);
      out.push_back({static_cast<float>(v.size()), sum, v.empty() ? -1.f : v[0]});
    }
    done(std::move(out), "");
  }
  int64_t max_input_len() const override { return 512; }
  int64_t dimensions() const override { return 3; }
  std::vector<std::string> labels() const override { return {"a", "b", "c"}; }
  void classify(std::vector<std::vector<int32_t>> inputs, Done done) override {
    embed(std::move(inputs), std::move(done));
  }
};

}  // namespace tessera::serving::testing
