// The `tessera` CLI's subcommands. Each registers its options on the CLI11 app and returns the
// action to run once arguments parsed; the action gets the bootstrapped world. Adding `serve`,
// `bench` or `train` is one more register_* function here.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <vector>

#include "launch/bootstrap.h"

namespace tessera::cli {

// Runs on every rank; returns the process exit code. Throws tessera::Error on failure.
using Action = std::function<int(launch::World&)>;

struct Command {
  CLI::App* app = nullptr;
  Action action;
  bool want_nccl = false;
};

Command register_info(CLI::App& root);
Command register_generate(CLI::App& root);
Command register_tokenize(CLI::App& root);
Command register_train(CLI::App& root);
std::vector<Command> register_bench(CLI::App& root);
std::vector<Command> register_delta(CLI::App& root);
Command register_inspect(CLI::App& root);
Command register_serve(CLI::App& root);
Command register_router(CLI::App& root);
// `embed` and `classify` (encoders).
std::vector<Command> register_embed(CLI::App& root);

}  // namespace tessera::cli
