// Guided decoding for serving: vLLM's guided_choice (and structured_outputs {"choice": [...]}).
// The output must be exactly one of the choices: at each step only the tokens whose text extends
// the text generated so far towards some choice are allowed, and the end of sequence once the text
// is a choice that a longer choice does not extend (the handler stops it when no choice extends
// it). Any tokenization of a choice is allowed, as grammar-constrained decoding does. Torch-free.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "runtime/scheduler/sampling_params.h"
#include "runtime/serving/tokenizer.h"

namespace tessera::serving {

// Each id's text as it reads inside a decoded text (decoded after another token, so that a
// leading space a decoder drops at the start of a text is kept; "" for special tokens), and the
// ids by their text's first byte. Built once per tokenizer.
struct PieceTable {
  std::vector<std::string> text;
  std::array<std::vector<int32_t>, 256> by_first_byte;
};
std::shared_ptr<const PieceTable> build_piece_table(const ServingTokenizer& tok);

// A constraint that also knows when the answer is complete (nothing may follow): the handler
// then ends the answer with finish_reason "stop".
class OutputConstraint : public scheduler::TokenConstraint {
 public:
  virtual bool complete(std::span<const int32_t> output_ids) const = 0;
};

class ChoiceConstraint final : public OutputConstraint {
 public:
  // `choices`: non-empty strings. `eos_ids`: the ids that end a request.
  ChoiceConstraint(std::vector<std::string> choices, std::shared_ptr<const PieceTable> pieces,
                   std::vector<int32_t> eos_ids);

  std::vector<int32_t> allowed(std::span<const int32_t> output_ids) const override;
  // The text of `output_ids` as the constraint reads it.
  std::string text_of(std::span<const int32_t> output_ids) const;
  // `text` is a choice that no other choice extends: nothing may follow.
  bool complete(const std::string& text) const;
  bool complete(std::span<const int32_t> output_ids) const override {
    return complete(text_of(output_ids));
  }

 private:
  std::vector<std::string> choices_;
  std::shared_ptr<const PieceTable> pieces_;
  std::vector<int32_t> eos_ids_;
};

}  // namespace tessera::serving
