#include "runtime/engine/engine_core.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

#include "common/error.h"
#include "common/logging.h"
#include "runtime/models/model_folder.h"

namespace tessera::engine {

namespace {

// Raw log-probability (float32 log_softmax) of targets[i] under logits row i, its rank (1 + the
// tokens strictly more likely) and the k[i] most likely tokens. In blocks of rows, so that the
// temporaries stay small beside a long prompt chunk's logits.
std::vector<PromptLogprob> score_prompt_tokens(const torch::Tensor& logits,
                                               const std::vector<int32_t>& targets,
                                               const std::vector<int32_t>& k) {
  torch::NoGradGuard no_grad;
  constexpr int64_t kBlock = 256;
  const auto m = static_cast<int64_t>(targets.size());
  const int64_t kept = std::min<int64_t>(*std::max_element(k.begin(), k.end()), logits.size(1));
  std::vector<PromptLogprob> out(static_cast<size_t>(m));
  for (int64_t b0 = 0; b0 < m; b0 += kBlock) {
    const int64_t n = std::min(kBlock, m - b0);
    const torch::Tensor lsm = torch::log_softmax(logits.narrow(0, b0, n).to(torch::kFloat32), -1);
    const torch::Tensor idx =
        torch::tensor(std::vector<int64_t>(targets.begin() + b0, targets.begin() + b0 + n),
                      torch::kLong)
            .to(lsm.device())
            .view({n, 1});
    const torch::Tensor mine = lsm.gather(1, idx);
    const torch::Tensor ranks = (lsm > mine).sum(1).add(1).to(torch::kInt).cpu().contiguous();
    const torch::Tensor values = mine.view({n}).cpu().contiguous();
    torch::Tensor top_v = torch::empty({n, 0}), top_i = torch::empty({n, 0}, torch::kInt);
    if (kept > 0) {
      auto top = lsm.topk(kept, 1);
      top_v = std::get<0>(top).cpu().contiguous();
      top_i = std::get<1>(top).to(torch::kInt).cpu().contiguous();
    }
    const auto v = values.accessor<float, 1>();
    const auto r = ranks.accessor<int32_t, 1>();
    const auto tv = top_v.accessor<float, 2>();
    const auto ti = top_i.accessor<int32_t, 2>();
    for (int64_t i = 0; i < n; ++i) {
      const auto row = static_cast<size_t>(b0 + i);
      auto& o = out[row];
      o.id = targets[row];
      o.logprob = v[i];
      o.rank = r[i];
      for (int64_t j = 0; j < std::min<int64_t>(k[row], kept); ++j) {
        o.top.push_back({ti[i][j], tv[i][j]});
      }
    }
  }
  return out;
}

// Runs `fn` on every rank; if any rank throws, every rank throws the lowest failing rank's
// message (agreed over `comm`), so no rank is left waiting in a collective.
template <typename Fn>
void on_all_ranks(sharding::Communicator* comm, Fn&& fn) {
  std::string err;
  try {
    fn();
  } catch (const Error& e) {
    err = e.message();
  } catch (const std::exception& e) {
    err = e.what();
  }
  if (comm != nullptr && comm->size() > 1) err = comm->agree_on_error(err);
  if (!err.empty()) throw CollectiveError(err, __FILE__, __LINE__);
}

// eos ids of generation_config.json (an id or a list), added to the config's.
void add_generation_eos(const std::string& path, std::vector<int32_t>& ids) {
  std::ifstream in(path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    TESSERA_FAIL("'", path, "': not valid JSON: ", e.what());
  }
  if (!j.is_object() || !j.contains("eos_token_id") || j["eos_token_id"].is_null()) return;
  auto add = [&](const nlohmann::json& v) {
    TESSERA_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0, "'", path,
                  "': eos_token_id must be a non-negative integer or a list of them, got ",
                  j["eos_token_id"].dump());
    const auto id = static_cast<int32_t>(v.get<int64_t>());
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  };
  if (j["eos_token_id"].is_array()) {
    for (const auto& v : j["eos_token_id"]) add(v);
  } else {
    add(j["eos_token_id"]);
  }
}

}  // namespace

EngineCore::EngineCore(const EngineConfig& config, sharding::Communicator* tp,
                       sharding::Communicator* dcp, sharding::Communicator* control)
    : config_(config),
      tp_(tp),
      control_(control != nullptr ? control : tp),
      channel_(control != nullptr ? control : tp) {
  tp_size_ = tp != nullptr ? tp->size() : 1;
  leader_ = tp == nullptr || tp->rank() == 0;
  TESSERA_CHECK(control_ == nullptr || tp == nullptr ||
                    (control_->size() == tp->size() && control_->rank() == tp->rank()),
                "the control group must span the tensor-parallel group's ranks");
  sharding::Communicator* ctl = control_;
  // The leader resolves first: for the built-in model it writes the files the others read.
  std::optional<models::ModelFolder> folder;
  on_all_ranks(ctl, [&] {
    if (leader_) folder = models::ModelFolder::resolve(config_.model);
  });
  on_all_ranks(ctl, [&] {
    if (!folder) folder = models::ModelFolder::resolve(config_.model);
    model_dir_ = folder->dir();
    model_config_ = models::ModelConfig::from_file(folder->config_json());
    model_config_.check_tensor_parallel(tp_size_);
    TESSERA_CHECK(config_.max_model_len >= 0, "max_model_len must be >= 0 (0 = the model's), got ",
                  config_.max_model_len);
    const int64_t derived = model_config_.derived_max_model_len();
    TESSERA_CHECK(config_.max_model_len <= derived, "max_model_len=", config_.max_model_len,
                  " exceeds the model's ", derived,
                  " (max_position_embeddings, times the rope_scaling factor where it extends it)");
    max_model_len_ = config_.max_model_len > 0 ? config_.max_model_len : derived;
    for (int64_t id : model_config_.eos_token_ids) eos_ids_.push_back(static_cast<int32_t>(id));
    if (folder->generation_config_json()) {
      add_generation_eos(*folder->generation_config_json(), eos_ids_);
    }
    TESSERA_CHECK(config_.max_num_seqs > 0, "max_num_seqs must be positive, got ",
                  config_.max_num_seqs);
    TESSERA_CHECK(config_.max_num_batched_tokens > 0,
                  "max_num_batched_tokens must be positive, got ", config_.max_num_batched_tokens);
    config_.sparse.validate(config_.block_size);
    const torch::Device device = config_.device >= 0 ? torch::Device(torch::kCUDA, config_.device)
                                                     : torch::Device(torch::kCPU);
    models::WeightLoader weights(*folder, {.memory_budget = config_.load_memory_budget,
                                           .progress = config_.load_progress && leader_});
    model_ =
        std::make_unique<models::DecoderModel>(model_config_, weights, tp, max_model_len_, device,
                                               models::parse_quantization(config_.quantization));
    for (const auto& [name, path] : config_.loras) {
      TESSERA_CHECK(!name.empty(), "--lora: an adapter needs a name (NAME=PATH), got '=", path,
                    "'");
      model_->add_lora(models::LoraAdapter::load(name, path, model_config_));
    }
  });
  on_all_ranks(ctl, [&] {
    KVCacheOptions kv;
    kv.block_size = config_.block_size;
    kv.dtype = config_.kv_cache_dtype;
    kv.budget_bytes = config_.kv_cache_memory;
    kv.device_memory_fraction = config_.device_memory_fraction;
    kv.limits.max_model_len = max_model_len_;
    kv.limits.max_num_batched_tokens = config_.max_num_batched_tokens;
    kv.limits.batch_size = config_.max_num_seqs;
    kv_plan_ = plan_kv_cache(model_config_, model_->layout(), kv, config_.device, ctl);
  });
  on_all_ranks(ctl, [&] {
    storage_ = std::make_unique<caches::PagedKVStorage>(kv_plan_.storage, model_->device());
    runner_ = std::make_unique<ModelRunner>(*model_, *storage_, kv_plan_.groups,
                                            config_.max_num_seqs, dcp, config_.sparse);
    if (!leader_) return;
    caches::KVCacheManagerConfig mc;
    mc.groups = kv_plan_.groups;
    mc.num_blocks = kv_plan_.storage.num_blocks;
    mc.num_state_slots = kv_plan_.storage.num_state_slots;
    mc.enable_prefix_caching = config_.enable_prefix_caching;
    kv_ = std::make_unique<caches::KVCacheManager>(mc);
    scheduler::SchedulerConfig sc;
    sc.max_num_seqs = config_.max_num_seqs;
    sc.max_num_batched_tokens = config_.max_num_batched_tokens;
    sc.max_model_len = max_model_len_;
    sc.long_prefill_token_threshold = config_.long_prefill_token_threshold;
    sc.enable_chunked_prefill = config_.enable_chunked_prefill;
    sc.eos_token_ids = eos_ids_;
    scheduler_ = std::make_unique<scheduler::Scheduler>(sc, *kv_);
    sampler_ = std::make_unique<Sampler>(SamplerConfig{eos_ids_, config_.seed});
  });
}

EngineCore::~EngineCore() = default;

void EngineCore::add_request(EngineRequest request, OutputFn on_output) {
  TESSERA_CHECK(leader_, "add_request runs on the group's leader");
  auto refuse = [&](const std::string& error) {
    RequestOutput o;
    o.id = request.id;
    o.finished = true;
    o.finish_reason = "error";
    o.error = error;
    o.prompt_tokens = static_cast<int64_t>(request.prompt_ids.size());
    if (on_output) on_output(o);
  };
  const std::string who = "request \"" + request.id + "\": ";
  for (size_t i = 0; i < request.prompt_ids.size(); ++i) {
    const int32_t id = request.prompt_ids[i];
    if (id < 0 || id >= model_config_.vocab_size) {
      return refuse(who + "prompt_ids[" + std::to_string(i) + "]=" + std::to_string(id) +
                    " is outside the model's vocabulary [0, " +
                    std::to_string(model_config_.vocab_size) + ")");
    }
  }
  for (size_t i = 0; i < request.params.stop_token_ids.size(); ++i) {
    const int32_t id = request.params.stop_token_ids[i];
    if (id < 0 || id >= model_config_.vocab_size) {
      return refuse(who + "stop_token_ids[" + std::to_string(i) + "]=" + std::to_string(id) +
                    " is outside the model's vocabulary [0, " +
                    std::to_string(model_config_.vocab_size) + ")");
    }
  }
  for (const auto& [id, bias] : request.params.logit_bias) {
    if (id < 0 || id >= model_config_.vocab_size) {
      return refuse(who + "logit_bias token id " + std::to_string(id) +
                    " is outside the model's vocabulary [0, " +
                    std::to_string(model_config_.vocab_size) + ")");
    }
  }
  for (size_t i = 0; i < request.params.bad_words_ids.size(); ++i) {
    for (int32_t id : request.params.bad_words_ids[i]) {
      if (id < 0 || id >= model_config_.vocab_size) {
        return refuse(who + "bad_words_ids[" + std::to_string(i) + "] holds " + std::to_string(id) +
                      ", outside the model's vocabulary [0, " +
                      std::to_string(model_config_.vocab_size) + ")");
      }
    }
  }
  const auto& allowed = request.params.allowed_token_ids;
  for (size_t i = 0; i < allowed.size(); ++i) {
    if (allowed[i] < 0 || allowed[i] >= model_config_.vocab_size) {
      return refuse(who + "allowed_token_ids[" + std::to_string(i) +
                    "]=" + std::to_string(allowed[i]) + " is outside the model's vocabulary [0, " +
                    std::to_string(model_config_.vocab_size) + ")");
    }
  }
  if (!allowed.empty() && request.params.min_tokens > 0) {
    // The min_tokens mask would leave no token to draw.
    auto ends = [&](int32_t id) {
      auto has = [id](const std::vector<int32_t>& v) {
        return std::find(v.begin(), v.end(), id) != v.end();
      };
      return has(request.params.stop_token_ids) || (!request.params.ignore_eos && has(eos_ids_));
    };
    if (std::all_of(allowed.begin(), allowed.end(), ends)) {
      return refuse(who + "every id of allowed_token_ids ends the request (eos or " +
                    "stop_token_ids), but min_tokens=" + std::to_string(request.params.min_tokens) +
                    " asks for tokens before that");
    }
  }
  scheduler::Request r;
  r.id = request.id;
  r.prompt_ids = request.prompt_ids;
  r.params = request.params;
  r.priority = request.priority;
  r.cache_salt = request.cache_salt;
  r.lora = request.lora;
  if (!r.lora.empty()) {
    bool known = false;
    std::string names;
    for (int i = 0; i < model_->num_loras(); ++i) {
      known = known || model_->lora_name(i) == r.lora;
      names += (names.empty() ? "" : ", ") + model_->lora_name(i);
    }
    if (!known) {
      return refuse(who + "lora='" + r.lora + "' is not a loaded adapter (" +
                    (names.empty() ? std::string("none loaded: --lora NAME=PATH") : names) + ")");
    }
  }
  const auto added = scheduler_->add_request(std::move(r));
  if (!added) return refuse(added.error);
  if (request.params.prompt_logprobs >= 0) prompt_scores_[request.id] = PromptScores{};
  callbacks_[request.id] = std::move(on_output);
}

bool EngineCore::abort(const std::string& id, scheduler::FinishReason reason) {
  TESSERA_CHECK(leader_, "abort runs on the group's leader");
  return scheduler_->abort(id, reason);
}

void EngineCore::abort_all() {
  std::vector<std::string> ids;
  for (const auto& [id, fn] : callbacks_) ids.push_back(id);
  for (const auto& id : ids) scheduler_->abort(id);
}

bool EngineCore::has_unfinished() const { return scheduler_ && scheduler_->has_unfinished(); }

RequestOutput EngineCore::convert(const scheduler::RequestOutput& o, const SamplerOutput& s) {
  RequestOutput out;
  out.id = o.id;
  if (auto it = prompt_scores_.find(o.id); it != prompt_scores_.end()) {
    // Every prompt token is scored by the step that samples the first token.
    out.prompt_logprobs = std::move(it->second.scored);
    it->second.scored.clear();
    if (o.finished) prompt_scores_.erase(it);
  }
  if (o.has_new_token()) {
    out.new_token_ids.push_back(o.new_token_id);
    if (o.sample_index >= 0 && !s.logprobs.empty()) {
      out.logprobs.push_back(s.logprobs[o.sample_index]);
      std::vector<TopLogprob> top;
      for (const auto& t : s.top_logprobs[o.sample_index]) top.push_back({t.id, t.logprob});
      out.top_logprobs.push_back(std::move(top));
    }
  }
  out.finished = o.finished;
  out.finish_reason = std::string(scheduler::finish_reason_name(o.finish_reason));
  if (auto it = errors_.find(o.id); it != errors_.end() && o.finished) {
    out.finish_reason = "error";
    out.error = it->second;
    errors_.erase(it);
  }
  out.prompt_tokens = o.prompt_tokens;
  out.completion_tokens = o.completion_tokens;
  out.cached_prompt_tokens = o.cached_prompt_tokens;
  return out;
}

void EngineCore::step() {
  TESSERA_CHECK(leader_, "step runs on the group's leader");
  const scheduler::StepPlan plan = scheduler_->schedule();
  if (!plan.empty() || !plan.released.empty() || !plan.copies.empty()) {
    if (channel_.active()) {
      const auto bytes = plan.encode();
      channel_.send(PlanChannel::Kind::kPlan, bytes);
    }
  }
  // Prompt tokens this step can score: token p + 1 of a prompt from the logits at position p.
  std::vector<int64_t> score_rows;
  std::vector<PromptScores*> score_of;
  std::vector<int32_t> score_target, score_k;
  if (!prompt_scores_.empty()) {
    for (const auto& row : plan.seqs) {
      const scheduler::Request* r = scheduler_->running_at(row.slot);
      if (r == nullptr || r->seq != row.seq) continue;
      auto it = prompt_scores_.find(r->id);
      if (it == prompt_scores_.end()) continue;
      const int64_t last = std::min(row.start_pos + row.num_tokens, r->num_prompt_tokens() - 1);
      for (int64_t p = std::max(row.start_pos, it->second.next - 1); p < last; ++p) {
        score_rows.push_back(row.token_offset + (p - row.start_pos));
        score_of.push_back(&it->second);
        score_target.push_back(r->prompt_ids[p + 1]);
        score_k.push_back(r->params.prompt_logprobs);
      }
    }
  }
  torch::Tensor logits, score_logits;
  if (observer_) {
    const torch::Tensor all = runner_->execute(plan, LogitsRows::kAll);
    observer_(plan, all);
    std::vector<int64_t> last;
    for (const auto& row : plan.seqs) {
      if (row.sample) last.push_back(row.token_offset + row.num_tokens - 1);
    }
    logits = all.index_select(0, torch::tensor(last, torch::kLong).to(all.device()));
    if (!score_rows.empty()) {
      score_logits = all.index_select(0, torch::tensor(score_rows, torch::kLong).to(all.device()));
    }
  } else if (!score_rows.empty()) {
    const torch::Tensor both = runner_->execute(plan, LogitsRows::kSampled, score_rows);
    logits = both.narrow(0, 0, plan.num_sampled);
    score_logits = both.narrow(0, plan.num_sampled, static_cast<int64_t>(score_rows.size()));
  } else {
    logits = runner_->execute(plan, LogitsRows::kSampled);
  }
  if (!score_rows.empty()) {
    const auto scores = score_prompt_tokens(score_logits, score_target, score_k);
    for (size_t i = 0; i < scores.size(); ++i) {
      score_of[i]->scored.push_back(scores[i]);
      ++score_of[i]->next;
    }
  }
  std::vector<SamplerRow> rows;
  std::vector<const scheduler::Request*> requests;
  rows.reserve(plan.num_sampled);
  for (const auto& row : plan.seqs) {
    if (!row.sample) continue;
    const scheduler::Request* r = scheduler_->running_at(row.slot);
    TESSERA_CHECK(r != nullptr && r->seq == row.seq, "sampling row of seq ", row.seq,
                  " has no running request in slot ", row.slot);
    requests.push_back(r);
    rows.push_back({&r->params, r->prompt_ids, r->output_ids});
  }
  scheduler::SampledTokens sampled;
  sampled.step = plan.step;
  SamplerOutput drawn;
  if (!rows.empty()) {
    drawn = sampler_->sample(logits, rows);
    sampled.token_ids = drawn.token_ids;
    // NaN / +inf logits (from NaN weights or activations) end their request with an error: never
    // turned into a token.
    for (size_t i = 0; i < rows.size(); ++i) {
      if (drawn.token_ids[i] >= 0) continue;
      const std::string id = requests[i]->id;
      const bool nan = logits[static_cast<int64_t>(i)].isnan().any().item<bool>();
      errors_[id] = std::string(nan ? "NaN" : "inf") + " in logits of request \"" + id +
                    "\" at step " + std::to_string(plan.step);
      log::warn("{}", errors_[id]);
      scheduler_->abort(id, scheduler::FinishReason::kError);
      sampled.token_ids[i] = 0;  // the aborted row is ignored by update()
    }
  }
  for (const auto& o : scheduler_->update(plan, sampled)) {
    const RequestOutput out = convert(o, drawn);
    auto it = callbacks_.find(out.id);
    if (it == callbacks_.end()) continue;
    if (it->second) it->second(out);
    if (out.finished) callbacks_.erase(it);
  }
}

void EngineCore::release_workers() {
  if (leader_ && channel_.active()) channel_.send(PlanChannel::Kind::kDone);
}

void EngineCore::heartbeat() {
  if (leader_ && channel_.active()) channel_.ping();
}

void EngineCore::fail_workers(const std::string& message) {
  if (leader_ && channel_.active()) channel_.send_error(message);
}

void EngineCore::serve() {
  TESSERA_CHECK(!leader_, "serve runs on the group's other ranks");
  while (true) {
    PlanChannel::Message m = channel_.receive();
    received_->fetch_add(1, std::memory_order_relaxed);
    if (m.kind == PlanChannel::Kind::kDone) return;
    if (m.kind == PlanChannel::Kind::kPing) continue;
    if (m.kind == PlanChannel::Kind::kError) {
      throw CollectiveError(std::string(m.bytes.begin(), m.bytes.end()), __FILE__, __LINE__);
    }
    runner_->execute(scheduler::StepPlan::decode(m.bytes), LogitsRows::kNone);
  }
}

scheduler::SchedulerStats EngineCore::scheduler_stats() const {
  TESSERA_CHECK(leader_, "scheduler_stats runs on the group's leader");
  return scheduler_->stats();
}

EngineStats EngineCore::stats() const {
  EngineStats s{};
  if (!leader_) return s;
  const auto st = scheduler_->stats();
  s.running = st.running;
  s.waiting = st.waiting;
  s.kv_blocks_total = st.kv_blocks_total;
  s.kv_blocks_used = st.kv_blocks_used;
  s.prefix_hit_rate = st.prefix_hit_rate();
  s.steps = st.steps;
  s.preemptions = st.preemptions;
  return s;
}

}  // namespace tessera::engine
