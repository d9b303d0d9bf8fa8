// The built-in tiny model: written once, byte-identical in two folders, and consistent with its
// own config (tensor names, shapes, parameter count).
#include "runtime/models/tiny_model.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "runtime/models/model_config.h"
#include "runtime/models/safetensors.h"

namespace tessera::models {
namespace {

TEST(TinyModel, WrittenOnceDeterministicAndLoadable) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / "tessera_tiny_test_a";
  const fs::path dir2 = fs::temp_directory_path() / "tessera_tiny_test_b";
  fs::remove_all(dir);
  fs::remove_all(dir2);
  ensure_tiny_model(dir.string());
  ensure_tiny_model(dir2.string());
  const auto t1 = fs::last_write_time(dir / "model.safetensors");
  ensure_tiny_model(dir.string());  // already there: not rewritten
  EXPECT_EQ(fs::last_write_time(dir / "model.safetensors"), t1);

  auto a = SafetensorsFile::open((dir / "model.safetensors").string());
  auto b = SafetensorsFile::open((dir2 / "model.safetensors").string());
  const auto config = ModelConfig::from_file((dir / "config.json").string());
  EXPECT_EQ(a->names(), b->names());
  for (const auto& n : a->names()) {
    ASSERT_EQ(a->get(n).nbytes, b->get(n).nbytes) << n;
    EXPECT_EQ(std::memcmp(a->get(n).data, b->get(n).data, a->get(n).nbytes), 0) << n;
  }
  EXPECT_EQ(a->get("model.embed_tokens.weight").shape,
            (std::vector<int64_t>{config.vocab_size, config.hidden_size}));
  EXPECT_EQ(a->names().size(), static_cast<size_t>(3 + 12 * config.num_hidden_layers));
  int64_t params = 0;
  for (const auto& n : a->names()) params += a->get(n).numel();
  EXPECT_EQ(params, config.num_params());
  fs::remove_all(dir);
  fs::remove_all(dir2);
}

}  // namespace
}  // namespace tessera::models
