"""Writes a random LLaMA checkpoint in float32 (config.json + model.safetensors), for the
streamed-loading memory test: usage make_llama_checkpoint.py OUT_DIR. About 486 MB."""
import json
import os
import sys

import torch
from safetensors.torch import save_file

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
vocab, hidden, inter, layers, heads, kv_heads = 32000, 1024, 2816, 5, 16, 4
head_dim = hidden // heads
config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
          "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
          "num_attention_heads": heads, "num_key_value_heads": kv_heads,
          "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
          "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "float32",
          "bos_token_id": 1, "eos_token_id": 2}
torch.manual_seed(0)
t = {"model.embed_tokens.weight": torch.randn(vocab, hidden) * 0.02,
     "model.norm.weight": torch.ones(hidden),
     "lm_head.weight": torch.randn(vocab, hidden) * 0.02}
for i in range(layers):
    p = "model.layers.%d." % i
    t[p + "input_layernorm.weight"] = torch.ones(hidden)
    t[p + "post_attention_layernorm.weight"] = torch.ones(hidden)
    t[p + "self_attn.q_proj.weight"] = torch.randn(heads * head_dim, hidden) * 0.02
    t[p + "self_attn.k_proj.weight"] = torch.randn(kv_heads * head_dim, hidden) * 0.02
    t[p + "self_attn.v_proj.weight"] = torch.randn(kv_heads * head_dim, hidden) * 0.02
    t[p + "self_attn.o_proj.weight"] = torch.randn(hidden, heads * head_dim) * 0.02
    t[p + "mlp.gate_proj.weight"] = torch.randn(inter, hidden) * 0.02
    t[p + "mlp.up_proj.weight"] = torch.randn(inter, hidden) * 0.02
    t[p + "mlp.down_proj.weight"] = torch.randn(hidden, inter) * 0.02
save_file(t, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(config, f)
