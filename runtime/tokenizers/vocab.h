// What the models of tokenizer.json share (internal): the vocabulary with its reverse, and the
// cache of whole-word results.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "runtime/tokenizers/json_fields.h"

namespace tessera::tokenizers {

struct StrHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using VocabMap = std::unordered_map<std::string, int32_t, StrHash, std::equal_to<>>;

constexpr int64_t kMaxId = 1 << 26;  // far above any real vocabulary; guards the id → token table

// A vocabulary and its reverse, as every model keeps them.
struct Vocab {
  VocabMap map;
  std::vector<const std::string*> by_id;  // id → token (null for unused ids)

  void finish() {
    int64_t max = -1;
    for (const auto& [tok, id] : map) max = std::max<int64_t>(max, id);
    by_id.assign(static_cast<size_t>(max + 1), nullptr);
    // With duplicate ids (malformed but accepted by the crate) one of the tokens wins.
    for (const auto& [tok, id] : map) by_id[static_cast<size_t>(id)] = &tok;
  }
  std::optional<int32_t> get(std::string_view s) const {
    auto it = map.find(s);
    if (it == map.end()) return std::nullopt;
    return it->second;
  }
  const std::string* token(int32_t id) const {
    if (id < 0 || static_cast<size_t>(id) >= by_id.size()) return nullptr;
    return by_id[static_cast<size_t>(id)];
  }
  int32_t max_id() const { return static_cast<int32_t>(by_id.size()) - 1; }
};

// {"token": id, ...} with ids checked.
Vocab parse_vocab_object(const Field& f);

// Results of whole words, shared by the threads that encode with one tokenizer. Like the crate's
// cache it never blocks: a contended lock is a miss (get) or a skipped insert (set).
class WordCache {
 public:
  static constexpr size_t kCapacity = 10000;
  static constexpr size_t kMaxWordBytes = 256;

  bool get(std::string_view word, std::vector<int32_t>& out) const {
    if (word.size() >= kMaxWordBytes) return false;
    std::shared_lock lock(mu_, std::try_to_lock);
    if (!lock.owns_lock()) return false;
    auto it = map_.find(word);
    if (it == map_.end()) return false;
    out.insert(out.end(), it->second.begin(), it->second.end());
    return true;
  }
  void set(std::string_view word, const int32_t* ids, size_t n) const {
    if (word.size() >= kMaxWordBytes) return;
    std::unique_lock lock(mu_, std::try_to_lock);
    if (!lock.owns_lock() || map_.size() >= kCapacity) return;
    map_.emplace(std::string(word), std::vector<int32_t>(ids, ids + n));
  }

 private:
  mutable std::shared_mutex mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StrHash, std::equal_to<>> map_;
};

// (left id, right id) → (rank, merged id), open addressing on 64-bit keys.

}  // namespace tessera::tokenizers
