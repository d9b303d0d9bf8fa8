"""Random checkpoints made by Hugging Face transformers (4.44, the test venv), and transformers'
own logits and greedy tokens for them: the outside reference of tests/runtime/engine.

    python hf_checkpoints.py OUT_DIR

writes OUT_DIR/<name>/ (config.json, model.safetensors as save_pretrained writes them) for every
model below, and for the float32 ones OUT_DIR/<name>/reference.safetensors with, per prompt k:
prompt.k [T] int64, logits.k [T, vocab] float32 (eager attention, one forward over the prompt),
greedy.k [N] int64 (generate, do_sample=False) and margin.k (the smallest top-1 / top-2 logit gap
along the greedy path). OUT_DIR/manifest.json lists them. transformers 4.44 applies Qwen2's
sliding window only under flash-attention, so it is masked here by hand for the layers >=
max_window_layers. One process makes everything (importing transformers is the slow part).
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
VOCAB = 384
PROMPT_LENS = (5, 17, 40)
NEW_TOKENS = 8


def common(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                rms_norm_eps=1e-6, initializer_range=0.2, bos_token_id=None, eos_token_id=None,
                pad_token_id=None, attn_implementation="eager")
    base.update(kw)
    return base


MODELS = [
    # name, class, config, dtype, reference
    ("llama_bias_tied", LlamaForCausalLM,
     LlamaConfig(**common(attention_bias=True, mlp_bias=True, tie_word_embeddings=True)),
     torch.float32, True),
    ("llama_linear", LlamaForCausalLM,
     LlamaConfig(**common(num_key_value_heads=4, rope_scaling={"type": "linear", "factor": 2.0})),
     torch.float32, True),
    ("llama_llama3", LlamaForCausalLM,
     LlamaConfig(**common(rope_theta=500000.0,
                          rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 64})),
     torch.float32, True),
    ("llama_dynamic", LlamaForCausalLM,
     LlamaConfig(**common(max_position_embeddings=32,
                          rope_scaling={"rope_type": "dynamic", "factor": 2.0})),
     torch.float32, True),
    ("llama_yarn", LlamaForCausalLM,
     LlamaConfig(**common(max_position_embeddings=64,
                          rope_scaling={"rope_type": "yarn", "factor": 4.0})),
     torch.float32, True),
    ("mistral_window", MistralForCausalLM,
     MistralConfig(**common(num_key_value_heads=1, sliding_window=8, head_dim=16)),
     torch.float32, True),
    ("qwen2_partial", Qwen2ForCausalLM,
     Qwen2Config(**common(num_hidden_layers=3, use_sliding_window=True, sliding_window=8,
                          max_window_layers=1)),
     torch.float32, True),
    ("llama_bf16", LlamaForCausalLM, LlamaConfig(**common(attention_bias=True)), torch.bfloat16,
     False),
    ("llama_fp16", LlamaForCausalLM, LlamaConfig(**common()), torch.float16, False),
]


def randomise(model, seed):
    """transformers zeroes biases and sets norms to 1: give every tensor values that matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            elif "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))


def window_layers(model, config):
    """Qwen2's sliding window on layers >= max_window_layers, as vLLM and flash-attention apply
    it: a key at position p is visible to a query at t when t - p < window."""
    window = config.sliding_window
    for i, layer in enumerate(model.model.layers):
        if i < config.max_window_layers:
            continue
        attn = layer.self_attn
        orig = attn.forward

        def forward(hidden_states, attention_mask=None, position_ids=None, _orig=orig, **kw):
            q = position_ids[0]
            k_len = attention_mask.shape[-1] if attention_mask is not None else int(q[-1]) + 1
            k = torch.arange(k_len)
            far = (q[:, None] - k[None, :]) >= window
            if attention_mask is None:
                attention_mask = torch.zeros(1, 1, len(q), k_len)
                attention_mask.masked_fill_(k[None, :] > q[:, None], torch.finfo(torch.float32).min)
            attention_mask = attention_mask.masked_fill(far[None, None],
                                                        torch.finfo(attention_mask.dtype).min)
            return _orig(hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                         **kw)

        attn.forward = forward


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    manifest = []
    for seed, (name, cls, config, dtype, reference) in enumerate(MODELS):
        torch.manual_seed(1000 + seed)
        model = cls(config).eval()
        randomise(model, 2000 + seed)
        folder = os.path.join(out, name)
        model.to(dtype).save_pretrained(folder, safe_serialization=True)
        entry = {"name": name, "dir": folder, "dtype": str(dtype).replace("torch.", ""),
                 "num_key_value_heads": config.num_key_value_heads, "reference": reference}
        if reference:
            model = model.float()
            if name.startswith("qwen2"):
                window_layers(model, config)
            tensors = {}
            g = torch.Generator().manual_seed(3000 + seed)
            for k, n in enumerate(PROMPT_LENS):
                ids = torch.randint(0, VOCAB, (1, n), generator=g)
                with torch.no_grad():
                    logits = model(ids).logits[0].float()
                    gen = model.generate(ids, attention_mask=torch.ones_like(ids),
                                         max_new_tokens=NEW_TOKENS, do_sample=False,
                                         output_scores=True, return_dict_in_generate=True,
                                         eos_token_id=None, pad_token_id=0)
                margin = min(float(s[0].topk(2).values[0] - s[0].topk(2).values[1])
                             for s in gen.scores)
                tensors[f"prompt.{k}"] = ids[0].to(torch.int64).contiguous()
                tensors[f"logits.{k}"] = logits.contiguous()
                tensors[f"greedy.{k}"] = gen.sequences[0, n:].to(torch.int64).contiguous()
                tensors[f"margin.{k}"] = torch.tensor([margin], dtype=torch.float32)
            save_file(tensors, os.path.join(folder, "reference.safetensors"))
            entry["prompts"] = len(PROMPT_LENS)
        manifest.append(entry)
        print(f"{name}: {entry['dtype']}, reference={reference}", flush=True)
    with open(os.path.join(out, "manifest.json.tmp"), "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(os.path.join(out, "manifest.json.tmp"), os.path.join(out, "manifest.json"))


if __name__ == "__main__":
    main()
