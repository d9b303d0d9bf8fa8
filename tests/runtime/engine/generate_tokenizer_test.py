"""`tessera generate` on a model folder with a tokenizer, against transformers on the same folder.

The folder is made here: a byte-level BPE tokenizer trained by the `tokenizers` package, wrapped
as a LlamaTokenizerFast with add_bos_token (transformers rebuilds the post-processor from
tokenizer_config.json; tokenizer.json's own post-processor is removed, so the bos can only come
from there), a random LLaMA written by transformers with a vocab_size larger than the
tokenizer's, and a generation_config.json whose eos_token_id list holds a second id that the
greedy path of one prompt reaches. For every prompt (unicode included), `tessera generate
--prompts FILE.jsonl --json` on 1 and 2 ranks must give transformers' prompt ids
(tokenizer(text)), the ids of greedy `generate` (stopping at either eos id) and the text of
tokenizer.decode(ids, skip_special_tokens=True); one request's stop string must cut its text
where the string starts and end its ids at the token that completed it. Exit 77 (skipped)
without the test venv.
"""

import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
try:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM,
                              LlamaTokenizerFast)
except ImportError as e:
    print(f"SKIPPED: the test venv is missing ({e})")
    sys.exit(77)

TESSERA = os.environ["TESSERA_BIN"]
NEW_TOKENS = 12
PROMPTS = ["Hello, wörld!", "emoji 🙂 and 中文 text", "This program is free software",
           "the GNU General Public License", "  spaces  and\ttabs", "x"]


def check(cond, msg):
    if not cond:
        sys.exit("FAIL: " + msg)


def corpus():
    with open("/usr/share/common-licenses/GPL-3", encoding="utf-8") as f:
        return [l for l in f.read().splitlines() if l.strip()]


def make_tokenizer(d):
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(corpus() + PROMPTS, trainers.BpeTrainer(
        vocab_size=600, show_progress=False, special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = LlamaTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>",
                             add_bos_token=True, add_eos_token=False, legacy=False)
    tok.save_pretrained(d)
    path = os.path.join(d, "tokenizer.json")
    with open(path, encoding="utf-8") as f:
        j = json.load(f)
    j["post_processor"] = None  # the bos must come from tokenizer_config.json's add_bos_token
    with open(path, "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False)
    return AutoTokenizer.from_pretrained(d)


def make_model(d, tok):
    torch.manual_seed(7)
    config = LlamaConfig(vocab_size=len(tok) + 8, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, initializer_range=0.2,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         attn_implementation="eager")
    model = LlamaForCausalLM(config).eval()
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
    model.save_pretrained(d, safe_serialization=True)
    return model


def greedy(model, tok, gen_config):
    out = []
    for text in PROMPTS:
        ids = tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            seq = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=NEW_TOKENS, generation_config=gen_config,
                                 pad_token_id=tok.eos_token_id)
        out.append((ids[0].tolist(), seq[0, ids.shape[1]:].tolist()))
    return out


def run(args, np=None):
    cmd = [TESSERA, *args]
    if np:
        cmd = [os.environ.get("MPIEXEC", "mpirun"), "-np", str(np), "--oversubscribe", *cmd]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def main():
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        tok = make_tokenizer(d)
        model = make_model(d, tok)
        check(tok("x").input_ids[0] == tok.bos_token_id, "transformers adds no bos: bad setup")
        # A second eos id in generation_config.json: a token prompt 0's greedy path reaches.
        plain = greedy(model, tok, GenerationConfig.from_pretrained(d))
        extra = plain[0][1][5]
        check(extra != tok.eos_token_id, "bad setup: the model emits eos")
        gc = GenerationConfig.from_pretrained(d)
        gc.eos_token_id = [tok.eos_token_id, extra]
        gc.save_pretrained(d)
        want = greedy(model, tok, GenerationConfig.from_pretrained(d))
        check(len(want[0][1]) == 6, f"transformers did not stop at the extra eos: {want[0][1]}")

        # A stop string inside prompt 2's output: the text is cut where it starts, the ids end
        # with the token that completes it.
        k = 2
        full = tok.decode(want[k][1], skip_special_tokens=True)
        check(len(full) >= 8, f"bad setup: short output {full!r}")
        stop = full[4:7]
        n = next(i for i in range(1, len(want[k][1]) + 1)
                 if stop in tok.decode(want[k][1][:i], skip_special_tokens=True))
        stopped = (want[k][1][:n], full[:full.find(stop)])

        lines = []
        for i, text in enumerate(PROMPTS):
            line = {"prompt": text, "max_tokens": NEW_TOKENS}
            if i == k:
                line["stop"] = [stop]
            lines.append(json.dumps(line, ensure_ascii=False))
        prompts = os.path.join(d, "prompts.jsonl")
        with open(prompts, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

        for np in (1, 2):
            got = json.loads(run(["generate", "--model", d, "--prompts", prompts, "--json",
                                  "--no-progress"], np=np if np > 1 else None))
            for i, (text, r) in enumerate(zip(PROMPTS, got["requests"])):
                prompt_ids, out_ids = want[i]
                expect_text = tok.decode(out_ids, skip_special_tokens=True)
                reason = "stop" if (out_ids and out_ids[-1] in gc.eos_token_id) else "length"
                if i == k:
                    out_ids, expect_text = stopped
                    reason = "stop"
                check(r["prompt_ids"] == prompt_ids,
                      f"np={np} {text!r}: prompt ids {r['prompt_ids']} vs {prompt_ids}")
                check(r["output_ids"] == out_ids,
                      f"np={np} {text!r}: output ids {r['output_ids']} vs {out_ids}")
                check(r["text"] == expect_text,
                      f"np={np} {text!r}: text {r['text']!r} vs {expect_text!r}")
                check(r["finish_reason"] == reason,
                      f"np={np} {text!r}: finish_reason {r['finish_reason']} vs {reason}")
            print(f"np={np}: {len(PROMPTS)} prompts: ids and text equal transformers' (eos list "
                  f"from generation_config.json, stop string {stop!r} after {n} tokens)")
        # --prompt TEXT on the command line.
        got = json.loads(run(["generate", "--model", d, "--prompt", PROMPTS[1], "--max-tokens",
                              str(NEW_TOKENS), "--json", "--no-progress"]))
        r = got["requests"][0]
        check(r["prompt_ids"] == want[1][0] and r["output_ids"] == want[1][1],
              f"--prompt: {r['prompt_ids']} {r['output_ids']} vs {want[1]}")
        check(r["text"] == tok.decode(want[1][1], skip_special_tokens=True), f"--prompt text {r}")
        print("--prompt TEXT: ids and text equal transformers'")


if __name__ == "__main__":
    main()
