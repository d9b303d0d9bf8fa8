// Post-processors of tokenizer.json (the crate's src/processors/): the special tokens around a
// single sequence. Pairs of sequences are not encoded here, so only the "single" templates run.
#include "common/error.h"
#include "runtime/tokenizers/pipeline.h"

namespace tessera::tokenizers {
namespace {

class Template final : public PostProcessor {
 public:
  // A piece of the template: the sequence itself, or the ids of a special token.
  struct Item {
    bool sequence;
    std::vector<int32_t> ids;
  };
  explicit Template(std::vector<Item> items) : items_(std::move(items)) {}

  void process(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    if (!add_special_tokens) return;
    std::vector<int32_t> out;
    out.reserve(ids.size() + 4);
    for (const auto& it : items_) {
      if (it.sequence) {
        out.insert(out.end(), ids.begin(), ids.end());
      } else {
        out.insert(out.end(), it.ids.begin(), it.ids.end());
      }
    }
    ids.swap(out);
  }

 private:
  std::vector<Item> items_;
};

class NoOp final : public PostProcessor {
 public:
  void process(std::vector<int32_t>&, bool) const override {}
};

class SequenceProcessor final : public PostProcessor {
 public:
  explicit SequenceProcessor(std::vector<std::unique_ptr<PostProcessor>> p) : p_(std::move(p)) {}
  void process(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    for (const auto& p : p_) p->process(ids, add_special_tokens);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> p_;
};

// ["[SEP]", 102]
int32_t token_pair_id(const Field& f) {
  if (!f.json().is_array() || f.json().size() != 2 || !f.json()[0].is_string() ||
      !f.json()[1].is_number_integer()) {
    f.fail("must be a pair [token, id]");
  }
  const int64_t id = f.json()[1].get<int64_t>();
  if (id < 0 || id > INT32_MAX) f.fail("has an id out of range");
  return static_cast<int32_t>(id);
}

std::unique_ptr<PostProcessor> make_template(const Field& f) {
  const Field specials = f.at("special_tokens");
  specials.expect_object();
  const Field single = f.at("single");
  std::vector<Template::Item> items;
  for (size_t i = 0; i < single.size(); ++i) {
    const Field piece = single.element(i);
    piece.expect_object();
    if (auto seq = piece.optional("Sequence")) {
      const std::string id = seq->at("id").str();
      if (id != "A") seq->at("id").fail("must be A in the single-sequence template");
      items.push_back({true, {}});
    } else if (auto sp = piece.optional("SpecialToken")) {
      const Field name = sp->at("id");
      const std::string key = name.str();
      if (!specials.has(key.c_str()))
        name.fail("names a special token missing from special_tokens");
      const Field def = specials.at(key.c_str());
      const Field ids = def.at("ids");
      Template::Item item{false, {}};
      for (size_t k = 0; k < ids.size(); ++k) {
        const int64_t id = ids.element(k).integer();
        if (id < 0 || id > INT32_MAX) ids.element(k).fail("is not a token id");
        item.ids.push_back(static_cast<int32_t>(id));
      }
      items.push_back(std::move(item));
    } else {
      piece.fail("must be {\"Sequence\": ...} or {\"SpecialToken\": ...}");
    }
  }
  return std::make_unique<Template>(std::move(items));
}

}  // namespace

std::unique_ptr<PostProcessor> make_affix_processor(std::vector<int32_t> prefix,
                                                    std::vector<int32_t> suffix) {
  std::vector<Template::Item> items;
  if (!prefix.empty()) items.push_back({false, std::move(prefix)});
  items.push_back({true, {}});
  if (!suffix.empty()) items.push_back({false, std::move(suffix)});
  return std::make_unique<Template>(std::move(items));
}

std::unique_ptr<PostProcessor> make_post_processor(const Field& f) {
  if (f.is_null()) return nullptr;
  const std::string type = f.at("type").str();
  if (type == "TemplateProcessing") return make_template(f);
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    const int32_t cls = token_pair_id(f.at("cls"));
    const int32_t sep = token_pair_id(f.at("sep"));
    return std::make_unique<Template>(
        std::vector<Template::Item>{{false, {cls}}, {true, {}}, {false, {sep}}});
  }
  if (type == "ByteLevel") return std::make_unique<NoOp>();  // offsets only
  if (type == "Sequence") {
    const Field list = f.at("processors");
    std::vector<std::unique_ptr<PostProcessor>> p;
    for (size_t i = 0; i < list.size(); ++i) {
      auto x = make_post_processor(list.element(i));
      if (x) p.push_back(std::move(x));
    }
    return std::make_unique<SequenceProcessor>(std::move(p));
  }
  f.at("type").fail("names an unknown post-processor");
}

}  // namespace tessera::tokenizers
