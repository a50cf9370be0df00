"""
grpo.py: Group Relative Policy Optimisation, and nothing about worlds or actions.

SWIRL trains each of its two models with GRPO (Shao et al. 2024, DeepSeekMath). For every prompt
we sample a group of G completions, score each with a reward r_i, and push up the completions that
beat their group. The choices made here, and why:

  - Advantage A_i = (r_i - mean(r_group)) / (std(r_group) + eps), the same for every token of
    completion i. The std is the population std (so a group of size 1 has std 0, not NaN), and a
    group whose std is below `STD_FLOOR` gets exactly zero advantage: its rewards are equal up to
    float noise, and dividing noise by a tiny std would turn it into a huge, random push.
    `scale_rewards=False` gives Dr. GRPO's A_i = r_i - mean (no std division).
  - Loss per token: -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A) + beta * KL_k3, with
    rho = exp(logp - logp_old) against the log-probs at sampling time, and
    KL_k3 = exp(d) - d - 1, d = logp_ref - logp: an unbiased, never-negative estimate of KL(pi || ref).
  - No value network, no reward model: the reward is whatever the caller computed (in SWIRL, the
    other, frozen model's log-likelihood).
  - Reductions (how token losses become one number), as in TRL:
      "grpo":    mean over each sequence's tokens, then mean over sequences (long answers weigh less);
      "dapo":    sum over all tokens / number of tokens in the batch (every token weighs the same);
      "dr_grpo": sum over all tokens / (sequences x completion width), a constant denominator.
    Padding is masked out of every sum and every count.
  - mu > 1 reuses one batch of samples for several gradient steps; the clip keeps those steps close
    to the sampling policy. With mu = 1 the ratio is exactly 1 and only the KL and the advantage
    matter, which is what the paper's setting amounts to.

These settings have one home, GRPOConfig; swirl.SwirlConfig holds one, and the command line reaches
its fields by name (--beta=0.1).

Read next: data.py (how text becomes the tensors this file consumes).
"""

from dataclasses import dataclass

import torch


@dataclass
class GRPOConfig:
    beta: float = 0.1  # weight of the k3 KL to the reference model (the paper's value)
    eps_low: float = 0.2  # clip range below 1 for the ratio rho
    eps_high: float = 0.2  # clip range above 1 (DAPO raises it to let rare tokens grow)
    loss_type: str = "grpo"  # "grpo", "dapo" or "dr_grpo"
    scale_rewards: bool = True  # False = Dr. GRPO advantages (no std division)
    mu: int = 1  # gradient steps per batch of samples
    max_grad_norm: float = 1.0


LOSS_TYPES = ("grpo", "dapo", "dr_grpo")


STD_FLOOR = 1e-6  # a group's rewards whose std is below this are equal (float noise): no signal


def has_signal(rewards, group_size):
    """rewards: (num_prompts * G,) laid out prompt by prompt -> (num_prompts,) bool: the group's rewards differ."""
    return rewards.float().view(-1, group_size).std(dim=1, unbiased=False) >= STD_FLOOR


def group_advantages(rewards, group_size, scale_rewards=True, eps=1e-4):
    """rewards: (num_prompts * G,) laid out prompt by prompt -> advantages of the same shape."""
    if rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.float().view(-1, group_size)  # (P, G)
    mean = r.mean(dim=1, keepdim=True)  # (P, 1)
    std = r.std(dim=1, unbiased=False, keepdim=True)  # (P, 1), 0 for groups of one
    adv = r - mean
    if scale_rewards:
        adv = adv / (std + eps)
    adv = torch.where(has_signal(rewards, group_size).unsqueeze(1), adv, torch.zeros_like(adv))  # equal: no signal
    return adv.view(-1)  # (P * G,)


def k3_kl(logp, ref_logp):
    """Per-token KL_k3 = exp(d) - d - 1 with d = logp_ref - logp. Zero iff logp == logp_ref."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def reduce_tokens(per_token, mask, loss_type, whole=None):
    """Turn a (B, T) tensor of per-token values into one number, counting only mask == 1.

    whole: (sequences, completion tokens, width) of the whole batch when these rows are one micro-batch
    of it; the micro-batches' numbers then add up to the whole batch's. None: these rows are the batch."""
    mask = mask.float()
    n_seqs, n_tokens, width = whole if whole is not None else (mask.size(0), mask.sum(), mask.size(1))
    if loss_type == "grpo":
        per_seq = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (B,)
        return per_seq.sum() / n_seqs
    if loss_type == "dapo":
        return (per_token * mask).sum() / max(1, n_tokens)
    if loss_type == "dr_grpo":
        return (per_token * mask).sum() / (n_seqs * width)
    raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {LOSS_TYPES}")


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, cfg: GRPOConfig, whole=None):
    """The clipped, KL-regularised GRPO loss and its diagnostics (means over these rows' tokens).

    logp: (B, T) log-probs of the sampled tokens under the policy being trained (with grad);
    old_logp: (B, T) the same at sampling time; ref_logp: (B, T) under the frozen reference;
    advantages: (B,); mask: (B, T) 1 on completion tokens; whole: see reduce_tokens."""
    ratio = torch.exp(logp - old_logp)  # rho, (B, T)
    A = advantages.unsqueeze(1)  # (B, 1): one advantage for every token of a completion
    clipped = torch.clamp(ratio, 1 - cfg.eps_low, 1 + cfg.eps_high)
    policy_term = -torch.min(ratio * A, clipped * A)  # (B, T)
    kl = k3_kl(logp, ref_logp)  # (B, T)
    loss = reduce_tokens(policy_term + cfg.beta * kl, mask, cfg.loss_type, whole)
    with torch.no_grad():
        m = mask.float()
        n = m.sum().clamp(min=1)
        was_clipped = ((ratio < 1 - cfg.eps_low) & (A < 0)) | ((ratio > 1 + cfg.eps_high) & (A > 0))
        stats = {"kl": float((kl * m).sum() / n), "clip_frac": float((was_clipped.float() * m).sum() / n)}
    return loss, stats


def grpo_step(policy, reference, optimizer, logprobs_fn, rewards, mask, group_size, cfg: GRPOConfig,
              sync_grads=None, micro_batch=0):
    """One GRPO update on a batch of sampled completions.

    logprobs_fn(model, rows) -> (len(rows), T) per-token log-probs of the sampled completions `rows` (a
    slice of the batch) under `model`, zero outside `mask`, at the sampling temperature (the caller knows
    the prompt layout; we do not). rewards: (B,) with B = num_prompts * group_size, grouped prompt by
    prompt. micro_batch: rows per forward pass (0: all B at once); the gradients of the micro-batches add
    up to the whole batch's, so it changes memory, not the update. Returns a dict of stats.
    sync_grads(policy), when given, runs between backward and clipping (multi-GPU: average the
    gradients over ranks, each of which sampled its own groups)."""
    if cfg.loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {cfg.loss_type!r}; choose one of {LOSS_TYPES}")
    advantages = group_advantages(rewards, group_size, cfg.scale_rewards)  # (B,)
    B = rewards.numel()
    chunks = [slice(i, i + (micro_batch or B)) for i in range(0, B, micro_batch or B)]
    whole = (B, float(mask.sum()), mask.size(1))
    with torch.no_grad():
        # old_logp: the policy that sampled these completions. With mu = 1 it is the very policy the one
        # gradient step differentiates, so its log-probs are taken from that pass (logp.detach() below):
        # the same numbers, one forward pass fewer per step.
        old_logp = [logprobs_fn(policy, rows) for rows in chunks] if cfg.mu > 1 else None
        ref_logp = [logprobs_fn(reference, rows) for rows in chunks] if cfg.beta > 0 else None
    r = rewards.float().view(-1, group_size)
    stats = {
        "reward": float(r.mean()),
        "reward_std": float(r.std(dim=1, unbiased=False).mean()),
        "zero_std_frac": 1 - float(has_signal(rewards, group_size).float().mean()),
    }
    policy.train()
    for _ in range(cfg.mu):
        optimizer.zero_grad(set_to_none=True)
        loss, kl, clip_frac = 0.0, 0.0, 0.0
        for k, rows in enumerate(chunks):
            logp = logprobs_fn(policy, rows)
            old = logp.detach() if old_logp is None else old_logp[k]
            ref = old if ref_logp is None else ref_logp[k]  # beta = 0: the KL term is weighed by 0
            part, part_stats = grpo_loss(logp, old, ref, advantages[rows], mask[rows], cfg, whole)
            part.backward()  # gradients add up over the micro-batches
            share = float(mask[rows].sum()) / max(1.0, whole[1])  # this micro-batch's share of the tokens
            loss += part.item()
            kl += share * part_stats["kl"]
            clip_frac += share * part_stats["clip_frac"]
        if sync_grads is not None:
            sync_grads(policy)
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        optimizer.step()
    stats.update(kl=kl, clip_frac=clip_frac, loss=loss, grad_norm=float(grad_norm))
    return stats
