// `tessera delta create|apply`: delta checkpoints (runtime/models/delta). One process; the
// compression ratio and timings are printed, or one JSON object with --json.
#include <cstdio>
#include <memory>

#include "common/error.h"
#include "launch/cli/commands.h"
#include "runtime/models/delta/delta.h"

namespace tessera::cli {

namespace {

void require_one_process(const launch::World& w) {
  if (w.size > 1) {
    throw CollectiveError("tessera delta runs as one process, got " + std::to_string(w.size) +
                              " ranks (run it without mpirun)",
                          __FILE__, __LINE__);
  }
}

double mib(uint64_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

}  // namespace

std::vector<Command> register_delta(CLI::App& root) {
  auto* delta = root.add_subcommand("delta", "Delta checkpoints: tuned - base, stored compressed");
  delta->require_subcommand(1);
  std::vector<Command> out;

  struct CreateArgs {
    models::delta::CreateOptions options;
    std::string lossy, transform = "xor";
    bool json = false;
  };
  auto c = std::make_shared<CreateArgs>();
  auto* create = delta->add_subcommand("create", "Store a fine-tuned checkpoint as a delta");
  create->add_option("--base", c->options.base, "Base checkpoint (.safetensors or folder)")
      ->required();
  create->add_option("--tuned", c->options.tuned, "Fine-tuned checkpoint (.safetensors or folder)")
      ->required();
  create->add_option("--out", c->options.out, "Delta file to write")->required();
  create->add_option("--lossy", c->lossy, "Lossy encoding: int8 (per output channel)")
      ->check(CLI::IsMember({"int8"}));
  create->add_option("--transform", c->transform, "Lossless transform: xor (default) or diff")
      ->check(CLI::IsMember({"xor", "diff"}));
  create->add_option("--zstd-level", c->options.zstd_level, "zstd level (1..22, default 3)");
  create->add_flag("--json", c->json, "Print one JSON object");
  Action create_action = [c](launch::World& w) -> int {
    require_one_process(w);
    c->options.lossy_int8 = c->lossy == "int8";
    c->options.transform = models::delta::parse_transform(c->transform);
    const auto rep = models::delta::create_delta(c->options);
    if (c->json) {
      std::printf("%s\n", rep.to_json().dump().c_str());
      return 0;
    }
    std::printf(
        "delta %s: %lld tensors (%lld lossless, %lld int8, %lld new, %lld unchanged), "
        "%.1f MiB -> %.1f MiB, compression ratio %.2fx, %.1f s\n",
        c->options.out.c_str(), static_cast<long long>(rep.tensors),
        static_cast<long long>(rep.lossless_tensors), static_cast<long long>(rep.lossy_tensors),
        static_cast<long long>(rep.new_tensors), static_cast<long long>(rep.unchanged_tensors),
        mib(rep.tuned_bytes), mib(rep.delta_bytes), rep.ratio(), rep.seconds);
    if (rep.lossy_tensors > 0) {
      std::printf("int8 tensors rebuild within max |error| %.3g (recorded in the delta)\n",
                  rep.max_abs_error);
    }
    if (rep.base_only_tensors > 0) {
      std::printf("%lld base tensors are not in the tuned checkpoint (left out)\n",
                  static_cast<long long>(rep.base_only_tensors));
    }
    return 0;
  };
  out.push_back({create, create_action, false});

  struct ApplyArgs {
    models::delta::ApplyOptions options;
    bool json = false;
  };
  auto a = std::make_shared<ApplyArgs>();
  auto* apply = delta->add_subcommand("apply", "Rebuild a fine-tuned checkpoint from base + delta");
  apply->add_option("--base", a->options.base, "Base checkpoint (.safetensors or folder)")
      ->required();
  apply->add_option("--delta", a->options.delta, "Delta file")->required();
  apply
      ->add_option("--out", a->options.out,
                   "New folder, or a .safetensors file for a single-file checkpoint")
      ->required();
  apply->add_flag("--json", a->json, "Print one JSON object");
  Action apply_action = [a](launch::World& w) -> int {
    require_one_process(w);
    const auto rep = models::delta::apply_delta(a->options);
    if (a->json) {
      std::printf("%s\n", rep.to_json().dump().c_str());
      return 0;
    }
    std::printf(
        "rebuilt %s: %lld tensors in %lld file(s), %.1f MiB from a %.1f MiB delta "
        "(compression ratio %.2fx), %s, %.1f s\n",
        a->options.out.c_str(), static_cast<long long>(rep.tensors),
        static_cast<long long>(rep.files), mib(rep.out_bytes), mib(rep.delta_bytes), rep.ratio(),
        rep.lossy ? ("lossy int8, max |error| " + std::to_string(rep.max_abs_error)).c_str()
                  : "bitwise exact",
        rep.seconds);
    return 0;
  };
  out.push_back({apply, apply_action, false});
  return out;
}

}  // namespace tessera::cli
