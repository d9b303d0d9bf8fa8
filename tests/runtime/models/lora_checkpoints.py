"""A random LLaMA made by transformers (test venv) and PEFT LoRA adapters for it, with PEFT's own
logits: the outside reference of tests/runtime/models/lora_test.cpp.

    python lora_checkpoints.py OUT_DIR

writes OUT_DIR/base/ (save_pretrained, float32), OUT_DIR/<adapter>/ (peft save_pretrained:
adapter_config.json + adapter_model.safetensors) with reference.safetensors (prompt [T] int64,
logits [T, vocab] float32 of PeftModel, unmerged, eager attention; greedy [8] int64, PEFT's
generate), OUT_DIR/mixed_fp64.safetensors (PeftModel's logits in float64 for the mixed-batch
test's requests), OUT_DIR/mixed_peft_fp32.safetensors (the same requests through PeftModel in
float32, unmerged and merged), OUT_DIR/wide/ and OUT_DIR/trained_*/ (more LLaMAs for the int8
tests, with their torch-quantised copies *_fq/), bad adapters (bad_rank: the config's r disagrees
with the tensors; bad_target: an unknown target module; bad_missing: a tensor removed) and
OUT_DIR/manifest.json.
"""
import copy
import json
import os
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

NEW_TOKENS = 8
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                     rms_norm_eps=1e-6, initializer_range=0.2, bos_token_id=None,
                     eos_token_id=None, pad_token_id=None, attn_implementation="eager")
base = LlamaForCausalLM(config).eval()
base.save_pretrained(os.path.join(out, "base"), safe_serialization=True)

# For the int8 tests: a wider random LLaMA (hidden 128), untied.
torch.manual_seed(1)
wide = LlamaForCausalLM(LlamaConfig(
    vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6,
    initializer_range=0.1, bos_token_id=None, eos_token_id=None, pad_token_id=None)).eval()
wide.save_pretrained(os.path.join(out, "wide"), safe_serialization=True)


# Trained checkpoints for the int8 tests: random weights give near-flat logits (top-1 / top-2
# margins below the int8 logit error), where greedy decoding follows noise; a model trained a few
# hundred steps on text (byte-level, Python standard library sources: present wherever the venv
# is) has the margins of what users quantise. Then <name>_fq/: each checkpoint with its 2-D weights
# (linears, embedding, LM head) quantised per output channel, symmetric (scale = absmax / 127 in
# float32, q = round-half-even of w / scale computed in float64, clamped to [-127, 127]) and stored
# as q * scale: the independent reference of Tessera's int8 arithmetic.
def train_bytes(model, steps, seq=64, batch=8, lr=3e-3):
    import inspect
    import argparse
    import json.decoder
    import string
    import textwrap
    text = "".join(inspect.getsource(m) for m in [json.decoder, textwrap, argparse, string])
    data = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, data.numel() - seq - 1, (batch,), generator=g)
        x = torch.stack([data[i:i + seq] for i in idx])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), float(loss)


INT8 = {"base": base, "wide": wide}
for name, h, inter, vocab in [("trained_base", 64, 128, 256), ("trained_wide", 128, 256, 512)]:
    torch.manual_seed(2)
    m = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=h, intermediate_size=inter, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-6, bos_token_id=None, eos_token_id=None, pad_token_id=None))
    INT8[name], _ = train_bytes(m, 200)
    INT8[name].save_pretrained(os.path.join(out, name), safe_serialization=True)
fake_quant_off = {}
for name, m in INT8.items():
    fq = copy.deepcopy(m)
    off = 0
    with torch.no_grad():
        for p in fq.parameters():
            if p.dim() == 2:
                scale = p.abs().amax(1) / 127  # float32, as the scheme defines it
                # Round to nearest (even) of the exact quotient w / scale, in float64.
                q = torch.round(p.double() / scale.double().unsqueeze(1)).clamp(-127, 127)
                zero = torch.zeros(scale.shape, dtype=torch.int32)
                torch_fq = torch.fake_quantize_per_channel_affine(p, scale, zero, 0, -127, 127)
                p.copy_((q * scale.double().unsqueeze(1)).float())
                # torch's fake quantisation multiplies by the float32 reciprocal of the scale, which
                # lands some quotients just above k + 0.5 on the tie itself: counted, for the report.
                off += int((torch_fq != p).sum())
    fake_quant_off[name] = off
    fq.save_pretrained(os.path.join(out, name + "_fq"), safe_serialization=True)

ADAPTERS = [
    ("qv", dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])),
    ("all_rslora", dict(r=4, lora_alpha=8, use_rslora=True,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                        "up_proj", "down_proj"])),
    ("mlp", dict(r=16, lora_alpha=8, target_modules=["k_proj", "up_proj", "down_proj"])),
    ("regex_layer1", dict(r=2, lora_alpha=4,
                          target_modules=r"model\.layers\.1\.(self_attn\.o_proj|mlp\.gate_proj)")),
    # Module paths as list entries: PEFT selects the modules whose path equals an entry or ends
    # with "." + entry, so q_proj of layer 0 only, up_proj of layer 1 only, v_proj of both.
    ("layer_paths", dict(r=4, lora_alpha=8,
                         target_modules=["model.layers.0.self_attn.q_proj",
                                         "layers.1.mlp.up_proj", "v_proj"])),
]
manifest = {"base": "base", "vocab_size": config.vocab_size, "adapters": [], "bad": [],
            "fake_quant_off": fake_quant_off}
for i, (name, kw) in enumerate(ADAPTERS):
    model = get_peft_model(copy.deepcopy(base), LoraConfig(lora_dropout=0.0, **kw)).eval()
    g = torch.Generator().manual_seed(100 + i)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_" in pname:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    d = os.path.join(out, name)
    model.save_pretrained(d, safe_serialization=True)
    prompt = torch.randint(0, config.vocab_size, (7 + 5 * i,), generator=g)
    with torch.no_grad():
        logits = model(prompt.unsqueeze(0)).logits[0].float()
        greedy = model.generate(input_ids=prompt.unsqueeze(0), max_new_tokens=NEW_TOKENS,
                                do_sample=False, min_new_tokens=NEW_TOKENS)[0, prompt.numel():]
    save_file({"prompt": prompt.to(torch.int64), "logits": logits.contiguous(),
               "greedy": greedy.to(torch.int64).contiguous()},
              os.path.join(d, "reference.safetensors"))
    manifest["adapters"].append(name)


# float64 references for the mixed-batch test (lora_test.cpp's MixedBatch...: the same prompts):
# each request's logits by PeftModel in float64 (unmerged; float64 rounding is ~1e-16), so that
# the float32 merged model and the float32 unmerged batch can each be measured against it.
# transformers' LLaMA computes RMSNorm and the eager attention softmax in float32 whatever the
# model's dtype (a float64 model rounds through float32 there, ~3e-6 in these logits): for this
# reference both run in the input's dtype. The rotary angles stay float32, as transformers (and
# Tessera) compute them for every dtype.
MIXED_IDS = [2, -1, 0, 3, 1, 0]
fp64 = {}
import contextlib  # noqa: E402
import transformers.models.llama.modeling_llama as modeling_llama  # noqa: E402


@contextlib.contextmanager
def in_input_dtype():
    norm_forward, softmax = modeling_llama.LlamaRMSNorm.forward, torch.nn.functional.softmax

    def norm(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) +
                                              self.variance_epsilon))

    def soft(x, dim=None, dtype=None, **kw):
        return softmax(x, dim=dim, dtype=None if x.dtype == torch.float64 else dtype, **kw)

    modeling_llama.LlamaRMSNorm.forward, torch.nn.functional.softmax = norm, soft
    try:
        yield
    finally:
        modeling_llama.LlamaRMSNorm.forward, torch.nn.functional.softmax = norm_forward, softmax


for i, a in enumerate(MIXED_IDS):
    n = 3 + 4 * i
    prompt = (torch.arange(n, dtype=torch.long) * 37 + 11 * i + 5) % config.vocab_size
    if a < 0:
        model = copy.deepcopy(base).double()
    else:
        from peft import PeftModel
        model = PeftModel.from_pretrained(copy.deepcopy(base), os.path.join(out, ADAPTERS[a][0]))
        model = model.double()
    # LlamaForCausalLM returns its logits as float32: the LM head applied here, in float64.
    core = model.get_base_model() if a >= 0 else model
    with torch.no_grad(), in_input_dtype():
        hidden = core.eval().model(prompt.unsqueeze(0)).last_hidden_state
        fp64["request%d" % i] = core.lm_head(hidden)[0].contiguous()
    assert fp64["request%d" % i].dtype == torch.float64
save_file(fp64, os.path.join(out, "mixed_fp64.safetensors"))

# The same requests through PEFT in float32, unmerged and merged (merge_and_unload): how far the
# reference implementation's own two float32 paths are apart, beside Tessera's batch vs merged.
fp32 = {}
for i, a in enumerate(MIXED_IDS):
    if a < 0:
        continue
    n = 3 + 4 * i
    prompt = (torch.arange(n, dtype=torch.long) * 37 + 11 * i + 5) % config.vocab_size
    from peft import PeftModel
    model = PeftModel.from_pretrained(copy.deepcopy(base), os.path.join(out, ADAPTERS[a][0]))
    with torch.no_grad():
        fp32["unmerged%d" % i] = model.eval()(prompt.unsqueeze(0)).logits[0].contiguous()
        fp32["merged%d" % i] = model.merge_and_unload()(prompt.unsqueeze(0)).logits[0].contiguous()
    assert fp32["merged%d" % i].dtype == torch.float32
save_file(fp32, os.path.join(out, "mixed_peft_fp32.safetensors"))


def bad(name, edit_config=None, edit_tensors=None):
    d = os.path.join(out, name)
    shutil.copytree(os.path.join(out, "qv"), d, dirs_exist_ok=True)
    if edit_config:
        with open(os.path.join(d, "adapter_config.json")) as f:
            c = json.load(f)
        edit_config(c)
        with open(os.path.join(d, "adapter_config.json"), "w") as f:
            json.dump(c, f)
    if edit_tensors:
        t = load_file(os.path.join(d, "adapter_model.safetensors"))
        edit_tensors(t)
        save_file(t, os.path.join(d, "adapter_model.safetensors"))
    manifest["bad"].append(name)


bad("bad_rank", edit_config=lambda c: c.update(r=4))
bad("bad_target", edit_config=lambda c: c.update(target_modules=["q_proj", "foo_proj"]))
bad("bad_missing",
    edit_tensors=lambda t: t.pop("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"))
with open(os.path.join(out, "manifest.json"), "w") as f:
    json.dump(manifest, f)
