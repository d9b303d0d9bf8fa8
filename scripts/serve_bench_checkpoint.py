#!/usr/bin/env python3
"""The checkpoint of `tessera bench serve`: a random LLaMA written twice, as a Hugging Face folder
(config.json + model.safetensors, vocab = 256 bytes + <s> + </s>, no tokenizer.json, so Tessera
serves it with its byte tokenizer) and as an F32 GGUF written with the `gguf` package for
llama.cpp's server (the same tensors; q/k rows permuted to llama.cpp's rotary layout, as
llama.cpp's convert_hf_to_gguf.py does; a byte-level "gpt2" vocabulary whose ids are the bytes, so
both servers see the same prompt ids).

    python serve_bench_checkpoint.py OUT_DIR [hidden layers]

writes OUT_DIR/model/ and OUT_DIR/model-f32.gguf; prints one JSON line (parameters, paths).
"""
import json
import os
import sys

import gguf
import numpy as np
from safetensors.numpy import save_file


def bytes_to_unicode():
    """GPT-2's byte -> printable character map (what byte-level BPE vocabularies store)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def permute(w, n_head):  # HF's rotate-half q/k rows -> llama.cpp's interleaved pairs
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def main():
    out = sys.argv[1]
    hidden = int(sys.argv[2]) if len(sys.argv) > 2 else 512
    layers = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    heads, kv_heads = max(1, hidden // 64), max(1, hidden // 128)
    head_dim = hidden // heads
    inter = int(hidden * 2.75) // 64 * 64
    vocab, ctx, eps, theta = 258, 2048, 1e-5, 10000.0
    rng = np.random.default_rng(0)

    def lin(o, i):
        return (rng.standard_normal((o, i)) * (1.5 / np.sqrt(i))).astype(np.float32)

    t = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden)).astype(np.float32),
         "model.norm.weight": np.ones(hidden, np.float32),
         "lm_head.weight": lin(vocab, hidden)}
    # Output rows only for printable ASCII (the others' logits are 0, below the best of 95
    # printable ones): generated text is one character per token on both servers, so their streams
    # and texts compare directly (invalid UTF-8 would be shown differently).
    t["lm_head.weight"][[i for i in range(vocab) if not 32 <= i < 127]] = 0
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = np.ones(hidden, np.float32)
        t[p + "post_attention_layernorm.weight"] = np.ones(hidden, np.float32)
        t[p + "self_attn.q_proj.weight"] = lin(heads * head_dim, hidden)
        t[p + "self_attn.k_proj.weight"] = lin(kv_heads * head_dim, hidden)
        t[p + "self_attn.v_proj.weight"] = lin(kv_heads * head_dim, hidden)
        t[p + "self_attn.o_proj.weight"] = lin(hidden, heads * head_dim)
        t[p + "mlp.gate_proj.weight"] = lin(inter, hidden)
        t[p + "mlp.up_proj.weight"] = lin(inter, hidden)
        t[p + "mlp.down_proj.weight"] = lin(hidden, inter)

    mdir = os.path.join(out, "model")
    os.makedirs(mdir, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
              "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
              "num_attention_heads": heads, "num_key_value_heads": kv_heads,
              "max_position_embeddings": ctx, "rms_norm_eps": eps, "rope_theta": theta,
              "hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": 256,
              "eos_token_id": 257, "torch_dtype": "float32"}
    with open(os.path.join(mdir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    save_file(t, os.path.join(mdir, "model.safetensors"), metadata={"format": "pt"})

    path = os.path.join(out, "model-f32.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tessera-bench-serve")
    w.add_context_length(ctx)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(eps)
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    b2u = bytes_to_unicode()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([b2u[b] for b in range(256)] + ["<s>", "</s>"])
    w.add_token_types([gguf.TokenType.NORMAL] * 256 + [gguf.TokenType.CONTROL] * 2)
    # No merge ever applies to the bench's prompts (gguf skips an empty list; llama.cpp needs the
    # key): two NUL bytes.
    w.add_token_merges([b2u[0] + " " + b2u[0]])
    w.add_bos_token_id(256)
    w.add_eos_token_id(257)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    w.add_tensor("token_embd.weight", t["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", t["model.norm.weight"])
    w.add_tensor("output.weight", t["lm_head.weight"])
    for i in range(layers):
        for hf, gg in names.items():
            x = t[f"model.layers.{i}.{hf}.weight"]
            if hf == "self_attn.q_proj":
                x = permute(x, heads)
            elif hf == "self_attn.k_proj":
                x = permute(x, kv_heads)
            w.add_tensor(f"blk.{i}.{gg}.weight", np.ascontiguousarray(x))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    params = sum(v.size for v in t.values())
    print(json.dumps({"model_dir": mdir, "gguf": path, "params": int(params), "hidden": hidden,
                      "layers": layers, "heads": heads, "kv_heads": kv_heads,
                      "intermediate": inter, "vocab": vocab}))


if __name__ == "__main__":
    main()
