// A Hugging Face model folder and the paths of the files Tessera reads from it, resolved once:
// config.json and the weights (model.safetensors, or the shards model.safetensors.index.json
// names) are required; generation_config.json, tokenizer.json and tokenizer_config.json are
// optional. Torch-free, so tokenizers and the scheduler can take one too.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace tessera::models {

class ModelFolder {
 public:
  // A --model argument: "tiny" (the built-in model, written on first use into tiny_model_dir())
  // or a folder. Throws one line naming the argument, or the folder and the file it lacks.
  static ModelFolder resolve(const std::string& model);
  // A folder on disk. Throws naming the folder and the first required file that is missing (or a
  // shard the index names that is not there).
  static ModelFolder open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const std::string& config_json() const { return config_json_; }
  // model.safetensors alone, or each shard the index names once, in name order.
  const std::vector<std::string>& weight_files() const { return weight_files_; }
  // The optional files: nullopt when the folder has none.
  const std::optional<std::string>& weight_index_json() const { return weight_index_json_; }
  const std::optional<std::string>& generation_config_json() const {
    return generation_config_json_;
  }
  const std::optional<std::string>& tokenizer_json() const { return tokenizer_json_; }
  const std::optional<std::string>& tokenizer_config_json() const { return tokenizer_config_json_; }

 private:
  ModelFolder() = default;
  std::string dir_;
  std::string config_json_;
  std::vector<std::string> weight_files_;
  std::optional<std::string> weight_index_json_;
  std::optional<std::string> generation_config_json_;
  std::optional<std::string> tokenizer_json_;
  std::optional<std::string> tokenizer_config_json_;
};

}  // namespace tessera::models
