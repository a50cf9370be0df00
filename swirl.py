"""
swirl.py: the algorithm of the paper, SWIRL, on top of model.py, grpo.py and data.py.

Two language models teach each other on state-only pairs (x, y):
  FWM  P_theta(y | x, z)  writes the next state given a state and an action;
  IDM  Q_phi(z | x, y)    writes the action that explains a change of state.

  run_swirl():
    (optional) state-only pretraining of the FWM on the unlabelled pairs  (pretrain_fwm)
    SFT warm start on the labelled transitions, both directions           (sft)
    for each iteration:
      references <- copies of both models as they are now                (reset every iteration)
      Phase I  (FWM, Variational Information Maximisation)                (phase_fwm)
      Phase II (IDM, ELBO maximisation)                                   (phase_idm)
    baselines on the same data: Bootstrap, SFT-continue, best-of-N, oracle SFT

Simplifications, and why:
  - Phase I infers z with the IDM's greedy output and keeps a pair only when the IDM is confident
    (mean token log-prob of z >= log(confidence)), as the authors' code does; the real y never enters
    the reward.
  - Rewards are length-normalised log-likelihoods (mean per-token log-prob of the scored span),
    clamped below at -10, from the authors' code: long states would otherwise dominate the scale.
  - In each phase the model that gives the reward is a frozen copy of the other role taken when the
    phase starts. With two models this changes nothing (the other model is not trained in that phase);
    with shared weights (one model, two roles) it keeps the reward from moving while the policy moves.
  - One fresh AdamW per phase; a fixed number of GRPO steps per phase, each on `prompts_per_step`
    random unlabelled pairs with `group_size` samples each (the paper's "one epoch per phase" becomes
    "steps_per_phase" so a run's cost is known in advance).
  - Optional (phase_eval_every > 0; the toy's default): each phase keeps its best weights on the held-out
    labelled split, the same selection that early stopping gives SFT and Bootstrap (BestWeights).

Read next: train_toy.py (the toy end to end), train_llm.py (text states).
"""

import copy
import json
import math
import os
import random
import sys
from dataclasses import asdict, dataclass, fields, replace

import torch
from tqdm import tqdm

from data import check_fits, collate, completion, fwm_prompt, idm_prompt
from grpo import GRPOConfig, grpo_step
from model import generate, span_logprobs


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
    sft_restarts: int = 1  # SFT of a model from scratch: this many initialisations, keep the best held-out one
    pretrain_steps: int = 0  # state-only pretraining of the FWM before SFT (see pretrain_fwm); 0: none
    finetune_lr: float = 3e-4  # SFT's peak lr for a pretrained model (fine-tuning, not learning from scratch)
    # SWIRL iterations
    iterations: int = 2
    phases: str = "both"  # "both", "fwm" (Phase I only) or "idm" (Phase II only)
    shared: bool = False  # one model plays both roles (the role is named in the prompt)
    steps_per_phase: int = 100  # GRPO steps in each phase
    phase_eval_every: int = 0  # > 0: check the held-out labelled split every so many GRPO steps and keep each
    # phase's best weights (the start included), as early stopping keeps SFT's; sft_continue then checks as
    # often. 0: each phase ends at its last step, as in the paper
    prompts_per_step: int = 16  # real pairs (x, y) per GRPO step
    group_size: int = 8  # G: samples per prompt
    lr: float = 1e-4  # GRPO learning rate (the toy uses 3e-4 with its pretrained FWM; see train_toy.TOY_SWIRL)
    beta: float = 1.0  # KL weight to the reference (1 is what the ELBO asks for)
    loss_type: str = "grpo"
    scale_rewards: bool = True  # False: Dr. GRPO advantages r - mean(r), no division by the group's std
    mu: int = 1
    temperature: float = 1.0  # sampling temperature (log-probs are taken at the same temperature); at 0.7
    # three in four of the toy FWM's groups were G identical samples, which carry no learning signal
    top_p: float = 0.96
    confidence: float = 0.9  # Phase I keeps pairs whose IDM action has mean token prob >= this
    reward_floor: float = -10.0  # rewards are clamped below at this value
    # evaluation and baselines
    best_of: str = "2,4,8"  # N for test-time verification
    eval_batch: int = 256
    truncate: bool = False  # cut states that do not fit in block_size instead of raising


def grpo_config(cfg):
    return GRPOConfig(beta=cfg.beta, loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards, mu=cfg.mu)


def world():
    """(rank, number of processes): (0, 1) unless running under torchrun with a process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_reduce_grads(model):
    """Average gradients over processes: what DistributedDataParallel does in backward. We call it by
    hand after backward because the same module also samples with a KV cache and is deep-copied into
    references and reward models, which a DDP wrapper would get in the way of."""
    rank, n = world()
    if n == 1:
        return
    for p in model.parameters():
        if p.grad is None:  # every rank must join every all_reduce, used or not
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)
        p.grad /= n


def frozen_copy(model):
    """A copy that no optimiser will ever see: a reference or a reward model."""
    return copy.deepcopy(model).eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------------
# The two roles. A Task holds everything that depends on the data: the tokenizer, the logit masks
# and the longest completions, so the functions below read like the paper.


@dataclass
class Task:
    tok: object  # data.Tokenizer
    block_size: int
    state_ids: torch.Tensor  # (vocab,) bool: the FWM may only write these (plus <|end|>)
    action_ids: torch.Tensor  # (vocab,) bool: the IDM may only write these (plus <|end|>)
    max_state_tokens: int  # longest y the FWM writes, <|end|> included
    max_action_tokens: int  # longest z the IDM writes, <|end|> included
    shared: bool = False
    truncate: bool = False

    def fwm_example(self, x, z, y=None, source="?"):
        """(prompt, target) for P(y | x, z). With y None (generation) the target is [] and the prompt
        must leave room for the longest state the FWM may write."""
        prompt = fwm_prompt(self.tok, x, z, self.shared)
        return self._fit(prompt, completion(self.tok, y) if y is not None else None, self.max_state_tokens, source)

    def idm_example(self, x, y, z=None, source="?"):
        """(prompt, target) for Q(z | x, y); target [] when z is None (generation)."""
        prompt = idm_prompt(self.tok, x, y, self.shared)
        return self._fit(prompt, completion(self.tok, z) if z is not None else None, self.max_action_tokens, source)

    def _fit(self, prompt, target, room, source):
        if target is None:
            prompt, _ = check_fits(self.tok, prompt, [self.tok.end_id] * room, self.block_size, source, self.truncate)
            return prompt, []
        return check_fits(self.tok, prompt, target, self.block_size, source, self.truncate)


def make_task(tok, block_size, labelled, unlabelled, shared=False, truncate=False):
    """Logit masks and lengths from the training data: states from every pair, actions from the labels."""
    states = {t.x for t in labelled + unlabelled} | {t.y for t in labelled + unlabelled}
    actions = {t.action for t in labelled}
    return Task(
        tok=tok,
        block_size=block_size,
        state_ids=tok.allowed_ids(states),
        action_ids=tok.allowed_ids(actions),
        max_state_tokens=max(len(tok.encode(s)) for s in states) + 1,
        max_action_tokens=max(len(tok.encode(a)) for a in actions) + 1,
        shared=shared,
        truncate=truncate,
    )


def device_of(model):
    return next(model.parameters()).device


def mean_logprob(model, prompts, targets, temperature=1.0, allowed_ids=None, batch=256):
    """Length-normalised log-likelihood of each target given its prompt: mean_t log p(target_t | ...)."""
    out = []
    for i in range(0, len(prompts), batch):
        ids, attn, span = collate(prompts[i : i + batch], targets[i : i + batch], pad_id=0, device=device_of(model))
        with torch.no_grad():
            lp = span_logprobs(model, ids, attn, span, temperature, allowed_ids)  # (B, T)
        out.append(lp.sum(1) / span.sum(1).clamp(min=1))
    return torch.cat(out)  # (N,)


def write(model, task, prompts, max_new, allowed_ids, temperature=0.0, top_p=None, n=1, generator=None, batch=256):
    """Generate n completions per prompt (temperature 0 = greedy). Returns a list of token lists
    (each ending in <|end|> unless cut at max_new), n per prompt, prompt by prompt."""
    out = []
    per_call = max(1, batch // n)
    for i in range(0, len(prompts), per_call):
        ids, attn, _ = collate(prompts[i : i + per_call], pad_id=task.tok.pad_id, device=device_of(model))
        ids, attn = ids.repeat_interleave(n, 0), attn.repeat_interleave(n, 0)
        toks, mask = generate(model, ids, attn, max_new, task.tok.end_id, task.tok.pad_id, temperature,
                              top_p=top_p, allowed_ids=allowed_ids, generator=generator)
        out += [row[: int(m.sum())] for row, m in zip(toks.tolist(), mask)]
    return out


def infer_actions(idm, task, pairs):
    """z = greedy IDM(x, y) for each pair, and the IDM's confidence: exp(mean token log-prob of z)."""
    prompts = [task.idm_example(p.x, p.y, source=p.source)[0] for p in pairs]
    z_toks = write(idm, task, prompts, task.max_action_tokens, task.action_ids)
    conf = mean_logprob(idm, prompts, z_toks, allowed_ids=task.action_ids).exp()
    return [task.tok.decode(z) for z in z_toks], conf


def predict_states(fwm, task, xs, zs):
    prompts = [task.fwm_example(x, z)[0] for x, z in zip(xs, zs)]
    return [task.tok.decode(y) for y in write(fwm, task, prompts, task.max_state_tokens, task.state_ids)]


# ----------------------------------------------------------------------------------------------------
# SFT warm start: minimise -log P(target | prompt), on the target's tokens only


def sft_loss(model, examples):
    ids, attn, span = collate([p for p, _ in examples], [t for _, t in examples], pad_id=0, device=device_of(model))
    lp = span_logprobs(model, ids, attn, span)  # (B, T), zero off the target
    return -lp.sum() / span.sum()  # mean over target tokens


def sft(model, examples, val_score, cfg, rng, steps=None, desc="sft"):
    """Supervised fine-tuning on (prompt, target) token lists.

    steps=None: train until val_score() (a tuple, higher is better) has not improved for sft_patience checks,
    then restore the best weights ("trained to convergence, early-stopped on held-out labels").
    steps=N: exactly N steps (the SFT-continue control); with a val_score the weights of the best check,
    the start included, are kept, as each SWIRL phase keeps its own (see BestWeights); val_score=None
    (pretraining) or sft_eval_every=0 keeps the last step. Returns (steps taken, optimiser).
    Under torchrun every rank draws its own batch (rng differs per rank) and gradients are averaged."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr, weight_decay=0.0)
    micro = max(1, cfg.sft_batch // cfg.grad_accum)
    best = BestWeights(model, val_score, cfg.sft_eval_every, at_start=steps is not None)
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
    if steps is None and world()[0] == 0:
        # early stopping should end SFT; if the cap did, the model may still have been learning
        how = "early stopping" if since_best >= cfg.sft_patience else "the sft_max_steps cap: raise it"
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
    is what makes the small FWM settle: at a constant 3e-3 its exact match swings from run to run."""
    if step < cfg.sft_warmup:
        return cfg.sft_lr * step / cfg.sft_warmup
    progress = (step - cfg.sft_warmup) / max(1, n_steps - cfg.sft_warmup)
    return cfg.sft_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# ----------------------------------------------------------------------------------------------------
# The two phases of one SWIRL iteration


def phase_fwm(fwm, idm, ref_fwm, task, pairs, cfg, rng, generator, desc="phase I (FWM)", opt=None, val_score=None):
    """Phase I, Variational Information Maximisation, updates the FWM:

        z        = argmax Q_phi(. | x, y)          (frozen IDM, greedy; confident pairs only)
        y_hat_k  ~ P_theta(. | x, z),  k = 1..G
        r_k      = log Q_phi(z | x, y_hat_k)       (length-normalised, clamped at reward_floor)
        maximise E[r] - beta KL(P_theta || P_ref) with GRPO

    a Barber-Agakov lower bound on I(Z; Y_hat | X): the FWM learns to write next states from which the
    action can be read back. The real y is used only to infer z.
    val_score: the FWM's score on held-out labelled transitions; with it the phase keeps its best check
    (BestWeights, every cfg.phase_eval_every steps, the start included), as SFT keeps its best step."""
    reward_idm = frozen_copy(idm)
    z, conf = infer_actions(reward_idm, task, pairs)
    kept = [(p, zi) for p, zi, c in zip(pairs, z, conf.tolist()) if c >= cfg.confidence]
    log = {"kept_frac": len(kept) / max(1, len(pairs))}
    if not kept:
        return log
    opt = opt or new_optimizer(fwm, cfg)
    G = cfg.group_size
    stats, best = [], BestWeights(fwm, val_score, cfg.phase_eval_every, at_start=True)
    for step in tqdm(range(1, cfg.steps_per_phase + 1), desc=desc, leave=False, file=sys.stdout, disable=None):
        batch = rng.sample(kept, min(prompts_per_rank(cfg), len(kept)))
        prompts = [task.fwm_example(p.x, zi, source=p.source)[0] for p, zi in batch]
        y_hat = write(fwm, task, prompts, task.max_state_tokens, task.state_ids, cfg.temperature, cfg.top_p, G, generator)
        # r_k = log Q_phi(z | x, y_hat_k), length-normalised, clamped at reward_floor
        reward_prompts = [task.idm_example(p.x, task.tok.decode(y), source=p.source)[0]
                          for (p, _), k in zip(batch, range(len(batch))) for y in y_hat[k * G : (k + 1) * G]]
        reward_targets = [completion(task.tok, zi) for _, zi in batch for _ in range(G)]
        rewards = mean_logprob(reward_idm, reward_prompts, reward_targets, allowed_ids=task.action_ids)
        rewards = rewards.clamp(min=cfg.reward_floor)
        stats.append(policy_update(fwm, ref_fwm, opt, [p for p in prompts for _ in range(G)], y_hat, rewards,
                                   task.state_ids, cfg))
        best.check_if_due(step, cfg.steps_per_phase)
    return {**log, **average(stats), **best.restore()}


def phase_idm(idm, fwm, ref_idm, task, pairs, cfg, rng, generator, desc="phase II (IDM)", opt=None, val_score=None):
    """Phase II, ELBO maximisation, updates the IDM:

        z_k  ~ Q_phi(. | x, y),  k = 1..G
        r_k  = log P_theta(y | x, z_k)             (frozen FWM; length-normalised, clamped)
        maximise E[r] - beta KL(Q_phi || Q_ref) with GRPO

    with beta = 1 and the reference as the prior this is the evidence lower bound on log P(y | x).
    val_score: the IDM's held-out score; the phase then keeps its best check, as phase_fwm does."""
    reward_fwm = frozen_copy(fwm)
    opt = opt or new_optimizer(idm, cfg)
    G = cfg.group_size
    stats, best = [], BestWeights(idm, val_score, cfg.phase_eval_every, at_start=True)
    for step in tqdm(range(1, cfg.steps_per_phase + 1), desc=desc, leave=False, file=sys.stdout, disable=None):
        batch = rng.sample(pairs, min(prompts_per_rank(cfg), len(pairs)))
        prompts = [task.idm_example(p.x, p.y, source=p.source)[0] for p in batch]
        z = write(idm, task, prompts, task.max_action_tokens, task.action_ids, cfg.temperature, cfg.top_p, G, generator)
        # r_k = log P_theta(y | x, z_k), length-normalised, clamped at reward_floor
        reward_prompts = [task.fwm_example(p.x, task.tok.decode(zk), source=p.source)[0]
                          for k, p in enumerate(batch) for zk in z[k * G : (k + 1) * G]]
        reward_targets = [completion(task.tok, p.y) for p in batch for _ in range(G)]
        rewards = mean_logprob(reward_fwm, reward_prompts, reward_targets, allowed_ids=task.state_ids)
        rewards = rewards.clamp(min=cfg.reward_floor)
        stats.append(policy_update(idm, ref_idm, opt, [p for p in prompts for _ in range(G)], z, rewards,
                                   task.action_ids, cfg))
        best.check_if_due(step, cfg.steps_per_phase)
    return {**average(stats), **best.restore()}


def new_optimizer(model, cfg):
    """One fresh AdamW per phase (its moments belong to the previous phase's objective)."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)


def prompts_per_rank(cfg):
    """Under torchrun the prompts of a step are split across ranks; each samples its own groups."""
    return max(1, cfg.prompts_per_step // world()[1])


def policy_update(policy, reference, opt, prompts, completions, rewards, allowed_ids, cfg):
    """One GRPO step: log-probs of the sampled completions at the sampling temperature, same logit mask."""
    ids, attn, span = collate(prompts, completions, pad_id=0, device=device_of(policy))

    def logprobs(model):
        return span_logprobs(model, ids, attn, span, cfg.temperature, allowed_ids)

    return grpo_step(policy, reference, opt, logprobs, rewards.to(ids.device), span, cfg.group_size, grpo_config(cfg),
                     sync_grads=all_reduce_grads)


def average(stats):
    return {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]} if stats else {}


# ----------------------------------------------------------------------------------------------------
# Evaluation on held-out transitions (true actions used here only)


def verified_states(fwm, idm, task, xs, zs, n, cfg, generator):
    """Test-time verification (best of n): sample n next states from the FWM and keep the one from which
    the IDM reads the action back best, argmax_k log Q(z | x, y_hat_k)."""
    prompts = [task.fwm_example(x, z)[0] for x, z in zip(xs, zs)]
    samples = write(fwm, task, prompts, task.max_state_tokens, task.state_ids, cfg.temperature, cfg.top_p, n, generator)
    texts = [task.tok.decode(y) for y in samples]
    score_prompts = [task.idm_example(xs[i // n], texts[i])[0] for i in range(len(texts))]
    score_targets = [completion(task.tok, zs[i // n]) for i in range(len(texts))]
    scores = mean_logprob(idm, score_prompts, score_targets, allowed_ids=task.action_ids).view(-1, n)
    return [texts[i * n + int(k)] for i, k in enumerate(scores.argmax(dim=1))]


def evaluate(fwm, idm, task, test, idm_counted=None, extra_metrics=None, best_of=1, cfg=None, generator=None):
    """Metrics on held-out transitions, as fractions in [0, 1]:
      idm_action_acc      greedy IDM action == true action (on the transitions idm_counted marks:
                          the toy counts only those that exactly one action explains);
      fwm_exact           FWM's next state given the TRUE action == real next state;
      fwm_exact_inferred  the same given the IDM's inferred action;
      plus extra_metrics(predicted states, real states) (the toy's per-cell accuracy and error kinds; BLEU, ROUGE-L).
    best_of > 1 picks each FWM prediction from best_of samples with the IDM (verified_states)."""
    xs, ys, zs = [t.x for t in test], [t.y for t in test], [t.action for t in test]
    counted = idm_counted if idm_counted is not None else [True] * len(test)
    z_hat, _ = infer_actions(idm, task, test)
    hits = [a == b for a, b, c in zip(z_hat, zs, counted) if c]
    if best_of > 1:
        y_true_z = verified_states(fwm, idm, task, xs, zs, best_of, cfg, generator)
        y_inf_z = verified_states(fwm, idm, task, xs, z_hat, best_of, cfg, generator)
    else:
        y_true_z, y_inf_z = predict_states(fwm, task, xs, zs), predict_states(fwm, task, xs, z_hat)
    metrics = {
        "idm_action_acc": sum(hits) / max(1, len(hits)),
        "fwm_exact": sum(a == b for a, b in zip(y_true_z, ys)) / len(ys),
        "fwm_exact_inferred": sum(a == b for a, b in zip(y_inf_z, ys)) / len(ys),
    }
    if extra_metrics is not None:
        metrics.update(extra_metrics(y_true_z, ys))
    return metrics


def val_scorer(task, val, role):
    """Early-stopping score on held-out labelled transitions, higher is better: a pair
    (greedy exact match of the role's output, minus the SFT loss). Exact match is what we report; while it
    is flat (a young FWM copies no grid perfectly for its first thousand steps) the loss breaks the tie."""
    fwm_ex = [task.fwm_example(t.x, t.action, t.y, t.source) for t in val]
    idm_ex = [task.idm_example(t.x, t.y, t.action, t.source) for t in val]

    def fwm_score(model):
        ys = predict_states(model, task, [t.x for t in val], [t.action for t in val])
        return sum(a == t.y for a, t in zip(ys, val)) / len(val), -heldout_loss(model, fwm_ex)

    def idm_score(model):
        zs = infer_actions(model, task, val)[0]
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


# ----------------------------------------------------------------------------------------------------
# Warm start and the SFT-based baselines


PRETRAIN_WORDS_PER_PAIR = 4  # random action words each unlabelled pair is shown with in pretrain_fwm


def pretrain_fwm(fwm, task, labelled, pairs, cfg, rng):
    """State-only pretraining: the FWM learns to write y from x on state-only pairs (the unlabelled
    ones, or a corpus of their own: run_swirl's pretrain_pairs), the action unknown.
    The paper starts from pretrained LLMs, which already write plausible next states and only have to learn
    what the actions do; this is the toy's stand-in. It uses no action label of those pairs: each
    pair is shown with PRETRAIN_WORDS_PER_PAIR action words drawn at random from the labelled split, so the
    FWM learns to copy the state and that the action word says nothing (SFT then teaches what it says). A
    placeholder word such as "?" would not do: it shifts x to other positions than real action words do,
    and the small FWM's copying is tied to positions, so SFT on real actions would have to learn it again."""
    words = [t.action for t in labelled]
    examples = [task.fwm_example(t.x, rng.choice(words), t.y, t.source) for t in pairs
                for _ in range(PRETRAIN_WORDS_PER_PAIR)]
    sft(fwm, examples, None, cfg, rng, steps=cfg.pretrain_steps, desc="pretrain FWM")


def warm_start(fwm, idm, task, labelled, val, cfg, rng, steps=None, desc="sft", new_model=None):
    """SFT in both directions on labelled transitions: the FWM on y's tokens given (x, z), the IDM on z's
    tokens given (x, y). With shared weights one model learns both. A pretrained FWM (or shared model) is
    fine-tuned at cfg.finetune_lr, as pretrained models are; sft_lr is the rate for learning from scratch.
    new_model: given when the models are at their initial weights (the warm start and the oracle); a model
    that is not pretrained then learns from cfg.sft_restarts initialisations (sft_with_restarts).
    Returns (update steps taken, {role: optimiser}) (the optimisers go into checkpoints)."""
    fwm_ex = [task.fwm_example(t.x, t.action, t.y, t.source) for t in labelled]
    idm_ex = [task.idm_example(t.x, t.y, t.action, t.source) for t in labelled]
    fwm_cfg = replace(cfg, sft_lr=cfg.finetune_lr) if cfg.pretrain_steps else cfg
    restart = new_model if steps is None else None  # a fixed number of steps (sft_continue) never restarts
    restart_fwm = None if cfg.pretrain_steps else restart  # a pretrained start is not thrown away
    if fwm is idm:
        n, opt = sft_with_restarts(fwm, restart_fwm, fwm_ex + idm_ex, val_scorer(task, val, "both"), fwm_cfg, rng,
                                  steps, desc)
        return n, {"shared": opt}
    n_fwm, opt_fwm = sft_with_restarts(fwm, restart_fwm, fwm_ex, val_scorer(task, val, "fwm"), fwm_cfg, rng, steps,
                                      desc + " FWM")
    n_idm, opt_idm = sft_with_restarts(idm, restart, idm_ex, val_scorer(task, val, "idm"), cfg, rng, steps, desc + " IDM")
    return n_fwm + n_idm, {"fwm": opt_fwm, "idm": opt_idm}


def sft_with_restarts(model, new_model, examples, val_score, cfg, rng, steps, desc):
    """sft(), and when new_model is given, again from cfg.sft_restarts - 1 fresh initialisations (new_model()),
    keeping the weights with the best held-out score. A small model learning from a hundred examples ends
    wherever its initialisation and batch order lead: the toy's IDM, on seed 0's 96 labelled transitions,
    scored 0.69, 0.59 and 0.40 action accuracy on held-out steps from three starts, and its score on the
    held-out labelled split ranked them the same way (README, "What we tried"). Choosing among starts on
    held-out labels is what any practitioner would do; the test set is never looked at.
    Returns (steps taken over all starts, the kept run's optimiser)."""
    if new_model is None or cfg.sft_restarts <= 1:
        return sft(model, examples, val_score, cfg, rng, steps, desc)
    best, total = None, 0  # best: (held-out score, start, model, optimiser); a worse start is dropped at once
    for start in range(cfg.sft_restarts):
        candidate = model if start == 0 else new_model()
        n, opt = sft(candidate, examples, val_score, cfg, rng, steps, f"{desc} (start {start + 1})")
        total += n
        score = val_score(candidate)
        if best is None or score > best[0]:  # ties: the earliest start
            best = (score, start, candidate, opt)
    score, start, kept, opt = best
    if world()[0] == 0:
        print(f"{desc}: kept start {start + 1} of {cfg.sft_restarts} (held-out score {score[0]:.3f})")
    model.load_state_dict(kept.state_dict())
    return total, opt


def pseudo_label(idm, task, unlabelled, cfg):
    """Bootstrap's data: the unlabelled pairs with the IDM's greedy action, confident ones only.
    Returns (those pairs, their indices in unlabelled)."""
    z, conf = infer_actions(idm, task, unlabelled)
    kept = [k for k, c in enumerate(conf.tolist()) if c >= cfg.confidence]
    return [replace_action(unlabelled[k], z[k]) for k in kept], kept


def pseudo_label_report(pseudo, kept, unlabelled, truth, cfg):
    """How many pairs Bootstrap labelled and, when the hidden actions are known (the toy), how many of its
    labels are right: the filter is meant to keep the right ones. A report only; nothing trains on truth."""
    text = f"bootstrap: the IDM labelled {len(pseudo)} of {len(unlabelled)} unlabelled pairs with confidence >= {cfg.confidence}"
    if truth is not None and pseudo:
        right = sum(p.action == truth[k].action for p, k in zip(pseudo, kept))
        text += f"; {right / len(pseudo):.1%} of those labels are the hidden true action"
    return text


def replace_action(t, action):
    return type(t)(t.x, t.y, action, t.episode, t.source)


def copies(fwm, idm):
    f = copy.deepcopy(fwm)
    return (f, f) if fwm is idm else (f, copy.deepcopy(idm))


# ----------------------------------------------------------------------------------------------------
# The whole run


def run_swirl(cfg, task, new_model, labelled, val, unlabelled, test, seed=0, idm_counted=None,
              extra_metrics=None, unlabelled_truth=None, pretrain_pairs=None, checkpoint=None, resume=None,
              stop_after=None, log=print):
    """SFT, SWIRL iterations and the baselines on one seed. Returns (stages, (fwm, idm)) with stages a
    list of {"stage": name, metrics}.

    labelled / val / test: transitions with actions; unlabelled: without (SWIRL never sees their actions).
    unlabelled_truth: the same unlabelled transitions with their true actions, for the oracle only.
    pretrain_pairs: state-only pairs for pretrain_fwm (None: the unlabelled pairs).
    new_model(): a freshly initialised GPT.
    checkpoint(name, fwm, idm, state): called after SFT and after each phase with the models and everything
    needed to go on (see `run_state`); resume: such a state, to continue an interrupted run where it stopped, with the
    same random streams, so that it ends with the numbers of a run that was never interrupted.
    stop_after: a stage name; return right after that stage (and its checkpoint)."""
    rank, _ = world()
    # every rank starts from the same weights, but draws its own batches and samples
    torch.manual_seed(seed)
    rng = random.Random(seed + 1000 * rank)
    gen = torch.Generator(device=task.state_ids.device).manual_seed(seed + 1000 * rank)
    fwm = new_model()
    idm = fwm if cfg.shared else new_model()
    if cfg.pretrain_steps and resume is None:
        corpus, what = (unlabelled, "unlabelled") if pretrain_pairs is None else (pretrain_pairs, "pretraining")
        log(f"state-only pretraining of the FWM on {len(corpus)} {what} pairs ({cfg.pretrain_steps} steps)")
        pretrain_fwm(fwm, task, labelled, corpus, cfg, rng)
    init = copies(fwm, idm)  # every SFT baseline, the oracle included, starts from these weights
    refs = sft_models = None
    stages, swirl_steps = [], 0
    if resume is not None:
        fwm, idm, init, sft_models, refs = (*restore(resume["models"], fwm, idm),
                                            *(restore(resume[k], fwm, idm) for k in ("init", "sft", "refs")))
        refs = refs and tuple(r and r.eval().requires_grad_(False) for r in refs)  # restore made fresh copies
        stages, swirl_steps = resume["stages"], resume["step"]
        rng.setstate(resume["rng"])
        gen.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        log(f"resuming after stage {stages[-1]['stage']}")
    done = {s["stage"] for s in stages}

    def record(name, f, i, **kw):
        stages.append({"stage": name, **evaluate(f, i, task, test, idm_counted, extra_metrics, cfg=cfg, generator=gen, **kw)})
        log(format_row(stages[-1]))

    def save(name, optimizers):
        if checkpoint:
            checkpoint(name, fwm, idm, run_state(stages, swirl_steps, (fwm, idm), init, sft_models, refs, optimizers, rng, gen))
        return name == stop_after

    if "sft" not in done:
        log(f"SFT warm start on {len(labelled)} labelled transitions (early-stopped on {len(val)} held-out ones)")
        _, opts = warm_start(fwm, idm, task, labelled, val, cfg, rng, new_model=new_model)
        record("sft", fwm, idm)
        sft_models = copies(fwm, idm)
        if save("sft", opts):
            return stages, (fwm, idm)

    for it in range(1, cfg.iterations + 1):
        for role in ("fwm", "idm"):
            name = f"swirl_it{it}_{role}"
            if cfg.phases not in ("both", role) or name in done:
                continue
            if role == "fwm" or cfg.phases == "idm":
                # references: the models as they were at the start of this iteration
                refs = (frozen_copy(fwm), None) if cfg.shared else (frozen_copy(fwm), frozen_copy(idm))
            ref = refs[0] if cfg.shared or role == "fwm" else refs[1]
            opt = new_optimizer(fwm if role == "fwm" else idm, cfg)
            val_score = val_scorer(task, val, role) if cfg.phase_eval_every else None  # BestWeights' checks
            if role == "fwm":
                stats = phase_fwm(fwm, idm, ref, task, unlabelled, cfg, rng, gen, f"it{it} phase I (FWM)", opt,
                                  val_score=val_score)
                swirl_steps += cfg.steps_per_phase if "reward" in stats else 0
            else:
                stats = phase_idm(idm, fwm, ref, task, unlabelled, cfg, rng, gen, f"it{it} phase II (IDM)", opt,
                                  val_score=val_score)
                swirl_steps += cfg.steps_per_phase
            log(f"  it{it} phase {'I ' if role == 'fwm' else 'II'} stats: " + format_stats(stats))
            record(name, fwm, idm)
            if save(name, {role: opt}):
                return stages, (fwm, idm)

    log("baselines")
    f, i = copies(*sft_models)
    pseudo, kept = pseudo_label(i, task, unlabelled, cfg)
    log(pseudo_label_report(pseudo, kept, unlabelled, unlabelled_truth, cfg))
    warm_start(f, i, task, labelled + pseudo, val, cfg, rng, desc="bootstrap")
    record("bootstrap", f, i)
    f, i = copies(*sft_models)
    # SFT-continue: as many extra update steps on the labelled data as SWIRL took, split like SWIRL's, at
    # SWIRL's learning rate and with its checks on the held-out split, so that only the objective differs.
    # (At SFT's peak rate, 30x higher, the converged toy FWM got worse: seed 0 fell from 0.820 to 0.748.)
    per_model = swirl_steps if cfg.shared else max(1, swirl_steps // 2)
    at_swirl_lr = replace(cfg, sft_lr=cfg.lr, finetune_lr=cfg.lr, sft_eval_every=cfg.phase_eval_every)
    warm_start(f, i, task, labelled, val, at_swirl_lr, rng, steps=per_model, desc="sft_continue")
    record("sft_continue", f, i)
    for n in parse_best_of(cfg.best_of):
        record(f"best_of_{n}", *sft_models, best_of=n)
    if unlabelled_truth is not None:
        f, i = init
        warm_start(f, i, task, labelled + unlabelled_truth, val, cfg, rng, desc="oracle", new_model=new_model)
        record("oracle", f, i)
    return stages, (fwm, idm)


def run_state(stages, swirl_steps, models, init, sft_models, refs, optimizers, rng, gen):
    """Everything run_swirl needs to continue after a stage: the models (now, at init, after SFT, the
    iteration's references), the stages so far, the update steps taken, every random stream, and the
    optimiser of the phase that just ended (each phase starts a fresh one, so resuming does not need
    it; it is kept for inspection and for anyone who wants to continue that phase)."""
    return {
        "stages": copy.deepcopy(stages),
        "step": swirl_steps,  # SWIRL update steps so far (sft_continue spends as many)
        "models": pair_state(models),
        "init": pair_state(init),
        "sft": pair_state(sft_models),
        "refs": pair_state(refs),
        "optimizers": {role: o.state_dict() for role, o in optimizers.items()},
        "rng": rng.getstate(),
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
    }


def pair_state(pair):
    """(fwm, idm) -> their state dicts (one when the weights are shared; None stays None)."""
    if pair is None:
        return None
    f, i = pair
    return {"fwm": f.state_dict() if f is not None else None,
            "idm": None if i is None or i is f else i.state_dict()}


def restore(state, fwm_like, idm_like):
    """The inverse of pair_state: fresh copies of the given models with the saved weights."""
    if state is None:
        return None
    f = copy.deepcopy(fwm_like)
    f.load_state_dict(state["fwm"])
    if state["idm"] is None:
        return (f, f) if fwm_like is idm_like else (f, None)
    i = copy.deepcopy(idm_like)
    i.load_state_dict(state["idm"])
    return f, i


def write_results(out_dir, config, stages, wall_seconds):
    """out_dir/results.json, the shape other tools read, written to a temporary file and renamed."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "results.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"config": config, "wall_seconds": wall_seconds, "stages": stages}, f, indent=1)
    os.replace(path + ".tmp", path)


def parse_best_of(text):
    return [int(n) for n in str(text).split(",") if n.strip()]


# ----------------------------------------------------------------------------------------------------
# Printing


def format_stats(stats):
    return " ".join(f"{k}={v:.3g}" for k, v in stats.items())


def format_row(stage):
    cells = " ".join(f"{k}={v:.3f}" for k, v in stage.items() if k != "stage")
    return f"  {stage['stage']:16s} {cells}"


def format_table(stages, metrics):
    """Markdown table, one row per stage; `<metric>_std` beside a metric prints as mean +/- std."""
    head = "| stage | " + " | ".join(metrics) + " |"
    rows = [head, "|" + "---|" * (len(metrics) + 1)]
    for s in stages:
        cells = []
        for m in metrics:
            v = s.get(m)
            std = s.get(m + "_std")
            cells.append("" if v is None else f"{v:.3f}" + (f" ± {std:.3f}" if std is not None else ""))
        rows.append(f"| {s['stage']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def mean_over_seeds(runs):
    """runs: one list of stages per seed (same stage order) -> one list with means and <metric>_std."""
    out = []
    for rows in zip(*runs):
        row = {"stage": rows[0]["stage"]}
        for k in rows[0]:
            if k == "stage":
                continue
            vals = torch.tensor([r[k] for r in rows], dtype=torch.float64)
            row[k] = float(vals.mean())
            if len(rows) > 1:
                row[k + "_std"] = float(vals.std(unbiased=True))
        out.append(row)
    return out


def show_samples(fwm, idm, task, test, n=3):
    """A few held-out transitions as a student wants to see them: x, inferred z, predicted y, real y."""
    sample = test[:n]
    z_hat, _ = infer_actions(idm, task, sample)
    y_hat = predict_states(fwm, task, [t.x for t in sample], z_hat)
    blocks = []
    for t, z, y in zip(sample, z_hat, y_hat):
        blocks.append(
            f"x:\n{t.x}\nIDM's action: {z!r}   (true: {t.action!r})\n"
            f"FWM's next state given that action:\n{y}\nreal next state:\n{t.y}\n"
            f"{'match' if y == t.y else 'MISMATCH'}"
        )
    return "\n\n".join(blocks)


# ----------------------------------------------------------------------------------------------------
# Command-line options: --key=value for any field of the given dataclasses; unknown keys are an error


def parse_options(argv, *configs):
    """Apply `--key=value` overrides to dataclass instances in place. Values are converted to the
    field's type; an unknown key or a bad value exits with the list of known options."""
    known = {f.name: (c, f) for c in configs for f in fields(c)}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            sys.exit(f"bad argument {arg!r}: options look like --key=value (e.g. --iterations=2)")
        key, value = arg[2:].split("=", 1)
        if key not in known:
            sys.exit(f"unknown option --{key}. Known options:\n  " + "\n  ".join(f"--{k}" for k in sorted(known)))
        obj, f = known[key]
        setattr(obj, key, convert(value, type(getattr(obj, key)), key))
    return configs


def convert(value, typ, key):
    try:
        if typ is bool:
            if value.lower() in ("1", "true", "yes"):
                return True
            if value.lower() in ("0", "false", "no"):
                return False
            raise ValueError
        converted = typ(value)
    except ValueError:
        sys.exit(f"bad value for --{key}: {value!r} is not a {typ.__name__}")
    if typ is int and converted < 0:  # every int option is a count, a size or a period
        sys.exit(f"bad value for --{key}: {value!r}; it counts something, so it must be 0 or more")
    return converted


def config_dict(*configs):
    return {k: v for c in configs for k, v in asdict(c).items()}
