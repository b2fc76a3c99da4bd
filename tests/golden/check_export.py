"""Loads folders written by `rlhf-lab export` in Python transformers, for tests/export.rs.

Usage: .venv/bin/python tests/golden/check_export.py TEXTS_JSON OUTDIR EXPORT_DIR [EXPORT_DIR ...]

TEXTS_JSON is a JSON list of strings. For the k-th EXPORT_DIR (k = 0, 1, ...) it loads
GPT2LMHeadModel.from_pretrained (output_loading_info=True, eval mode, float32) and
AutoTokenizer.from_pretrained, and writes into OUTDIR:
  k.safetensors   ids_i (1, T_i) int64 = tokenizer(text_i)["input_ids"] (default call: whatever special
                  tokens AutoTokenizer adds by default), logits_i (1, T_i, V) float32 of the model
                  on those ids (no padding, default positions 0..T_i-1)
  k.json          loading info (missing / unexpected / mismatched keys), tokenizer class, its
                  bos/eos/pad ids, config ids, whether decode(ids_i) == text_i, a 4-token greedy
                  continuation of text 0 by model.generate (a smoke test of generation with pad_token_id)
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, GPT2LMHeadModel


def main() -> None:
    if len(sys.argv) < 4:
        sys.exit("usage: check_export.py TEXTS_JSON OUTDIR EXPORT_DIR [EXPORT_DIR ...]")
    texts = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    for k, d in enumerate(sys.argv[3:]):
        model, info = GPT2LMHeadModel.from_pretrained(d, output_loading_info=True)
        model = model.eval()
        tok = AutoTokenizer.from_pretrained(d)
        tensors = {}
        roundtrip = []
        for i, text in enumerate(texts):
            ids = tok(text, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                logits = model(input_ids=ids).logits
            tensors[f"ids_{i}"] = ids.to(torch.int64).contiguous()
            tensors[f"logits_{i}"] = logits.float().contiguous()
            roundtrip.append(tok.decode(ids[0]) == text)
        save_file(tensors, str(out / f"{k}.safetensors"))
        first = tok(texts[0], return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(
                **first, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id
            )
        summary = {
            "missing_keys": sorted(info["missing_keys"]),
            "unexpected_keys": sorted(info["unexpected_keys"]),
            "mismatched_keys": [list(map(str, m)) for m in info["mismatched_keys"]],
            "tokenizer_class": type(tok).__name__,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            "config_eos_token_id": model.config.eos_token_id,
            "config_pad_token_id": model.config.pad_token_id,
            "lm_head_tied": model.lm_head.weight.data_ptr()
            == model.transformer.wte.weight.data_ptr(),
            "decode_roundtrip": roundtrip,
            "generated_tokens": gen.shape[1] - first["input_ids"].shape[1],
        }
        (out / f"{k}.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
