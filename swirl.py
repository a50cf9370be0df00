"""
swirl.py: the algorithm of the paper, SWIRL, on top of model.py, grpo.py and data.py.

Two language models teach each other on state-only pairs (x, y):
  FWM  P_theta(y | x, z)  writes the next state given a state and an action;
  IDM  Q_phi(z | x, y)    writes the action that explains a change of state.

  run_swirl():
    (optional) state-only pretraining of the FWM on the unlabelled pairs  (pretrain_fwm)
    SFT warm start on the labelled transitions, both directions           (warm_start, sft)
    for each iteration:
      references <- copies of both models as they are now                (reset every iteration)
      Phase I  (FWM, Variational Information Maximisation)                (phase_fwm)
      Phase II (IDM, ELBO maximisation)                                   (phase_idm)
    baselines on the same data: Bootstrap, SFT-continue, best-of-N, oracle SFT
    evaluation on held-out transitions                                    (evaluate)

Simplifications, and why:
  - Phase I infers z with the IDM's greedy output and keeps a pair only when the IDM is confident
    (mean token probability of z >= cfg.confidence), as the authors' code does (with its own threshold);
    the real y never enters the reward.
  - Rewards are length-normalised log-likelihoods (mean per-token log-prob of the scored span),
    clamped below at -10, from the authors' code: long states would otherwise dominate the scale.
  - In each phase the model that gives the reward is a frozen copy of the other role taken when the
    phase starts. With two models this changes nothing (the other model is not trained in that phase);
    with shared weights (one model, two roles) it keeps the reward from moving while the policy moves.
  - One fresh AdamW per phase; a fixed number of GRPO steps per phase, each on `prompts_per_step`
    random unlabelled pairs with `group_size` samples each (the paper's "one epoch per phase" becomes
    "steps_per_phase" so a run's cost is known in advance).
  - Optional (max_draws > 1; the toy's default): DAPO's dynamic sampling. A group whose G rewards are
    equal teaches nothing, so a step draws more prompts until prompts_per_step groups have a reward
    spread, up to max_draws batches (groups_with_signal).
  - Optional (phase_eval_every > 0; the toy's and the text presets'): each phase keeps its best weights on the held-out
    labelled split, the same selection that early stopping gives SFT and Bootstrap (BestWeights).

Read next: train_toy.py (the toy end to end), train_llm.py (text states).
"""

import copy
import math
import random
import sys
from dataclasses import dataclass, field, replace

import torch
from tqdm import tqdm

from common import COMBINED, all_reduce_grads, format_row, format_samples, format_stats, rank_and_processes
from data import collate, completion, with_action
from grpo import GRPOConfig, grpo_step, has_signal
from model import copy_model, generate, span_logprobs


@dataclass
class SwirlConfig:
    # SFT warm start (and the SFT-based baselines)
    sft_lr: float = 3e-3  # peak; warmup then cosine decay to sft_lr / 10 over the run's steps
    sft_warmup: int = 100
    sft_batch: int = 32
    grad_accum: int = 1  # SFT: split each batch into this many micro-batches (same gradient, less memory)
    sft_max_steps: int = 6000  # a cap, and the cosine's horizon; early stopping should end SFT well before it
    sft_eval_every: int = 250  # steps between checks on the held-out labelled split
    sft_patience: int = 4  # checks without improvement before early stopping
    idm_sft_max_steps: int = 0  # > 0: the IDM's own cap and cosine horizon (two models); 0: sft_max_steps for both
    pretrain_steps: int = 0  # state-only pretraining of the FWM before SFT (see pretrain_fwm); 0: none
    finetune_lr: float = 3e-4  # SFT's peak lr for a pretrained model (fine-tuning, not learning from scratch)
    idm_from_pretrained: bool = False  # with pretrain_steps > 0: the IDM starts from the pretrained FWM's weights
    # (both roles from one pretrained model, as in the paper) instead of from scratch; its SFT keeps sft_lr
    # SWIRL iterations
    iterations: int = 2
    phases: str = "both"  # "both", "fwm" (Phase I only) or "idm" (Phase II only)
    shared: bool = False  # one model plays both roles (the role is named in the prompt)
    steps_per_phase: int = 100  # GRPO steps in each phase; 0: one pass over the phase's pairs, as the paper does
    phase_eval_every: int = 0  # > 0: check the held-out labelled split every so many GRPO steps and keep each
    # phase's best weights (the start included), as early stopping keeps SFT's; sft_continue then checks as
    # often. 0: each phase ends at its last step, as in the paper
    prompts_per_step: int = 16  # real pairs (x, y) per GRPO step
    max_draws: int = 1  # DAPO's dynamic sampling (groups_with_signal): up to this many batches of prompts_per_step
    # prompts drawn per step until prompts_per_step groups have a reward spread; 1: plain GRPO, as the paper
    group_size: int = 8  # G: samples per prompt
    lr: float = 1e-4  # GRPO learning rate (peak)
    lr_schedule: str = "constant"  # over each phase's steps: "constant", or "cosine" (to 0, the paper's)
    lr_warmup: int = 0  # GRPO steps of linear warm-up at the start of each phase
    temperature: float = 1.0  # sampling temperature of GRPO's groups (log-probs are taken at the same one)
    top_p: float = 0.96
    confidence: float = 0.9  # Phase I and Bootstrap keep pairs whose IDM action has mean token prob >= this
    # (the authors' code keeps mean token log-prob >= -2, a probability of exp(-2) = 0.135: the text presets')
    reward_floor: float = -10.0  # rewards are clamped below at this value
    # evaluation and baselines
    best_of: str = "2,4,8"  # N for test-time verification
    micro_batch: int = 256  # rows per forward pass when sampling, scoring and in GRPO's update: memory, not maths
    truncate: bool = False  # cut states that do not fit in block_size instead of raising
    # the GRPO update itself (beta, clipping, loss reduction): grpo.py's settings, reached as --beta=... too
    grpo: GRPOConfig = field(default_factory=GRPOConfig)


# ----------------------------------------------------------------------------------------------------
# The two roles: what each model is asked to do, on lists of transitions


def device_of(model):
    return next(model.parameters()).device


def frozen_copy(model):
    """A copy that no optimiser will ever see: a reference or a reward model."""
    return copy_model(model).eval().requires_grad_(False)


def mean_logprob(model, prompts, targets, temperature=1.0, allowed_ids=None, batch=256):
    """Length-normalised log-likelihood of each target given its prompt: mean_t log p(target_t | ...)."""
    out = []
    for i in range(0, len(prompts), batch):
        ids, _, span = collate(prompts[i : i + batch], targets[i : i + batch], device=device_of(model), side="right")
        with torch.no_grad():
            lp = span_logprobs(model, ids, None, span, temperature, allowed_ids)  # (B, T)
        out.append(lp.sum(1) / span.sum(1).clamp(min=1))
    return torch.cat(out)  # (N,)


def sample_completions(model, codec, prompts, max_new, allowed_ids, temperature=0.0, top_p=None, n=1,
                       generator=None, batch=256):
    """Generate n completions per prompt (temperature 0 = greedy). Returns a list of token lists
    (each ending in <|end|> unless cut at max_new), n per prompt, prompt by prompt."""
    out = []
    per_call = max(1, batch // n)
    for i in range(0, len(prompts), per_call):
        ids, attn, _ = collate(prompts[i : i + per_call], pad_id=codec.tok.pad_id, device=device_of(model))
        toks, mask = generate(model, ids, attn, max_new, codec.tok.end_id, codec.tok.pad_id, temperature,
                              top_p=top_p, allowed_ids=allowed_ids, generator=generator, num_samples=n)
        out += [row[:length] for row, length in zip(toks.tolist(), mask.sum(dim=1).tolist())]
    return out


def infer_actions(idm, codec, pairs):
    """z = greedy IDM(x, y) for each pair, and the IDM's confidence: exp(mean token log-prob of z)."""
    prompts = [codec.idm_example(p.x, p.y, source=p.source)[0] for p in pairs]
    z_toks = sample_completions(idm, codec, prompts, codec.max_action_tokens, codec.action_ids)
    conf = mean_logprob(idm, prompts, z_toks, allowed_ids=codec.action_ids).exp()
    return [codec.tok.decode(z) for z in z_toks], conf


def predict_states(fwm, codec, xs, zs):
    """y = greedy FWM(x, z) for each state and action."""
    prompts = [codec.fwm_example(x, z)[0] for x, z in zip(xs, zs)]
    return [codec.tok.decode(y)
            for y in sample_completions(fwm, codec, prompts, codec.max_state_tokens, codec.state_ids)]


# ----------------------------------------------------------------------------------------------------
# The two phases of one SWIRL iteration


def phase_fwm(fwm, idm, ref_fwm, codec, pairs, cfg, rng, generator, desc="phase I (FWM)", opt=None, val_score=None):
    """Phase I, Variational Information Maximisation, updates the FWM:

        z        = argmax Q_phi(. | x, y)          (frozen IDM, greedy; confident pairs only)
        y_hat_k  ~ P_theta(. | x, z),  k = 1..G
        r_k      = log Q_phi(z | x, y_hat_k)       (length-normalised, clamped at reward_floor)
        maximise E[r] - beta KL(P_theta || P_ref) with GRPO   (beta = cfg.grpo.beta, P_ref = ref_fwm)

    a Barber-Agakov lower bound on I(Z; Y_hat | X): the FWM learns to write next states from which the
    action can be read back. The real y is used only to infer z.
    val_score: the FWM's score on held-out labelled transitions; with it the phase keeps its best check
    (BestWeights, every cfg.phase_eval_every steps, the start included), as SFT keeps its best step."""
    reward_idm = frozen_copy(idm)
    z, conf = infer_actions(reward_idm, codec, pairs)
    confident = [(p, zi) for p, zi, c in zip(pairs, z, conf.tolist()) if c >= cfg.confidence]
    log = {"pairs": len(confident), "kept_frac": len(confident) / max(1, len(pairs)),
           **action_stats([zi for _, zi in confident], codec)}
    if not confident:
        return log
    opt = opt or new_optimizer(fwm, cfg)
    G = cfg.group_size

    def groups(batch):  # G next states for each confident (x, z), and their rewards
        prompts = [codec.fwm_example(p.x, zi, source=p.source)[0] for p, zi in batch]
        y_hat = sample_completions(fwm, codec, prompts, codec.max_state_tokens, codec.state_ids, cfg.temperature,
                                   cfg.top_p, G, generator, batch=cfg.micro_batch)
        # r_k = log Q_phi(z | x, y_hat_k), length-normalised, clamped at reward_floor
        reward_prompts = [codec.idm_example(p.x, codec.tok.decode(y), source=p.source)[0]
                          for k, (p, _) in enumerate(batch) for y in y_hat[k * G : (k + 1) * G]]
        reward_targets = [codec.action_target(zi) for _, zi in batch for _ in range(G)]
        rewards = mean_logprob(reward_idm, reward_prompts, reward_targets, allowed_ids=codec.action_ids,
                               batch=cfg.micro_batch)
        return prompts, y_hat, rewards.clamp(min=cfg.reward_floor)

    stats, best = [], BestWeights(fwm, val_score, cfg.phase_eval_every, at_start=True)
    batches = phase_batches(confident, cfg, rng)
    for step, batch in enumerate(tqdm(batches, desc=desc, leave=False, file=sys.stdout, disable=None), start=1):
        set_lr(opt, step, len(batches), cfg)
        prompts, y_hat, rewards, drawn = groups_with_signal(groups, batch, confident, cfg, rng)
        stats.append({**drawn, **policy_update(fwm, ref_fwm, opt, [p for p in prompts for _ in range(G)], y_hat,
                                               rewards, codec.state_ids, cfg)})
        best.check_if_due(step, len(batches))
    return {**log, "steps": len(batches), **mean_stats(stats), **best.restore()}


def phase_idm(idm, fwm, ref_idm, codec, pairs, cfg, rng, generator, desc="phase II (IDM)", opt=None, val_score=None):
    """Phase II, ELBO maximisation, updates the IDM:

        z_k  ~ Q_phi(. | x, y),  k = 1..G
        r_k  = log P_theta(y | x, z_k)             (frozen FWM; length-normalised, clamped)
        maximise E[r] - beta KL(Q_phi || Q_ref) with GRPO     (beta = cfg.grpo.beta, Q_ref = ref_idm)

    With a raw sequence-level reward, a sequence-level KL and beta = 1 this would be the evidence lower
    bound on log P(y | x); under GRPO's per-token means and std-normalised advantages it is not, and
    beta is a KL weight to tune. val_score: as in phase_fwm."""
    reward_fwm = frozen_copy(fwm)
    opt = opt or new_optimizer(idm, cfg)
    G = cfg.group_size

    def groups(batch):  # G actions for each real pair (x, y), and their rewards
        prompts = [codec.idm_example(p.x, p.y, source=p.source)[0] for p in batch]
        z = sample_completions(idm, codec, prompts, codec.max_action_tokens, codec.action_ids, cfg.temperature,
                               cfg.top_p, G, generator, batch=cfg.micro_batch)
        # r_k = log P_theta(y | x, z_k), length-normalised, clamped at reward_floor
        reward_prompts = [codec.fwm_example(p.x, codec.tok.decode(zk), source=p.source)[0]
                          for k, p in enumerate(batch) for zk in z[k * G : (k + 1) * G]]
        reward_targets = [completion(codec.tok, p.y) for p in batch for _ in range(G)]
        rewards = mean_logprob(reward_fwm, reward_prompts, reward_targets, allowed_ids=codec.state_ids,
                               batch=cfg.micro_batch)
        return prompts, z, rewards.clamp(min=cfg.reward_floor)

    stats, best, written = [], BestWeights(idm, val_score, cfg.phase_eval_every, at_start=True), []
    batches = phase_batches(pairs, cfg, rng)
    for step, batch in enumerate(tqdm(batches, desc=desc, leave=False, file=sys.stdout, disable=None), start=1):
        set_lr(opt, step, len(batches), cfg)
        prompts, z, rewards, drawn = groups_with_signal(groups, batch, pairs, cfg, rng)
        stats.append({**drawn, **policy_update(idm, ref_idm, opt, [p for p in prompts for _ in range(G)], z, rewards,
                                               codec.action_ids, cfg)})
        written += [codec.tok.decode(zk) for zk in z]
        best.check_if_due(step, len(batches))
    return {"pairs": len(pairs), "steps": len(batches), **action_stats(written, codec), **mean_stats(stats),
            **best.restore()}


def groups_with_signal(groups, batch, pool, cfg, rng):
    """DAPO's dynamic sampling (Yu et al. 2025): the groups of one GRPO step, each with a reward spread.

    A group whose G rewards are equal has zero advantage (grpo.group_advantages): it teaches nothing. So
    while fewer than len(batch) of the groups drawn so far have a spread, draw another batch of prompts
    from pool, up to cfg.max_draws batches in all; groups(batch) samples and rewards them (G rows a prompt).
    The step takes the groups with a spread and, where the cap left fewer than len(batch), fills up with
    equal-reward groups (only their KL term acts), all in the order drawn: every step has len(batch)
    groups, so that ranks under torchrun stay in step, and max_draws = 1 is plain GRPO on the batch.
    Returns (prompts, completions, rewards) of the chosen groups and the step's draw stats:
    prompts_drawn, signal_frac (the share of the drawn groups with a spread), capped (1: the cap was hit)."""
    G, want = cfg.group_size, len(batch)
    prompts, completions, rewards, spread = [], [], [], []  # spread: the drawn groups' rewards differ
    for draw in range(cfg.max_draws):
        if draw:
            batch = rng.sample(pool, want)
        p, c, r = groups(batch)
        prompts, completions, rewards = prompts + p, completions + c, rewards + list(r.view(-1, G))
        spread += has_signal(r, G).tolist()  # this draw's groups only: the earlier ones are known
        if sum(spread) >= want:
            break
    with_spread = [k for k, s in enumerate(spread) if s][:want]
    fill = [k for k, s in enumerate(spread) if not s][: want - len(with_spread)]
    chosen = sorted(with_spread + fill)  # the order drawn
    stats = {"prompts_drawn": len(spread), "signal_frac": sum(spread) / len(spread),
             "capped": float(len(with_spread) < want)}
    return ([prompts[k] for k in chosen], [y for k in chosen for y in completions[k * G : (k + 1) * G]],
            torch.cat([rewards[k] for k in chosen]), stats)


def policy_update(policy, reference, opt, prompts, completions, rewards, allowed_ids, cfg):
    """One GRPO step (grpo.py): log-probs of the sampled completions at the sampling temperature, under
    the same logit mask they were sampled with, micro_batch rows per forward pass."""
    ids, _, span = collate(prompts, completions, device=device_of(policy), side="right")

    def logprobs(model, rows):
        return span_logprobs(model, ids[rows], None, span[rows], cfg.temperature, allowed_ids)

    return grpo_step(policy, reference, opt, logprobs, rewards.to(ids.device), span, cfg.group_size, cfg.grpo,
                     sync_grads=all_reduce_grads, micro_batch=cfg.micro_batch)


def new_optimizer(model, cfg):
    """One fresh AdamW per phase (its moments belong to the previous phase's objective)."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)


def set_lr(opt, step, n_steps, cfg):
    """GRPO's rate at this step of the phase: linear warm-up over lr_warmup steps, then constant or cosine to 0."""
    if step <= cfg.lr_warmup:
        lr = cfg.lr * step / (cfg.lr_warmup + 1)
    elif cfg.lr_schedule == "cosine":
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - 1 - cfg.lr_warmup) / max(1, n_steps - cfg.lr_warmup)))
    else:
        lr = cfg.lr
    for group in opt.param_groups:
        group["lr"] = lr


def phase_batches(items, cfg, rng):
    """The prompts of each GRPO step of a phase. steps_per_phase > 0: that many steps, each a random sample of
    prompts_per_step items; 0: one pass over the items in a random order, as the paper's one epoch per phase.
    Under torchrun the prompts of a step are split across ranks; each samples its own groups."""
    per_step = max(1, cfg.prompts_per_step // rank_and_processes()[1])
    if cfg.steps_per_phase:
        return [rng.sample(items, min(per_step, len(items))) for _ in range(cfg.steps_per_phase)]
    order = rng.sample(items, len(items))
    return [order[i : i + per_step] for i in range(0, len(order), per_step)]


def action_stats(actions, codec):
    """The paper's reward-hacking check: how many distinct actions, how long (tokens), and the share never
    seen among the labelled actions (actions turning into short codes would show in all three)."""
    if not actions:
        return {}
    return {"actions_distinct": len(set(actions)),
            "action_tokens": sum(len(codec.tok.encode(a)) for a in actions) / len(actions),
            "actions_unseen": sum(a not in codec.known_actions for a in actions) / len(actions)}


def mean_stats(stats):
    """The mean of each statistic over a phase's steps."""
    return {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]} if stats else {}


# ----------------------------------------------------------------------------------------------------
# SFT: minimise -log P(target | prompt) on the target's tokens only, early-stopped on held-out labels


def sft_loss(model, examples):
    ids, _, span = collate([p for p, _ in examples], [t for _, t in examples], device=device_of(model), side="right")
    lp = span_logprobs(model, ids, None, span)  # (B, T), zero off the target
    return -lp.sum() / span.sum()  # mean over target tokens


def sft(model, examples, val_score, cfg, rng, steps=None, desc="sft", keep_start=False):
    """Supervised fine-tuning on (prompt, target) token lists.

    steps=None: train until val_score() (a tuple, higher is better) has not improved for sft_patience checks,
    then restore the best weights ("trained to convergence, early-stopped on held-out labels").
    steps=N: exactly N steps (the SFT-continue control); with a val_score the weights of the best check,
    the start included, are kept, as each SWIRL phase keeps its own (see BestWeights); val_score=None
    (pretraining) or sft_eval_every=0 keeps the last step. keep_start: the start is a candidate of early
    stopping too (Bootstrap's SFT, which starts from trained models). Returns (steps taken, optimiser).
    Under torchrun every rank draws its own batch (rng differs per rank) and gradients are averaged."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr, weight_decay=0.0)
    micro = max(1, cfg.sft_batch // cfg.grad_accum)
    best = BestWeights(model, val_score, cfg.sft_eval_every, at_start=keep_start or steps is not None)
    since_best = 0
    n_steps = steps if steps is not None else cfg.sft_max_steps
    bar = tqdm(range(1, n_steps + 1), desc=desc, leave=False, file=sys.stdout, disable=None)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = sft_lr_at(step, n_steps, cfg)
        model.train()
        batch = rng.sample(examples, min(cfg.sft_batch, len(examples)))
        opt.zero_grad(set_to_none=True)
        for i in range(0, len(batch), micro):  # gradient accumulation: the mean over the whole batch
            loss = sft_loss(model, batch[i : i + micro])
            (loss * len(batch[i : i + micro]) / len(batch)).backward()
        all_reduce_grads(model)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if best.due(step, n_steps):
            since_best = 0 if best.check(step) else since_best + 1
            bar.set_postfix(loss=f"{loss.item():.3f}", val=f"{best.score[0]:.3f}")
            if steps is None and since_best >= cfg.sft_patience:
                break
    if steps is None and rank_and_processes()[0] == 0:
        # early stopping should end SFT; if the cap did, the model may still have been learning
        cap = "the step cap (--sft_max_steps; the IDM's: --idm_sft_max_steps): raise it"
        how = "early stopping" if since_best >= cfg.sft_patience else cap
        print(f"{desc}: stopped at step {step} by {how}; kept step {best.step} (best held-out score)")
    best.restore()
    return step, opt


class BestWeights:
    """Model selection on the held-out labelled split: the weights with the best val_score so far.
    Every method that trains gets it: SFT, Bootstrap and the oracle through early stopping, and (with
    phase_eval_every > 0) each SWIRL phase and sft_continue through a check every so many steps, so no
    method wins by being selected while another is not. at_start: score the weights before any update
    too, so that a phase (or a continuation) that only makes the held-out score worse is undone.
    val_score=None or every=0: no checks, and restore() keeps the last step."""

    def __init__(self, model, val_score, every, at_start=False):
        self.model, self.val_score, self.every = model, val_score, (every if val_score is not None else 0)
        self.score = self.state = None
        self.step = 0
        if at_start and self.every:
            self.check(0)

    def due(self, step, last_step):
        return bool(self.every) and (step % self.every == 0 or step == last_step)

    def check(self, step):
        """Score the model now; remember its weights if they are the best so far. Returns True if so."""
        self.model.eval()
        score = self.val_score(self.model)
        if self.score is not None and score <= self.score:
            return False
        self.score, self.state, self.step = score, copy.deepcopy(self.model.state_dict()), step
        return True

    def check_if_due(self, step, last_step):
        if self.due(step, last_step):
            self.check(step)

    def restore(self):
        """Load the best weights. Returns, for a phase's stats line, the step they are from (0: undone)."""
        if self.state is not None:
            self.model.load_state_dict(self.state)
        self.model.eval()
        return {"kept_step": self.step} if self.every else {}


def sft_lr_at(step, n_steps, cfg):
    """Linear warmup, then cosine decay to a tenth of the peak at n_steps (as nanoGPT does). The decay
    is what makes the small FWM settle: at a constant rate its exact match swings from run to run."""
    if step < cfg.sft_warmup:
        return cfg.sft_lr * step / cfg.sft_warmup
    progress = (step - cfg.sft_warmup) / max(1, n_steps - cfg.sft_warmup)
    return cfg.sft_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


PRETRAIN_WORDS_PER_PAIR = 4  # random action words each unlabelled pair is shown with in pretrain_fwm


def pretrain_fwm(fwm, codec, labelled, pairs, cfg, rng, renamer=None):
    """State-only pretraining: the FWM learns to write y from x on state-only pairs (the unlabelled
    ones, or a corpus of their own: run_swirl's pretrain_pairs), the action unknown.
    The paper starts from pretrained LLMs, which already write plausible next states and only have to learn
    what the actions do; this is the stand-in (the toy's and the text presets'). It uses no action label: each
    pair is shown with PRETRAIN_WORDS_PER_PAIR action words drawn at random from the labelled split, so the
    FWM learns to copy the state and that the action word says nothing (SFT then teaches what it says). A
    placeholder word such as "?" would not do: it shifts x to other positions than real action words do,
    and the small FWM's copying is tied to positions, so SFT on real actions would have to learn it again
    (NOTES.md, "How the FWM is pretrained matters").
    renamer (data.Renamer, ScienceWorld's recipe): each of a pair's examples has its words renamed, its own
    renaming, drawn once here."""
    words = [t.action for t in labelled]
    vocab = renamer.words(pairs) if renamer else None
    examples = []
    for t in pairs:
        for _ in range(PRETRAIN_WORDS_PER_PAIR):
            x, y, source = renamer.pair(t, vocab, rng) if renamer else (t.x, t.y, t.source)
            examples.append(codec.fwm_example(x, rng.choice(words), y, source))
    sft(fwm, examples, None, cfg, rng, steps=cfg.pretrain_steps, desc="pretrain FWM")


def warm_start(fwm, idm, codec, labelled, val, cfg, rng, steps=None, desc="sft", renamer=None, keep_start=False):
    """SFT in both directions on labelled transitions: the FWM on y's tokens given (x, z), the IDM on z's
    tokens given (x, y). With shared weights one model learns both. A pretrained FWM (or shared model) is
    fine-tuned at cfg.finetune_lr, as pretrained models are; sft_lr is the rate for learning from scratch.
    renamer (data.Renamer, ScienceWorld's recipe): the FWM also sees each triple once more, renamed.
    keep_start: early stopping may keep the models as they came (see sft).
    Returns (update steps taken, {role: optimiser}) (the optimisers go into checkpoints)."""
    fwm_data = (labelled + renamer.copies(labelled, rng)) if renamer else labelled
    fwm_ex = [codec.fwm_example(t.x, t.action, t.y, t.source) for t in fwm_data]
    idm_ex = [codec.idm_example(t.x, t.y, t.action, t.source) for t in labelled]
    fwm_cfg = replace(cfg, sft_lr=cfg.finetune_lr) if cfg.pretrain_steps else cfg
    if fwm is idm:
        n, opt = sft(fwm, fwm_ex + idm_ex, val_scorer(codec, val, "both"), fwm_cfg, rng, steps, desc, keep_start)
        return n, {"shared": opt}
    idm_cfg = replace(cfg, sft_max_steps=cfg.idm_sft_max_steps) if cfg.idm_sft_max_steps else cfg
    n_fwm, opt_fwm = sft(fwm, fwm_ex, val_scorer(codec, val, "fwm"), fwm_cfg, rng, steps, desc + " FWM", keep_start)
    n_idm, opt_idm = sft(idm, idm_ex, val_scorer(codec, val, "idm"), idm_cfg, rng, steps, desc + " IDM", keep_start)
    return n_fwm + n_idm, {"fwm": opt_fwm, "idm": opt_idm}


# ----------------------------------------------------------------------------------------------------
# The whole run: warm start, iterations, baselines


@dataclass
class RunState:
    """What run_swirl carries from one stage to the next; a checkpoint saves it, a resume refills it."""

    fwm: object
    idm: object  # the same object as fwm with shared weights
    init: tuple  # (fwm, idm) before SFT: every SFT baseline, the oracle included, starts from these
    rng: random.Random  # batches of SFT and GRPO
    generator: torch.Generator  # sampling
    sft_models: tuple = None  # (fwm, idm) after SFT: the baselines start from these
    refs: tuple = None  # this iteration's references (the KL anchors)
    stages: list = field(default_factory=list)  # [{"stage": name, metrics}] so far
    swirl_steps: int = 0  # GRPO update steps so far (sft_continue spends as many)


def copy_pair(fwm, idm):
    """Copies of both models (one copy when they are one model)."""
    fwm_copy = copy_model(fwm)
    return (fwm_copy, fwm_copy) if fwm is idm else (fwm_copy, copy_model(idm))


def run_swirl(cfg, codec, new_model, labelled, val, unlabelled, test, seed=0, idm_counted=None,
              extra_metrics=None, unlabelled_truth=None, pretrain_pairs=None, checkpoint=None, resume=None,
              stop_after=None, renamer=None, log=print):
    """SFT, SWIRL iterations and the baselines on one seed. Returns (stages, (fwm, idm)) with stages a
    list of {"stage": name, metrics}.

    labelled / val / test: transitions with actions; unlabelled: without (SWIRL never sees their actions).
    unlabelled_truth: the same unlabelled transitions with their true actions, for the oracle only.
    pretrain_pairs: state-only pairs for pretrain_fwm (None: the unlabelled pairs).
    new_model(): a freshly initialised GPT.
    checkpoint(name, run, optimizers): called after SFT and after each phase with the RunState;
    resume(run): refills a fresh RunState from a checkpoint, so that an interrupted run goes on where it
    stopped, with the same random streams, and ends with the numbers of a run never interrupted.
    stop_after: a stage name; return right after that stage (and its checkpoint).
    renamer: a data.Renamer (a data set's trick, not SWIRL's): every SFT and pretraining of the FWM sees renamed
    copies too (pretrain_fwm, warm_start)."""
    check_stop_after(cfg, stop_after)
    rank, _ = rank_and_processes()
    # every rank starts from the same weights, but draws its own batches and samples
    torch.manual_seed(seed)
    rng = random.Random(seed + 1000 * rank)
    gen = torch.Generator(device=codec.state_ids.device).manual_seed(seed + 1000 * rank)
    fwm = new_model()
    idm = fwm if cfg.shared else new_model()
    if cfg.pretrain_steps and resume is None:
        corpus, what = (unlabelled, "unlabelled") if pretrain_pairs is None else (pretrain_pairs, "pretraining")
        log(f"state-only pretraining of the FWM on {len(corpus)} {what} pairs ({cfg.pretrain_steps} steps)")
        pretrain_fwm(fwm, codec, labelled, corpus, cfg, rng, renamer)
        if cfg.idm_from_pretrained and idm is not fwm:
            # The paper's two roles start from the same pretrained LLM. Here the state-only pretrained FWM is
            # that model: it has learned to copy x into y's positions, so at each of y's tokens in the IDM's
            # prompt it already "expects" x's token, which is where a change (the action's trace) shows.
            # From scratch the CPU preset's IDM stayed at its majority floor (NOTES.md, "The IDM started
            # from the pretrained FWM").
            log("the IDM starts from the pretrained FWM's weights")
            idm.load_state_dict(fwm.state_dict())
    run = RunState(fwm, idm, copy_pair(fwm, idm), rng, gen)
    if resume is not None:
        resume(run)
        log(f"resuming after stage {run.stages[-1]['stage']}")
    fwm, idm = run.fwm, run.idm  # from here on trained in place
    done = {s["stage"] for s in run.stages}

    def record(name, fwm, idm, **kw):
        run.stages.append({"stage": name, **evaluate(fwm, idm, codec, test, idm_counted, extra_metrics, cfg=cfg,
                                                     generator=gen, **kw)})
        log(format_row(run.stages[-1]))

    def save(name, optimizers):
        if checkpoint:
            checkpoint(name, run, optimizers)
        return name == stop_after

    if "sft" not in done:
        log(f"SFT warm start on {len(labelled)} labelled transitions (early-stopped on {len(val)} held-out ones)")
        _, opts = warm_start(fwm, idm, codec, labelled, val, cfg, rng, renamer=renamer)
        record("sft", fwm, idm)
        run.sft_models = copy_pair(fwm, idm)
        if save("sft", opts):
            return run.stages, (fwm, idm)

    for it in range(1, cfg.iterations + 1):
        for role in ("fwm", "idm"):
            name = f"swirl_it{it}_{role}"
            if cfg.phases not in ("both", role) or name in done:
                continue
            if role == "fwm" or cfg.phases == "idm":
                # references: the models as they were at the start of this iteration
                run.refs = (frozen_copy(fwm), None) if cfg.shared else (frozen_copy(fwm), frozen_copy(idm))
            ref = run.refs[0] if cfg.shared or role == "fwm" else run.refs[1]
            opt = new_optimizer(fwm if role == "fwm" else idm, cfg)
            val_score = val_scorer(codec, val, role) if cfg.phase_eval_every else None  # BestWeights' checks
            if role == "fwm":
                stats = phase_fwm(fwm, idm, ref, codec, unlabelled, cfg, rng, gen, f"it{it} phase I (FWM)", opt,
                                  val_score=val_score)
                run.swirl_steps += stats["steps"] if "reward" in stats else 0
            else:
                stats = phase_idm(idm, fwm, ref, codec, unlabelled, cfg, rng, gen, f"it{it} phase II (IDM)", opt,
                                  val_score=val_score)
                run.swirl_steps += stats["steps"]
            log(f"  it{it} phase {'I ' if role == 'fwm' else 'II'} stats: " + format_stats(stats))
            warn_if_idle(stats, role, cfg, log)
            record(name, fwm, idm)
            if save(name, {role: opt}):
                return run.stages, (fwm, idm)

    log("baselines")
    run_baselines(cfg, codec, run, labelled, val, unlabelled, unlabelled_truth, record, log, renamer)
    return run.stages, (fwm, idm)


def stop_stages(cfg):
    """The stages a run can stop after (run_swirl's stop_after), in order: SFT and each SWIRL phase; the
    baselines run together, after the last phase."""
    return ["sft"] + [f"swirl_it{it}_{role}" for it in range(1, cfg.iterations + 1) for role in ("fwm", "idm")
                      if cfg.phases in ("both", role)]


def check_stop_after(cfg, stop_after):
    """One clear error for a stop_after that names no stage of this run, which would otherwise run to the end."""
    if stop_after and stop_after not in stop_stages(cfg):
        raise ValueError(f"--stop_after={stop_after} names no stage of this run. Fix: one of "
                         + ", ".join(stop_stages(cfg)) + ', or "" to run everything (the baselines included).')


def warn_if_idle(stats, role, cfg, log):
    """One loud line when a phase could not learn (no pair passed the filter, no group had a signal) or
    when dynamic sampling hit its cap (some steps had fewer groups with a signal than asked for)."""
    phase = "I" if role == "fwm" else "II"
    if not stats.get("pairs"):
        log(f"  WARNING: phase I kept no pair: the IDM's action never had a mean token probability >= "
            f"--confidence={cfg.confidence:.3g}, so the FWM made no update")
    elif stats.get("zero_std_frac") == 1.0:
        log(f"  WARNING: every group of phase {phase} had equal rewards (its G samples alike "
            "or scored alike): no step had a learning signal")
    elif cfg.max_draws > 1 and stats.get("capped"):
        log(f"  WARNING: {stats['capped']:.0%} of phase {phase}'s steps drew --max_draws={cfg.max_draws} batches of "
            f"prompts and still had fewer than {cfg.prompts_per_step} groups with a reward spread; groups with "
            f"equal rewards (zero advantage) filled the rest (zero_std_frac={stats['zero_std_frac']:.2f})")


def run_baselines(cfg, codec, run, labelled, val, unlabelled, unlabelled_truth, record, log, renamer):
    """The paper's baselines, each from the same SFT models and selected on the same held-out labels, then
    SWIRL with Bootstrap (ours, not the paper's)."""

    def bootstrap(name, start):  # Bootstrap's SFT from copies of start, on the confident labels of start's IDM
        fwm, idm = copy_pair(*start)
        pseudo, kept_idx = pseudo_label(idm, codec, unlabelled, cfg)
        log(f"{name}: " + pseudo_label_report(pseudo, kept_idx, unlabelled, unlabelled_truth, cfg))
        # keep_start: where the labels only make the held-out score worse (a weak IDM's labels are mostly
        # wrong: 33% right on one toy seed), early stopping keeps the models it started from, as a SWIRL
        # phase keeps its start
        warm_start(fwm, idm, codec, labelled + pseudo, val, cfg, run.rng, desc=name, renamer=renamer,
                   keep_start=True)
        record(name, fwm, idm)

    # Bootstrap: SFT again on the labelled data plus the SFT IDM's confident labels of the unlabelled pairs
    bootstrap("bootstrap", run.sft_models)
    # SFT-continue: as many extra update steps on the labelled data as SWIRL took, split like SWIRL's, at
    # SWIRL's learning rate and with its checks on the held-out split, so that only the objective differs
    # (at SFT's peak rate the converged toy FWM got worse: NOTES.md, "`sft_continue` now runs at SWIRL's learning rate").
    cont_fwm, cont_idm = copy_pair(*run.sft_models)
    per_model = run.swirl_steps if cfg.shared else max(1, run.swirl_steps // 2)
    at_swirl_lr = replace(cfg, sft_lr=cfg.lr, finetune_lr=cfg.lr, sft_eval_every=cfg.phase_eval_every)
    warm_start(cont_fwm, cont_idm, codec, labelled, val, at_swirl_lr, run.rng, steps=per_model, desc="sft_continue",
               renamer=renamer)
    record("sft_continue", cont_fwm, cont_idm)
    # test-time verification: the SFT FWM samples N next states, the SFT IDM picks one
    for n in parse_best_of(cfg.best_of):
        record(f"best_of_{n}", *run.sft_models, best_of=n)
    # the oracle: SFT that also sees the unlabelled pairs' true actions (the toy knows them): the ceiling
    if unlabelled_truth is not None:
        oracle_fwm, oracle_idm = run.init
        warm_start(oracle_fwm, oracle_idm, codec, labelled + unlabelled_truth, val, cfg, run.rng, desc="oracle",
                   renamer=renamer)
        record("oracle", oracle_fwm, oracle_idm)
    # SWIRL with Bootstrap: Bootstrap's SFT after SWIRL, from SWIRL's final models and on their IDM's labels.
    # The two fix different errors (SWIRL where the agent goes, Bootstrap what real next states teach), and
    # SWIRL's IDM reads more actions right than SFT's. Where the labels do harm, keep_start leaves SWIRL's
    # models as they were (NOTES.md, "SWIRL with Bootstrap"). Last, so that every row above draws the random
    # numbers it drew without it.
    if cfg.iterations:
        bootstrap(COMBINED, (run.fwm, run.idm))  # "swirl+bootstrap"


def pseudo_label(idm, codec, unlabelled, cfg):
    """Bootstrap's data: the unlabelled pairs with the IDM's greedy action, confident ones only.
    Returns (those pairs, their indices in unlabelled)."""
    z, conf = infer_actions(idm, codec, unlabelled)
    kept_idx = [k for k, c in enumerate(conf.tolist()) if c >= cfg.confidence]
    return [with_action(unlabelled[k], z[k]) for k in kept_idx], kept_idx


def pseudo_label_report(pseudo, kept_idx, unlabelled, truth, cfg):
    """How many pairs Bootstrap labelled and, when the hidden actions are known (the toy), how many of its
    labels are right: the filter is meant to keep the right ones. A report only; nothing trains on truth."""
    text = f"the IDM labelled {len(pseudo)} of {len(unlabelled)} unlabelled pairs with confidence >= {cfg.confidence}"
    if truth is not None and pseudo:
        right = sum(p.action == truth[k].action for p, k in zip(pseudo, kept_idx))
        text += f"; {right / len(pseudo):.1%} of those labels are the hidden true action"
    return text


def parse_best_of(text):
    return [int(n) for n in str(text).split(",") if n.strip()]


# ----------------------------------------------------------------------------------------------------
# Evaluation on held-out transitions (true actions used here only)


def verified_states(fwm, idm, codec, xs, zs, targets, n, cfg, generator):
    """Test-time verification (best of n): sample n next states from the FWM and keep the one from which
    the IDM reads the action back best, argmax_k log Q(z | x, y_hat_k). targets: each z's tokens to score."""
    prompts = [codec.fwm_example(x, z)[0] for x, z in zip(xs, zs)]
    samples = sample_completions(fwm, codec, prompts, codec.max_state_tokens, codec.state_ids, cfg.temperature,
                                 cfg.top_p, n, generator)
    texts = [codec.tok.decode(y) for y in samples]
    score_prompts = [codec.idm_example(xs[i // n], texts[i])[0] for i in range(len(texts))]
    score_targets = [targets[i // n] for i in range(len(texts))]
    scores = mean_logprob(idm, score_prompts, score_targets, allowed_ids=codec.action_ids).view(-1, n)
    return [texts[i * n + int(k)] for i, k in enumerate(scores.argmax(dim=1))]


def evaluate(fwm, idm, codec, test, idm_counted=None, extra_metrics=None, best_of=1, cfg=None, generator=None):
    """Metrics on held-out transitions, as fractions in [0, 1]:
      idm_action_acc      greedy IDM action == true action (on the transitions idm_counted marks:
                          the toy counts only those that exactly one action explains);
      fwm_exact           FWM's next state given the TRUE action == real next state;
      fwm_exact_inferred  the same given the IDM's inferred action;
      plus extra_metrics(predicted states, real states) (the toy's per-cell accuracy and error kinds; BLEU, ROUGE-L).
    best_of > 1 picks each FWM prediction from best_of samples with the IDM (verified_states)."""
    xs, ys, zs = [t.x for t in test], [t.y for t in test], [t.action for t in test]
    counted = idm_counted if idm_counted is not None else [True] * len(test)
    z_hat, _ = infer_actions(idm, codec, test)
    hits = [a == b for a, b, c in zip(z_hat, zs, counted) if c]
    if best_of > 1:
        # the true action is scored whole; the IDM's as it wrote it (Codec.action_target: it may be unended)
        y_true_z = verified_states(fwm, idm, codec, xs, zs, [completion(codec.tok, z) for z in zs], best_of, cfg,
                                   generator)
        y_inf_z = verified_states(fwm, idm, codec, xs, z_hat, [codec.action_target(z) for z in z_hat], best_of, cfg,
                                  generator)
    else:
        y_true_z, y_inf_z = predict_states(fwm, codec, xs, zs), predict_states(fwm, codec, xs, z_hat)
    metrics = {
        "idm_action_acc": sum(hits) / max(1, len(hits)),
        "fwm_exact": sum(a == b for a, b in zip(y_true_z, ys)) / len(ys),
        "fwm_exact_inferred": sum(a == b for a, b in zip(y_inf_z, ys)) / len(ys),
    }
    if extra_metrics is not None:
        metrics.update(extra_metrics(y_true_z, ys))
    return metrics


def show_samples(fwm, idm, codec, test, n):
    """The first n held-out transitions with the IDM's action and the FWM's next state given it, as text."""
    sample = test[:n]
    z_hat, _ = infer_actions(idm, codec, sample)
    return format_samples(sample, z_hat, predict_states(fwm, codec, [t.x for t in sample], z_hat))


def val_scorer(codec, val, role):
    """Early-stopping score on held-out labelled transitions, higher is better: a pair
    (greedy exact match of the role's output, minus the SFT loss). Exact match is what we report; while it
    is flat (a young FWM copies no grid perfectly for its first thousand steps) the loss breaks the tie."""
    fwm_ex = [codec.fwm_example(t.x, t.action, t.y, t.source) for t in val]
    idm_ex = [codec.idm_example(t.x, t.y, t.action, t.source) for t in val]

    def fwm_score(model):
        ys = predict_states(model, codec, [t.x for t in val], [t.action for t in val])
        return sum(a == t.y for a, t in zip(ys, val)) / len(val), -heldout_loss(model, fwm_ex)

    def idm_score(model):
        zs = infer_actions(model, codec, val)[0]
        return sum(a == t.action for a, t in zip(zs, val)) / len(val), -heldout_loss(model, idm_ex)

    if role == "fwm":
        return fwm_score
    if role == "idm":
        return idm_score
    return lambda model: tuple(a + b for a, b in zip(fwm_score(model), idm_score(model)))  # shared: both roles


def heldout_loss(model, examples, batch=256):
    with torch.no_grad():
        return sum(sft_loss(model, examples[i : i + batch]).item() * len(examples[i : i + batch])
                   for i in range(0, len(examples), batch)) / len(examples)
