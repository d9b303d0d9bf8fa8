// EncoderService (runtime/engine/embedding_client.h): the encoder, its tokenizer and
// sentence-transformers pooling, a request queue on the leader, and the batch broadcast that keeps
// the tensor-parallel group in step.
#include <torch/types.h>

#include <condition_variable>
#include <deque>
#include <filesystem>
#include <future>
#include <map>
#include <mutex>
#include <thread>

#include "common/error.h"
#include "runtime/engine/embedding_client.h"
#include "runtime/models/classifier_outputs.h"
#include "runtime/models/encoder_config.h"
#include "runtime/models/encoder_model.h"
#include "runtime/models/model_folder.h"
#include "runtime/models/sentence_config.h"
#include "runtime/models/sentence_pooling.h"
#include "runtime/models/weights.h"
#include "runtime/tokenizers/tokenizer.h"
#include "runtime/tokenizers/unicode.h"
#include "sharding/communicator.h"

namespace tessera::engine {

namespace {

// Runs fn on every rank; a failure anywhere becomes the same CollectiveError on all of them.
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

// Python's str.strip(): leading and trailing characters for which str.isspace() holds.
std::string py_strip(std::string_view s) {
  namespace u = tokenizers::unicode;
  size_t i = 0, begin = s.size(), end = 0;
  while (i < s.size()) {
    const size_t at = i;
    const char32_t c = u::next_cp(s, i);
    if (!u::py_isspace(c)) {
      if (begin == s.size()) begin = at;
      end = i;
    }
  }
  return begin >= end ? std::string() : std::string(s.substr(begin, end - begin));
}

enum Op : int64_t { kStop = 0, kBatch = 1 };

}  // namespace

void EmbeddingClient::embed(std::vector<std::vector<int32_t>> inputs, Done done) {
  std::vector<EncoderInput> in(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) in[i].ids = std::move(inputs[i]);
  submit(EncoderTask::kEmbed, std::move(in), std::move(done));
}

struct EncoderService::Impl {
  EncoderOptions options;
  sharding::Communicator* tp = nullptr;
  sharding::Communicator* control = nullptr;
  bool leader = true;
  models::EncoderConfig config;
  models::SentenceConfig sentence;
  std::unique_ptr<tokenizers::Tokenizer> tokenizer;  // leader, when the folder has one
  std::vector<int32_t> special_prefix, special_suffix;
  std::unique_ptr<models::EncoderModel> model;
  std::map<std::string, int> lora_index;  // named adapter -> EncoderModel::add_lora index
  EncoderInfo info;

  struct Pending {
    EncoderTask task;
    std::vector<EncoderInput> inputs;
    Done done;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Pending> pending;
  bool stopping = false;
  bool released = false;  // the followers were told to stop
  std::thread thread;

  void broadcast_stop() {
    if (released) return;
    released = true;
    if (control == nullptr || control->size() == 1) return;
    auto header =
        torch::tensor({static_cast<int64_t>(kStop), int64_t{0}, int64_t{0}}, torch::kLong);
    control->broadcast(header, 0);
  }

  // One packed forward, the same on every rank; the leader gets the token states.
  torch::Tensor forward(const models::EncoderBatch& batch) { return model->forward(batch); }

  std::string check_input(EncoderTask task, const EncoderInput& in) const {
    if (task == EncoderTask::kClassify && !config.has_classifier) {
      return "the model (architectures " + config.architecture +
             ") has no sequence-classification head";
    }
    if (in.ids.empty()) return "is empty: an encoder input needs at least one token";
    if (static_cast<int64_t>(in.ids.size()) > config.max_position_embeddings) {
      return "has " + std::to_string(in.ids.size()) +
             " tokens, more than the model's max_position_embeddings=" +
             std::to_string(config.max_position_embeddings);
    }
    for (int32_t id : in.ids) {
      if (id < 0 || id >= config.vocab_size) {
        return "has token id " + std::to_string(id) + ", outside the vocabulary [0, " +
               std::to_string(config.vocab_size) + ")";
      }
    }
    if (!in.token_types.empty()) {
      if (in.token_types.size() != in.ids.size()) return "has token types of another length";
      for (int32_t t : in.token_types) {
        if (t < 0 || t >= std::max<int64_t>(1, config.type_vocab_size)) {
          return "has token type " + std::to_string(t) + ", outside [0, " +
                 std::to_string(std::max<int64_t>(1, config.type_vocab_size)) + ")";
        }
      }
    }
    if (in.prompt_length < 0) return "has a negative prompt length";
    if (!in.lora.empty() && !lora_index.count(in.lora)) {
      return "names lora='" + in.lora + "', which is not a loaded adapter";
    }
    return "";
  }

  // Leader: everything queued, in packed batches of at most max_batch_tokens.
  void run_pending() {
    std::deque<Pending> work;
    {
      std::lock_guard<std::mutex> lock(mu);
      work.swap(pending);
    }
    if (work.empty()) return;
    struct Slot {
      size_t request, input;
    };
    std::vector<Slot> slots;
    std::vector<std::vector<std::vector<float>>> results(work.size());
    std::vector<std::string> errors(work.size());
    for (size_t r = 0; r < work.size(); ++r) {
      results[r].resize(work[r].inputs.size());
      for (size_t i = 0; i < work[r].inputs.size(); ++i) slots.push_back({r, i});
    }
    size_t next = 0;
    while (next < slots.size()) {
      size_t end = next;
      int64_t tokens = 0;
      while (end < slots.size()) {
        const auto& in = work[slots[end].request].inputs[slots[end].input];
        const auto n = static_cast<int64_t>(in.ids.size());
        if (end > next && tokens + n > options.max_batch_tokens) break;
        tokens += n;
        ++end;
      }
      run_batch(work, slots, next, end, results, errors);
      next = end;
    }
    for (size_t r = 0; r < work.size(); ++r) {
      if (!errors[r].empty()) {
        work[r].done({}, errors[r]);
      } else {
        work[r].done(std::move(results[r]), "");
      }
    }
  }

  template <typename Slots>
  void run_batch(const std::deque<Pending>& work, const Slots& slots, size_t begin, size_t end,
                 std::vector<std::vector<std::vector<float>>>& results,
                 std::vector<std::string>& errors) {
    const auto n = static_cast<int64_t>(end - begin);
    std::vector<std::vector<int32_t>> ids, types;
    std::vector<int64_t> prompt_lengths, lora_ids;
    bool any_types = false, any_lora = false;
    for (size_t s = begin; s < end; ++s) {
      const auto& in = work[slots[s].request].inputs[slots[s].input];
      ids.push_back(in.ids);
      types.push_back(in.token_types.empty() ? std::vector<int32_t>(in.ids.size(), 0)
                                             : in.token_types);
      any_types = any_types || !in.token_types.empty();
      prompt_lengths.push_back(in.prompt_length);
      lora_ids.push_back(in.lora.empty() ? -1 : lora_index.at(in.lora));
      any_lora = any_lora || !in.lora.empty();
    }
    auto batch = models::EncoderBatch::pack(ids, any_types ? types : decltype(types){});
    const auto lora_tensor = torch::tensor(lora_ids, torch::kLong);
    if (any_lora) batch.lora_ids = lora_tensor.to(torch::kInt);
    if (control != nullptr && control->size() > 1) {
      const int64_t total = batch.tokens.numel();
      auto header = torch::tensor({static_cast<int64_t>(kBatch), n, total}, torch::kLong);
      control->broadcast(header, 0);
      auto lens =
          (batch.cu_seqlens.narrow(0, 1, n) - batch.cu_seqlens.narrow(0, 0, n)).to(torch::kLong);
      auto payload = torch::cat({lens, batch.tokens, batch.token_types, lora_tensor});
      control->broadcast(payload, 0);
    }
    torch::Tensor states;
    try {
      states = forward(batch);
    } catch (const Error& e) {
      for (size_t s = begin; s < end; ++s) errors[slots[s].request] = e.message();
      return;
    }
    // Rows of this batch by task.
    std::vector<int64_t> embed_rows, classify_rows;
    for (int64_t i = 0; i < n; ++i) {
      (work[slots[begin + i].request].task == EncoderTask::kEmbed ? embed_rows : classify_rows)
          .push_back(i);
    }
    auto store = [&](const std::vector<int64_t>& rows, const torch::Tensor& out) {
      auto cpu = out.to(torch::kCPU).contiguous();
      for (size_t k = 0; k < rows.size(); ++k) {
        const auto& slot = slots[begin + rows[k]];
        const float* p = cpu[static_cast<int64_t>(k)].data_ptr<float>();
        results[slot.request][slot.input].assign(p, p + cpu.size(1));
      }
    };
    try {
      if (!embed_rows.empty()) {
        auto pooled =
            models::pool_sentences(states, batch.cu_seqlens, sentence.pooling, prompt_lengths);
        if (sentence.normalize) pooled = models::l2_normalize(pooled);
        auto idx = torch::tensor(embed_rows, torch::kLong).to(pooled.device());
        store(embed_rows, pooled.index_select(0, idx));
      }
      if (!classify_rows.empty()) {
        auto logits = model->classify(states, batch);
        auto idx = torch::tensor(classify_rows, torch::kLong).to(logits.device());
        store(classify_rows, logits.index_select(0, idx));
      }
    } catch (const Error& e) {
      for (size_t s = begin; s < end; ++s) errors[slots[s].request] = e.message();
    }
  }
};

EncoderService::EncoderService(const EncoderOptions& options, sharding::Communicator* tp,
                               sharding::Communicator* control)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.options = options;
  m.tp = tp;
  m.control = control != nullptr ? control : tp;
  m.leader = tp == nullptr || tp->rank() == 0;
  const int tp_size = tp != nullptr ? tp->size() : 1;
  on_all_ranks(m.control, [&] {
    TESSERA_CHECK(options.max_batch_tokens > 0, "max_batch_tokens must be positive, got ",
                  options.max_batch_tokens);
    std::error_code ec;
    TESSERA_CHECK(std::filesystem::is_directory(options.model, ec), "--model '", options.model,
                  "' is not a model folder");
    const std::string dir = models::SentenceConfig::transformer_folder(options.model);
    const auto folder = models::ModelFolder::open(dir);
    m.config = models::EncoderConfig::from_file(folder.config_json());
    if (!options.attention.empty()) {
      TESSERA_CHECK(options.attention == "dense" || options.attention == "cluster",
                    "--attention must be dense or cluster, got '", options.attention, "'");
      m.config.attention.kind = options.attention == "dense"
                                    ? models::EncoderAttentionChoice::Kind::kDense
                                    : models::EncoderAttentionChoice::Kind::kCluster;
    }
    if (options.cluster_size > 0) m.config.attention.cluster_size = options.cluster_size;
    if (options.nearest_clusters > 0)
      m.config.attention.nearest_clusters = options.nearest_clusters;
    m.config.validate();
    m.config.check_tensor_parallel(tp_size);
    m.sentence =
        models::SentenceConfig::from_folder(options.model, m.config.max_position_embeddings);
    const auto& pool = m.sentence.pooling;
    TESSERA_CHECK(
        pool.word_embedding_dimension == 0 || pool.word_embedding_dimension == m.config.hidden_size,
        "1_Pooling/config.json: word_embedding_dimension=", pool.word_embedding_dimension,
        " differs from the model's hidden_size=", m.config.hidden_size);
    if (m.leader && folder.tokenizer_json()) {
      m.tokenizer = tokenizers::Tokenizer::from_folder(dir);
      // The special tokens the post-processor puts around a sequence, from one probe text:
      // truncation keeps them and cuts the text between.
      const std::string probe = "hello";
      const auto plain = m.tokenizer->encode(probe, false);
      const auto full = m.tokenizer->encode(probe, true);
      size_t at = full.size();
      for (size_t p = 0; p + plain.size() <= full.size(); ++p) {
        if (std::equal(plain.begin(), plain.end(), full.begin() + static_cast<int64_t>(p))) {
          at = p;
          break;
        }
      }
      TESSERA_CHECK(at < full.size() || plain.empty(), "'", *folder.tokenizer_json(),
                    "': cannot find where the post-processor places the text");
      m.special_prefix.assign(full.begin(), full.begin() + static_cast<int64_t>(at));
      m.special_suffix.assign(full.begin() + static_cast<int64_t>(at + plain.size()), full.end());
    }
    const torch::Device device = options.device >= 0 ? torch::Device(torch::kCUDA, options.device)
                                                     : torch::Device(torch::kCPU);
    models::WeightLoader weights(folder, {.memory_budget = options.load_memory_budget,
                                          .progress = options.load_progress && m.leader});
    m.model = std::make_unique<models::EncoderModel>(m.config, weights, tp, device);
    TESSERA_CHECK(options.lora.empty() || options.loras.empty(),
                  "give one --lora PATH (merged) or NAME=PATH adapters (unmerged), not both");
    for (const auto& [name, path] : options.loras) {
      TESSERA_CHECK(!m.lora_index.count(name), "LoRA adapter name '", name, "' is given twice");
      m.lora_index[name] =
          m.model->add_lora(models::EncoderLoraAdapter::load(name, path, m.config));
    }
    if (!options.lora.empty()) {
      // One adapter for every input: merged once (the model then costs what the base costs).
      m.model->merge_lora(
          m.model->add_lora(models::EncoderLoraAdapter::load("", options.lora, m.config)));
    }

    EncoderInfo& i = m.info;
    i.model_dir = dir;
    i.model_type = m.config.model_type;
    i.architecture = m.config.architecture;
    i.hidden_size = m.config.hidden_size;
    i.dimensions = pool.modes() * m.config.hidden_size;
    i.max_input_len = m.sentence.max_seq_length;
    i.pooling = pool.mode_string();
    i.normalize = m.sentence.normalize;
    i.include_prompt = pool.include_prompt;
    i.attention = m.config.attention.kind == models::EncoderAttentionChoice::Kind::kDense
                      ? "dense"
                      : "cluster";
    i.weight_bytes = m.model->weight_bytes();
    i.tp_size = tp_size;
    i.has_classifier = m.config.has_classifier;
    i.labels = m.config.labels;
    i.score_function = m.config.has_classifier ? models::classifier_score_function(m.config) : "";
    i.problem_type = models::problem_type_name(m.config.problem_type);
    i.lora = options.lora;
  });
}

EncoderService::~EncoderService() {
  try {
    if (impl_->leader) stop();
  } catch (...) {
    // Destructors do not throw; a failed release leaves the other ranks to the watchdog.
  }
}

bool EncoderService::leader() const { return impl_->leader; }
const EncoderInfo& EncoderService::info() const { return impl_->info; }

void EncoderService::submit(EncoderTask task, std::vector<EncoderInput> inputs, Done done) {
  Impl& m = *impl_;
  TESSERA_CHECK(m.leader, "requests go to the tensor-parallel group's leader");
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::string why = m.check_input(task, inputs[i]);
    if (!why.empty()) {
      done({}, "input " + std::to_string(i) + " " + why);
      return;
    }
  }
  {
    std::lock_guard<std::mutex> lock(m.mu);
    m.pending.push_back({task, std::move(inputs), std::move(done)});
  }
  m.cv.notify_one();
}

EncoderInput EncoderService::tokenize(std::string_view text, const std::string& prompt) const {
  const Impl& m = *impl_;
  TESSERA_CHECK(m.tokenizer != nullptr, "model folder '", m.info.model_dir,
                "' has no tokenizer.json: texts cannot be encoded");
  auto encode = [&](std::string_view t) {
    std::string s = py_strip(t);
    if (m.sentence.do_lower_case) s = tokenizers::unicode::py_lower(s);
    auto plain = m.tokenizer->encode(s, false);
    const auto specials = static_cast<int64_t>(m.special_prefix.size() + m.special_suffix.size());
    const int64_t room = std::max<int64_t>(0, m.sentence.max_seq_length - specials);
    if (static_cast<int64_t>(plain.size()) > room) plain.resize(room);
    std::vector<int32_t> ids = m.special_prefix;
    ids.insert(ids.end(), plain.begin(), plain.end());
    ids.insert(ids.end(), m.special_suffix.begin(), m.special_suffix.end());
    return ids;
  };
  EncoderInput in;
  in.ids = encode(prompt + std::string(text));
  if (!prompt.empty()) in.prompt_length = static_cast<int64_t>(encode(prompt).size()) - 1;
  return in;
}

std::string EncoderService::prompt(const std::string& prompt_name) const {
  return impl_->sentence.prompt(prompt_name);
}

double EncoderService::classifier_loss(const std::vector<std::vector<float>>& logits,
                                       const std::vector<std::vector<double>>& labels,
                                       bool integer_labels) const {
  const auto& c = impl_->config;
  TESSERA_CHECK(c.has_classifier, "the model has no sequence-classification head");
  TESSERA_CHECK(logits.size() == labels.size() && !logits.empty(), labels.size(), " labels for ",
                logits.size(), " inputs");
  const auto b = static_cast<int64_t>(logits.size());
  auto l = torch::empty({b, c.num_labels});
  for (int64_t i = 0; i < b; ++i) {
    TESSERA_CHECK(static_cast<int64_t>(logits[i].size()) == c.num_labels, "logits of input ", i,
                  " have ", logits[i].size(), " values, not num_labels=", c.num_labels);
    for (int64_t j = 0; j < c.num_labels; ++j) l[i][j] = logits[i][j];
  }
  torch::Tensor y;
  if (integer_labels) {
    y = torch::empty({b}, torch::kLong);
    for (int64_t i = 0; i < b; ++i) {
      TESSERA_CHECK(labels[i].size() == 1, "input ", i, ": a class id label is one integer");
      y[i] = static_cast<int64_t>(labels[i][0]);
    }
  } else {
    const auto width = static_cast<int64_t>(labels[0].size());
    y = torch::empty({b, width});
    for (int64_t i = 0; i < b; ++i) {
      TESSERA_CHECK(static_cast<int64_t>(labels[i].size()) == width, "input ", i, " has ",
                    labels[i].size(), " label values, input 0 has ", width);
      for (int64_t j = 0; j < width; ++j) y[i][j] = labels[i][j];
    }
    if (width == 1 && c.num_labels == 1) y = y.reshape({b});
  }
  return models::classifier_loss(l, y, c);
}

void EncoderService::run_pending() {
  TESSERA_CHECK(impl_->leader, "run_pending runs on the tensor-parallel group's leader");
  impl_->run_pending();
}

std::vector<std::vector<float>> EncoderService::run(EncoderTask task,
                                                    std::vector<EncoderInput> inputs) {
  std::promise<std::vector<std::vector<float>>> promise;
  auto future = promise.get_future();
  submit(task, std::move(inputs), [&promise](std::vector<std::vector<float>> v, std::string err) {
    if (err.empty()) {
      promise.set_value(std::move(v));
    } else {
      promise.set_exception(std::make_exception_ptr(Error(err, __FILE__, __LINE__)));
    }
  });
  if (!impl_->thread.joinable()) run_pending();
  return future.get();
}

void EncoderService::start() {
  Impl& m = *impl_;
  TESSERA_CHECK(m.leader, "start runs on the tensor-parallel group's leader");
  TESSERA_CHECK(!m.thread.joinable(), "the encoder loop is already running");
  m.thread = std::thread([this] { run_loop(); });
}

void EncoderService::run_loop() {
  Impl& m = *impl_;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(m.mu);
      m.cv.wait(lock, [&] { return m.stopping || !m.pending.empty(); });
      if (m.stopping && m.pending.empty()) return;
    }
    m.run_pending();
  }
}

void EncoderService::stop() {
  Impl& m = *impl_;
  if (!m.leader) return;
  {
    std::lock_guard<std::mutex> lock(m.mu);
    m.stopping = true;
  }
  m.cv.notify_all();
  if (m.thread.joinable() && m.thread.get_id() != std::this_thread::get_id()) m.thread.join();
  m.broadcast_stop();
}

void EncoderService::serve() {
  Impl& m = *impl_;
  TESSERA_CHECK(!m.leader, "serve runs on the ranks other than the leader");
  for (;;) {
    auto header = torch::empty({3}, torch::kLong);
    m.control->broadcast(header, 0);
    const auto* h = header.data_ptr<int64_t>();
    if (h[0] == kStop) return;
    const int64_t n = h[1], total = h[2];
    auto payload = torch::empty({2 * n + 2 * total}, torch::kLong);
    m.control->broadcast(payload, 0);
    models::EncoderBatch b;
    auto lens = payload.narrow(0, 0, n);
    b.cu_seqlens = torch::zeros({n + 1}, torch::kInt);
    b.cu_seqlens.narrow(0, 1, n).copy_(lens.cumsum(0));
    b.tokens = payload.narrow(0, n, total).clone();
    b.token_types = payload.narrow(0, n + total, total).clone();
    const auto lora_ids = payload.narrow(0, n + 2 * total, n);
    if (lora_ids.ge(0).any().item<bool>()) b.lora_ids = lora_ids.to(torch::kInt);
    b.positions = torch::empty({total}, torch::kLong);
    const auto* cu = b.cu_seqlens.data_ptr<int32_t>();
    auto* pos = b.positions.data_ptr<int64_t>();
    for (int64_t s = 0; s < n; ++s) {
      for (int64_t i = cu[s]; i < cu[s + 1]; ++i) pos[i] = i - cu[s];
    }
    try {
      m.forward(b);
    } catch (const Error&) {
      // The leader checked the inputs; whatever failed here failed there too, before any
      // collective, and the leader reports it to the request.
    }
  }
}

}  // namespace tessera::engine
