#!/usr/bin/env python3
"""Golden data for tests/golden.rs: small random inputs and reference outputs computed with plain
PyTorch (float64), written to tests/golden/golden.json.

Every reference below is written from the formulas, as scalar loops or elementary torch ops, and is
independent of rlhf_lab and of any RLHF library. Masked positions of per-token outputs are 0.

Run from the crate root:  .venv/bin/python tests/golden/make_golden.py
"""

import json
import math
import os

import torch

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)

B, T, V = 3, 6, 5

# Right padding (row 0), left padding (row 1, response fills the row to T-1), right padding (row 2).
MASK = [
    [1, 1, 1, 1, 0, 0],
    [0, 0, 1, 1, 1, 1],
    [1, 1, 1, 1, 1, 0],
]
# As MASK, with one interior masked step in row 2 (for verl's skip mode).
MASK_INTERIOR = [
    [1, 1, 1, 1, 0, 0],
    [0, 0, 1, 1, 1, 1],
    [1, 1, 0, 1, 1, 0],
]


def L(x):
    """Tensor -> nested python lists of floats / ints."""
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return x


def zeros_bt():
    return [[0.0] * T for _ in range(B)]


# ----------------------------------------------------------------------------------------------------
# 1. selective log-softmax, entropy, sequence log-probs
# ----------------------------------------------------------------------------------------------------
def ref_logprobs(logits, labels, mask):
    logp = zeros_bt()
    ent = zeros_bt()
    for b in range(B):
        for t in range(T):
            if not mask[b][t]:
                continue
            z = logits[b, t]
            ls = torch.log_softmax(z, dim=-1)
            logp[b][t] = ls[labels[b][t]].item()
            lse = torch.logsumexp(z, dim=-1)
            p = torch.softmax(z, dim=-1)
            ent[b][t] = (lse - (p * z).sum()).item()
    seq_sum = [sum(logp[b][t] for t in range(T) if mask[b][t]) for b in range(B)]
    seq_count = [float(sum(mask[b])) for b in range(B)]
    return logp, ent, seq_sum, seq_count


logits = torch.randn(B, T, V) * 2.0
labels = torch.randint(0, V, (B, T)).tolist()
labels = [[labels[b][t] if MASK[b][t] else -100 for t in range(T)] for b in range(B)]
lp, ent, seq_sum, seq_count = ref_logprobs(logits, labels, MASK)
logprobs_case = {
    "inputs": {"logits": L(logits), "labels": labels, "mask": MASK},
    "outputs": {
        "token_log_probs": lp,
        "entropy": ent,
        "seq_logp_sum": seq_sum,
        "seq_count": seq_count,
    },
}


# ----------------------------------------------------------------------------------------------------
# 2. KL estimators
# ----------------------------------------------------------------------------------------------------
def kl_k1(x):
    return x


def kl_k2(x):
    return 0.5 * x * x


def kl_k3(x):
    return math.exp(-x) - 1.0 + x


def ref_kl(logp, ref, mask, fn):
    out = zeros_bt()
    for b in range(B):
        for t in range(T):
            if mask[b][t]:
                out[b][t] = fn(logp[b][t] - ref[b][t])
    return out


kl_logp = (-torch.rand(B, T) * 3.0).tolist()
kl_ref = (torch.tensor(kl_logp) + torch.randn(B, T) * 0.8).tolist()
kl_case = {
    "inputs": {"log_probs": kl_logp, "ref_log_probs": kl_ref, "mask": MASK},
    "outputs": {},
}
for name, fn in [("k1", kl_k1), ("k2", kl_k2), ("k3", kl_k3)]:
    per_tok = ref_kl(kl_logp, kl_ref, MASK, fn)
    kl_case["outputs"][name] = per_tok
    kl_case["outputs"][name + "_per_sequence"] = [sum(r) for r in per_tok]


# ----------------------------------------------------------------------------------------------------
# 3. KL-shaped rewards (k1), score at the last response token / at the step after it (clamped)
# ----------------------------------------------------------------------------------------------------
def ref_shaped(logp, ref, mask, scores, coef, after):
    rewards = zeros_bt()
    rmask = [row[:] for row in mask]
    idx = []
    for b in range(B):
        last = max(t for t in range(T) if mask[b][t])
        for t in range(T):
            if mask[b][t]:
                rewards[b][t] = -coef * (logp[b][t] - ref[b][t])
        i = min(last + 1, T - 1) if after else last
        rewards[b][i] += scores[b]
        rmask[b][i] = 1
        idx.append(i)
    return rewards, rmask, idx


KL_COEF = 0.05
scores = (torch.randn(B) * 2.0).tolist()
shaped_case = {
    "config": {"kl_coef": KL_COEF},
    "inputs": {"log_probs": kl_logp, "ref_log_probs": kl_ref, "mask": MASK, "scores": scores},
    "outputs": {},
}
for key, after in [("last", False), ("after_last", True)]:
    r, m, i = ref_shaped(kl_logp, kl_ref, MASK, scores, KL_COEF, after)
    shaped_case["outputs"][key] = {"rewards": r, "mask": m, "score_index": i}


# ----------------------------------------------------------------------------------------------------
# 4. GAE (zero mode: classic loop; skip mode: verl loop) and MC returns
# ----------------------------------------------------------------------------------------------------
def ref_gae_zero(rewards, values, mask, gamma, lam):
    """TRL / DeepSpeed-Chat: rewards and values zeroed at masked steps, plain backward loop."""
    adv, ret = zeros_bt(), zeros_bt()
    for b in range(B):
        r = [rewards[b][t] if mask[b][t] else 0.0 for t in range(T)]
        v = [values[b][t] if mask[b][t] else 0.0 for t in range(T)]
        lastgaelam = 0.0
        a = [0.0] * T
        for t in reversed(range(T)):
            nextv = v[t + 1] if t < T - 1 else 0.0
            delta = r[t] + gamma * nextv - v[t]
            lastgaelam = delta + gamma * lam * lastgaelam
            a[t] = lastgaelam
        for t in range(T):
            if mask[b][t]:
                adv[b][t] = a[t]
                ret[b][t] = a[t] + v[t]
    return adv, ret


def ref_gae_skip(rewards, values, mask, gamma, lam):
    """verl: at masked t, nextvalues and lastgaelam carry through unchanged."""
    adv, ret = zeros_bt(), zeros_bt()
    for b in range(B):
        nextvalues = 0.0
        lastgaelam = 0.0
        for t in reversed(range(T)):
            if not mask[b][t]:
                continue  # carry nextvalues and lastgaelam; output 0 here
            delta = rewards[b][t] + gamma * nextvalues - values[b][t]
            lastgaelam = delta + gamma * lam * lastgaelam
            nextvalues = values[b][t]
            adv[b][t] = lastgaelam
            ret[b][t] = lastgaelam + values[b][t]
    return adv, ret


def ref_returns(rewards, mask, gamma, skip):
    out = zeros_bt()
    for b in range(B):
        g = 0.0
        for t in reversed(range(T)):
            if mask[b][t]:
                g = rewards[b][t] + gamma * g
                out[b][t] = g
            elif not skip:
                g = 0.0 + gamma * g  # zero reward, time advances
    return out


# Masked positions hold non-zero junk so that zeroing is exercised.
gae_rewards = (torch.randn(B, T)).tolist()
gae_values = (torch.randn(B, T)).tolist()
gae_case = {"inputs": {"rewards": gae_rewards, "values": gae_values}, "cases": []}
for mask_name, mask in [("mask", MASK), ("mask_interior", MASK_INTERIOR)]:
    for gamma, lam in [(0.99, 0.95), (0.9, 0.8), (1.0, 1.0)]:
        for mode in ["zero", "skip"]:
            fn = ref_gae_zero if mode == "zero" else ref_gae_skip
            adv, ret = fn(gae_rewards, gae_values, mask, gamma, lam)
            gae_case["cases"].append(
                {
                    "mask_name": mask_name,
                    "mask": mask,
                    "gamma": gamma,
                    "lam": lam,
                    "mode": mode,
                    "advantages": adv,
                    "returns": ret,
                    "mc_returns": ref_returns(gae_rewards, mask, gamma, mode == "skip"),
                }
            )


# ----------------------------------------------------------------------------------------------------
# 5. Masked mean / var / whiten (unbiased, eps inside rsqrt)
# ----------------------------------------------------------------------------------------------------
def ref_whiten(x, mask, eps):
    vals = [x[b][t] for b in range(B) for t in range(T) if mask[b][t]]
    n = len(vals)
    mean = sum(vals) / n
    var = sum((v - mean) ** 2 for v in vals) / (n - 1)
    out = zeros_bt()
    for b in range(B):
        for t in range(T):
            if mask[b][t]:
                out[b][t] = (x[b][t] - mean) / math.sqrt(var + eps)
    return mean, var, out


wh_x = (torch.randn(B, T) * 1.5 + 0.7).tolist()
wh_mean, wh_var, wh_out = ref_whiten(wh_x, MASK_INTERIOR, 1e-8)
whiten_case = {
    "config": {"eps": 1e-8, "unbiased": True},
    "inputs": {"values": wh_x, "mask": MASK_INTERIOR},
    "outputs": {"mean": wh_mean, "var_unbiased": wh_var, "whitened": wh_out},
}


# ----------------------------------------------------------------------------------------------------
# 6. PPO clipped policy loss (token mean; with/without dual clip) and clipped value loss
# ----------------------------------------------------------------------------------------------------
def ref_policy(logp, old, adv, mask, eps, dual_c):
    per_tok = zeros_bt()
    n = 0
    total = 0.0
    clipped_cnt = 0
    lower_cnt = 0
    for b in range(B):
        for t in range(T):
            if not mask[b][t]:
                continue
            a = adv[b][t]
            ratio = math.exp(logp[b][t] - old[b][t])
            pg1 = -a * ratio
            pg2 = -a * min(max(ratio, 1.0 - eps), 1.0 + eps)
            loss = max(pg1, pg2)
            if pg2 > pg1:
                clipped_cnt += 1
            if dual_c is not None and a < 0:
                pg3 = -a * dual_c
                if loss > pg3:
                    lower_cnt += 1
                loss = min(loss, pg3)
            per_tok[b][t] = loss
            total += loss
            n += 1
    return total / n, per_tok, clipped_cnt / n, lower_cnt / n


pol_old = (-torch.rand(B, T) * 3.0).tolist()
log_ratio = torch.randn(B, T) * 0.5
pol_adv = torch.randn(B, T)
# Make the dual clip bite: large ratios (e^1.5 ≈ 4.5 > 3) at negative advantages, and one large ratio at
# a positive advantage; both at unmasked positions.
log_ratio[0, 1], pol_adv[0, 1] = 1.5, -1.2
log_ratio[2, 3], pol_adv[2, 3] = 1.3, -0.7
log_ratio[1, 4], pol_adv[1, 4] = 1.4, 0.9
pol_logp = (torch.tensor(pol_old) + log_ratio).tolist()
pol_adv = pol_adv.tolist()
policy_case = {
    "config": {"clip": 0.2, "dual_clip": 3.0},
    "inputs": {"log_probs": pol_logp, "old_log_probs": pol_old, "advantages": pol_adv, "mask": MASK},
    "outputs": {},
}
for key, c in [("no_dual_clip", None), ("dual_clip", 3.0)]:
    loss, per_tok, cf, cfl = ref_policy(pol_logp, pol_old, pol_adv, MASK, 0.2, c)
    policy_case["outputs"][key] = {
        "loss": loss,
        "per_token": per_tok,
        "clipfrac": cf,
        "clipfrac_lower": cfl,
    }


def ref_value(values, old, returns, mask, clip):
    per_tok = zeros_bt()
    total, n, clipped = 0.0, 0, 0
    for b in range(B):
        for t in range(T):
            if not mask[b][t]:
                continue
            v, vo, r = values[b][t], old[b][t], returns[b][t]
            vc = min(max(v, vo - clip), vo + clip)
            l1 = (v - r) ** 2
            l2 = (vc - r) ** 2
            if l2 > l1:
                clipped += 1
            per_tok[b][t] = max(l1, l2)
            total += max(l1, l2)
            n += 1
    return 0.5 * total / n, per_tok, clipped / n


val_old = torch.randn(B, T)
val_new = (val_old + torch.randn(B, T) * 0.4).tolist()
val_old = val_old.tolist()
val_ret = (torch.randn(B, T)).tolist()
vl, vpt, vcf = ref_value(val_new, val_old, val_ret, MASK, 0.2)
value_case = {
    "config": {"clip": 0.2},
    "inputs": {"values": val_new, "old_values": val_old, "returns": val_ret, "mask": MASK},
    "outputs": {"loss": vl, "per_token": vpt, "clipfrac": vcf},
}


# ----------------------------------------------------------------------------------------------------
# 7. DPO family (β = 0.1)
# ----------------------------------------------------------------------------------------------------
def log_sigmoid(x):
    # stable scalar log σ(x)
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def ref_dpo(pw, pl, rw, rl, nw, nl, beta, variant, eps):
    losses, cr, rr = [], [], []
    for i in range(len(pw)):
        a, b_, c, d = pw[i], pl[i], rw[i], rl[i]
        if variant == "ipo":
            a, c = a / nw[i], c / nw[i]
            b_, d = b_ / nl[i], d / nl[i]
        h = (a - b_) - (c - d)
        if variant == "sigmoid":
            loss = -(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h)
        elif variant == "robust":
            loss = (-(1 - eps) * log_sigmoid(beta * h) + eps * log_sigmoid(-beta * h)) / (1 - 2 * eps)
        elif variant == "ipo":
            loss = (h - 1.0 / (2.0 * beta)) ** 2
        elif variant == "hinge":
            loss = max(0.0, 1.0 - beta * h)
        else:
            raise ValueError(variant)
        losses.append(loss)
        cr.append(beta * (a - c))
        rr.append(beta * (b_ - d))
    return sum(losses) / len(losses), losses, cr, rr


NP = 5  # pairs
TD = 6
dpo_mask_c = [[1 if t < n else 0 for t in range(TD)] for n in [6, 3, 4, 1, 5]]
dpo_mask_r = [[1 if t < n else 0 for t in range(TD)] for n in [2, 6, 4, 5, 3]]
tok_rc = -torch.rand(NP, TD) * 2.0
tok_rr = -torch.rand(NP, TD) * 2.0
tok_pc = tok_rc + torch.randn(NP, TD) * 0.5
tok_pr = tok_rr + torch.randn(NP, TD) * 0.5
# One pair with a large margin (h > 10, so the hinge is 0 there).
tok_pc[0] = tok_rc[0] + 2.5
tok_pr[0] = tok_rr[0] - 2.0


def seqsum(tok, mask):
    return [sum(tok[i, t].item() for t in range(TD) if mask[i][t]) for i in range(NP)]


pw, pl = seqsum(tok_pc, dpo_mask_c), seqsum(tok_pr, dpo_mask_r)
rw, rl = seqsum(tok_rc, dpo_mask_c), seqsum(tok_rr, dpo_mask_r)
nw = [float(sum(r)) for r in dpo_mask_c]
nl = [float(sum(r)) for r in dpo_mask_r]
BETA = 0.1
dpo_case = {
    "config": {"beta": BETA},
    "inputs": {
        "policy_chosen_tokens": L(tok_pc),
        "policy_rejected_tokens": L(tok_pr),
        "ref_chosen_tokens": L(tok_rc),
        "ref_rejected_tokens": L(tok_rr),
        "chosen_mask": dpo_mask_c,
        "rejected_mask": dpo_mask_r,
    },
    "sequence": {
        "policy_chosen": pw,
        "policy_rejected": pl,
        "ref_chosen": rw,
        "ref_rejected": rl,
        "chosen_lengths": nw,
        "rejected_lengths": nl,
    },
    "cases": [],
}
for variant, eps in [("sigmoid", 0.0), ("sigmoid", 0.1), ("robust", 0.1), ("ipo", 0.0), ("hinge", 0.0)]:
    loss, losses, cr, rr = ref_dpo(pw, pl, rw, rl, nw, nl, BETA, variant, eps)
    dpo_case["cases"].append(
        {
            "variant": variant,
            "label_smoothing": eps,
            "ipo_length_normalize": variant == "ipo",
            "loss": loss,
            "losses": losses,
            "chosen_rewards": cr,
            "rejected_rewards": rr,
        }
    )


# ----------------------------------------------------------------------------------------------------
# 8. Bradley–Terry pairwise (margin, centering) and InstructGPT K-wise
# ----------------------------------------------------------------------------------------------------
def ref_pairwise(c, r, margin, coef):
    losses = []
    for i in range(len(c)):
        d = c[i] - r[i] - (margin[i] if margin is not None else 0.0)
        losses.append(-log_sigmoid(d))
    centering = coef * sum((c[i] + r[i]) ** 2 for i in range(len(c))) / len(c)
    acc = sum(1.0 for i in range(len(c)) if c[i] > r[i]) / len(c)
    return sum(losses) / len(losses) + centering, losses, centering, acc


bt_c = (torch.randn(6) * 1.5).tolist()
bt_r = (torch.randn(6) * 1.5).tolist()
bt_m = (torch.rand(6)).tolist()
bt_case = {"inputs": {"chosen": bt_c, "rejected": bt_r, "margin": bt_m}, "cases": []}
for use_margin, coef in [(False, 0.0), (True, 0.0), (True, 0.01)]:
    loss, losses, cen, acc = ref_pairwise(bt_c, bt_r, bt_m if use_margin else None, coef)
    bt_case["cases"].append(
        {
            "use_margin": use_margin,
            "center_coef": coef,
            "loss": loss,
            "losses": losses,
            "centering": cen,
            "accuracy": acc,
        }
    )


def ref_kwise(rewards):
    per_prompt = []
    for row in rewards:
        k = len(row)
        s = 0.0
        for i in range(k):
            for j in range(i + 1, k):
                s += -log_sigmoid(row[i] - row[j])
        per_prompt.append(s / (k * (k - 1) / 2))
    return sum(per_prompt) / len(per_prompt)


kw_r = (torch.randn(3, 4) * 1.5).tolist()
kwise_case = {"inputs": {"rewards": kw_r}, "outputs": {"loss": ref_kwise(kw_r)}}


# ----------------------------------------------------------------------------------------------------
# 9. Group baselines: GRPO (unbiased std, eps 1e-6) and RLOO
# ----------------------------------------------------------------------------------------------------
def ref_grpo(scores, eps):
    out = []
    for row in scores:
        k = len(row)
        mean = sum(row) / k
        std = math.sqrt(sum((x - mean) ** 2 for x in row) / (k - 1))
        out.append([(x - mean) / (std + eps) for x in row])
    return out


def ref_rloo(scores):
    out = []
    for row in scores:
        k = len(row)
        out.append([row[i] - sum(row[j] for j in range(k) if j != i) / (k - 1) for i in range(k)])
    return out


grp = (torch.randn(3, 4) * 2.0).tolist()
group_case = {
    "config": {"grpo_eps": 1e-6},
    "inputs": {"scores": grp},
    "outputs": {"grpo": ref_grpo(grp, 1e-6), "rloo": ref_rloo(grp)},
}


golden = {
    "torch_version": torch.__version__,
    "seed": 0,
    "dtype": "float64",
    "B": B,
    "T": T,
    "V": V,
    "logprobs": logprobs_case,
    "kl": kl_case,
    "kl_shaped_rewards": shaped_case,
    "gae": gae_case,
    "whiten": whiten_case,
    "policy_loss": policy_case,
    "value_loss": value_case,
    "dpo": dpo_case,
    "pairwise": bt_case,
    "kwise": kwise_case,
    "group": group_case,
}

out_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden.json")
with open(out_path, "w") as f:
    json.dump(golden, f, separators=(",", ":"))
    f.write("\n")
print(f"wrote {out_path} ({os.path.getsize(out_path)} bytes, torch {torch.__version__})")
