"""PyTorch-eager anchors for `benches/gae.rs`: the GAE loops of TRL and verl on the same problem.

Same shape and mask as the Rust bench: rewards and values [256, 1024] f32, row i has 512 + (13 i mod 512)
response tokens and right padding after; gamma = 1, lam = 0.95. Each anchor is the stack's loop over
time as its trainer runs it, up to (not including) advantage whitening:
  - TRL `PPOTrainer` (masked steps zeroed: `masked_fill` of rewards/values, then `lastgaelam` over every
    column, `returns = advantages + values`) -- rlhf-lab's `MaskedSteps::Zero`;
  - verl `compute_gae_advantage_return` (masked steps skipped: `nextvalues` and `lastgaelam` carried
    across them with the response mask) -- rlhf-lab's `MaskedSteps::Skip`.
Prints one JSON object: the median and all times (ms) of each, over `--repeats` runs after one warm-up.
Run from the project venv: `.venv/bin/python benches/anchors/gae_anchors.py --threads 2`.
"""

import argparse
import json
import statistics
import time

import torch


def trl_gae(rewards, values, padding_mask, gamma, lam):
    rewards = torch.masked_fill(rewards, padding_mask, 0.0)
    values = torch.masked_fill(values, padding_mask, 0.0)
    lastgaelam = 0
    advantages_reversed = []
    gen_length = rewards.shape[1]
    for t in reversed(range(gen_length)):
        nextvalues = values[:, t + 1] if t < gen_length - 1 else 0.0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)
    return advantages, advantages + values


def verl_gae(rewards, values, response_mask, gamma, lam):
    nextvalues = 0
    lastgaelam = 0
    advantages_reversed = []
    gen_len = rewards.shape[-1]
    for t in reversed(range(gen_len)):
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam_ = delta + gamma * lam * lastgaelam
        nextvalues = values[:, t] * response_mask[:, t] + (1 - response_mask[:, t]) * nextvalues
        lastgaelam = lastgaelam_ * response_mask[:, t] + (1 - response_mask[:, t]) * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)
    return advantages, advantages + values


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b, t = 256, 1024
    rewards = torch.randn(b, t)
    values = torch.randn(b, t)
    lens = (torch.arange(b) * 13) % 512 + 512
    mask = torch.arange(t).unsqueeze(0) < lens.unsqueeze(1)
    out = {"torch": torch.__version__, "threads": args.threads, "repeats": args.repeats}
    with torch.no_grad():
        for name, fn, m in [
            ("trl_zero", trl_gae, ~mask),
            ("verl_skip", verl_gae, mask.to(torch.float32)),
        ]:
            fn(rewards, values, m, 1.0, 0.95)  # warm-up
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn(rewards, values, m, 1.0, 0.95)
                times.append((time.perf_counter() - t0) * 1e3)
            out[name] = {"median_ms": statistics.median(times), "times_ms": times}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
