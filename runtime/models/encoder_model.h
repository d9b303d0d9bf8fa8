// A BERT / ModernBERT encoder over a packed batch: the sequences are concatenated without padding
// and cu_seqlens marks where each begins, so a batch of mixed lengths costs its real tokens. Split
// tensor-parallel like the decoder: each rank holds its share of the attention heads (fused
// q/k/v column-parallel, the output projection row-parallel) and of the MLP (column-parallel up /
// GeGLU halves, row-parallel down); the partial outputs are all-reduced, so every rank ends with
// the same token states. Embeddings, norms and the classification head are replicated. What
// differs between the families (positions, norm placement, biases, MLP shape, per-layer windows
// and rope bases) is data in EncoderConfig; the attention is an EncoderAttention (dense varlen or
// cluster).
#pragma once

#include <torch/types.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/ops/lora_ops.h"
#include "runtime/models/encoder_config.h"
#include "runtime/models/encoder_lora.h"
#include "runtime/models/layers/encoder_attention.h"
#include "runtime/models/layers/rotary_embedding.h"
#include "runtime/models/weights.h"
#include "sharding/communicator.h"
#include "sharding/tensor_parallel.h"

namespace tessera::models {

// One forward's sequences, packed.
struct EncoderBatch {
  torch::Tensor tokens;       // [T] int64
  torch::Tensor token_types;  // [T] int64 (zeros when the inputs have none)
  torch::Tensor positions;    // [T] int64: each token's index within its sequence
  torch::Tensor cu_seqlens;   // [B + 1] int32 on the CPU
  // LoRA without merging (optional): sequence s uses adapter lora_ids[s] (an add_lora index, -1 =
  // the base model), int32 [B] on the CPU. Undefined = every sequence on the base model.
  torch::Tensor lora_ids;
  int64_t num_seqs() const { return cu_seqlens.numel() - 1; }

  // `types` empty, or one list per sequence of the same lengths as `ids`.
  static EncoderBatch pack(const std::vector<std::vector<int32_t>>& ids,
                           const std::vector<std::vector<int32_t>>& types = {});
};

class EncoderModel {
 public:
  // `tp` spans the tensor-parallel group (null or size 1: the whole model here). Reads this
  // rank's slices of the weights into float32 on `device`; throws naming the tensor when the
  // checkpoint lacks one, has it in another shape, or holds one the config does not use.
  EncoderModel(const EncoderConfig& config, const WeightLoader& weights, sharding::Communicator* tp,
               torch::Device device = torch::kCPU);

  const EncoderConfig& config() const { return config_; }
  torch::Device device() const { return device_; }
  int64_t weight_bytes() const;
  // Swaps the attention (dense / cluster) without reloading.
  void set_attention(const EncoderAttentionChoice& choice);

  // Token states [T, hidden_size] float32 after the last layer (ModernBERT: after its final
  // norm), identical on every rank of the group. Collective (two all-reduces per layer). Throws
  // naming the input when a token id, token type or length is out of the model's range.
  torch::Tensor forward(const EncoderBatch& batch) const;
  // Classifier logits [B, num_labels] from forward()'s states: BERT's pooler + classifier, or
  // ModernBERT's head (over the first token or the mean) + classifier. Local.
  torch::Tensor classify(const torch::Tensor& states, const EncoderBatch& batch) const;

  // LoRA (encoder_lora.h; BERT). add_lora takes this rank's slices of an adapter validated against
  // the config and returns its index for EncoderBatch::lora_ids: the sequences of a batch may name
  // different adapters (or none), applied unmerged through the segmented LoRA kernel
  // (kernels/lora) with the batch's sequences as segments; a saved classifier / pooler
  // (modules_to_save) replaces the head for that adapter's sequences.
  int add_lora(const EncoderLoraAdapter& adapter);
  int num_loras() const { return static_cast<int>(loras_.size()); }
  // Adds (removes) scale * B A to the targeted weights in float64, rounded once to float32, and
  // swaps in (back out) the saved modules; one adapter merged at a time. While merged, batches
  // run the merged model and must not name adapters.
  void merge_lora(int index);
  void unmerge_lora(int index);
  int merged_lora() const { return merged_; }
  // This rank's weights an adapter can change, by name (tests).
  std::map<std::string, torch::Tensor> lora_weights() const;

 private:
  struct Layer {
    torch::Tensor attn_norm_w, attn_norm_b;  // pre-norm (ModernBERT; absent on layer 0) or BERT's
                                             // post-attention LayerNorm
    torch::Tensor qkv_w, qkv_b;              // [hidden, 3 * local heads * head_dim] (input-major)
    torch::Tensor o_w, o_b;                  // [local heads * head_dim, hidden]; bias after reduce
    torch::Tensor mlp_norm_w, mlp_norm_b;    // pre-norm (ModernBERT) or BERT's output LayerNorm
    torch::Tensor up_w, up_b;                // [hidden, local mlp] or GeGLU [hidden, 2 * local mlp]
    torch::Tensor down_w, down_b;            // [local mlp, hidden]; bias after reduce
  };
  torch::Tensor norm(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) const;
  torch::Tensor activation(const torch::Tensor& x, Activation act) const;
  torch::Tensor all_reduce(torch::Tensor partial, const torch::Tensor& bias) const;
  void check_inputs(const EncoderBatch& batch) const;
  void check_lora_ids(const EncoderBatch& batch) const;

  EncoderConfig config_;
  sharding::Communicator* tp_ = nullptr;
  torch::Device device_;
  sharding::ShardRange heads_, mlp_;
  std::unique_ptr<EncoderAttention> attention_;
  // Embeddings.
  torch::Tensor word_, position_, token_type_, emb_norm_w_, emb_norm_b_;
  std::vector<Layer> layers_;
  torch::Tensor final_norm_w_, final_norm_b_;
  // Rotary tables, one per distinct theta; layer_rope_[l] indexes ropes_ (rotary models only).
  std::vector<RotaryEmbedding> ropes_;
  std::vector<int> layer_rope_;
  // Classification head.
  torch::Tensor pool_w_, pool_b_;            // BERT pooler / ModernBERT head.dense [hidden, hidden]
  torch::Tensor head_norm_w_, head_norm_b_;  // ModernBERT head.norm
  torch::Tensor cls_w_, cls_b_;              // classifier [hidden, num_labels], [num_labels]

  // LoRA: where module m's update lands (the input-major weight, its columns [col, col + cols)),
  // and the rows of B / columns of A this rank holds.
  struct LoraPlace {
    int64_t col, cols;
    sharding::ShardRange out_rows, in_cols;
  };
  LoraPlace lora_place(EncoderLoraModule m) const;
  torch::Tensor& lora_weight(size_t layer, EncoderLoraModule m);
  struct LocalLora {
    std::string name;
    int64_t r = 0;
    double scale = 0;
    std::vector<std::array<EncoderLoraAdapter::Pair, kNumEncoderLoraModules>> layers;
    EncoderLoraAdapter::Pair pooler;
    torch::Tensor classifier_w, classifier_b, pooler_w, pooler_b;  // input-major, on the device
  };
  void rebuild_lora_stacks();
  // y += the update of (layer, module) for the rows of x; segments = the batch's sequences.
  void apply_lora(const kernels::LoraStack& stack, torch::Tensor y, const torch::Tensor& x,
                  const torch::Tensor& indptr, const torch::Tensor& ids) const;
  void merge_lora(int index, double sign);
  std::vector<LocalLora> loras_;
  std::vector<std::array<kernels::LoraStack, kNumEncoderLoraModules>> lora_stacks_;
  kernels::LoraStack pooler_stack_;
  int merged_ = -1;
  torch::Tensor unmerged_cls_w_, unmerged_cls_b_, unmerged_pool_w_, unmerged_pool_b_;
};

}  // namespace tessera::models
