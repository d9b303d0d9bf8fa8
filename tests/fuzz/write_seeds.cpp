// Writes the generated part of the seed corpora (tests/fuzz_corpus/): deltas made by create_delta
// against the delta target's fixed base, safetensors files from our writer and step plans encoded
// from hand-made plans. Run by hand after a format change:
//   tessera_fuzz_write_seeds tests/fuzz_corpus
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/dtype.h"
#include "runtime/models/delta/delta.h"
#include "runtime/models/safetensors.h"
#include "runtime/scheduler/step_plan.h"
#include "tests/fuzz/delta_fixture.h"

namespace fs = std::filesystem;
using namespace tessera;

namespace {

void write(const fs::path& p, const std::vector<uint8_t>& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
}

scheduler::StepPlan plan_two_rows() {
  scheduler::StepPlan p;
  p.step = 42;
  p.num_groups = 2;
  scheduler::ScheduledSeq a;
  a.seq = 7;
  a.slot = 3;
  a.is_new = true;
  a.sample = true;
  a.sample_index = 0;
  a.num_tokens = 3;
  a.new_index = 0;
  scheduler::ScheduledSeq b;
  b.seq = 9;
  b.slot = 0;
  b.start_pos = 130;
  b.num_tokens = 2;
  b.token_offset = 3;
  p.seqs = {a, b};
  p.new_seqs = {{0, "req-a", "sql"}};
  p.num_sampled = 1;
  p.token_ids = {5, 6, 7, 100, 101};
  p.tables = {{0, 0, 2, 0}, {0, 1, 2, 2}, {9, 0, 0, 4}, {9, 6, 1, 4}};
  p.blocks = {11, 12, 0, 13, 40};
  p.copies = {{1, 4, 5}};
  p.released = {{3, 1, true, "old"}, {4, 2, false, "done"}};
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR (tests/fuzz_corpus)\n", argv[0]);
    return 2;
  }
  const fs::path root = argv[1];
  const fs::path tmp = fs::temp_directory_path() / ("tessera-seeds-" + std::to_string(getpid()));
  try {
    // delta: every encoding against the fixture's base.
    const std::string base = fuzz::write_delta_base((tmp / "base").string());
    for (const auto& s : fuzz::write_delta_tuned((tmp / "tuned").string())) {
      models::delta::CreateOptions o;
      o.base = base;
      o.tuned = s.tuned;
      o.out = (root / "delta" / s.name).string();
      o.lossy_int8 = s.lossy;
      o.transform = s.diff ? models::delta::Transform::kDiff : models::delta::Transform::kXor;
      fs::create_directories(root / "delta");
      models::delta::create_delta(o);
    }
    // safetensors: our writer's layout (8-byte aligned header), several dtypes, metadata.
    fs::create_directories(root / "safetensors");
    models::write_safetensors((root / "safetensors" / "two_tensors.safetensors").string(),
                              {{"a", DType::kF32, {2, 2}, std::vector<uint8_t>(16, 1)},
                               {"b", DType::kBF16, {3}, std::vector<uint8_t>(6, 2)}},
                              {{"format", "pt"}});
    models::write_safetensors((root / "safetensors" / "scalar_and_empty.safetensors").string(),
                              {{"s", DType::kI64, {}, std::vector<uint8_t>(8, 3)},
                               {"e", DType::kF16, {0, 7}, {}},
                               {"u", DType::kU8, {5}, std::vector<uint8_t>(5, 4)}});
    models::write_safetensors((root / "safetensors" / "empty.safetensors").string(), {});
    // step_plan: a plan with every kind of field, an empty one, one with releases only.
    fs::create_directories(root / "step_plan");
    write(root / "step_plan" / "two_rows.bin", plan_two_rows().encode());
    write(root / "step_plan" / "empty.bin", scheduler::StepPlan{}.encode());
    scheduler::StepPlan r;
    r.step = 3;
    r.num_groups = 1;
    r.released = {{1, 0, false, "x"}};
    write(root / "step_plan" / "released_only.bin", r.encode());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "write_seeds: %s\n", e.what());
    fs::remove_all(tmp);
    return 1;
  }
  fs::remove_all(tmp);
  return 0;
}
