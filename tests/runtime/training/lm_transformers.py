#!/usr/bin/env python3
"""A checkpoint written by `tessera train --model lm` loads in Hugging Face transformers
(Qwen2ForCausalLM through AutoModelForCausalLM, offline) and gives the logits Tessera gave for the
same tokens within 1e-4.

Usage (the test venv's python): lm_transformers.py CHECKPOINT_DIR EXPECTED.safetensors
"""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402


def main():
    ckpt, expected = sys.argv[1], sys.argv[2]
    model = AutoModelForCausalLM.from_pretrained(ckpt, torch_dtype=torch.float32)
    model.eval()
    e = load_file(expected)
    tokens, ours = e["tokens"].long(), e["logits"].float()
    with torch.no_grad():
        theirs = model(tokens).logits.float()
    diff = (theirs - ours).abs().max().item()
    print(f"{type(model).__name__}: logits {tuple(theirs.shape)}, max |transformers - tessera| = {diff:.3e}")
    if theirs.shape != ours.shape or diff > 1e-4:
        print("FAILED")
        sys.exit(1)
    print("PASSED")


if __name__ == "__main__":
    main()
