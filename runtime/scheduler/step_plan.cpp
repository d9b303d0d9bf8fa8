#include "runtime/scheduler/step_plan.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <type_traits>

#include "caches/block_pool.h"
#include "common/error.h"

namespace tessera::scheduler {

static_assert(std::endian::native == std::endian::little,
              "StepPlan's byte format is little-endian; add byte swaps for this host");

namespace {

constexpr uint32_t kMagic = 0x4c505354;  // "TSPL"
constexpr uint16_t kVersion = 1;

// Writes into a buffer sized exactly beforehand (no per-field growth).
class Writer {
 public:
  explicit Writer(size_t size) : out_(size), p_(out_.data()) {}
  template <typename T>
  void put(T v) {
    static_assert(std::is_trivially_copyable_v<T>);
    std::memcpy(p_, &v, sizeof(T));
    p_ += sizeof(T);
  }
  template <typename T>
  void put_array(const std::vector<T>& v) {
    put<uint32_t>(static_cast<uint32_t>(v.size()));
    if (!v.empty()) std::memcpy(p_, v.data(), v.size() * sizeof(T));
    p_ += v.size() * sizeof(T);
  }
  void put_string(const std::string& s) {
    put<uint32_t>(static_cast<uint32_t>(s.size()));
    if (!s.empty()) std::memcpy(p_, s.data(), s.size());
    p_ += s.size();
  }
  std::vector<uint8_t> take() {
    TESSERA_CHECK(p_ == out_.data() + out_.size(), "StepPlan::encode wrote ", p_ - out_.data(),
                  " bytes, sized ", out_.size());
    return std::move(out_);
  }

 private:
  std::vector<uint8_t> out_;
  uint8_t* p_;
};

// Encoded sizes.
constexpr size_t kHeaderBytes = 4 + 2 + 2 + 8 + 4 + 4;
constexpr size_t kRowBytes = 8 + 4 + 1 + 4 + 4 + 8;  // seq, slot, flags, sample_index, n, start
constexpr size_t kDeltaBytes = 12;
constexpr size_t kCopyBytes = 12;
constexpr size_t kNewSeqBytes = 4 + 4 + 4;  // row + two string lengths
constexpr size_t kReleasedBytes = 8 + 4 + 1 + 4;

// Bounds-checked reads of untrusted bytes: every failure throws naming the field and offset.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> b) : b_(b) {}
  size_t left() const { return b_.size() - at_; }
  size_t offset() const { return at_; }
  template <typename T>
  T get(const char* field) {
    TESSERA_CHECK(left() >= sizeof(T), "StepPlan::decode: truncated input: ", field, " needs ",
                  sizeof(T), " bytes at byte ", at_, " of ", b_.size());
    T v;
    std::memcpy(&v, b_.data() + at_, sizeof(T));
    at_ += sizeof(T);
    return v;
  }
  // A count of elements of at least `min_bytes` each: never more than the bytes left allow.
  size_t count(const char* field, size_t min_bytes) {
    const size_t at = at_;
    const auto n = get<uint32_t>(field);
    TESSERA_CHECK(static_cast<uint64_t>(n) * min_bytes <= left(), "StepPlan::decode: ", field, "=",
                  n, " at byte ", at, " needs ", static_cast<uint64_t>(n) * min_bytes,
                  " bytes but only ", left(), " are left");
    return n;
  }
  template <typename T>
  void get_array(const char* field, std::vector<T>& v) {
    const size_t n = count(field, sizeof(T));
    v.resize(n);
    if (n) std::memcpy(v.data(), b_.data() + at_, n * sizeof(T));
    at_ += n * sizeof(T);
  }
  std::string get_string(const char* field) {
    const size_t n = count(field, 1);
    std::string s(reinterpret_cast<const char*>(b_.data() + at_), n);
    at_ += n;
    return s;
  }

 private:
  std::span<const uint8_t> b_;
  size_t at_ = 0;
};

#define TESSERA_PLAN_CHECK(cond, r, ...) \
  TESSERA_CHECK(cond, "StepPlan::decode: ", __VA_ARGS__, " (before byte ", (r).offset(), ")")

}  // namespace

void StepPlan::apply_block_table(int64_t row, int32_t group, std::vector<int32_t>& table) const {
  TESSERA_CHECK(row >= 0 && row < num_rows(), "row must lie in [0, ", num_rows(), "), got ", row);
  TESSERA_CHECK(group >= 0 && group < num_groups, "group must lie in [0, ", num_groups, "), got ",
                group);
  const BlockTableDelta& d = this->table(row, group);
  TESSERA_CHECK(static_cast<int64_t>(table.size()) >= d.keep, "block table of slot ",
                seqs[row].slot, " group ", group, " holds ", table.size(),
                " entries but the plan keeps ", d.keep, " (runner and scheduler disagree)");
  table.resize(d.keep);
  table.insert(table.end(), blocks.begin() + d.block_offset,
               blocks.begin() + d.block_offset + d.num_blocks);
  std::fill(table.begin(), table.begin() + d.null_prefix, caches::BlockPool::kNullBlock);
}

void StepPlan::check_bounds(int64_t max_slots, int64_t num_blocks) const {
  for (size_t i = 0; i < seqs.size(); ++i) {
    TESSERA_CHECK(seqs[i].slot >= 0 && seqs[i].slot < max_slots, "plan step ", step, ": seqs[", i,
                  "].slot must lie in [0, ", max_slots, "), got ", seqs[i].slot);
  }
  for (size_t i = 0; i < released.size(); ++i) {
    TESSERA_CHECK(released[i].slot >= 0 && released[i].slot < max_slots, "plan step ", step,
                  ": released[", i, "].slot must lie in [0, ", max_slots, "), got ",
                  released[i].slot);
  }
  for (size_t i = 0; i < blocks.size(); ++i) {
    TESSERA_CHECK(blocks[i] >= 0 && blocks[i] < num_blocks, "plan step ", step, ": blocks[", i,
                  "] must lie in [0, ", num_blocks, "), got ", blocks[i]);
  }
  for (size_t i = 0; i < copies.size(); ++i) {
    TESSERA_CHECK(copies[i].src >= 0 && copies[i].src < num_blocks && copies[i].dst >= 0 &&
                      copies[i].dst < num_blocks,
                  "plan step ", step, ": copies[", i, "] must name blocks in [0, ", num_blocks,
                  "), got src=", copies[i].src, " dst=", copies[i].dst);
  }
}

bool StepPlan::operator==(const StepPlan& o) const {
  auto same_copies = [&] {
    if (copies.size() != o.copies.size()) return false;
    for (size_t i = 0; i < copies.size(); ++i) {
      if (copies[i].group != o.copies[i].group || copies[i].src != o.copies[i].src ||
          copies[i].dst != o.copies[i].dst) {
        return false;
      }
    }
    return true;
  };
  return step == o.step && num_groups == o.num_groups && num_sampled == o.num_sampled &&
         seqs == o.seqs && new_seqs == o.new_seqs && token_ids == o.token_ids &&
         tables == o.tables && blocks == o.blocks && same_copies() && released == o.released;
}

std::vector<uint8_t> StepPlan::encode() const {
  TESSERA_CHECK(tables.size() == seqs.size() * static_cast<size_t>(num_groups), "StepPlan has ",
                tables.size(), " block-table deltas for ", seqs.size(), " rows x ", num_groups,
                " groups");
  size_t size = kHeaderBytes + 4 + seqs.size() * kRowBytes + 4 + token_ids.size() * 4 +
                tables.size() * kDeltaBytes + 4 + blocks.size() * 4 + 4 +
                copies.size() * kCopyBytes + 4 + new_seqs.size() * kNewSeqBytes + 4 +
                released.size() * kReleasedBytes;
  for (const NewSeq& n : new_seqs) size += n.request_id.size() + n.lora.size();
  for (const ReleasedSeq& r : released) size += r.request_id.size();
  Writer w(size);
  w.put<uint32_t>(kMagic);
  w.put<uint16_t>(kVersion);
  w.put<uint16_t>(0);
  w.put<int64_t>(step);
  w.put<int32_t>(num_groups);
  w.put<int32_t>(num_sampled);
  w.put<uint32_t>(static_cast<uint32_t>(seqs.size()));
  for (const ScheduledSeq& s : seqs) {
    w.put<int64_t>(s.seq);
    w.put<int32_t>(s.slot);
    w.put<uint8_t>(static_cast<uint8_t>((s.is_new ? 1 : 0) | (s.sample ? 2 : 0)));
    w.put<int32_t>(s.sample_index);
    w.put<int32_t>(s.num_tokens);
    w.put<int64_t>(s.start_pos);
  }
  w.put_array(token_ids);
  for (const BlockTableDelta& d : tables) {
    w.put<int32_t>(d.keep);
    w.put<int32_t>(d.null_prefix);
    w.put<int32_t>(d.num_blocks);
  }
  w.put_array(blocks);
  w.put<uint32_t>(static_cast<uint32_t>(copies.size()));
  for (const caches::BlockCopy& c : copies) {
    w.put<int32_t>(c.group);
    w.put<int32_t>(c.src);
    w.put<int32_t>(c.dst);
  }
  w.put<uint32_t>(static_cast<uint32_t>(new_seqs.size()));
  for (const NewSeq& n : new_seqs) {
    w.put<int32_t>(n.row);
    w.put_string(n.request_id);
    w.put_string(n.lora);
  }
  w.put<uint32_t>(static_cast<uint32_t>(released.size()));
  for (const ReleasedSeq& r : released) {
    w.put<int64_t>(r.seq);
    w.put<int32_t>(r.slot);
    w.put<uint8_t>(r.preempted ? 1 : 0);
    w.put_string(r.request_id);
  }
  return w.take();
}

StepPlan StepPlan::decode(std::span<const uint8_t> bytes) {
  Reader r(bytes);
  StepPlan p;
  const auto magic = r.get<uint32_t>("magic");
  TESSERA_PLAN_CHECK(magic == kMagic, r, "magic must be ", kMagic, " (\"TSPL\"), got ", magic);
  const auto version = r.get<uint16_t>("version");
  TESSERA_PLAN_CHECK(version == kVersion, r, "version must be ", kVersion, ", got ", version);
  const auto reserved = r.get<uint16_t>("reserved");
  TESSERA_PLAN_CHECK(reserved == 0, r, "reserved must be 0, got ", reserved);
  p.step = r.get<int64_t>("step");
  TESSERA_PLAN_CHECK(p.step >= 0, r, "step must be >= 0, got ", p.step);
  p.num_groups = r.get<int32_t>("num_groups");
  TESSERA_PLAN_CHECK(p.num_groups >= 0, r, "num_groups must be >= 0, got ", p.num_groups);
  p.num_sampled = r.get<int32_t>("num_sampled");

  const size_t rows = r.count("rows", kRowBytes);
  p.seqs.resize(rows);
  int64_t total_tokens = 0;
  int32_t sampled = 0, num_new = 0;
  for (size_t i = 0; i < rows; ++i) {
    ScheduledSeq& s = p.seqs[i];
    s.seq = r.get<int64_t>("seqs[].seq");
    s.slot = r.get<int32_t>("seqs[].slot");
    TESSERA_PLAN_CHECK(s.slot >= 0, r, "seqs[", i, "].slot must be >= 0, got ", s.slot);
    const auto flags = r.get<uint8_t>("seqs[].flags");
    TESSERA_PLAN_CHECK(flags <= 3, r, "seqs[", i, "].flags must lie in [0, 3], got ",
                       static_cast<int>(flags));
    s.is_new = (flags & 1) != 0;
    s.sample = (flags & 2) != 0;
    if (s.is_new) s.new_index = num_new++;
    s.sample_index = r.get<int32_t>("seqs[].sample_index");
    TESSERA_PLAN_CHECK(s.sample_index == (s.sample ? sampled : -1), r, "seqs[", i,
                       "].sample_index must be ", (s.sample ? sampled : -1), ", got ",
                       s.sample_index);
    if (s.sample) ++sampled;
    s.num_tokens = r.get<int32_t>("seqs[].num_tokens");
    TESSERA_PLAN_CHECK(s.num_tokens >= 1, r, "seqs[", i, "].num_tokens must be >= 1, got ",
                       s.num_tokens);
    s.start_pos = r.get<int64_t>("seqs[].start_pos");
    TESSERA_PLAN_CHECK(s.start_pos >= 0, r, "seqs[", i, "].start_pos must be >= 0, got ",
                       s.start_pos);
    s.token_offset = total_tokens;
    total_tokens += s.num_tokens;
  }
  TESSERA_PLAN_CHECK(p.num_sampled == sampled, r, "num_sampled must be ", sampled,
                     " (rows with sample set), got ", p.num_sampled);
  r.get_array("token_ids", p.token_ids);
  TESSERA_PLAN_CHECK(static_cast<int64_t>(p.token_ids.size()) == total_tokens, r,
                     "token_ids holds ", p.token_ids.size(), " ids but the rows compute ",
                     total_tokens);

  const uint64_t num_deltas = static_cast<uint64_t>(rows) * static_cast<uint64_t>(p.num_groups);
  TESSERA_PLAN_CHECK(num_deltas * kDeltaBytes <= r.left(), r, rows,
                     " rows x num_groups=", p.num_groups, " block-table deltas need ",
                     num_deltas * kDeltaBytes, " bytes but only ", r.left(), " are left");
  p.tables.resize(num_deltas);
  int64_t total_blocks = 0;
  for (uint64_t i = 0; i < num_deltas; ++i) {
    BlockTableDelta& d = p.tables[i];
    d.keep = r.get<int32_t>("tables[].keep");
    d.null_prefix = r.get<int32_t>("tables[].null_prefix");
    d.num_blocks = r.get<int32_t>("tables[].num_blocks");
    const int64_t row = static_cast<int64_t>(i / p.num_groups);
    TESSERA_PLAN_CHECK(d.keep >= 0 && d.num_blocks >= 0, r, "tables[", i,
                       "] keep and num_blocks must be >= 0, got ", d.keep, " and ", d.num_blocks);
    TESSERA_PLAN_CHECK(!p.seqs[row].is_new || d.keep == 0, r, "tables[", i,
                       "].keep must be 0 for a new row, got ", d.keep);
    TESSERA_PLAN_CHECK(
        d.null_prefix >= 0 && d.null_prefix <= static_cast<int64_t>(d.keep) + d.num_blocks, r,
        "tables[", i, "].null_prefix must lie in [0, ", static_cast<int64_t>(d.keep) + d.num_blocks,
        "], got ", d.null_prefix);
    d.block_offset = total_blocks;
    total_blocks += d.num_blocks;
  }
  r.get_array("blocks", p.blocks);
  TESSERA_PLAN_CHECK(static_cast<int64_t>(p.blocks.size()) == total_blocks, r, "blocks holds ",
                     p.blocks.size(), " ids but the deltas append ", total_blocks);
  for (size_t i = 0; i < p.blocks.size(); ++i) {
    TESSERA_PLAN_CHECK(p.blocks[i] >= 0, r, "blocks[", i, "] must be >= 0, got ", p.blocks[i]);
  }
  const size_t num_copies = r.count("copies", kCopyBytes);
  p.copies.resize(num_copies);
  for (size_t i = 0; i < num_copies; ++i) {
    caches::BlockCopy& c = p.copies[i];
    c.group = r.get<int32_t>("copies[].group");
    c.src = r.get<int32_t>("copies[].src");
    c.dst = r.get<int32_t>("copies[].dst");
    TESSERA_PLAN_CHECK(c.group >= 0 && c.group < p.num_groups && c.src >= 0 && c.dst >= 0, r,
                       "copies[", i, "] must name a group in [0, ", p.num_groups,
                       ") and blocks >= 0, got group=", c.group, " src=", c.src, " dst=", c.dst);
  }
  const size_t new_count = r.count("new_seqs", kNewSeqBytes);
  TESSERA_PLAN_CHECK(static_cast<int64_t>(new_count) == num_new, r, "new_seqs=", new_count, " but ",
                     num_new, " rows are new");
  p.new_seqs.resize(new_count);
  for (size_t k = 0, row = 0; k < new_count; ++k, ++row) {
    NewSeq& n = p.new_seqs[k];
    n.row = r.get<int32_t>("new_seqs[].row");
    while (row < rows && !p.seqs[row].is_new) ++row;  // the k-th new row
    TESSERA_PLAN_CHECK(static_cast<size_t>(n.row) == row, r, "new_seqs[", k, "].row must be ", row,
                       " (the new rows in order), got ", n.row);
    n.request_id = r.get_string("new_seqs[].request_id");
    n.lora = r.get_string("new_seqs[].lora");
  }
  const size_t num_released = r.count("released", kReleasedBytes);
  p.released.resize(num_released);
  for (size_t i = 0; i < num_released; ++i) {
    ReleasedSeq& s = p.released[i];
    s.seq = r.get<int64_t>("released[].seq");
    s.slot = r.get<int32_t>("released[].slot");
    const auto pre = r.get<uint8_t>("released[].preempted");
    TESSERA_PLAN_CHECK(pre <= 1, r, "released[", i, "].preempted must be 0 or 1, got ",
                       static_cast<int>(pre));
    s.preempted = pre != 0;
    s.request_id = r.get_string("released[].request_id");
  }
  TESSERA_PLAN_CHECK(r.left() == 0, r, r.left(), " trailing bytes after the plan");
  return p;
}

}  // namespace tessera::scheduler
