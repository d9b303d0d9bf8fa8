// `tessera generate`: greedy generation with the model split tensor-parallel over all ranks.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <sstream>

#include "common/error.h"
#include "launch/cli/commands.h"
#include "runtime/engine/generate.h"
#include "runtime/tokenizer.h"

namespace tessera::cli {

namespace {
struct GenerateArgs {
  engine::GenerateRequest request;
  bool json = false;
  bool ignore_eos = false;
};

std::string join(const std::vector<int64_t>& ids) {
  std::ostringstream os;
  for (size_t i = 0; i < ids.size(); ++i) os << (i ? " " : "") << ids[i];
  return os.str();
}
}  // namespace

Command register_generate(CLI::App& root) {
  auto args = std::make_shared<GenerateArgs>();
  auto* app = root.add_subcommand(
      "generate", "Generate text greedily; under mpirun the model is split tensor-parallel");
  app->add_option("--model", args->request.model,
                  "Built-in model name (tiny) or a Hugging Face model folder")
      ->capture_default_str();
  app->add_option("--prompt", args->request.prompt, "Prompt text")->required();
  app->add_option("--max-tokens", args->request.max_tokens, "Tokens to generate (>= 0)")
      ->capture_default_str()
      ->check(CLI::Validator(
          [](std::string& s) -> std::string {
            try {
              if (std::stoll(s) >= 0) return {};
            } catch (...) {
            }
            return "must be an integer >= 0, got " + s;
          },
          "INT>=0"));
  app->add_option("--prefill-chunk", args->request.prefill_chunk, "Prompt tokens per forward pass")
      ->capture_default_str()
      ->check(CLI::Validator(
          [](std::string& s) -> std::string {
            try {
              if (std::stoll(s) > 0) return {};
            } catch (...) {
            }
            return "must be an integer > 0, got " + s;
          },
          "INT>0"));
  app->add_flag("--ignore-eos", args->ignore_eos, "Keep generating past the end-of-text token");
  app->add_flag("--json", args->json, "Print one JSON object instead of text");

  Action action = [args](launch::World& world) -> int {
    args->request.stop_at_eos = !args->ignore_eos;
    const auto res = engine::generate(args->request, world.comm.get());
    if (world.rank != 0) return 0;
    if (args->json) {
      nlohmann::json j{{"model", args->request.model},
                       {"model_dir", res.model_dir},
                       {"world_size", world.size},
                       {"tensor_parallel", res.tp_size},
                       {"prompt_ids", res.prompt_ids},
                       {"output_ids", res.output_ids},
                       {"text", runtime::escape_bytes(res.text)},
                       {"load_ms", res.load_ms},
                       {"prefill_ms", res.prefill_ms},
                       {"decode_ms", res.decode_ms},
                       {"kv_cache_bytes_per_rank", res.kv_cache_bytes}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("%s\n", runtime::escape_bytes(res.text).c_str());
      std::printf("output ids: %s\n", join(res.output_ids).c_str());
      const double tok_s = res.decode_ms > 0 ? res.output_ids.size() * 1000.0 / res.decode_ms : 0;
      std::fprintf(stderr,
                   "[%d rank(s), tensor-parallel %d] prompt %zu tokens, generated %zu; load %.0f "
                   "ms, prefill %.1f ms, decode %.1f ms (%.0f tokens/s)\n",
                   world.size, res.tp_size, res.prompt_ids.size(), res.output_ids.size(),
                   res.load_ms, res.prefill_ms, res.decode_ms, tok_s);
    }
    std::fflush(stdout);
    return 0;
  };
  return {app, action, false};
}

}  // namespace tessera::cli
