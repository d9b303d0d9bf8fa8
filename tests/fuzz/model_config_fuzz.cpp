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
bool same(const ModelConfig& a, const ModelConfig& b) {
  return a.model_type == b.model_type && a.vocab_size == b.vocab_size &&
         a.hidden_size == b.hidden_size && a.intermediate_size == b.intermediate_size &&
         a.num_hidden_layers == b.num_hidden_layers &&
         a.num_attention_heads == b.num_attention_heads &&
         a.num_key_value_heads == b.num_key_value_heads && a.head_dim == b.head_dim &&
         a.max_position_embeddings == b.max_position_embeddings && a.rope_theta == b.rope_theta &&
         a.rms_norm_eps == b.rms_norm_eps && a.attention_bias == b.attention_bias &&
         a.tie_word_embeddings == b.tie_word_embeddings && a.bos_token_id == b.bos_token_id &&
         a.eos_token_id == b.eos_token_id && a.layer_windows == b.layer_windows;
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
  TESSERA_FUZZ_ASSERT(same(c, again), "to_json_text does not read back to the same config");
  try {
    (void)c.num_params();
  } catch (const tessera::Error&) {
  }
  for (int tp : {1, 2, 3, 4, 8}) {
    try {
      c.check_tensor_parallel(tp);
    } catch (const tessera::Error&) {
    }
  }
  return 0;
}
