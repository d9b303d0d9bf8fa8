// A LLaMA/Mistral/Qwen2/Gemma 2-style decoder over a flat (ragged) batch of tokens, split
// tensor-parallel: each rank holds its share of the attention heads (fused q/k/v column-parallel, o
// row-parallel) and of the MLP (fused gate/up column-parallel, down row-parallel); partial outputs
// are all-reduced. When the ranks outnumber the KV heads, the ranks sharing a KV head split its
// tokens instead (decode context parallel, done by the AttentionBackend). Embeddings and norms are
// replicated; the LM head runs only where logits are wanted (the leader). What differs between
// families (biases, activation, rope scaling) is data in ModelConfig read by small functions, not
// branches in forward(); attention and the KV cache are behind AttentionBackend.
#pragma once

#include <torch/types.h>

#include <array>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/ops/lora_ops.h"
#include "runtime/models/layers/rotary_embedding.h"
#include "runtime/models/lora_adapter.h"
#include "runtime/models/model_config.h"
#include "runtime/models/weights.h"
#include "sharding/communicator.h"
#include "sharding/tensor_parallel.h"

namespace tessera::models {

// This rank's share of the model under `tp` ranks: query heads and MLP columns split evenly; KV
// heads split evenly while tp <= num_key_value_heads, else KV head tp_rank / dcp_size is held by
// dcp_size ranks that split its tokens (dcp_rank = tp_rank % dcp_size).
struct ShardLayout {
  int tp_rank = 0, tp_size = 1;
  int dcp_rank = 0, dcp_size = 1;
  sharding::ShardRange q_heads, kv_heads, mlp;

  static ShardLayout make(const ModelConfig& config, int tp_rank, int tp_size);
};

// One forward's tokens: the rows of a step, concatenated.
struct ForwardInputs {
  torch::Tensor tokens;     // [T] int64
  torch::Tensor positions;  // [T] int64
  torch::Tensor seq_lens;   // [T] int64: each token's sequence length after this step; only
                            // dynamic NTK rope reads it (RotaryEmbedding::needs_seq_lens)
  // LoRA without merging (optional): rows [lora_indptr[s], lora_indptr[s + 1]) use adapter
  // lora_ids[s] (an add_lora index, -1 = the base model), int32, on the CPU. Undefined = base.
  torch::Tensor lora_indptr, lora_ids;
};

// Attention over the KV cache (paged, sequence-sharded, or a test oracle).
class AttentionBackend {
 public:
  virtual ~AttentionBackend() = default;
  // q [T, local q heads, head_dim], k / v [T, local kv heads, head_dim], rotary applied. Stores
  // k / v where later steps find them and returns the attention output [T, local q heads *
  // head_dim] of each query over the visible keys of its sequence (this step's included).
  virtual torch::Tensor attend(int64_t layer, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v) = 0;
  // The score soft-cap the backend applies (cap * tanh(score / cap)); 0 = none. The model
  // refuses a backend whose cap differs from the config's attn_logit_softcapping.
  virtual double logit_softcap() const { return 0; }
};

// Weights of the linear layers (and the embedding / LM head): float32, or int8 per output channel
// (symmetric absmax, one float32 scale per row; kernels/int8_linear computes from the int8 values
// without a float32 copy). Norms and biases stay float32.
enum class WeightQuantization { kNone, kInt8 };
// "none" / "int8" (the CLI's --quantization); throws naming the value otherwise.
WeightQuantization parse_quantization(const std::string& text);

class DecoderModel {
 public:
  // `comm` spans the tensor-parallel group (null or size 1: the whole model on this rank).
  // Reads this rank's slices of the weights (as `dtype`, on `device`); throws naming the field when
  // the group cannot split the model, and naming the tensor when the checkpoint holds one the
  // config does not use (a bias the config says is absent, ...). `max_positions` bounds the
  // positions forward() may see (the rotary table's size). `dtype` float64 is a validation mode
  // (CPU, one rank, no quantization, an AttentionBackend that takes float64: the paged kernels do
  // not): weights, activations and LoRA in float64; rotary angles in float32 as transformers
  // computes them for a float64 model; LoRA scales float32 (the kernel's: exact for the usual
  // power-of-two alpha / r).
  DecoderModel(const ModelConfig& config, const WeightLoader& weights, sharding::Communicator* comm,
               int64_t max_positions, torch::Device device = torch::kCPU,
               WeightQuantization quantization = WeightQuantization::kNone,
               torch::ScalarType dtype = torch::kFloat);

  const ModelConfig& config() const { return config_; }
  const ShardLayout& layout() const { return layout_; }
  torch::Device device() const { return device_; }
  int64_t local_q_heads() const { return layout_.q_heads.size; }
  int64_t local_kv_heads() const { return layout_.kv_heads.size; }
  const RotaryEmbedding& rotary() const { return rotary_; }
  // Bytes of this rank's weights (int8 values and their scales when quantised; a tied LM head
  // that shares the embedding's storage counted once).
  int64_t weight_bytes() const;
  WeightQuantization quantization() const { return quantization_; }
  torch::ScalarType dtype() const { return dtype_; }

  // LoRA (lora_adapter.h). add_lora takes this rank's slices of an adapter validated against the
  // config and returns its index for ForwardInputs::lora_ids; rows of several adapters (and the
  // base) run in one forward through the segmented LoRA kernel (kernels/lora), unmerged.
  int add_lora(const LoraAdapter& adapter);
  int num_loras() const { return static_cast<int>(loras_.size()); }
  const std::string& lora_name(int index) const { return loras_.at(index).name; }
  // Adds (merge) or subtracts (unmerge) scale * B A into the base weights: afterwards requests on
  // the base model compute the adapter's function at the base's speed. One adapter merged at a
  // time, unmerged only when merged; while one is merged, forwards must not name adapters and
  // none can be added (each would run on the merged weights).
  void merge_lora(int index);
  void unmerge_lora(int index);
  int merged_lora() const { return merged_; }  // -1: none
  // The fused linear weights by name ("layers.<l>.qkv_w", ...) as this rank holds them (tests).
  std::map<std::string, torch::Tensor> linear_weights() const;

  // Hidden states [T, hidden_size] after the last layer (before the final norm), identical on
  // every rank of the group. Collective over the group (two all-reduces per layer).
  torch::Tensor hidden_states(const ForwardInputs& inputs, AttentionBackend& attention) const;
  // Logits [n, vocab_size] (`dtype`) of hidden-state rows [n, hidden_size]: the final norm and
  // the LM head. Local (no communication).
  torch::Tensor logits(const torch::Tensor& hidden_rows) const;

 private:
  // Weights transposed to [in, out] (y = x @ w); this rank's slices, fused at load.
  struct Layer {
    torch::Tensor input_norm, post_norm;
    torch::Tensor pre_ff_norm, post_ff_norm;  // sandwich_norms (Gemma 2) only
    torch::Tensor qkv_w, qkv_b;               // [hidden, (q + 2 kv) * head_dim] this rank's heads
    torch::Tensor o_w, o_b;                   // [q * head_dim, hidden]; bias added after the reduce
    torch::Tensor gate_up_w, gate_up_b;       // [hidden, 2 * mlp]: gate columns, then up columns
    torch::Tensor down_w, down_b;             // [mlp, hidden]; bias added after the reduce
    // int8 (WeightQuantization::kInt8): q [out, in] int8 and scale [out] of the same weights;
    // the float32 *_w above are then undefined.
    struct Int8 {
      torch::Tensor q, scale;
    };
    Int8 qkv_i8, o_i8, gate_up_i8, down_i8;
  };
  static torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const Layer::Int8& i8,
                              const torch::Tensor& b = {});
  torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w) const;
  torch::Tensor mlp_activation(const torch::Tensor& gate_up) const;
  torch::Tensor all_reduce(torch::Tensor partial, const torch::Tensor& bias) const;
  // y += the LoRA update of module m of layer l for x's rows (no-op without adapters / segments).
  void apply_lora(int64_t l, LoraModule m, torch::Tensor y, const torch::Tensor& x,
                  const ForwardInputs& in) const;
  void merge_lora(int index, double sign);
  void rebuild_lora_stacks();
  // Where module m's output columns sit in its fused weight, and the rank's input slice.
  struct LoraPlace {
    int64_t col = 0, cols = 0;               // output columns (in the fused weight)
    sharding::ShardRange out_rows, in_cols;  // slices of B's rows and A's columns
  };
  LoraPlace lora_place(LoraModule m) const;

  ModelConfig config_;
  ShardLayout layout_;
  sharding::Communicator* comm_ = nullptr;
  torch::Device device_;
  RotaryEmbedding rotary_;
  torch::Tensor embed_, final_norm_;
  torch::Tensor lm_head_;  // [hidden, vocab] (a transposed copy of embed_ when tied)
  WeightQuantization quantization_ = WeightQuantization::kNone;
  torch::ScalarType dtype_ = torch::kFloat;
  Layer::Int8 embed_i8_, lm_i8_;  // int8: embedding rows and LM head (the same tensors when tied)
  std::vector<Layer> layers_;
  // Adapters: this rank's slices (a [r, in_local], b [out_local, r] on the device), per layer and
  // module; and, per layer and module, all adapters stacked for the kernel (undefined when no
  // adapter targets the module).
  struct LocalLora {
    std::string name;
    int64_t r = 0;
    double scale = 0;
    std::vector<std::array<LoraAdapter::Pair, kNumLoraModules>> layers;
  };
  std::vector<LocalLora> loras_;
  std::vector<std::array<kernels::LoraStack, kNumLoraModules>> lora_stacks_;
  int merged_ = -1;  // the merged adapter's index
};

}  // namespace tessera::models
