// Training checkpoints: one folder per step, written whole or not at all.
//   <dir>/step-<8 digits>/model.safetensors     full model (Hugging Face layout, float32)
//                        /config.json            the model's config
//                        /optimizer[-tp<r>].safetensors   optimizer state per parameter (full
//                                                 over data-parallel ranks; one file per TP rank)
//                                                 and "rng.torch_cpu" (the generator's state)
//                        /trainer_state.json     step, data position, config, last loss
//   <dir>/latest                                 the name of the newest complete folder
// The folder is written under <dir>/.tmp-step-<n>, renamed when every file is in it (rename(2) in
// one file system), then `latest` is replaced (temporary file + rename), and only then are older
// folders beyond keep_checkpoints removed: a crash at any point leaves the last good checkpoint.
#pragma once

#include <torch/types.h>

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "sharding/communicator.h"

namespace tessera::training {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

struct CheckpointWrite {
  int64_t step = 0;
  NamedTensors model;            // used on world rank 0
  nlohmann::json model_config;   // config.json (rank 0)
  NamedTensors optimizer;        // used on ranks with write_optimizer
  bool write_optimizer = false;  // this rank writes its optimizer file
  std::string optimizer_file = "optimizer.safetensors";
  nlohmann::json trainer_state;  // rank 0
  int keep = 1;
};

// Collective over `world`: every rank calls it with what it writes. Returns the folder.
std::string write_checkpoint(const std::string& dir, const CheckpointWrite& w,
                             sharding::Communicator& world);

// The newest complete checkpoint folder under `dir`, or nullopt when there is none.
std::optional<std::string> latest_checkpoint(const std::string& dir);

// Every tensor of a safetensors file as torch tensors (copies). Throws naming the file.
std::map<std::string, torch::Tensor> read_tensors(const std::string& path);
nlohmann::json read_json(const std::string& path);

}  // namespace tessera::training
