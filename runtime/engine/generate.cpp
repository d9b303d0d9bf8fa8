#include "runtime/engine/generate.h"

#include <torch/types.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "runtime/models/model_folder.h"
#include "runtime/tokenizers/tokenizer.h"
#include "sharding/communicator.h"
#include "sharding/mpi/mpi_communicator.h"
#include "sharding/process_groups.h"

namespace tessera::engine {

namespace {

using nlohmann::json;

// Runs `fn` on every rank of `comm`; a failure anywhere is thrown on every rank as one agreed
// CollectiveError.
template <typename Fn>
void agreed(sharding::Communicator* comm, Fn&& fn) {
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

json prompt_logprobs_json(const std::vector<PromptLogprob>& scores) {
  json out = json::array();
  for (const auto& e : scores) {
    json top = json::array();
    for (const auto& t : e.top) top.push_back({t.id, t.logprob});
    out.push_back({{"id", e.id}, {"logprob", e.logprob}, {"rank", e.rank}, {"top", top}});
  }
  return out;
}

json to_json(int64_t index, const CompletedRequest& r) {
  return {{"index", index},
          {"id", r.id},
          {"prompt_ids", r.prompt_ids},
          {"output_ids", r.output_ids},
          {"finish_reason", r.finish_reason},
          {"error", r.error},
          {"text", r.text},
          {"stop_index", r.stop_index},
          {"cached_prompt_tokens", r.cached_prompt_tokens},
          {"first_token_s", r.first_token_s},
          {"finished_s", r.finished_s},
          {"prompt_logprobs", prompt_logprobs_json(r.prompt_logprobs)}};
}

CompletedRequest from_json(const json& j) {
  CompletedRequest r;
  r.id = j["id"].get<std::string>();
  r.prompt_ids = j["prompt_ids"].get<std::vector<int32_t>>();
  r.output_ids = j["output_ids"].get<std::vector<int32_t>>();
  r.finish_reason = j["finish_reason"].get<std::string>();
  r.error = j["error"].get<std::string>();
  r.text = j["text"].get<std::string>();
  r.stop_index = j["stop_index"].get<int32_t>();
  r.cached_prompt_tokens = j["cached_prompt_tokens"].get<int64_t>();
  r.first_token_s = j["first_token_s"].get<double>();
  r.finished_s = j["finished_s"].get<double>();
  for (const auto& e : j["prompt_logprobs"]) {
    PromptLogprob p;
    p.id = e["id"].get<int32_t>();
    p.logprob = e["logprob"].get<float>();
    p.rank = e["rank"].get<int32_t>();
    for (const auto& t : e["top"]) p.top.push_back({t[0].get<int32_t>(), t[1].get<float>()});
    r.prompt_logprobs.push_back(std::move(p));
  }
  return r;
}

json sparse_json(const models::SparseDecodeStats& s) {
  return {{"rows", s.rows},
          {"tokens_read", s.tokens_read},
          {"tokens_context", s.tokens_context},
          {"kv_bytes_read", s.kv_bytes_read},
          {"kv_bytes_dense", s.kv_bytes_dense}};
}

json summary_json(const GenerateSummary& s) {
  return {{"seconds", s.seconds},
          {"requests", s.requests},
          {"failed", s.failed},
          {"prompt_tokens", s.prompt_tokens},
          {"output_tokens", s.output_tokens},
          {"computed_tokens", s.computed_tokens},
          {"steps", s.steps},
          {"preemptions", s.preemptions},
          {"prefix_hit_tokens", s.prefix_hit_tokens},
          {"sparse", sparse_json(s.sparse)}};
}

// Every rank's text, on every rank of `comm` (lengths first, then the padded bytes).
std::vector<std::string> all_gather_text(sharding::Communicator& comm, const std::string& text) {
  auto len = torch::full({1}, static_cast<int64_t>(text.size()), torch::kLong);
  auto lens = comm.all_gather(len).view({-1});
  const int64_t max_len = lens.max().item<int64_t>();
  auto buf = torch::zeros({std::max<int64_t>(max_len, 1)}, torch::kByte);
  std::memcpy(buf.data_ptr<uint8_t>(), text.data(), text.size());
  auto all = comm.all_gather(buf).contiguous();  // [size, max_len]
  std::vector<std::string> out;
  for (int r = 0; r < comm.size(); ++r) {
    const auto* p = all[r].data_ptr<uint8_t>();
    out.emplace_back(reinterpret_cast<const char*>(p), lens[r].item<int64_t>());
  }
  return out;
}

}  // namespace

GenerateReport run_generate(const GenerateJob& job, sharding::Communicator* world) {
  GenerateReport rep;
  const int world_size = world != nullptr ? world->size() : 1;
  const int rank = world != nullptr ? world->rank() : 0;
  rep.world = world_size;
  agreed(world, [&] {
    TESSERA_CHECK(job.dp >= 1, "--dp must be >= 1, got ", job.dp);
    TESSERA_CHECK(job.tp >= 0, "--tp must be >= 1 (or 0: the job's ranks / --dp), got ", job.tp);
    rep.dp = job.dp;
    rep.tp = job.tp > 0 ? job.tp : world_size / job.dp;
    TESSERA_CHECK(rep.tp >= 1 && rep.tp * rep.dp == world_size, "--tp ", rep.tp, " x --dp ", rep.dp,
                  " needs ", rep.tp * rep.dp, " ranks, the job has ", world_size);
  });
  const auto t0 = std::chrono::steady_clock::now();
  // The folder (rank 0 writes the built-in model first) and the config decide the groups.
  models::ModelConfig config;
  std::unique_ptr<tokenizers::Tokenizer> tokenizer;
  agreed(world, [&] {
    if (rank == 0) rep.model_dir = models::ModelFolder::resolve(job.engine.model).dir();
  });
  agreed(world, [&] {
    if (rep.model_dir.empty()) rep.model_dir = models::ModelFolder::resolve(job.engine.model).dir();
    config = models::ModelConfig::from_file(rep.model_dir + "/config.json");
    rep.dcp = config.decode_context_parallel(rep.tp);
    // tokenizer.json (+ tokenizer_config.json) of the folder, else the byte tokenizer.
    tokenizer = tokenizers::Tokenizer::from_folder(rep.model_dir);
  });
  // Plans, pool sizes, error agreement and the results' gather run over MPI groups (CPU
  // tensors); the model's own collectives too on a CPU, over NCCL groups on GPUs.
  std::unique_ptr<sharding::Communicator> tp_comm, dp_comm, model_tp, dcp_comm;
  if (world_size > 1) {
    auto* mpi_world = dynamic_cast<sharding::MpiCommunicator*>(world);
    TESSERA_CHECK(mpi_world != nullptr, "run_generate needs the MPI world communicator");
    auto groups = sharding::make_process_groups(*mpi_world, rep.tp, 1);
    tp_comm = std::move(groups.tp);
    dp_comm = std::move(groups.dp);
    const auto factory = sharding::group_factory(*mpi_world, job.engine.device);
    if (job.engine.device >= 0) {
      model_tp = sharding::make_process_groups(world_size, rank, rep.tp, 1, factory).tp;
    }
    if (rep.dcp > 1) dcp_comm = factory(rank / rep.dcp, rank, "dcp");
  }
  sharding::Communicator* model_comm = model_tp ? model_tp.get() : tp_comm.get();
  const int replica = rank / rep.tp;
  const int tp_rank = rank % rep.tp;

  EngineConfig ec = job.engine;
  ec.model = rep.model_dir;
  std::unique_ptr<EngineCore> core;
  agreed(world, [&] {
    core = std::make_unique<EngineCore>(ec, model_comm, dcp_comm.get(), tp_comm.get());
  });
  rep.load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  rep.kv_blocks = core->kv_plan().storage.num_blocks;
  rep.kv_bytes_per_rank = core->kv_plan().storage.total_bytes();
  rep.weight_bytes_per_rank = core->model().weight_bytes();
  if (rank == 0 && job.on_ready) job.on_ready(core->kv_plan().table);

  // This replica's prompts: every dp-th, bad ones left to rank 0's report.
  std::vector<EngineRequest> requests;
  std::vector<int64_t> index;
  if (core->leader()) {
    for (size_t i = 0; i < job.prompts.size(); ++i) {
      const PromptSpec& p = job.prompts[i];
      if (static_cast<int>(i % rep.dp) != replica || !p.error.empty()) continue;
      EngineRequest r;
      r.id = p.id.empty() ? std::to_string(i) : p.id;
      r.prompt_ids = p.has_ids ? p.ids : tokenizer->encode(p.text);
      r.params = p.params;
      r.priority = p.priority;
      r.lora = p.lora;
      requests.push_back(std::move(r));
      index.push_back(static_cast<int64_t>(i));
    }
  }
  GenerateSummary summary;
  const auto results = generate(*core, std::move(requests),
                                rank == 0 ? job.progress : std::function<void(const Progress&)>(),
                                &summary, tokenizer.get());

  // Gather the leaders' results on world rank 0.
  json mine = json::object();
  mine["results"] = json::array();
  for (size_t k = 0; k < results.size(); ++k)
    mine["results"].push_back(to_json(index[k], results[k]));
  mine["summary"] = summary_json(summary);
  std::vector<json> all;
  if (tp_rank == 0) {
    if (rep.dp > 1) {
      for (const auto& text :
           all_gather_text(*dp_comm, mine.dump(-1, ' ', false, json::error_handler_t::replace))) {
        all.push_back(json::parse(text));
      }
    } else {
      all.push_back(mine);
    }
  }
  // Every rank learns whether some request failed (one exit code for the job).
  auto agree_failed = [&](int64_t failed) {
    if (world == nullptr || world_size == 1) return failed;
    auto t = torch::full({1}, failed, torch::kLong);
    world->broadcast(t, 0);
    return t.item<int64_t>();
  };
  if (rank != 0) {
    rep.failed = agree_failed(0);
    return rep;
  }
  rep.outputs.resize(job.prompts.size());
  for (size_t i = 0; i < job.prompts.size(); ++i) {
    const PromptSpec& p = job.prompts[i];
    if (p.error.empty()) continue;
    auto& r = rep.outputs[i].result;
    r.id = p.id.empty() ? std::to_string(i) : p.id;
    r.prompt_ids = p.ids;
    r.finish_reason = "error";
    r.error = p.error;
  }
  GenerateSummary& s = rep.summary;
  for (const auto& part : all) {
    for (const auto& j : part["results"]) {
      auto& out = rep.outputs.at(j["index"].get<int64_t>());
      out.result = from_json(j);
      out.text = out.result.text;
    }
    const auto& js = part["summary"];
    s.seconds = std::max(s.seconds, js["seconds"].get<double>());
    s.requests += js["requests"].get<int64_t>();
    s.failed += js["failed"].get<int64_t>();
    s.prompt_tokens += js["prompt_tokens"].get<int64_t>();
    s.output_tokens += js["output_tokens"].get<int64_t>();
    s.computed_tokens += js["computed_tokens"].get<int64_t>();
    s.steps += js["steps"].get<int64_t>();
    s.preemptions += js["preemptions"].get<int64_t>();
    s.prefix_hit_tokens += js["prefix_hit_tokens"].get<int64_t>();
    const auto& sp = js["sparse"];
    s.sparse.rows += sp["rows"].get<int64_t>();
    s.sparse.tokens_read += sp["tokens_read"].get<int64_t>();
    s.sparse.tokens_context += sp["tokens_context"].get<int64_t>();
    s.sparse.kv_bytes_read += sp["kv_bytes_read"].get<int64_t>();
    s.sparse.kv_bytes_dense += sp["kv_bytes_dense"].get<int64_t>();
  }
  for (const auto& p : job.prompts) {
    if (!p.error.empty()) {
      ++s.requests;
      ++s.failed;
    }
  }
  rep.failed = agree_failed(s.failed);
  return rep;
}

}  // namespace tessera::engine
