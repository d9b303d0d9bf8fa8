// One test per scheduling rule (scheduler.h lists them): budget and chunked prefill, the
// long-prefill threshold, running first, max_num_seqs, prefix hits (last token recomputed; LoRA and
// salt keys), preemption by recompute (victim choice, no admissions that step, same tokens),
// priorities and FCFS, aborts, max_model_len, stop conditions, stable slots and block-table deltas
// over full, sliding, chunked and state groups. Every run goes through the FakeRunner (harness.h),
// so the generated tokens are also checked against reference_generate().
#include "runtime/scheduler/scheduler.h"

#include <gtest/gtest.h>

#include "tests/runtime/scheduler/harness.h"

namespace tessera::scheduler::testing {
namespace {

SchedulerConfig config(int64_t budget, int64_t max_seqs, int64_t max_len) {
  SchedulerConfig c;
  c.max_num_batched_tokens = budget;
  c.max_num_seqs = max_seqs;
  c.max_model_len = max_len;
  return c;
}

// Every finished request produced what the fake model gives without any scheduler.
void expect_reference_outputs(Harness& h, const std::vector<Request>& reqs) {
  for (const Request& r : reqs) {
    ASSERT_TRUE(h.finished.count(r.id)) << r.id << " did not finish";
    const RequestOutput& o = h.finished.at(r.id);
    if (o.finish_reason == FinishReason::kAbort) continue;
    const Reference ref = reference_generate(r, h.s.config(), h.vocab);
    EXPECT_EQ(h.tokens.at(r.id), ref.tokens) << r.id;
    EXPECT_EQ(o.finish_reason, ref.reason) << r.id;
    EXPECT_EQ(o.completion_tokens, static_cast<int64_t>(ref.tokens.size())) << r.id;
  }
}

TEST(Scheduler, ChunkedPrefillWithinTheTokenBudget) {
  Harness h(kv_config({full_spec(4)}, 64), config(8, 4, 64));
  Request r = make_request("a", token_range(20), 3);
  ASSERT_TRUE(h.add(r));
  const std::vector<std::pair<int64_t, int32_t>> expect = {
      {0, 8}, {8, 8}, {16, 4}, {20, 1}, {21, 1}};
  for (size_t i = 0; i < expect.size(); ++i) {
    StepPlan p = h.step();
    ASSERT_EQ(p.num_rows(), 1);
    EXPECT_EQ(p.seqs[0].start_pos, expect[i].first) << "step " << i;
    EXPECT_EQ(p.seqs[0].num_tokens, expect[i].second) << "step " << i;
    EXPECT_EQ(p.seqs[0].sample, i >= 2) << "step " << i;
    EXPECT_EQ(p.seqs[0].is_new, i == 0);
    if (i < 3) {
      EXPECT_EQ(std::vector<int32_t>(p.tokens(0).begin(), p.tokens(0).end()),
                std::vector<int32_t>(r.prompt_ids.begin() + expect[i].first,
                                     r.prompt_ids.begin() + expect[i].first + expect[i].second));
    }
  }
  EXPECT_FALSE(h.s.has_unfinished());
  expect_reference_outputs(h, {r});
  EXPECT_EQ(h.kv.num_used_blocks(), 0);
}

TEST(Scheduler, LongPrefillThresholdSharesSteps) {
  SchedulerConfig c = config(64, 4, 64);
  c.long_prefill_token_threshold = 5;
  Harness h(kv_config({full_spec(4)}, 64), c);
  ASSERT_TRUE(h.add(make_request("a", token_range(12, 100), 2)));
  ASSERT_TRUE(h.add(make_request("b", token_range(12, 200), 2)));
  for (int32_t want : {5, 5, 2}) {
    StepPlan p = h.step();
    ASSERT_EQ(p.num_rows(), 2);
    for (const auto& row : p.seqs) EXPECT_EQ(row.num_tokens, want);
  }
}

TEST(Scheduler, RunningRequestsComeFirst) {
  Harness h(kv_config({full_spec(4)}, 64), config(4, 4, 64));
  ASSERT_TRUE(h.add(make_request("a", token_range(3), 10)));
  h.step();  // a: prompt, first token
  ASSERT_TRUE(h.add(make_request("b", token_range(10, 50), 2)));
  StepPlan p = h.step();
  ASSERT_EQ(p.num_rows(), 2);
  EXPECT_FALSE(p.seqs[0].is_new);  // a's decode first
  EXPECT_EQ(p.seqs[0].num_tokens, 1);
  EXPECT_TRUE(p.seqs[1].is_new);  // b gets what is left of the budget
  EXPECT_EQ(p.seqs[1].num_tokens, 3);
}

TEST(Scheduler, MaxNumSeqsAndSlotReuse) {
  Harness h(kv_config({full_spec(4)}, 64), config(64, 2, 64));
  std::vector<Request> reqs;
  for (int i = 0; i < 4; ++i) {
    reqs.push_back(make_request("r" + std::to_string(i), token_range(4, 10 * i), 2 + i));
    ASSERT_TRUE(h.add(reqs.back()));
  }
  StepPlan p = h.step();
  ASSERT_EQ(p.num_rows(), 2);
  EXPECT_EQ(p.seqs[0].slot, 0);
  EXPECT_EQ(p.seqs[1].slot, 1);
  p = h.step();  // r0 finishes (2 tokens)
  p = h.step();  // r2 takes slot 0
  ASSERT_EQ(p.released.size(), 1u);
  EXPECT_EQ(p.released[0].request_id, "r0");
  EXPECT_FALSE(p.released[0].preempted);
  bool found = false;
  for (int64_t i = 0; i < p.num_rows(); ++i) {
    if (p.seqs[i].is_new) {
      EXPECT_EQ(p.request_id(i), "r2");
      EXPECT_EQ(p.seqs[i].slot, 0);
      found = true;
    }
  }
  EXPECT_TRUE(found);
  h.run();
  expect_reference_outputs(h, reqs);
}

TEST(Scheduler, PrefixHitSkipsComputedTokensButRecomputesTheLast) {
  Harness h(kv_config({full_spec(4)}, 64), config(64, 4, 64));
  auto base = token_range(10, 300);
  Request a = make_request("a", base, 2);
  ASSERT_TRUE(h.add(a));
  h.run();
  // Shares a's first two blocks (8 tokens).
  auto prompt_b = base;
  prompt_b.resize(8);
  for (int i = 0; i < 5; ++i) prompt_b.push_back(900 + i);
  Request b = make_request("b", prompt_b, 2);
  ASSERT_TRUE(h.add(b));
  StepPlan p = h.step();
  EXPECT_EQ(p.seqs[0].start_pos, 8);
  EXPECT_EQ(p.seqs[0].num_tokens, 5);
  h.run();
  EXPECT_EQ(h.finished.at("b").cached_prompt_tokens, 8);
  // A prompt of exactly two cached blocks: the hit stops one block short, so the last token is
  // computed and gives logits.
  Request c = make_request("c", std::vector<int32_t>(base.begin(), base.begin() + 8), 2);
  ASSERT_TRUE(h.add(c));
  p = h.step();
  EXPECT_EQ(p.seqs[0].start_pos, 4);
  EXPECT_EQ(p.seqs[0].num_tokens, 4);
  h.run();
  // Another adapter or tenant salt: no hit.
  Request d = make_request("d", base, 2);
  d.lora = "adapter";
  Request e = make_request("e", base, 2);
  e.cache_salt = "tenant";
  ASSERT_TRUE(h.add(d));
  ASSERT_TRUE(h.add(e));
  p = h.step();
  ASSERT_EQ(p.num_rows(), 2);
  EXPECT_EQ(p.seqs[0].start_pos, 0);
  ASSERT_EQ(p.new_seqs.size(), 2u);
  EXPECT_EQ(p.new_seqs[0].lora, "adapter");
  EXPECT_EQ(p.new_seqs[1].lora, "");
  EXPECT_EQ(p.seqs[1].start_pos, 0);
  h.run();
  expect_reference_outputs(h, {a, b, c, d, e});
  const SchedulerStats st = h.s.stats();
  EXPECT_EQ(st.prefix_hit_tokens, 8 + 4);
}

// A request scoring its prompt (prompt_logprobs) needs the logits of every prompt position: it
// reads nothing from the prefix cache at first, and after a preemption no more than it computed
// before (the engine has those scores), even where another request holds more of its prompt. Its
// blocks still join the cache for the requests after it.
TEST(Scheduler, ScoringRequestReadsOnlyWhatItHasScored) {
  Harness h(kv_config({full_spec(4)}, 12), config(8, 4, 44));
  const auto shared = token_range(20, 10);
  auto with_tail = [&](int32_t first) {
    auto t = shared;
    for (int32_t i = 0; i < 4; ++i) t.push_back(first + i);
    return t;
  };
  Request p = make_request("p", with_tail(500), 30);
  p.params.ignore_eos = true;
  ASSERT_TRUE(h.add(p));
  while (h.s.find("p")->num_computed_tokens < 24) h.step();  // p's prompt is in the cache
  Request sc = make_request("s", with_tail(700), 4);
  sc.params.ignore_eos = true;
  sc.params.prompt_logprobs = 0;
  ASSERT_TRUE(h.add(sc));
  const int64_t seq = h.s.find("s")->seq;
  int64_t admissions = 0, computed = 0, most_computed = 0;
  bool read_back = false;
  while (h.s.has_unfinished()) {
    StepPlan plan = h.step();
    for (const auto& rel : plan.released) {
      if (rel.preempted && rel.request_id == "s") computed = 0;
    }
    for (const auto& row : plan.seqs) {
      if (row.seq != seq) continue;
      if (row.is_new) {
        ++admissions;
        // p's blocks hold 20 tokens of s's prompt; s may read back only whole blocks it computed.
        EXPECT_EQ(row.start_pos, (most_computed / 4) * 4) << "admission " << admissions;
        read_back = read_back || row.start_pos > 0;
        computed = row.start_pos;
      }
      computed += row.num_tokens;
      most_computed = std::max(most_computed, computed);
    }
  }
  EXPECT_GE(admissions, 2) << "s was never preempted: the test checks nothing after a preemption";
  EXPECT_TRUE(read_back) << "after its preemption s read nothing back";
  expect_reference_outputs(h, {p, sc});
  // In a pool with room: a plain request extending a scoring request's prompt reads its blocks.
  Harness roomy(kv_config({full_spec(4)}, 64), config(8, 4, 64));
  ASSERT_TRUE(roomy.add(sc));
  roomy.run();
  auto longer = with_tail(700);
  for (int32_t i = 0; i < 5; ++i) longer.push_back(900 + i);
  Request q = make_request("q", longer, 1);
  ASSERT_TRUE(roomy.add(q));
  roomy.run();
  EXPECT_EQ(roomy.finished.at("s").cached_prompt_tokens, 0);
  EXPECT_EQ(roomy.finished.at("q").cached_prompt_tokens, 24);
  expect_reference_outputs(roomy, {sc, q});
}

// Pool of 8 usable blocks of 2 tokens; two requests that outgrow it.
TEST(Scheduler, PreemptsTheLatestArrivedByRecompute) {
  Harness h(kv_config({full_spec(2)}, 9), config(64, 4, 16));
  std::vector<Request> reqs = {make_request("a", token_range(6, 10), 10),
                               make_request("b", token_range(6, 20), 10)};
  for (auto& r : reqs) {
    r.params.ignore_eos = true;
    ASSERT_TRUE(h.add(r));
  }
  bool saw = false;
  while (h.s.has_unfinished()) {
    StepPlan p = h.step();
    for (const auto& rel : p.released) {
      if (!rel.preempted) continue;
      saw = true;
      EXPECT_EQ(rel.request_id, "b");
    }
  }
  EXPECT_TRUE(saw);
  EXPECT_GE(h.s.stats().preemptions, 1);
  expect_reference_outputs(h, reqs);
  EXPECT_EQ(h.kv.num_used_blocks(), 0);
}

TEST(Scheduler, PreemptingStepAdmitsNobody) {
  // max_num_seqs 2 keeps c waiting; when b is preempted a slot and blocks free up, but c may only
  // come in at the next step.
  Harness h(kv_config({full_spec(2)}, 9), config(64, 2, 16));
  Request a = make_request("a", token_range(6, 10), 10, 0);
  Request b = make_request("b", token_range(6, 20), 10, 1);
  Request c = make_request("c", token_range(1, 30), 1, 0);
  a.params.ignore_eos = b.params.ignore_eos = true;
  ASSERT_TRUE(h.add(a));
  ASSERT_TRUE(h.add(b));
  h.step();
  ASSERT_TRUE(h.add(c));
  bool checked = false;
  while (h.s.has_unfinished()) {
    const int64_t before = h.s.stats().preemptions;
    StepPlan plan = h.step();
    if (h.s.stats().preemptions > before && !checked) {
      checked = true;
      for (const auto& row : plan.seqs) EXPECT_FALSE(row.is_new);
      EXPECT_EQ(h.s.num_waiting(), 2);
      StepPlan next = h.step();
      ASSERT_FALSE(next.seqs.empty());
      EXPECT_EQ(next.request_id(next.num_rows() - 1), "c");  // priority 0 before the preempted b
    }
  }
  EXPECT_TRUE(checked);
  expect_reference_outputs(h, {a, b, c});
}

TEST(Scheduler, PriorityPicksTheVictimAndTheQueueOrder) {
  // a has the worse priority but arrived first: it is the one preempted.
  Harness h(kv_config({full_spec(2)}, 9), config(64, 4, 16));
  Request a = make_request("a", token_range(6, 10), 10, /*priority=*/1);
  Request b = make_request("b", token_range(6, 20), 10, /*priority=*/0);
  a.params.ignore_eos = b.params.ignore_eos = true;
  ASSERT_TRUE(h.add(a));
  ASSERT_TRUE(h.add(b));
  std::vector<std::string> victims;
  while (h.s.has_unfinished()) {
    StepPlan p = h.step();
    for (const auto& rel : p.released) {
      if (rel.preempted) victims.push_back(rel.request_id);
    }
  }
  ASSERT_FALSE(victims.empty());
  for (const auto& v : victims) EXPECT_EQ(v, "a");
  expect_reference_outputs(h, {a, b});

  // Admission order: priority, then arrival_time, then add order.
  Harness q(kv_config({full_spec(4)}, 64), config(64, 1, 64));
  std::vector<Request> rs = {
      make_request("p1", token_range(2), 1, 1), make_request("p0a", token_range(2), 1, 0),
      make_request("p0b", token_range(2), 1, 0), make_request("late", token_range(2), 1, 0),
      make_request("early", token_range(2), 1, 0)};
  rs[3].arrival_time = 5.0;
  rs[4].arrival_time = 1.0;
  rs[1].arrival_time = rs[2].arrival_time = 1.0;
  for (auto& r : rs) ASSERT_TRUE(q.add(r));
  std::vector<std::string> order;
  while (q.s.has_unfinished()) {
    StepPlan p = q.step();
    for (int64_t i = 0; i < p.num_rows(); ++i) order.push_back(std::string(p.request_id(i)));
  }
  EXPECT_EQ(order, (std::vector<std::string>{"p0a", "p0b", "early", "late", "p1"}));
}

TEST(Scheduler, HeadOfLineWaitsForBlocks) {
  // The first waiting request does not fit; a later small one must not overtake it (FCFS).
  Harness h(kv_config({full_spec(2)}, 9), config(64, 4, 16));
  Request a = make_request("a", token_range(10, 1), 3);
  a.params.ignore_eos = true;
  ASSERT_TRUE(h.add(a));
  h.step();  // a holds 5 or 6 of the 8 blocks
  ASSERT_TRUE(h.add(make_request("big", token_range(8, 100), 1)));
  ASSERT_TRUE(h.add(make_request("small", token_range(1, 200), 1)));
  StepPlan p = h.step();
  for (int64_t i = 0; i < p.num_rows(); ++i) EXPECT_NE(p.request_id(i), "small");
  h.run();
  EXPECT_EQ(h.finished.size(), 3u);
}

TEST(Scheduler, AbortsWaitingRunningAndInFlight) {
  Harness h(kv_config({full_spec(4)}, 64), config(64, 1, 64));
  Request run = make_request("run", token_range(9), 50);
  run.params.ignore_eos = true;
  ASSERT_TRUE(h.add(run));
  ASSERT_TRUE(h.add(make_request("wait", token_range(5, 70), 5)));
  h.step();
  EXPECT_EQ(h.s.num_running(), 1);
  // Waiting: gone at once, final output with the next update.
  EXPECT_TRUE(h.s.abort("wait"));
  EXPECT_FALSE(h.s.abort("wait"));
  EXPECT_FALSE(h.s.abort("nobody"));
  EXPECT_EQ(h.s.num_waiting(), 0);
  h.step();
  ASSERT_TRUE(h.finished.count("wait"));
  EXPECT_EQ(h.finished.at("wait").finish_reason, FinishReason::kAbort);
  EXPECT_TRUE(h.tokens["wait"].empty());
  // In flight: aborted between schedule() and update(); its row is ignored, blocks freed now.
  const size_t before = h.tokens["run"].size();
  StepPlan plan = h.s.schedule();
  SampledTokens t = h.runner.execute(plan);
  EXPECT_GT(h.kv.num_used_blocks(), 0);
  EXPECT_TRUE(h.s.abort("run"));
  EXPECT_EQ(h.kv.num_used_blocks(), 0);
  auto outs = h.s.update(plan, t);
  ASSERT_EQ(outs.size(), 1u);
  EXPECT_EQ(outs[0].id, "run");
  EXPECT_TRUE(outs[0].finished);
  EXPECT_FALSE(outs[0].has_new_token());
  EXPECT_EQ(outs[0].completion_tokens, static_cast<int64_t>(before));
  EXPECT_EQ(outs[0].finish_reason, FinishReason::kAbort);
  // The next plan tells the ranks the slot is free.
  StepPlan next = h.s.schedule();
  ASSERT_EQ(next.released.size(), 1u);
  EXPECT_EQ(next.released[0].request_id, "run");
  EXPECT_FALSE(next.released[0].preempted);
  h.s.update(next, h.runner.execute(next));
  EXPECT_FALSE(h.s.has_unfinished());
  EXPECT_EQ(h.s.stats().aborted, 2);
}

TEST(Scheduler, MaxModelLenRefusesLongPromptsAndClipsGeneration) {
  Harness h(kv_config({full_spec(4)}, 64), config(64, 4, 16));
  AddResult bad = h.add(make_request("long", token_range(17), 5));
  EXPECT_FALSE(bad.ok);
  EXPECT_NE(bad.error.find("max_model_len=16"), std::string::npos) << bad.error;
  EXPECT_NE(bad.error.find("17"), std::string::npos) << bad.error;
  EXPECT_NE(bad.error.find("\"long\""), std::string::npos) << bad.error;
  Request clip = make_request("clip", token_range(14), 100);
  Request exact = make_request("exact", token_range(16, 60), 100);
  clip.params.ignore_eos = exact.params.ignore_eos = true;
  ASSERT_TRUE(h.add(clip));
  ASSERT_TRUE(h.add(exact));
  h.run();
  EXPECT_EQ(h.tokens["clip"].size(), 2u);
  EXPECT_EQ(h.finished.at("clip").finish_reason, FinishReason::kLength);
  EXPECT_EQ(h.tokens["exact"].size(), 1u);
  EXPECT_EQ(h.finished.at("exact").finish_reason, FinishReason::kLength);
  EXPECT_EQ(h.finished.count("long"), 0u);
  EXPECT_EQ(h.s.stats().refused, 1);
}

TEST(Scheduler, RefusesBadRequestsWithOneLine) {
  Harness h(kv_config({full_spec(4)}, 64), config(64, 4, 16));
  ASSERT_TRUE(h.add(make_request("x", token_range(3), 1)));
  auto err = [&](Request r) {
    AddResult a = h.add(std::move(r));
    EXPECT_FALSE(a.ok);
    EXPECT_EQ(a.error.find('\n'), std::string::npos);
    return a.error;
  };
  EXPECT_NE(err(make_request("x", token_range(3), 1)).find("already in use"), std::string::npos);
  EXPECT_NE(err(make_request("", token_range(3), 1)).find("id must not be empty"),
            std::string::npos);
  EXPECT_NE(err(make_request("e", {}, 1)).find("prompt must not be empty"), std::string::npos);
  EXPECT_NE(err(make_request("n", {1, -4}, 1)).find("prompt_ids[1] must be >= 0, got -4"),
            std::string::npos);
  Request p = make_request("p", token_range(3), 1);
  p.params.top_p = 0;
  EXPECT_NE(err(p).find("top_p must lie in (0, 1], got 0"), std::string::npos);
  Request m = make_request("m", token_range(3), 0);
  EXPECT_NE(err(m).find("max_tokens must be >= 1, got 0"), std::string::npos);
  h.run();
  EXPECT_EQ(h.finished.size(), 1u);  // the others went on
}

TEST(Scheduler, StopConditions) {
  SchedulerConfig c = config(64, 8, 64);
  Harness probe(kv_config({full_spec(4)}, 64), c);
  Request base = make_request("base", token_range(5), 8);
  const Reference ref = reference_generate(base, c, probe.vocab);
  ASSERT_EQ(ref.tokens.size(), 8u);
  // The test relies on distinct tokens among the first 8 (vocab 50000).
  for (size_t i = 0; i < 8; ++i) {
    for (size_t j = 0; j < i; ++j) ASSERT_NE(ref.tokens[i], ref.tokens[j]);
  }
  c.eos_token_ids = {ref.tokens[1]};
  Harness h(kv_config({full_spec(4)}, 64), c);
  Request eos = base, ignore = base, min = base, stop = base, plain = base;
  eos.id = "eos";
  ignore.id = "ignore";
  ignore.params.ignore_eos = true;
  min.id = "min";
  min.params.min_tokens = 3;
  stop.id = "stop";
  stop.params.ignore_eos = true;
  stop.params.stop_token_ids = {ref.tokens[4]};
  plain.id = "plain";
  plain.params.ignore_eos = true;
  plain.params.max_tokens = 6;
  for (auto* r : {&eos, &ignore, &min, &stop, &plain}) ASSERT_TRUE(h.add(*r));
  h.run();
  auto prefix = [&](size_t n) {
    return std::vector<int32_t>(ref.tokens.begin(), ref.tokens.begin() + n);
  };
  EXPECT_EQ(h.tokens["eos"], prefix(2));
  EXPECT_EQ(h.finished.at("eos").finish_reason, FinishReason::kStop);
  EXPECT_EQ(h.finished.at("eos").stop_token_id, ref.tokens[1]);
  EXPECT_EQ(h.tokens["ignore"], prefix(8));
  EXPECT_EQ(h.finished.at("ignore").finish_reason, FinishReason::kLength);
  EXPECT_EQ(h.tokens["min"], prefix(8));  // the eos at index 1 came before min_tokens
  EXPECT_EQ(h.tokens["stop"], prefix(5));
  EXPECT_EQ(h.finished.at("stop").finish_reason, FinishReason::kStop);
  EXPECT_EQ(h.finished.at("stop").stop_token_id, ref.tokens[4]);
  EXPECT_EQ(h.tokens["plain"], prefix(6));
  EXPECT_EQ(h.finished.at("plain").finish_reason, FinishReason::kLength);
  // A stop string matched by the caller ends the request as kStop.
  Request s2 = base;
  s2.id = "string";
  s2.params.ignore_eos = true;
  ASSERT_TRUE(h.add(s2));
  h.step();
  EXPECT_TRUE(h.s.abort("string", FinishReason::kStop));
  h.step();
  EXPECT_EQ(h.finished.at("string").finish_reason, FinishReason::kStop);
  EXPECT_EQ(h.s.stats().aborted, 0);
}

TEST(Scheduler, SlotsAreStableAndDeltasCarryOnlyNewBlocks) {
  Harness h(kv_config({full_spec(4)}, 64), config(64, 4, 64));
  Request r = make_request("a", token_range(6), 20);
  r.params.ignore_eos = true;
  ASSERT_TRUE(h.add(r));
  int64_t appended = 0;
  int32_t slot = -1;
  for (int step = 0; h.s.has_unfinished(); ++step) {
    StepPlan p = h.step();
    ASSERT_EQ(p.num_rows(), 1);
    if (step == 0) {
      slot = p.seqs[0].slot;
      EXPECT_EQ(p.table(0, 0).keep, 0);
      EXPECT_EQ(p.table(0, 0).num_blocks, 2);  // cdiv(6, 4)
    } else {
      EXPECT_EQ(p.seqs[0].slot, slot);
      EXPECT_FALSE(p.seqs[0].is_new);
      EXPECT_LE(p.table(0, 0).num_blocks, 1);
      appended += p.table(0, 0).num_blocks;
    }
  }
  // 6 + 20 tokens, the last one never computed: 25 → 7 blocks, 2 of them sent first.
  EXPECT_EQ(appended, 5);
}

TEST(Scheduler, HybridSlidingAndChunkedGroupsSendNullPrefixes) {
  // Full + sliding window 5 + local chunks of 8, block size 2.
  Harness h(kv_config({full_spec(2), sliding_spec(5, 2), chunked_spec(8, 2)}, 200),
            config(7, 4, 64));
  std::vector<Request> reqs;
  for (int i = 0; i < 3; ++i) {
    reqs.push_back(make_request("h" + std::to_string(i), token_range(11 + 4 * i, 10 * i), 30));
    reqs.back().params.ignore_eos = true;
    ASSERT_TRUE(h.add(reqs.back()));
  }
  int32_t max_null_sliding = 0, max_null_chunk = 0;
  while (h.s.has_unfinished()) {
    StepPlan p = h.step();
    for (int64_t i = 0; i < p.num_rows(); ++i) {
      max_null_sliding = std::max(max_null_sliding, p.table(i, 1).null_prefix);
      max_null_chunk = std::max(max_null_chunk, p.table(i, 2).null_prefix);
      EXPECT_EQ(p.table(i, 0).null_prefix, 0);
    }
  }
  EXPECT_GT(max_null_sliding, 10);
  EXPECT_GT(max_null_chunk, 10);
  expect_reference_outputs(h, reqs);
  EXPECT_EQ(h.kv.num_used_blocks(), 0);
}

TEST(Scheduler, StateGroupHoldsOneSlot) {
  caches::KVCacheManagerConfig kc = kv_config({full_spec(4)}, 64);
  kc.groups.push_back(
      {caches::MambaSpec::mamba1(8, 4, 4, DType::kF32, DType::kF32), {static_cast<int64_t>(1)}});
  kc.num_state_slots = 3;  // two sequences at once
  Harness h(kc, config(64, 4, 32));
  std::vector<Request> reqs;
  for (int i = 0; i < 4; ++i) {
    reqs.push_back(make_request("m" + std::to_string(i), token_range(5, 10 * i), 4));
    ASSERT_TRUE(h.add(reqs.back()));
  }
  while (h.s.has_unfinished()) {
    StepPlan p = h.step();
    EXPECT_LE(p.num_rows(), 2);  // state slots bound the batch
    for (int64_t i = 0; i < p.num_rows(); ++i) {
      if (p.seqs[i].is_new) EXPECT_EQ(p.table(i, 1).num_blocks, 1);
    }
  }
  expect_reference_outputs(h, reqs);
}

TEST(Scheduler, WithoutChunkedPrefillAPromptRunsWholeOrWaits) {
  SchedulerConfig c = config(32, 4, 32);
  c.enable_chunked_prefill = false;
  Harness h(kv_config({full_spec(4)}, 64), c);
  ASSERT_TRUE(h.add(make_request("a", token_range(20), 3)));
  ASSERT_TRUE(h.add(make_request("b", token_range(20, 70), 3)));
  StepPlan p = h.step();
  ASSERT_EQ(p.num_rows(), 1);
  EXPECT_EQ(p.seqs[0].num_tokens, 20);
  p = h.step();
  ASSERT_EQ(p.num_rows(), 2);
  EXPECT_EQ(p.seqs[1].num_tokens, 20);
  c.long_prefill_token_threshold = 8;
  EXPECT_THROW(c.validate(), Error);
  c.long_prefill_token_threshold = 0;
  c.max_num_batched_tokens = 16;
  EXPECT_THROW(c.validate(), Error);
}

TEST(Scheduler, MisuseAndConfigErrors) {
  Harness h(kv_config({full_spec(4)}, 64), config(64, 4, 64));
  ASSERT_TRUE(h.add(make_request("a", token_range(3), 4)));
  StepPlan p = h.s.schedule();
  EXPECT_THROW(h.s.schedule(), Error);
  SampledTokens wrong;
  wrong.step = p.step;
  EXPECT_THROW(h.s.update(p, wrong), Error);  // one sampled token missing
  StepPlan other = p;
  other.step = p.step + 1;
  EXPECT_THROW(h.s.update(other, h.runner.execute(p)), Error);

  // One max_model_len request must fit the pool.
  caches::KVCacheManager small(kv_config({full_spec(4)}, 8));  // 7 blocks = 28 tokens
  try {
    Scheduler s(config(64, 4, 64), small);
    ADD_FAILURE() << "constructed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("max_model_len=64"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(Scheduler(config(64, 4, 28), small));
  SchedulerConfig bad = config(64, 0, 64);
  EXPECT_THROW(bad.validate(), Error);
}

}  // namespace
}  // namespace tessera::scheduler::testing
