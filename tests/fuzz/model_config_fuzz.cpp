// config.json (ModelConfig::from_json_text): what every model load, `tessera inspect` and the
// tensor-parallel checks read. Properties: an accepted config writes itself out (to_json_text) and
// reads back to the same values; the derived figures (num_params, the tensor-parallel checks) give
// a value or a clear error, never undefined behaviour.
#include <string>

#include "common/error.h"
#include "runtime/models/model_config.h"
#include "tests/fuzz/fuzz_target.h"

using tessera::models::ModelConfig;

namespace {
// The first field a model load reads that differs ("" when none does); the rest is compared
// through the written text.
std::string differs(const ModelConfig& a, const ModelConfig& b) {
#define TESSERA_SAME(f) \
  if (!(a.f == b.f)) return #f
  TESSERA_SAME(model_type);
  // An absent architectures[0] ("") is written as the family's.
  if (!a.architecture.empty()) TESSERA_SAME(architecture);
  TESSERA_SAME(vocab_size);
  TESSERA_SAME(hidden_size);
  TESSERA_SAME(intermediate_size);
  TESSERA_SAME(num_hidden_layers);
  TESSERA_SAME(num_attention_heads);
  TESSERA_SAME(num_key_value_heads);
  TESSERA_SAME(head_dim);
  TESSERA_SAME(max_position_embeddings);
  TESSERA_SAME(rope_theta);
  TESSERA_SAME(rms_norm_eps);
  TESSERA_SAME(hidden_act);
  TESSERA_SAME(qkv_bias);
  TESSERA_SAME(o_bias);
  TESSERA_SAME(mlp_bias);
  TESSERA_SAME(tie_word_embeddings);
  if (!a.torch_dtype.empty()) TESSERA_SAME(torch_dtype);  // absent is written as float32
  TESSERA_SAME(bos_token_id);
  TESSERA_SAME(eos_token_ids);
  TESSERA_SAME(layer_windows);
  TESSERA_SAME(rope_scaling.type);
  TESSERA_SAME(rope_scaling.factor);
#undef TESSERA_SAME
  if (a.to_json_text() != b.to_json_text()) return "the written text";
  return "";
}
}  // namespace

TESSERA_FUZZ_TARGET(model_config) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  ModelConfig c;
  try {
    c = ModelConfig::from_json_text(text, "config.json");
  } catch (const tessera::Error&) {
    return 0;
  }
  c.validate();  // accepted means valid
  ModelConfig again;
  try {
    again = ModelConfig::from_json_text(c.to_json_text(), "round trip");
  } catch (const tessera::Error& e) {
    TESSERA_FUZZ_ASSERT(false, std::string("its own output is refused: ") + e.what());
  }
  const std::string field = differs(c, again);
  TESSERA_FUZZ_ASSERT(field.empty(), "to_json_text does not read back the same " + field + ": " +
                                         c.to_json_text() + " vs " + again.to_json_text());
  try {
    (void)c.num_params();
  } catch (const tessera::Error&) {
  }
  try {
    (void)c.derived_max_model_len();
    (void)c.attention_scale();
  } catch (const tessera::Error&) {
  }
  for (int tp : {1, 2, 3, 4, 8}) {
    try {
      c.check_tensor_parallel(tp);
      (void)c.decode_context_parallel(tp);
    } catch (const tessera::Error&) {
    }
  }
  return 0;
}
