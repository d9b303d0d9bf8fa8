// The model folder: "tiny" and folder paths resolve to the files of a Hugging Face folder (one
// safetensors file or the shards of an index; the optional generation and tokenizer files), and
// every missing piece is one error naming the folder and the file.
#include "runtime/models/model_folder.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "runtime/models/safetensors.h"
#include "runtime/models/tiny_model.h"

namespace tessera::models {
namespace {

namespace fs = std::filesystem;

// A fresh folder of this process, removed at the end of the test.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name)
      : path(fs::temp_directory_path() /
             ("tessera_model_folder_" + name + "_" + std::to_string(::getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

void write_text(const fs::path& p, const std::string& text) { std::ofstream(p) << text; }

void write_one_tensor(const fs::path& p, const std::string& name) {
  write_safetensors(p.string(), {{name, DType::kF32, {1}, std::vector<uint8_t>(4, 0)}});
}

std::string error_of(const std::string& model) {
  try {
    ModelFolder::resolve(model);
  } catch (const Error& e) {
    return e.message();
  }
  return "(no error)";
}

TEST(ModelFolder, TinyResolvesToTheWrittenFolder) {
  const auto f = ModelFolder::resolve("tiny");
  EXPECT_EQ(f.dir(), tiny_model_dir());
  EXPECT_EQ(f.config_json(), (fs::path(tiny_model_dir()) / "config.json").string());
  EXPECT_EQ(f.weight_files(),
            std::vector<std::string>{(fs::path(tiny_model_dir()) / "model.safetensors").string()});
  // The built-in model has no tokenizer files: the byte tokenizer serves it.
  EXPECT_FALSE(f.tokenizer_json());
  EXPECT_FALSE(f.tokenizer_config_json());
  EXPECT_FALSE(f.generation_config_json());
  EXPECT_FALSE(f.weight_index_json());
}

TEST(ModelFolder, ShardedFolderWithOptionalFiles) {
  TempDir d("sharded");
  write_text(d.path / "config.json", "{}");
  write_one_tensor(d.path / "model-00002-of-00002.safetensors", "b");
  write_one_tensor(d.path / "model-00001-of-00002.safetensors", "a");
  write_text(d.path / "model.safetensors.index.json",
             R"({"metadata": {}, "weight_map": {"b": "model-00002-of-00002.safetensors",
                 "a": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors"}})");
  write_text(d.path / "tokenizer.json", "{}");
  write_text(d.path / "generation_config.json", "{}");
  const auto f = ModelFolder::open(d.path.string());
  EXPECT_EQ(f.weight_files(),
            (std::vector<std::string>{(d.path / "model-00001-of-00002.safetensors").string(),
                                      (d.path / "model-00002-of-00002.safetensors").string()}));
  EXPECT_EQ(f.weight_index_json(), (d.path / "model.safetensors.index.json").string());
  EXPECT_EQ(f.tokenizer_json(), (d.path / "tokenizer.json").string());
  EXPECT_EQ(f.generation_config_json(), (d.path / "generation_config.json").string());
  EXPECT_FALSE(f.tokenizer_config_json());

  // A single file wins over the index, as in transformers.
  write_one_tensor(d.path / "model.safetensors", "a");
  EXPECT_EQ(ModelFolder::open(d.path.string()).weight_files(),
            std::vector<std::string>{(d.path / "model.safetensors").string()});
}

TEST(ModelFolder, MissingPiecesAreNamed) {
  EXPECT_NE(error_of("llama-7b").find("unknown model 'llama-7b'"), std::string::npos);
  EXPECT_NE(error_of("/nonexistent/model").find("'/nonexistent/model' does not exist"),
            std::string::npos);

  TempDir d("missing");
  const std::string dir = d.path.string();
  EXPECT_NE(error_of(dir).find("model folder '" + dir + "' has no config.json"), std::string::npos)
      << error_of(dir);
  fs::create_directory(d.path / "config.json");
  EXPECT_NE(error_of(dir).find("'" + dir + "': config.json is not a file"), std::string::npos)
      << error_of(dir);
  fs::remove(d.path / "config.json");
  write_text(d.path / "config.json", "{}");
  EXPECT_NE(error_of(dir).find("'" + dir +
                               "' has neither model.safetensors nor model.safetensors.index.json"),
            std::string::npos)
      << error_of(dir);
  write_text(d.path / "model.safetensors.index.json",
             R"({"weight_map": {"a": "model-00001-of-00002.safetensors"}})");
  EXPECT_NE(error_of(dir).find("names the shard 'model-00001-of-00002.safetensors', which is "
                               "missing"),
            std::string::npos)
      << error_of(dir);
  write_text(d.path / "model.safetensors.index.json", R"({"weight_map": {"a": 3}})");
  EXPECT_NE(error_of(dir).find("weight_map['a'] must be a file name, got 3"), std::string::npos)
      << error_of(dir);
  write_text(d.path / "model.safetensors.index.json", "{not json");
  EXPECT_NE(error_of(dir).find("not valid JSON"), std::string::npos) << error_of(dir);
  write_text(d.path / "weights", "");
  EXPECT_NE(error_of((d.path / "weights").string()).find("is not a folder"), std::string::npos);
}

}  // namespace
}  // namespace tessera::models
