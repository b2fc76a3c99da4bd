"""PyTorch-eager anchors of `rlhf-lab bench` (src/pipeline/perf.rs): the same workloads on the same
shapes, run from the project venv (torch 2.11.0, transformers 4.57.6). The Rust suite starts this script
once (twice: a second copy with glibc's allocator set as rlhf-lab sets it) and sends it each case right
after timing it itself:

    echo '{"workload": "matmul", "params": {"n": 1024}, "threads": 2}' | .venv/bin/python benches/anchors/perf_anchors.py

What each anchor is:

  matmul, copy, read  torch.mm, Tensor.copy_, Tensor.sum
  gae-zero          TRL PPOTrainer's `lastgaelam` loop (masked steps zeroed first)
  gae-skip          verl `compute_gae_advantage_return`'s loop (masked steps carried over)
  sft-step          HF GPT2LMHeadModel (sdpa attention) + F.cross_entropy + backward +
                    clip_grad_norm_(1.0) + torch.optim.AdamW(betas=(0.9, 0.95), weight_decay=0.1)
  dpo-step          TRL DPOTrainer's step: concatenated forward of chosen ‖ rejected, selective log-softmax
                    summed over completion tokens, sigmoid loss against cached reference log-probs
                    (precompute_ref_log_probs), backward, clip, AdamW
  rm-step           TRL RewardTrainer's step: GPT2ForSequenceClassification(num_labels=1) scores of
                    chosen ‖ rejected, -logsigmoid(r_c - r_r).mean(), backward, clip, AdamW
  sample            HF `generate(do_sample=True, top_k=0, top_p=1, temperature=1)` with the KV cache,
                    min_new_tokens = max_new_tokens
  decode-smollm2    HF LlamaForCausalLM with SmolLM2-135M's config (random f32 weights: decoding cost does
                    not depend on the values), greedy `generate`, KV cache
  ppo-iteration     one TRL PPOTrainer iteration with HF GPT-2 actor, reference and critic (`ppo_case`)

Timing: one warm-up, then repetitions until 5 and 1 s (at most 50; 3 once 30 s have passed), as the
Rust side (`perf::time_it`); `--quick`: 2 repetitions, no warm-up.
"""

import argparse
import json
import sys
import time
import warnings

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore")
PROMPT_LEN = 8  # perf.rs PROMPT_LEN


def time_it(fn, quick):
    warmup, min_reps, min_secs, max_reps = (0, 2, 0.0, 2) if quick else (1, 5, 1.0, 50)
    for _ in range(warmup):
        fn()
    ms, start = [], time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1e3)
        spent = time.perf_counter() - start
        if (len(ms) >= min_reps and spent >= min_secs) or len(ms) >= max_reps or (spent > 30 and len(ms) >= 3):
            break
    ms.sort()

    def q(p):
        x = p * (len(ms) - 1)
        lo, hi = int(x), min(int(x) + 1, len(ms) - 1)
        return ms[lo] + (ms[hi] - ms[lo]) * (x - lo)

    return {"median_ms": q(0.5), "q1_ms": q(0.25), "q3_ms": q(0.75), "reps": len(ms)}


# --- GAE: TRL's and verl's loops, from benches/anchors/gae_anchors.py (this script's folder) -----------

from gae_anchors import trl_gae, verl_gae  # noqa: E402


def gae_case(p, mode):
    b, t = p["B"], p["T"]
    torch.manual_seed(0)
    rewards, values = torch.randn(b, t), torch.randn(b, t)
    half = max(t // 2, 1)
    lens = (torch.arange(b) * 13) % half + half
    mask = torch.arange(t).unsqueeze(0) < lens.unsqueeze(1)
    if mode == "zero":
        return "TRL lastgaelam loop", lambda: trl_gae(rewards, values, ~mask, 1.0, 0.95)
    fmask = mask.float()
    return "verl GAE loop", lambda: verl_gae(rewards, values, fmask, 1.0, 0.95)


# --- models ---------------------------------------------------------------------------------------------


def gpt2_config(p, n_positions):
    from transformers import GPT2Config

    cfg = GPT2Config(
        vocab_size=p["V"], n_positions=max(n_positions, 128), n_embd=p["C"], n_layer=p["L"], n_head=p["H"],
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new",
        pad_token_id=0, bos_token_id=p["V"] - 1, eos_token_id=p["V"] - 1,
    )
    cfg._attn_implementation = "sdpa"  # torch's fused attention, as rlhf-lab's GPT uses
    return cfg


def adamw(model):
    # The configs' optimiser; torch's default implementation on CPU (foreach is CUDA-only by default).
    return torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)


def sft_case(p):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    b, t, v = p["B"], p["T"], p["V"]
    model = GPT2LMHeadModel(gpt2_config(p, t)).train()
    opt = adamw(model)
    gen = torch.Generator().manual_seed(1)

    def step():
        x = torch.randint(0, v, (b, t), generator=gen)
        y = torch.randint(0, v, (b, t), generator=gen)
        opt.zero_grad(set_to_none=False)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.view(-1, v), y.view(-1))
        loss.item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return "HF GPT2LMHeadModel + cross_entropy + AdamW", step


def random_pairs(p):
    gen = torch.Generator().manual_seed(1)
    n, s, v = p["P"], p["S"], p["V"]
    prompt = torch.randint(0, v, (n, PROMPT_LEN), generator=gen)
    chosen = torch.randint(0, v, (n, s - PROMPT_LEN), generator=gen)
    rejected = torch.randint(0, v, (n, s - PROMPT_LEN), generator=gen)
    # Concatenated batch as TRL's `concatenated_inputs`: chosen rows, then rejected rows.
    ids = torch.cat([torch.cat([prompt, chosen], 1), torch.cat([prompt, rejected], 1)], 0)  # (2P, S)
    loss_mask = torch.zeros_like(ids, dtype=torch.bool)
    loss_mask[:, PROMPT_LEN:] = True
    return ids, loss_mask


def dpo_case(p):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    n = p["P"]
    model = GPT2LMHeadModel(gpt2_config(p, p["S"])).train()
    opt = adamw(model)
    ids, loss_mask = random_pairs(p)
    attn = torch.ones_like(ids)

    def logps(m):
        logits = m(input_ids=ids, attention_mask=attn).logits[:, :-1]  # (2P, S-1, V)
        labels = ids[:, 1:]
        mask = loss_mask[:, 1:]
        # TRL `selective_log_softmax`: log_softmax, then gather the labels.
        per_token = torch.gather(logits.log_softmax(-1), 2, labels.unsqueeze(2)).squeeze(2)
        return (per_token * mask).sum(-1)

    with torch.no_grad():
        ref = logps(model)  # precompute_ref_log_probs
    ref_c, ref_r = ref[:n], ref[n:]
    beta = 0.1

    def step():
        opt.zero_grad(set_to_none=False)
        lp = logps(model)
        pc, pr = lp[:n], lp[n:]
        logits = (pc - pr) - (ref_c - ref_r)
        losses = -F.logsigmoid(beta * logits)  # TRL `loss_type="sigmoid"`, label_smoothing 0
        loss = losses.mean()
        chosen_rewards = beta * (pc - ref_c).detach()
        rejected_rewards = beta * (pr - ref_r).detach()
        # TRL logs these every step (.item() on CPU).
        for m in [loss, chosen_rewards.mean(), rejected_rewards.mean(), (chosen_rewards > rejected_rewards).float().mean(),
                  (chosen_rewards - rejected_rewards).mean(), pc.mean(), pr.mean()]:
            m.item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return "HF GPT-2 + TRL sigmoid DPO loss + AdamW", step


def rm_case(p):
    from transformers import GPT2ForSequenceClassification

    torch.manual_seed(0)
    n = p["P"]
    cfg = gpt2_config(p, p["S"])
    cfg.num_labels = 1
    model = GPT2ForSequenceClassification(cfg).train()
    opt = adamw(model)
    ids, _ = random_pairs(p)
    ids[ids == cfg.pad_token_id] = 1  # no pad ids inside: the score is read at the last token
    attn = torch.ones_like(ids)

    def step():
        opt.zero_grad(set_to_none=False)
        r = model(input_ids=ids, attention_mask=attn).logits.squeeze(-1)  # (2P,)
        loss = -F.logsigmoid(r[:n] - r[n:]).mean()  # TRL RewardTrainer.compute_loss
        loss.item()
        ((r[:n] > r[n:]).float().mean()).item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return "HF GPT2ForSequenceClassification + TRL reward loss + AdamW", step


def sample_case(p):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    b, n, v = p["B"], p["N"], p["V"]
    model = GPT2LMHeadModel(gpt2_config(p, PROMPT_LEN + n)).eval()
    gen = torch.Generator().manual_seed(2)
    prompts = torch.randint(0, v, (b, PROMPT_LEN), generator=gen)

    def run():
        with torch.no_grad():
            model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True, top_k=0,
                           top_p=1.0, temperature=1.0, max_new_tokens=n, min_new_tokens=n, pad_token_id=0,
                           eos_token_id=v - 1, use_cache=True)

    return "HF generate (sampling, KV cache)", run


def smollm2_case(p):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    # SmolLM2-135M-Instruct's architecture (the GGUF's metadata, as src/model/llama.rs reads it).
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                      rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1,
                      eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(3)
    prompts = torch.randint(0, 49152, (p["B"], PROMPT_LEN), generator=gen)
    n = p["N"]

    def run():
        with torch.no_grad():
            model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                           max_new_tokens=n, min_new_tokens=n, use_cache=True)

    return "HF LlamaForCausalLM generate (greedy, f32)", run


def ppo_case(p):
    """One PPO iteration as TRL's PPOTrainer runs it (rollout with `generate`, old/reference log-probs and
    values under no_grad, KL-shaped rewards with the score on the last token, the `lastgaelam` GAE loop,
    whitened advantages, then `E` epochs of `M` shuffled minibatches: clipped policy loss + vf_coef ×
    clipped value loss, entropy and statistics logged) with HF GPT-2 actor, reference and critic
    (GPT2Model + a per-token value head, TRL's separate value model). The score is a random tensor: it
    stands in for rlhf-lab's ground-truth classifier, a few ms per iteration on either side."""
    import copy

    from transformers import GPT2LMHeadModel, GPT2Model

    torch.manual_seed(0)
    b, n, v, epochs, minibatches = p["B"], p["N"], p["V"], p["E"], p["M"]
    cfg = gpt2_config(p, PROMPT_LEN + n)
    actor = GPT2LMHeadModel(cfg)
    ref = copy.deepcopy(actor).eval().requires_grad_(False)
    critic = GPT2Model(cfg)
    value_head = torch.nn.Linear(p["C"], 1)
    kw = dict(lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0)
    opt_actor = torch.optim.AdamW(actor.parameters(), **kw)
    opt_critic = torch.optim.AdamW(list(critic.parameters()) + list(value_head.parameters()), **kw)
    gen = torch.Generator().manual_seed(4)
    prompts = torch.randint(0, v, (b, PROMPT_LEN), generator=gen)
    beta, gamma, lam, cliprange, cliprange_value, vf_coef, temp = 0.1, 1.0, 0.95, 0.2, 0.2, 0.1, 1.0
    resp = slice(PROMPT_LEN - 1, -1)  # logits at these positions predict the response tokens

    def logprobs_of(logits, labels):
        return torch.gather(logits.log_softmax(-1), 2, labels.unsqueeze(-1)).squeeze(-1)

    def values_of(seqs):
        return value_head(critic(input_ids=seqs).last_hidden_state).squeeze(-1)[:, resp]

    def whiten(x):
        return (x - x.mean()) * torch.rsqrt(x.var() + 1e-8)

    def iteration():
        with torch.no_grad():
            seqs = actor.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
                                  top_k=0, top_p=1.0, temperature=temp, max_new_tokens=n, min_new_tokens=n,
                                  pad_token_id=0, eos_token_id=v - 1, use_cache=True)
            labels = seqs[:, PROMPT_LEN:]
            score = torch.randn(b, generator=gen)
            logprobs = logprobs_of(actor(input_ids=seqs).logits[:, resp] / (temp + 1e-7), labels)
            ref_logprobs = logprobs_of(ref(input_ids=seqs).logits[:, resp] / (temp + 1e-7), labels)
            values = values_of(seqs)
            rewards = -beta * (logprobs - ref_logprobs)
            rewards[:, -1] += score
            advantages, returns = trl_gae(rewards, values, torch.zeros_like(rewards, dtype=torch.bool), gamma, lam)
            advantages = whiten(advantages)
        for _ in range(epochs):
            for mb in torch.randperm(b, generator=gen).split(b // minibatches):
                new_logits = actor(input_ids=seqs[mb]).logits[:, resp] / (temp + 1e-7)
                new_logprobs = logprobs_of(new_logits, labels[mb])
                vpred = values_of(seqs[mb])
                vpredclipped = torch.clamp(vpred, values[mb] - cliprange_value, values[mb] + cliprange_value)
                vf_loss = 0.5 * torch.max((vpred - returns[mb]) ** 2, (vpredclipped - returns[mb]) ** 2).mean()
                ratio = torch.exp(new_logprobs - logprobs[mb])
                pg_loss = torch.max(-advantages[mb] * ratio,
                                    -advantages[mb] * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)).mean()
                loss = pg_loss + vf_coef * vf_loss
                opt_actor.zero_grad(set_to_none=False)
                opt_critic.zero_grad(set_to_none=False)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(actor.parameters(), 1.0)
                torch.nn.utils.clip_grad_norm_(list(critic.parameters()) + list(value_head.parameters()), 1.0)
                opt_actor.step()
                opt_critic.step()
                with torch.no_grad():  # TRL's per-minibatch statistics
                    prob = torch.softmax(new_logits, -1)
                    entropy = torch.logsumexp(new_logits, -1) - (prob * new_logits).sum(-1)
                    for m in [pg_loss, vf_loss, entropy.mean(), 0.5 * ((new_logprobs - logprobs[mb]) ** 2).mean(),
                              ((ratio - 1).abs() > cliprange).float().mean()]:
                        m.item()

    return "TRL-style PPO iteration, HF GPT-2 actor/reference/critic", iteration


def matmul_case(p):
    torch.manual_seed(0)
    a, b = torch.randn(p["n"], p["n"]), torch.randn(p["n"], p["n"])
    return "torch.mm", lambda: torch.mm(a, b)


def read_case(p):
    src = torch.ones(p["n"])
    return "Tensor.sum", lambda: src.sum()


def copy_case(p):
    src, dst = torch.ones(p["n"]), torch.zeros(p["n"])
    return "Tensor.copy_", lambda: dst.copy_(src)


ANCHORS = {
    "matmul": matmul_case,
    "copy": copy_case,
    "read": read_case,
    "gae-zero": lambda p: gae_case(p, "zero"),
    "gae-skip": lambda p: gae_case(p, "skip"),
    "sft-step": sft_case,
    "dpo-step": dpo_case,
    "rm-step": rm_case,
    "sample": sample_case,
    "decode-smollm2": smollm2_case,
    "ppo-iteration": ppo_case,
}


def main():
    """Serves rlhf-lab's suite: one case (JSON) per line on stdin, one line back on stdout with the
    anchor's timing, right after rlhf-lab timed the same case, so both see the same machine state."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    for line in sys.stdin:
        c = json.loads(line)
        torch.set_num_threads(c["threads"])
        name, fn = ANCHORS[c["workload"]](c["params"])
        t = time_it(fn, args.quick)
        del fn
        print(json.dumps({"name": name, **t}), flush=True)


if __name__ == "__main__":
    main()
