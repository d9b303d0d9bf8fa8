"""Random BERT encoders made by transformers (test venv) and PEFT LoRA adapters for them, with PEFT's
own outputs: the outside reference of tests/runtime/models/encoder_lora_test.cpp.

    python encoder_lora_checkpoints.py OUT_DIR

writes OUT_DIR/bert_cls/ (BertForSequenceClassification, 3 labels) and OUT_DIR/bert_plain/
(BertModel), PEFT adapters for them (save_pretrained: adapter_config.json +
adapter_model.safetensors) with lora_A and lora_B drawn at random (PEFT initialises lora_B to
zero, which would make any test pass), a saved classifier (modules_to_save) drawn at random too,
and each adapter's reference outputs in reference.safetensors: PeftModel's logits [B, labels]
(classifiers) or last_hidden_state rows of the packed inputs [T, hidden] (BertModel), float32,
unmerged. Bad adapters: bad_rank (r in the config disagrees with the tensors), bad_target (an
unknown target module), bad_missing (a tensor removed), bad_decoder (a LLaMA adapter's q_proj).
OUT_DIR/manifest.json lists them with the inputs (token ids and types per sequence).
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
from transformers import BertConfig, BertForSequenceClassification, BertModel  # noqa: E402

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
VOCAB = 120
cfg = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
           intermediate_size=128, max_position_embeddings=64, type_vocab_size=2,
           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def perturb(model, g):
    # transformers initialises biases to 0 and LayerNorm weights to 1: move them so that every
    # tensor matters.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "LayerNorm" in n:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


g = torch.Generator().manual_seed(1)
cls_model = BertForSequenceClassification(BertConfig(num_labels=3, **cfg)).eval()
perturb(cls_model, g)
cls_model.save_pretrained(os.path.join(out, "bert_cls"), safe_serialization=True)
plain_model = BertModel(BertConfig(**cfg)).eval()
perturb(plain_model, g)
plain_model.save_pretrained(os.path.join(out, "bert_plain"), safe_serialization=True)

inputs = []
for i in range(7):
    n = int(torch.randint(3, 40, (1,), generator=g))
    inputs.append({"ids": torch.randint(0, VOCAB, (n,), generator=g).tolist(),
                   "types": (torch.arange(n) >= n // 2).long().tolist()})


def padded():
    width = max(len(x["ids"]) for x in inputs)
    ids = torch.zeros(len(inputs), width, dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for i, x in enumerate(inputs):
        ids[i, :len(x["ids"])] = torch.tensor(x["ids"])
        types[i, :len(x["ids"])] = torch.tensor(x["types"])
        mask[i, :len(x["ids"])] = 1
    return ids, types, mask


ADAPTERS = [
    # SEQ_CLS: PEFT adds classifier (and score, absent in BERT) to modules_to_save; "dense"
    # targets the attention output, intermediate, output and pooler linears.
    ("cls_all", "bert_cls", dict(task_type="SEQ_CLS", r=8, lora_alpha=16,
                                 target_modules=["query", "key", "value", "dense"])),
    ("cls_rslora_qv", "bert_cls", dict(task_type="SEQ_CLS", r=4, lora_alpha=8, use_rslora=True,
                                       target_modules=["query", "value"],
                                       layers_to_transform=[1])),
    ("cls_regex", "bert_cls",
     dict(r=2, lora_alpha=4, modules_to_save=["classifier"],
          target_modules=r"bert\.encoder\.layer\.0\.(intermediate\.dense|attention\.self\.key)")),
    ("plain_qv_out", "bert_plain", dict(r=6, lora_alpha=12,
                                        target_modules=["query", "value", "output.dense"])),
]
manifest = {"inputs": inputs, "adapters": [], "bad": []}
for i, (name, base, kw) in enumerate(ADAPTERS):
    model = cls_model if base == "bert_cls" else plain_model
    peft = get_peft_model(copy.deepcopy(model), LoraConfig(lora_dropout=0.0, **kw)).eval()
    gi = torch.Generator().manual_seed(100 + i)
    with torch.no_grad():
        for pname, p in peft.named_parameters():
            if "lora_" in pname or "modules_to_save" in pname:
                p.copy_(torch.randn(p.shape, generator=gi) * 0.05 +
                        (0 if "lora_" in pname else p))
    d = os.path.join(out, name)
    peft.save_pretrained(d, safe_serialization=True)
    ids, types, mask = padded()
    with torch.no_grad():
        o = peft(input_ids=ids, token_type_ids=types, attention_mask=mask)
    if base == "bert_cls":
        ref = {"logits": o.logits.float().contiguous()}
    else:
        rows = [o.last_hidden_state[b, :len(x["ids"])] for b, x in enumerate(inputs)]
        ref = {"states": torch.cat(rows).float().contiguous()}
    save_file(ref, os.path.join(d, "reference.safetensors"))
    manifest["adapters"].append({"name": name, "base": base})


def bad(name, edit_config=None, edit_tensors=None):
    d = os.path.join(out, name)
    shutil.copytree(os.path.join(out, "cls_all"), d, dirs_exist_ok=True)
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
bad("bad_target", edit_config=lambda c: c.update(target_modules=["query", "foo"]))
bad("bad_missing", edit_tensors=lambda t: t.pop(
    "base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight"))
bad("bad_decoder", edit_config=lambda c: c.update(target_modules=["q_proj", "v_proj"]))
with open(os.path.join(out, "manifest.json"), "w") as f:
    json.dump(manifest, f)
