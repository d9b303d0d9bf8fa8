#include "runtime/serving/guided.h"

#include <algorithm>

#include "common/error.h"

namespace tessera::serving {

std::shared_ptr<const PieceTable> build_piece_table(const ServingTokenizer& tok) {
  auto table = std::make_shared<PieceTable>();
  const int32_t V = tok.vocab_size();
  table->text.resize(static_cast<size_t>(V));
  // An anchor token before each id: its text is what the pair adds to the anchor's.
  const std::vector<int32_t> anchor_ids = tok.encode("a", false);
  const bool anchored = anchor_ids.size() == 1;
  const std::string anchor = anchored ? tok.decode(anchor_ids, true) : "";
  for (int32_t id = 0; id < V; ++id) {
    std::string t;
    if (anchored) {
      const int32_t pair[2] = {anchor_ids[0], id};
      t = tok.decode(std::span<const int32_t>(pair, 2), true);
      t = t.compare(0, anchor.size(), anchor) == 0 ? t.substr(anchor.size()) : std::string();
    } else {
      const int32_t one[1] = {id};
      t = tok.decode(std::span<const int32_t>(one, 1), true);
    }
    // A part of a UTF-8 character decodes as U+FFFD: the constraint reads its bytes instead.
    if (t.find("\xEF\xBF\xBD") != std::string::npos) {
      if (std::optional<std::string> bytes = tok.token_bytes(id)) t = std::move(*bytes);
    }
    if (!t.empty()) table->by_first_byte[static_cast<unsigned char>(t[0])].push_back(id);
    table->text[static_cast<size_t>(id)] = std::move(t);
  }
  return table;
}

std::shared_ptr<const PieceTable> ServingTokenizer::piece_table() const {
  std::call_once(pieces_once_, [this] { pieces_ = build_piece_table(*this); });
  return pieces_;
}

ChoiceConstraint::ChoiceConstraint(std::vector<std::string> choices,
                                   std::shared_ptr<const PieceTable> pieces,
                                   std::vector<int32_t> eos_ids)
    : choices_(std::move(choices)), pieces_(std::move(pieces)), eos_ids_(std::move(eos_ids)) {
  TESSERA_CHECK(!choices_.empty(), "guided_choice needs at least one choice");
  for (const auto& c : choices_) TESSERA_CHECK(!c.empty(), "guided_choice: a choice is empty");
}

std::string ChoiceConstraint::text_of(std::span<const int32_t> output_ids) const {
  std::string g;
  for (int32_t id : output_ids) {
    if (id >= 0 && static_cast<size_t>(id) < pieces_->text.size()) {
      g += pieces_->text[static_cast<size_t>(id)];
    }
  }
  return g;
}

std::vector<int32_t> ChoiceConstraint::allowed(std::span<const int32_t> output_ids) const {
  const std::string g = text_of(output_ids);
  std::vector<int32_t> out;
  bool may_end = false;
  std::vector<std::string_view> rests;
  for (const auto& c : choices_) {
    if (c.size() < g.size() || c.compare(0, g.size(), g) != 0) continue;
    const std::string_view rest = std::string_view(c).substr(g.size());
    if (rest.empty()) {
      may_end = true;
    } else if (std::find(rests.begin(), rests.end(), rest) == rests.end()) {
      rests.push_back(rest);
    }
  }
  for (const std::string_view rest : rests) {
    for (int32_t id : pieces_->by_first_byte[static_cast<unsigned char>(rest[0])]) {
      const std::string& t = pieces_->text[static_cast<size_t>(id)];
      if (t.size() <= rest.size() && rest.compare(0, t.size(), t) == 0) out.push_back(id);
    }
  }
  if (may_end || out.empty()) out.insert(out.end(), eos_ids_.begin(), eos_ids_.end());
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

bool ChoiceConstraint::complete(const std::string& text) const {
  bool is_choice = false;
  for (const auto& c : choices_) {
    if (c == text) {
      is_choice = true;
    } else if (c.size() > text.size() && c.compare(0, text.size(), text) == 0) {
      return false;  // a longer choice goes on from here
    }
  }
  return is_choice;
}

}  // namespace tessera::serving
