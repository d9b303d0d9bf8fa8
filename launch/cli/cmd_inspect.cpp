// `tessera inspect MODEL`: parameter bytes per layer and dtype, KV bytes per token per layer, and
// the memory one tensor-parallel rank needs for a dtype, KV format and context length
// (runtime/models/inspect). Reads config.json and the safetensors headers only.
#include <cstdio>
#include <memory>

#include "common/error.h"
#include "launch/cli/commands.h"
#include "runtime/models/inspect.h"

namespace tessera::cli {

Command register_inspect(CLI::App& root) {
  struct Args {
    std::string model;
    models::InspectOptions options;
    std::string dtype, kv_cache_dtype = "auto";
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  auto* app = root.add_subcommand("inspect", "Memory of a model per layer and per rank");
  app->add_option("model", a->model, "'tiny' or a model folder")->required();
  app->add_option("--tp", a->options.tp, "Tensor-parallel ranks (default 1)");
  app->add_option("--dtype", a->dtype, "Weight and KV dtype (default: as stored)");
  app->add_option("--kv-cache-dtype", a->kv_cache_dtype, "auto (= --dtype), int8 or fp8_e4m3")
      ->check(CLI::IsMember({"auto", "int8", "fp8_e4m3"}));
  app->add_option("--max-model-len", a->options.max_model_len,
                  "Context length (default: max_position_embeddings)");
  app->add_option("--batch", a->options.batch, "Sequences of max-model-len at once (default 1)");
  app->add_option("--max-num-batched-tokens", a->options.max_num_batched_tokens,
                  "Tokens per step (default min(max-model-len, 2048))");
  app->add_option("--block-size", a->options.block_size, "KV cache page size (default 16)");
  app->add_flag("--json", a->json, "Print one JSON object");
  Action action = [a](launch::World& w) -> int {
    if (w.rank != 0) return 0;  // reads files only: rank 0 answers for the job
    if (!a->dtype.empty()) a->options.dtype = parse_dtype(a->dtype);
    a->options.kv_quant = a->kv_cache_dtype == "int8"       ? caches::KVQuant::kInt8
                          : a->kv_cache_dtype == "fp8_e4m3" ? caches::KVQuant::kFp8E4M3
                                                            : caches::KVQuant::kNone;
    const auto rep = models::inspect_model(a->model, a->options);
    if (a->json) {
      std::printf("%s\n", rep.to_json().dump().c_str());
    } else {
      std::printf("%s", rep.table().c_str());
    }
    return 0;
  };
  return {app, action, false};
}

}  // namespace tessera::cli
