// `tessera train`: a training run from a config file (JSON or TOML) and/or flags (every config
// key is a flag: --global-batch 64, --optimizer sgd, --zero, ...; flags override the file).
// SIGUSR1 / SIGTERM / SIGINT: checkpoint at the next step boundary and exit with status 76.
#include <algorithm>
#include <cstdio>
#include <memory>

#include "common/error.h"
#include "launch/cli/commands.h"
#include "launch/signals.h"
#include "runtime/training/train_config.h"
#include "runtime/training/trainer.h"

namespace tessera::cli {

namespace {

struct TrainArgs {
  std::string config_file;
  std::map<std::string, std::string> values;  // key -> text given on the command line
  std::map<std::string, bool> flags;          // boolean keys given as flags
};

}  // namespace

Command register_train(CLI::App& root) {
  auto* app = root.add_subcommand(
      "train",
      "Train a model (digits cluster-attention classifier) under mpirun: data / tensor parallel, "
      "ZeRO-1, checkpoints, --resume");
  auto args = std::make_shared<TrainArgs>();
  app->add_option("--config", args->config_file, "Config file (.json or .toml)");
  const nlohmann::json defaults = training::TrainConfig{}.to_json();
  for (const auto& [key, value] : defaults.items()) {
    std::string flag = "--" + key;
    for (auto& c : flag) {
      if (c == '_') c = '-';
    }
    if (value.is_boolean()) {
      app->add_flag_callback(
          flag, [args, key = key] { args->flags[key] = true; },
          "Config key " + key + " (default " + value.dump() + ")");
    } else {
      app->add_option_function<std::string>(
          flag, [args, key = key](const std::string& v) { args->values[key] = v; },
          "Config key " + key + " (default " + value.dump() + ")");
    }
  }
  Action action = [args, defaults](launch::World& w) -> int {
    training::TrainConfig config;
    std::string err;
    try {
      nlohmann::json j = nlohmann::json::object();
      if (!args->config_file.empty()) j = training::TrainConfig::read_file(args->config_file);
      for (const auto& [key, text] : args->values) {
        const auto& def = defaults.at(key);
        if (def.is_string()) {
          j[key] = text;
        } else {
          nlohmann::json v = nlohmann::json::parse(text, nullptr, false);
          std::string flag = "--" + key;  // as given: --weight-decay, not --weight_decay
          std::replace(flag.begin(), flag.end(), '_', '-');
          TESSERA_CHECK(!v.is_discarded() && v.is_number(), flag, ": '", text, "' is not a number");
          j[key] = v;
        }
      }
      for (const auto& [key, on] : args->flags) j[key] = on;
      config = training::TrainConfig::from_json(j);
    } catch (const Error& e) {
      err = e.message();
    }
    // Every rank read the same arguments: one agreed line, not one per rank.
    err = w.comm->agree_on_error(err);
    if (!err.empty()) throw CollectiveError(err, __FILE__, __LINE__);
    // Preemption: SIGUSR1 (SLURM's time-limit warning, sbatch --signal=USR1@T), SIGTERM or
    // SIGINT on any rank → checkpoint at the next step boundary, exit kPreemptedExitCode.
    launch::signals::install();
    training::TrainHooks hooks;
    hooks.stop_requested = [] {
      return launch::signals::warning_received() || launch::signals::stop_requested();
    };
    auto result = training::train(config, *w.comm, hooks);
    if (w.rank == 0) {
      std::string metrics;
      for (const auto& [k, v] : result.metrics.items()) {
        char buf[96];
        std::snprintf(buf, sizeof(buf), ", %s %.4f", k.c_str(), v.get<double>());
        metrics += buf;
      }
      std::printf("trained steps %lld..%lld in %.1f s: loss %.4f%s%s%s\n",
                  static_cast<long long>(result.first_step),
                  static_cast<long long>(result.steps_done), result.seconds, result.last_loss,
                  metrics.c_str(), result.last_checkpoint.empty() ? "" : ", checkpoint ",
                  result.last_checkpoint.c_str());
      if (result.preempted) {
        std::printf("stopped early on request; resume with --resume (exit code %d)\n",
                    training::kPreemptedExitCode);
      }
    }
    return result.preempted ? training::kPreemptedExitCode : 0;
  };
  return {app, action, false};
}

}  // namespace tessera::cli
