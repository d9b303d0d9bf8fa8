"""Writes base and fine-tuned checkpoints for the delta tests: a random LLaMA made by Hugging
Face transformers (saved with save_pretrained, safetensors), then trained for a few Adam steps on
random tokens, as a fine-tune changes every weight a little.

usage: make_checkpoints.py OUT_DIR [--hidden N] [--layers N] [--vocab N] [--steps N] [--lr X]
                           [--seed N] [--variants float32,bfloat16,bfloat16:1 ...]
Writes OUT_DIR/<variant>/base and OUT_DIR/<variant>/tuned for each variant, a dtype with an
optional ":<shard MB>" (sharded through model.safetensors.index.json; the variant's folder is
named dtype_sharded). Prints one JSON line (sizes, largest tensor bytes).
"""
import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", default="float32")
    a = p.parse_args()
    torch.manual_seed(a.seed)
    cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.hidden * 11 // 4,
                      num_hidden_layers=a.layers, num_attention_heads=max(1, a.hidden // 64),
                      num_key_value_heads=max(1, a.hidden // 128), max_position_embeddings=256,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    variants = []
    for v in a.variants.split(","):
        dtype, _, shard = v.partition(":")
        name = dtype + ("_sharded" if shard else "")
        variants.append((name, getattr(torch, dtype), f"{shard}MB" if shard else "100GB"))

    def save(which):
        for name, dtype, shard in variants:
            copy = LlamaForCausalLM(cfg)
            copy.load_state_dict(model.state_dict())
            copy.to(dtype).save_pretrained(os.path.join(a.out, name, which),
                                           safe_serialization=True, max_shard_size=shard)

    save("base")
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    for _ in range(a.steps):
        ids = torch.randint(0, a.vocab, (4, 32))
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    save("tuned")
    sizes = {k: v.numel() * v.element_size() for k, v in model.state_dict().items()}
    print(json.dumps({"tensors": len(sizes), "bytes": sum(sizes.values()),
                      "largest_tensor_bytes": max(sizes.values())}))


if __name__ == "__main__":
    sys.exit(main())
