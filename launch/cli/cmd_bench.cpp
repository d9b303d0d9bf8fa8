// `tessera bench <name>`: one subcommand per benchmark in bench/registry.cpp.
#include "bench/bench.h"
#include "launch/cli/commands.h"

namespace tessera::cli {

std::vector<Command> register_bench(CLI::App& root) {
  auto* bench_app =
      root.add_subcommand("bench", "Benchmarks, each against a same-process baseline");
  bench_app->require_subcommand(1);
  std::vector<Command> out;
  for (const auto& b : bench::benchmarks()) {
    auto opts = std::make_shared<bench::BenchOptions>();
    auto* app = bench_app->add_subcommand(b.name, b.help);
    app->add_flag("--json", opts->json, "Print one JSON object");
    app->add_flag("--quick", opts->quick, "Smaller sizes (CI)");
    auto run = b.run;
    Action action = [opts, run](launch::World& w) -> int {
      opts->comm = w.comm.get();
      opts->rank = w.rank;
      opts->world_size = w.size;
      return run(*opts);
    };
    out.push_back({app, action, false});
  }
  return out;
}

}  // namespace tessera::cli
