// The engine of one tensor-parallel group. Every rank loads its slice of the model and its share
// of the paged KV cache; the leader (rank 0 of the group) also owns the scheduler and the KV cache
// manager. One step: the leader schedules (scheduler::StepPlan), broadcasts the plan's bytes to
// the group (PlanChannel), every rank runs it (ModelRunner), the leader samples from the logits of
// the sampling rows (Sampler), updates the scheduler and hands each request its output delta;
// a row whose logits hold NaN / +inf ends its request with an error instead of a token. The other
// ranks serve() plans until the leader releases them. Not thread-safe: one thread drives a core
// (AsyncEngine puts it behind the thread-safe EngineClient).
#pragma once

#include <atomic>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>

#include "runtime/engine/engine_client.h"
#include "runtime/engine/kv_cache_plan.h"
#include "runtime/engine/model_runner.h"
#include "runtime/engine/plan_channel.h"
#include "runtime/engine/sampler.h"
#include "runtime/models/decoder_model.h"
#include "runtime/scheduler/scheduler.h"

namespace tessera::engine {

struct EngineConfig {
  std::string model = "tiny";             // "tiny" or a Hugging Face model folder
  int64_t max_num_seqs = 256;             // rows per step
  int64_t max_num_batched_tokens = 2048;  // tokens per step
  int64_t max_model_len = 0;              // prompt + output; 0 = max_position_embeddings
  int64_t long_prefill_token_threshold = 0;
  bool enable_chunked_prefill = true;
  bool enable_prefix_caching = true;
  int64_t block_size = 16;             // KV slots per block on one rank
  int64_t kv_cache_memory = 0;         // bytes per rank; 0 = a default (kv_cache_plan.h)
  DType kv_cache_dtype = DType::kF32;  // float32, bfloat16 or float16 pages
  double device_memory_fraction = 0.9;
  int device = -1;                    // CUDA device index, -1 = CPU
  uint64_t seed = 0;                  // the sampler's stream for requests without a seed
  models::SparseDecodeConfig sparse;  // sparse decode of long sequences (off by default)
  // Checkpoint bytes resident at once while loading (models::WeightLoadOptions); 0 = unbounded.
  int64_t load_memory_budget = 0;
  bool load_progress = false;  // a loading progress bar on stderr (the leader only)
  // LoRA adapters (PEFT folders) by name; requests name one in EngineRequest::lora.
  std::vector<std::pair<std::string, std::string>> loras;
  std::string quantization = "none";  // weights: "none" (float32) or "int8" (per channel)
};

class EngineCore {
 public:
  using OutputFn = std::function<void(const RequestOutput&)>;

  // Collective over `tp` (null: one rank) and `dcp` (the ranks sharing this rank's KV head when
  // the group outnumbers the KV heads; null otherwise). `control` spans the same ranks as `tp`
  // over CPU tensors (MPI), for plans, pool sizes and error agreement; null: `tp` itself (its
  // tensors are on the CPU). A failure on any rank is agreed over the group and thrown as
  // CollectiveError on every rank.
  EngineCore(const EngineConfig& config, sharding::Communicator* tp, sharding::Communicator* dcp,
             sharding::Communicator* control = nullptr);
  ~EngineCore();

  bool leader() const { return leader_; }
  const models::ModelConfig& model_config() const { return model_config_; }
  const std::string& model_dir() const { return model_dir_; }
  int64_t max_model_len() const { return max_model_len_; }
  const std::vector<int32_t>& eos_token_ids() const { return eos_ids_; }
  const KVCachePlan& kv_plan() const { return kv_plan_; }
  const ModelRunner& runner() const { return *runner_; }
  const models::DecoderModel& model() const { return *model_; }
  int tp_size() const { return tp_size_; }

  // ---- leader ----
  // Queues a request. One refused (bad ids, parameters, length) gets its single final output
  // (finish_reason "error", one line naming the field and value) through on_output at once.
  void add_request(EngineRequest request, OutputFn on_output);
  // Ends a request (its final output, finish_reason "abort" or `reason`'s — kStop when the caller
  // matched a stop string — comes with the next step).
  bool abort(const std::string& id,
             scheduler::FinishReason reason = scheduler::FinishReason::kAbort);
  // Aborts every live request.
  void abort_all();
  bool has_unfinished() const;
  // One engine step; outputs are delivered through the requests' callbacks.
  void step();
  // The other ranks return from serve().
  void release_workers();
  // While idle (leader): pings the group so its ranks' watchdogs see it alive, and a stopped or
  // dead rank ends the job within the watchdog's timeout even without requests.
  void heartbeat();
  // Ends the group together: the other ranks' serve() throws CollectiveError(message).
  void fail_workers(const std::string& message);
  EngineStats stats() const;
  // Called (leader) each step with the plan and the logits of every token it computed, in plan
  // token order, before sampling: prompt logprobs and tests.
  void set_logits_observer(
      std::function<void(const scheduler::StepPlan&, const torch::Tensor&)> observer) {
    observer_ = std::move(observer);
  }
  // Prefix-cache counters of the scheduler (hit tokens, queried tokens).
  scheduler::SchedulerStats scheduler_stats() const;

  // ---- other ranks ----
  void serve();
  // Messages (plans and pings) serve() has received so far; shared so that a thread watching for
  // a dead leader (cmd_serve_engine.cpp) may read it after the core is gone.
  std::shared_ptr<const std::atomic<uint64_t>> received_counter() const { return received_; }

 private:
  RequestOutput convert(const scheduler::RequestOutput& o, const SamplerOutput& sampled);

  EngineConfig config_;
  sharding::Communicator* tp_ = nullptr;
  sharding::Communicator* control_ = nullptr;
  int tp_size_ = 1;
  bool leader_ = true;
  models::ModelConfig model_config_;
  std::string model_dir_;
  int64_t max_model_len_ = 0;
  std::vector<int32_t> eos_ids_;
  std::unique_ptr<models::DecoderModel> model_;
  KVCachePlan kv_plan_;
  std::unique_ptr<caches::PagedKVStorage> storage_;
  std::unique_ptr<ModelRunner> runner_;
  PlanChannel channel_;
  std::shared_ptr<std::atomic<uint64_t>> received_ = std::make_shared<std::atomic<uint64_t>>(0);
  // Leader only.
  std::unique_ptr<caches::KVCacheManager> kv_;
  std::unique_ptr<scheduler::Scheduler> scheduler_;
  std::unique_ptr<Sampler> sampler_;
  std::unordered_map<std::string, OutputFn> callbacks_;
  std::unordered_map<std::string, std::string> errors_;  // requests failed by the engine (NaN)
  // Requests that asked for prompt_logprobs: the next prompt token to score (from 1; scored ones
  // are not scored again when a preemption recomputes them) and the scores not yet delivered.
  struct PromptScores {
    int64_t next = 1;
    std::vector<PromptLogprob> scored;
  };
  std::unordered_map<std::string, PromptScores> prompt_scores_;
  std::function<void(const scheduler::StepPlan&, const torch::Tensor&)> observer_;
};

}  // namespace tessera::engine
