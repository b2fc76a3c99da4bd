"""Reference logits of HF transformers' GPT2LMHeadModel for the parity test in tests/model_gpt.rs.

Usage: .venv/bin/python tests/golden/make_gpt2_parity.py OUTDIR

Writes into OUTDIR:
  config.json, model.safetensors   a small randomly initialised GPT2LMHeadModel (seed 0, float32,
                                   dropout 0), via save_pretrained(safe_serialization=True)
  parity.safetensors               input_ids (B, T) int64, attention_mask (B, T) int64,
                                   position_ids (B, T) int64, logits (B, T, V) float32

The batch has an unpadded row, a LEFT-padded row and a RIGHT-padded row. Position ids follow HF
generate / TRL: cumsum(attention_mask) - 1, clamped at 0 (pads get position 0; their logits are
never compared). The eager attention implementation is used as the reference.
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: make_gpt2_parity.py OUTDIR")
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = GPT2Config(
        vocab_size=101,
        n_positions=32,
        n_embd=48,
        n_layer=3,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        attn_implementation="eager",
    )
    model = GPT2LMHeadModel(cfg).eval()
    # Random (not zero/one) LayerNorm parameters and biases, so the test also checks that they are
    # loaded into the right places.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or ".ln_" in name or "ln_f" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)

    b, t, pad = 3, 12, 0
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, cfg.vocab_size, (b, t), generator=gen)
    mask = torch.ones(b, t, dtype=torch.int64)
    mask[1, :5] = 0  # left-padded row: 5 pads, 7 real tokens
    mask[2, 9:] = 0  # right-padded row: 9 real tokens, 3 pads
    ids = ids.masked_fill(mask == 0, pad)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    save_file(
        {
            "input_ids": ids.contiguous(),
            "attention_mask": mask.contiguous(),
            "position_ids": pos.contiguous(),
            "logits": logits.float().contiguous(),
        },
        str(out / "parity.safetensors"),
    )


if __name__ == "__main__":
    main()
