#include "runtime/training/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "runtime/training/autocast.h"
#include "runtime/training/checkpoint.h"
#include "runtime/training/data_parallel.h"
#include "runtime/training/train_task.h"
#include "sharding/mpi/mpi_communicator.h"
#include "sharding/process_groups.h"

namespace tessera::training {

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int64_t t = static_cast<int64_t>(s + 0.5);
  char buf[32];
  if (t >= 3600) {
    std::snprintf(buf, sizeof(buf), "%lld:%02lld:%02lld", static_cast<long long>(t / 3600),
                  static_cast<long long>(t / 60 % 60), static_cast<long long>(t % 60));
  } else {
    std::snprintf(buf, sizeof(buf), "%lld:%02lld", static_cast<long long>(t / 60),
                  static_cast<long long>(t % 60));
  }
  return buf;
}

// One status line on rank 0: a bar redrawn in place on a terminal, plain lines otherwise.
class Progress {
 public:
  Progress(const std::string& mode, int64_t first, int64_t total, const char* unit)
      : first_(first), total_(total), unit_(unit) {
    tty_ = isatty(STDERR_FILENO) != 0;
    enabled_ = mode == "on" || (mode == "auto");
    every_ = std::max<int64_t>(1, (total - first) / 10);
  }
  void update(int64_t step, double loss, double rate, double eta) {
    if (!enabled_) return;
    const int64_t done = step - first_;
    if (!tty_ && done % every_ != 0 && step != total_) return;
    constexpr int kWidth = 24;
    const int filled =
        static_cast<int>(kWidth * static_cast<double>(step) / static_cast<double>(total_));
    std::string bar(filled, '#');
    bar.resize(kWidth, '.');
    std::fprintf(stderr, "%s[%s] step %lld/%lld  loss %.4f  %.0f %s/s  ETA %s%s", tty_ ? "\r" : "",
                 bar.c_str(), static_cast<long long>(step), static_cast<long long>(total_), loss,
                 rate, unit_, format_duration(eta).c_str(), tty_ ? "\033[K" : "\n");
    std::fflush(stderr);
    dirty_ = tty_;
  }
  void finish() {
    if (dirty_) std::fprintf(stderr, "\n");
    dirty_ = false;
  }

 private:
  int64_t first_, total_;
  const char* unit_;
  bool tty_ = false, enabled_ = false, dirty_ = false;
  int64_t every_ = 1;
};

torch::Tensor rng_state() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_rng_state(const torch::Tensor& s) {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(s);
}

std::string kept_line(const std::string& last_good) {
  return last_good.empty() ? std::string("no checkpoint was written")
                           : "the last good checkpoint " + last_good + " is kept";
}

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

[[noreturn]] void collective_fail(const std::string& message) {
  throw CollectiveError(message, __FILE__, __LINE__);
}

}  // namespace

TrainResult train(const TrainConfig& config, sharding::Communicator& world,
                  const TrainHooks& hooks) {
  const double t_start = now_s();
  TrainConfig cfg = config;
  int64_t accum = 1, mb = 1;
  std::string err;
  try {
    cfg.validate();
    mb = cfg.micro_batch_for(world.size());
    accum = cfg.accumulation_steps(world.size());
    if (cfg.data.empty()) cfg.data = default_data_path(cfg.model);
    TESSERA_CHECK(std::filesystem::exists(cfg.data), "config key data: file ", cfg.data,
                  " does not exist");
  } catch (const Error& e) {
    err = e.message();
  }
  err = world.agree_on_error(err);
  if (!err.empty()) collective_fail(err);

  auto* mpi_world = dynamic_cast<sharding::MpiCommunicator*>(&world);
  TESSERA_CHECK(mpi_world != nullptr, "train: the world communicator must be MPI, got ",
                world.backend_name());
  auto groups = sharding::make_process_groups(*mpi_world, static_cast<int>(cfg.tp), 1);
  sharding::Communicator* dp = groups.dp.get();
  sharding::Communicator* tp = groups.tp.get();
  const int dp_size = dp->size(), dp_rank = dp->rank();
  const int64_t G = cfg.global_batch;

  torch::manual_seed(cfg.seed);
  std::unique_ptr<TrainTask> task;
  try {
    task = make_task(cfg, tp);
  } catch (const Error& e) {
    err = e.message();
  }
  err = world.agree_on_error(err);
  if (!err.empty()) collective_fail(err);

  OptimizerOptions oo;
  oo.kind = cfg.optimizer;
  oo.weight_decay = cfg.weight_decay;
  oo.beta1 = cfg.beta1;
  oo.beta2 = cfg.beta2;
  oo.eps = cfg.eps;
  oo.momentum = cfg.momentum;
  oo.clip_grad = cfg.clip_grad;
  oo.bucket_mb = cfg.bucket_mb;
  oo.zero = cfg.zero;
  DataParallel ddp(task->params().infos(), oo, dp, tp);

  TrainResult result;
  int64_t start = 0;
  std::string last_good;
  const std::string opt_file = cfg.tp > 1
                                   ? "optimizer-tp" + std::to_string(tp->rank()) + ".safetensors"
                                   : "optimizer.safetensors";
  if (cfg.resume) {
    auto latest = latest_checkpoint(cfg.checkpoint_dir);
    if (latest) {
      try {
        auto state = read_json(*latest + "/trainer_state.json");
        const auto& saved = state.at("config");
        for (const char* key : {"model", "global_batch", "seed", "optimizer", "tp"}) {
          TESSERA_CHECK(saved.at(key) == cfg.to_json().at(key), "resume: config key ", key, "=",
                        cfg.to_json().at(key).dump(), " differs from the checkpoint's ",
                        saved.at(key).dump(), " (", *latest, ")");
        }
        start = state.at("step").get<int64_t>();
        TESSERA_CHECK(start <= cfg.steps, "resume: the checkpoint is at step ", start,
                      ", beyond steps=", cfg.steps);
        task->params().load_full(read_tensors(*latest + "/model.safetensors"));
        auto opt = read_tensors(*latest + "/" + opt_file);
        std::vector<std::pair<std::string, torch::Tensor>> named(opt.begin(), opt.end());
        ddp.load_optimizer_state(named, state.at("optimizer_steps").get<int64_t>());
        set_rng_state(opt.at("rng.torch_cpu"));
        task->parameters_changed();
      } catch (const std::exception& e) {
        err = std::string("resume from ") + *latest + ": " + e.what();
      }
      err = world.agree_on_error(err);
      if (!err.empty()) collective_fail(err);
      last_good = *latest;
      if (world.rank() == 0) {
        std::fprintf(stderr, "tessera train: resuming from %s (step %lld)\n", latest->c_str(),
                     static_cast<long long>(start));
      }
    } else if (world.rank() == 0) {
      std::fprintf(stderr, "tessera train: no checkpoint in %s yet, starting at step 0\n",
                   cfg.checkpoint_dir.c_str());
    }
  }
  result.first_step = start;

  std::ofstream log;
  if (world.rank() == 0 && !cfg.log.empty()) {
    if (start > 0) {
      // The interrupted run may have logged steps past its last checkpoint: drop them, so the
      // log reads as one run.
      std::vector<std::string> kept;
      std::ifstream in(cfg.log);
      for (std::string line; std::getline(in, line);) {
        auto rec = nlohmann::json::parse(line, nullptr, false);
        // A line without an integer step (not one this trainer wrote) is kept.
        const bool later = !rec.is_discarded() && rec.is_object() && rec.contains("step") &&
                           rec["step"].is_number_integer() && rec["step"].get<int64_t>() > start;
        if (!rec.is_discarded() && !later) kept.push_back(line);
      }
      in.close();
      std::ofstream rewrite(cfg.log, std::ios::trunc);
      for (const auto& line : kept) rewrite << line << "\n";
    }
    log.open(cfg.log, start > 0 ? std::ios::app : std::ios::trunc);
    if (!log.good()) err = "config key log: cannot write " + cfg.log;
  }
  err = world.agree_on_error(err);
  if (!err.empty()) collective_fail(err);

  auto checkpoint = [&](int64_t step, double loss) {
    CheckpointWrite w;
    w.step = step;
    w.model = task->params().gather_full();
    // Never replace a good checkpoint with a diverged model.
    bool finite = true;
    for (const auto& [name, t] : w.model) finite = finite && torch::isfinite(t).all().item<bool>();
    auto flag = torch::tensor({finite ? 0.0 : 1.0}, torch::kDouble);
    world.all_reduce(flag, sharding::ReduceOp::kSum);
    if (flag.item<double>() > 0) {
      collective_fail("parameters are not finite after step " + std::to_string(step) +
                      "; stopped before writing its checkpoint, " + kept_line(last_good));
    }
    w.model_config = task->model_config();
    w.optimizer = ddp.optimizer_state();
    w.optimizer.emplace_back("rng.torch_cpu", rng_state());
    w.write_optimizer = dp_rank == 0;
    w.optimizer_file = opt_file;
    w.keep = static_cast<int>(cfg.keep_checkpoints);
    w.trainer_state = {{"step", step},
                       {"optimizer_steps", ddp.optimizer_steps()},
                       {"samples_seen", step * G},
                       {"data_position", step * G},
                       {"loss", loss},
                       {"world_size", world.size()},
                       {"config", cfg.to_json()}};
    last_good = write_checkpoint(cfg.checkpoint_dir, w, world);
    result.last_checkpoint = last_good;
  };

  Progress progress(world.rank() == 0 ? cfg.progress : "off", start, cfg.steps, task->unit_name());
  const int64_t units = G * task->units_per_sample();
  double loop_start = now_s();
  int64_t timed_steps = 0;
  double loss = 0;
  for (int64_t step = start; step < cfg.steps; ++step) {
    const double t0 = now_s();
    const double lr = learning_rate(cfg, step);
    double local = 0;
    for (int64_t m = 0; m < accum; ++m) {
      ddp.prepare_backward(m == accum - 1);
      const int64_t begin = step * G + (m * dp_size + dp_rank) * mb;
      torch::Tensor l;
      {
        AutocastScope autocast(cfg.bf16);
        l = task->loss(begin, mb) / static_cast<double>(accum);
      }
      l.backward();
      ddp.finish_backward();
      local += l.item<double>();
    }
    const bool stop_here = hooks.stop_requested && hooks.stop_requested();
    auto agreed = torch::tensor({local, stop_here ? 1.0 : 0.0}, torch::kDouble);
    world.all_reduce(agreed, sharding::ReduceOp::kSum);
    loss = agreed[0].item<double>() / world.size();
    const bool stop = agreed[1].item<double>() > 0;
    if (!std::isfinite(loss)) {
      collective_fail("loss is " + std::string(std::isnan(loss) ? "NaN" : "infinite") +
                      " at step " + std::to_string(step + 1) + " (lr " + num(lr) +
                      "); stopped before the optimizer step, " + kept_line(last_good));
    }
    const double norm = ddp.step(lr);
    if (!std::isfinite(norm)) {
      collective_fail("gradient norm is " + num(norm) + " at step " + std::to_string(step + 1) +
                      " (lr " + num(lr) + "); stopped, " + kept_line(last_good));
    }
    task->parameters_changed();
    const double t1 = now_s();
    if (step > start) ++timed_steps;
    if (step == start) loop_start = t1;  // the first step warms caches; rates exclude it
    const double per_step =
        timed_steps > 0 ? (t1 - loop_start) / static_cast<double>(timed_steps) : t1 - t0;
    const double rate = static_cast<double>(units) / per_step;
    nlohmann::json rec = {{"step", step + 1},
                          {"loss", loss},
                          {"lr", lr},
                          {"grad_norm", norm},
                          {std::string(task->unit_name()) + "_per_s", rate},
                          {"step_s", t1 - t0}};
    const bool last = step + 1 == cfg.steps;
    if ((cfg.eval_every > 0 && (step + 1) % cfg.eval_every == 0) || last) {
      result.metrics = task->evaluate(world, dp_rank, dp_size);
      for (auto& [k, v] : result.metrics.items()) rec[k] = v;
    }
    if (world.rank() == 0) {
      if (log.is_open()) {
        log << rec.dump() << "\n";
        log.flush();
      }
      if (hooks.on_step) hooks.on_step(rec);
      progress.update(step + 1, loss, rate, per_step * static_cast<double>(cfg.steps - step - 1));
    }
    result.steps_done = step + 1;
    result.last_loss = loss;
    const bool every = cfg.checkpoint_every > 0 && (step + 1) % cfg.checkpoint_every == 0;
    if (!cfg.checkpoint_dir.empty() && (every || last || stop)) checkpoint(step + 1, loss);
    if (stop && !last) {
      result.preempted = true;
      break;
    }
  }
  progress.finish();
  result.seconds = now_s() - t_start;
  return result;
}

std::unique_ptr<TrainTask> make_task(const TrainConfig& config, sharding::Communicator* tp) {
  if (config.model == "digits") return make_digits_task(config, tp);
  return make_lm_task(config, tp);
}

}  // namespace tessera::training
