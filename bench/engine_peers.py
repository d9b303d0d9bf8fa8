"""The peers of `tessera bench engine`, measured in the same run: Hugging Face transformers
generate() (batched, left-padded, greedy) and CTranslate2 Generator.generate_batch (the same
checkpoint converted with ctranslate2's transformers converter, float32, no int8), on the same
threads. The bench drives this process over stdin/stdout, one JSON command per line, so that its
rounds interleave with Tessera's:

  {"cmd": "load", "model": DIR, "ct2_dir": DIR, "threads": N}
  {"cmd": "run", "peer": "hf" | "ct2", "variant": NAME, "prompts": [[ids]], "new_tokens": N}
  {"cmd": "quit"}

Each reply is one JSON line: {"ok": true, ...} or {"error": "..."}.
"""
import json
import os
import sys
import time
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

STATE = {}


class VocabOnlyTokenizer:
    """What ctranslate2's converter reads from a tokenizer: the vocabulary (t0, t1, ...) and the
    special tokens. The bench's checkpoint has no tokenizer; prompts are token ids."""

    def __init__(self, vocab_size):
        self.vocab = {f"t{i}": i for i in range(vocab_size)}
        self.bos_token = "t1"
        self.eos_token = "t2"
        self.unk_token = "t0"

    def get_vocab(self):
        return self.vocab

    def convert_ids_to_tokens(self, i):
        return None if i is None else f"t{i}"


def load(cmd):
    import ctranslate2
    import torch
    import transformers
    from ctranslate2.converters import TransformersConverter

    threads = int(cmd["threads"])
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(cmd["model"],
                                                              torch_dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    ct2_dir = cmd["ct2_dir"]
    if not os.path.exists(os.path.join(ct2_dir, "model.bin")):
        class Converter(TransformersConverter):
            def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
                return VocabOnlyTokenizer(vocab)

        Converter(cmd["model"]).convert(ct2_dir, quantization="float32", force=True)
    generator = ctranslate2.Generator(ct2_dir, device="cpu", compute_type="float32",
                                      intra_threads=threads, inter_threads=1)
    STATE.update(model=model, generator=generator, torch=torch)
    return {"ok": True, "load_s": time.perf_counter() - t0, "versions": {
        "transformers": transformers.__version__, "ctranslate2": ctranslate2.__version__,
        "torch": torch.__version__}}


def run_hf(prompts, new_tokens, batch):
    torch = STATE["torch"]
    model = STATE["model"]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i])) if batch else None
    groups = ([order[i:i + batch] for i in range(0, len(order), batch)] if batch
              else [list(range(len(prompts)))])
    tokens = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for g in groups:
            width = max(len(prompts[i]) for i in g)
            ids = torch.zeros(len(g), width, dtype=torch.long)
            mask = torch.zeros(len(g), width, dtype=torch.long)
            for row, i in enumerate(g):  # left padding, as generate() expects for decoders
                p = prompts[i]
                ids[row, width - len(p):] = torch.tensor(p)
                mask[row, width - len(p):] = 1
            out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                                 eos_token_id=None)
            tokens += (out.shape[1] - width) * len(g)
    return time.perf_counter() - t0, tokens


def run_ct2(prompts, new_tokens, batch):
    generator = STATE["generator"]
    start = [[f"t{i}" for i in p] for p in prompts]
    t0 = time.perf_counter()
    results = generator.generate_batch(start, max_batch_size=batch, max_length=new_tokens,
                                       min_length=new_tokens, include_prompt_in_result=False,
                                       sampling_topk=1)
    seconds = time.perf_counter() - t0
    return seconds, sum(len(r.sequences_ids[0]) for r in results)


VARIANTS = {
    ("hf", "all"): lambda p, n: run_hf(p, n, 0),         # every prompt in one padded batch
    ("hf", "sorted16"): lambda p, n: run_hf(p, n, 16),   # length-sorted batches of 16
    ("ct2", "all"): lambda p, n: run_ct2(p, n, 0),
    ("ct2", "sorted16"): lambda p, n: run_ct2(p, n, 16),  # ct2 sorts by length itself
}


def main():
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "quit":
                break
            if cmd["cmd"] == "load":
                reply = load(cmd)
            else:
                seconds, tokens = VARIANTS[(cmd["peer"], cmd["variant"])](cmd["prompts"],
                                                                         cmd["new_tokens"])
                reply = {"ok": True, "seconds": seconds, "tokens": tokens}
        except Exception as e:  # reported to the bench, which prints it
            reply = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
