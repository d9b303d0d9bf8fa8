"""Writes the seed corpus of malformed (and a few valid) tokenizer.json files that
tokenizer_test checks (each must fail with one error naming the field) and the fuzzing work
starts from. Run from this folder: python3 make_tokenizer_json_corpus.py"""

import copy
import json
import os

BPE = {
    "version": "1.0", "truncation": None, "padding": None,
    "added_tokens": [{"id": 0, "content": "<s>", "single_word": False, "lstrip": False,
                      "rstrip": False, "normalized": False, "special": True}],
    "normalizer": {"type": "NFC"},
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                      "use_regex": True},
    "post_processor": {"type": "TemplateProcessing",
                       "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                  {"Sequence": {"id": "A", "type_id": 0}}],
                       "pair": [],
                       "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}},
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
              "vocab": {"<s>": 0, "a": 1, "b": 2, "ab": 3, "Ġ": 4, "Ġab": 5},
              "merges": ["a b", "Ġ ab"]},
}
WORDPIECE = {"version": "1.0", "normalizer": {"type": "BertNormalizer"},
             "pre_tokenizer": {"type": "BertPreTokenizer"}, "decoder": {"type": "WordPiece"},
             "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                       "max_input_chars_per_word": 100,
                       "vocab": {"[UNK]": 0, "a": 1, "##b": 2}}}
UNIGRAM = {"version": "1.0", "model": {"type": "Unigram", "unk_id": 0,
                                       "vocab": [["<unk>", 0.0], ["a", -1.0], ["ab", -1.5]]}}


def variant(base, path, value=None, delete=False):
    j = copy.deepcopy(base)
    node = j
    for k in path[:-1]:
        node = node[k]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return json.dumps(j, ensure_ascii=False, indent=1)


FILES = {
    "valid_bpe.json": json.dumps(BPE, indent=1),
    "valid_wordpiece.json": json.dumps(WORDPIECE, indent=1),
    "valid_unigram.json": json.dumps(UNIGRAM, indent=1),
    "empty.json": "",
    "not_json.json": "tokenizer: yes\n",
    "truncated.json": json.dumps(BPE, indent=1)[:400],
    "top_level_array.json": "[1, 2, 3]",
    "version_wrong.json": variant(BPE, ["version"], "2.0"),
    "model_missing.json": variant(BPE, ["model"], delete=True),
    "model_not_object.json": variant(BPE, ["model"], "BPE"),
    "model_type_unknown.json": variant(BPE, ["model", "type"], "Transformer"),
    "model_type_wrong_type.json": variant(BPE, ["model", "type"], 5),
    "vocab_missing.json": variant(BPE, ["model", "vocab"], delete=True),
    "vocab_not_object.json": variant(BPE, ["model", "vocab"], ["a", "b"]),
    "vocab_id_string.json": variant(BPE, ["model", "vocab"], {"a": "1"}),
    "vocab_id_negative.json": variant(BPE, ["model", "vocab"], {"a": -3}),
    "vocab_id_huge.json": variant(BPE, ["model", "vocab"], {"a": 10 ** 12}),
    "merges_missing.json": variant(BPE, ["model", "merges"], delete=True),
    "merges_not_array.json": variant(BPE, ["model", "merges"], "a b"),
    "merges_wrong_type.json": variant(BPE, ["model", "merges"], ["a b", 7]),
    "merges_bad_format.json": variant(BPE, ["model", "merges"], ["a b c"]),
    "merges_unknown_token.json": variant(BPE, ["model", "merges"], ["a b", "a zz"]),
    "merges_result_unknown.json": variant(BPE, ["model", "merges"], ["b a"]),
    "dropout_nonnull.json": variant(BPE, ["model", "dropout"], 0.1),
    "dropout_out_of_range.json": variant(BPE, ["model", "dropout"], 3),
    "fuse_unk_wrong_type.json": variant(BPE, ["model", "fuse_unk"], "yes"),
    "normalizer_unknown.json": variant(BPE, ["normalizer"], {"type": "Foo"}),
    "normalizer_missing_type.json": variant(BPE, ["normalizer"], {"lowercase": True}),
    "normalizer_precompiled.json": variant(BPE, ["normalizer"],
                                           {"type": "Precompiled", "precompiled_charsmap": ""}),
    "normalizer_sequence_not_array.json": variant(BPE, ["normalizer"],
                                                  {"type": "Sequence", "normalizers": {}}),
    "replace_pattern_wrong.json": variant(BPE, ["normalizer"], {"type": "Replace",
                                                                "pattern": {"Glob": "*"},
                                                                "content": "x"}),
    "pre_tokenizer_bad_regex.json": variant(BPE, ["pre_tokenizer"], {
        "type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated",
        "invert": False}),
    "pre_tokenizer_bad_behavior.json": variant(BPE, ["pre_tokenizer"], {
        "type": "Split", "pattern": {"String": " "}, "behavior": "Sideways", "invert": False}),
    "pre_tokenizer_unknown.json": variant(BPE, ["pre_tokenizer"], {"type": "UnicodeScripts"}),
    "metaspace_replacement_two_chars.json": variant(BPE, ["pre_tokenizer"], {
        "type": "Metaspace", "replacement": "__", "prepend_scheme": "always"}),
    "metaspace_scheme_unknown.json": variant(BPE, ["pre_tokenizer"], {
        "type": "Metaspace", "replacement": "_", "prepend_scheme": "sometimes"}),
    "added_tokens_not_array.json": variant(BPE, ["added_tokens"], {"<s>": 0}),
    "added_token_missing_content.json": variant(BPE, ["added_tokens"], [{"id": 0,
                                                                         "special": True}]),
    "added_token_content_wrong_type.json": variant(BPE, ["added_tokens"], [{"id": 0,
                                                                            "content": 12}]),
    "post_processor_unknown_special.json": variant(BPE, ["post_processor", "single"], [
        {"SpecialToken": {"id": "<cls>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]),
    "post_processor_unknown.json": variant(BPE, ["post_processor"], {"type": "Magic"}),
    "bert_processing_bad_pair.json": variant(BPE, ["post_processor"], {
        "type": "BertProcessing", "sep": ["[SEP]"], "cls": ["[CLS]", 1]}),
    "decoder_unknown.json": variant(BPE, ["decoder"], {"type": "Reverse"}),
    "strip_decoder_negative.json": variant(BPE, ["decoder"], {"type": "Strip", "content": " ",
                                                              "start": -1, "stop": 0}),
    "wordpiece_max_negative.json": variant(WORDPIECE, ["model", "max_input_chars_per_word"], -1),
    "unigram_vocab_bad_pair.json": variant(UNIGRAM, ["model", "vocab"], [["<unk>"], ["a", -1]]),
    "unigram_unk_id_out_of_range.json": variant(UNIGRAM, ["model", "unk_id"], 9),
}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = os.path.join(here, "tokenizer_json")
    os.makedirs(out, exist_ok=True)
    for name, text in FILES.items():
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.write(text)
    # Bytes that are not UTF-8 inside a JSON string.
    with open(os.path.join(out, "invalid_utf8.json"), "wb") as f:
        f.write(json.dumps(BPE).replace('"a": 1', '"a\\u0000": 1').encode()
                .replace(b"\\u0000", b"\xff\xfe"))
    # Nesting far deeper than any real file.
    with open(os.path.join(out, "deeply_nested.json"), "w") as f:
        f.write('{"model": ' + "[" * 100000 + "]" * 100000 + "}")
    print(f"wrote {len(FILES) + 2} files to {out}")


if __name__ == "__main__":
    main()
