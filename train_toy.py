"""
train_toy.py: SWIRL end to end on the toy gridworld, on a laptop CPU.

    python train_toy.py                      # one seed, the default settings below
    python train_toy.py --seeds=10           # seeds 0-9 side by side, one per core; paired gains over SFT
    python train_toy.py --phases=fwm --beta=0.05 --out_dir=out-beta   # any setting, --key=value
    python train_toy.py --seeds=10 --export=toy-split   # each seed's data and settings, for train_llm.py
    python train_toy.py --seeds=10 --stop_after=swirl_it3_idm   # SFT and SWIRL only: the same rows, no baselines

It builds the world, draws labelled, validation, unlabelled and held-out test episodes, then runs
swirl.run_swirl (SFT, SWIRL iterations, baselines) and prints a table like the paper's Table 9.
Writes out_dir/results.json, checkpoints (out_dir/seed<k>/*.pt) and, with matplotlib, out_dir/metrics.png.
With several seeds it prints each method's gain over SFT on the same seed: mean, 95% interval, wins.

Read this file after swirl.py; it is only glue.
"""

import contextlib
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

import swirl
from common import (config_dict, format_table, mean_over_seeds, paired_report, parse_options, swirl_last,
                    write_results)
from data import Episode, byte_tokenizer, make_codec, transitions, with_action, write_splits
from grpo import GRPOConfig
from model import GPT, GPTConfig, model_state, save_checkpoint
from toy_envs import AGENT, BOX, GridWorld, consistent_actions, make_episodes


@dataclass
class ToyConfig:
    # the world and how much of it we see
    size: int = 4  # a 5x5 grid needs far more SFT steps before the FWM copies it at all
    n_walls: int = 3
    n_boxes: int = 1
    episode_len: int = 8
    max_step: int = 1  # 2 adds the actions "up 2" ... "right 2" (two cells in one action)
    labelled_episodes: int = 12  # with actions: SFT (12 x 8 = 96 transitions)
    val_episodes: int = 25  # with actions: early stopping of every SFT
    unlabelled_episodes: int = 200  # actions hidden: SWIRL's data
    test_episodes: int = 100  # held out: metrics only
    pretrain_episodes: int = 0  # 0: the FWM is pretrained on the unlabelled split's states; N > 0: on N
    # episodes of their own, a stand-in for the text an LLM was pretrained on
    patrol: float = 0.0  # > 0: the unlabelled (and pretraining) logs come from an agent that moves left or
    # right with this chance; the labelled, val and test episodes keep the even policy
    # the two models (each a small GPT over bytes)
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    # the run
    seeds: int = 1  # repeat over seeds 0..seeds-1: mean +/- std, and each method's paired gain over SFT
    workers: int = 0  # processes running seeds side by side, the cores shared out among them (a seed's
    # numbers depend on its thread count, not on what runs beside it); 0: one per core, at most `seeds`
    device: str = "cpu"
    out_dir: str = "out-toy"
    samples: int = 2  # held-out transitions printed at the end
    export: str = ""  # a folder: write each seed's splits and settings there as train_llm.py's data and recipe
    # (export_seed), and train nothing
    stop_after: str = ""  # a stage name: stop after it; "swirl_it3_idm" = SFT and SWIRL without the baselines,
    # about a third of a seed's time, the same SWIRL rows (the baselines run after SWIRL); "" = run everything


# The toy's defaults for swirl.SwirlConfig and grpo.GRPOConfig (train_llm.py has its own). Each rests on a
# measurement in NOTES.md:
#   pretrain_steps    the FWM learns to copy grids from states alone before SFT, as the paper's LLMs come
#                     pretrained; without it its errors are copying errors the IDM's reward cannot see
#                     ("Without pretraining, SWIRL gains about a point");
#   temperature 1.5   fewer of Phase I's groups are G identical grids ("Temperature 1.5 against 1.0");
#   iterations 3, phase_eval_every 25: each phase keeps its best held-out check, as early stopping does for
#                     SFT and Bootstrap ("A third iteration, and every method selected on the same held-out labels");
#   lr 3e-4, beta 1   the rate and KL weight every toy table was measured at;
#   max_draws 4       dynamic sampling: most of Phase II's groups (and about half of Phase I's) are G equal
#                     rewards; up to 4 batches of prompts a step find more groups with a signal ("Dynamic sampling").
TOY_SWIRL = dict(pretrain_steps=3000, lr=3e-4, temperature=1.5, iterations=3, phase_eval_every=25, max_draws=4)
TOY_GRPO = dict(beta=1.0)

METRICS = ["idm_action_acc", "fwm_exact", "fwm_exact_inferred", "fwm_cell_acc"]
GAIN_METRICS = ["fwm_exact", "fwm_exact_inferred", "idm_action_acc"]  # the paired table's columns
# Where the FWM is wrong (given the true action), as fractions of the held-out transitions; with fwm_exact
# they sum to 1. Each wrong grid counts once, in the first kind that fits: the grid is malformed (wrong
# length, or not exactly one agent), the agent is in the wrong cell, a box is, or only wall and floor
# cells are wrong, which the action did not touch: a copying error. Phase I's reward, log Q(z | x, y_hat),
# can see the first three (the IDM reads the action from where the agent and box went) but barely the last.
ERROR_KINDS = ["fwm_err_malformed", "fwm_err_agent", "fwm_err_box", "fwm_err_copy"]


def cell_accuracy(predicted, real):
    """Fraction of grid cells (characters) the FWM got right; a missing or extra character is wrong."""
    hits = total = 0
    for p, r in zip(predicted, real):
        hits += sum(a == b for a, b in zip(p, r))
        total += max(len(p), len(r))
    return {"fwm_cell_acc": hits / max(1, total)}


def error_kind(predicted, real):
    """The first kind of ERROR_KINDS that describes a wrong predicted grid (None if it is right)."""
    if predicted == real:
        return None
    if len(predicted) != len(real) or predicted.count(AGENT) != 1:
        return "fwm_err_malformed"
    if predicted.index(AGENT) != real.index(AGENT):
        return "fwm_err_agent"
    if [c == BOX for c in predicted] != [c == BOX for c in real]:
        return "fwm_err_box"
    return "fwm_err_copy"


def toy_metrics(predicted, real):
    """The toy's extra metrics (see swirl.evaluate): per-cell accuracy and where the FWM is wrong."""
    kinds = [error_kind(p, r) for p, r in zip(predicted, real)]
    return {**cell_accuracy(predicted, real), **{k: kinds.count(k) / max(1, len(kinds)) for k in ERROR_KINDS}}


def make_world(cfg):
    return GridWorld(cfg.size, cfg.n_walls, cfg.n_boxes, cfg.episode_len, max_step=cfg.max_step)


def log_world(cfg):
    """The world as the state-only logs were made: the same rules, the logging agent's own policy."""
    return replace(make_world(cfg), patrol=cfg.patrol)


def draw_splits(cfg, seed):
    """The seed's episodes, {split: [Episode]} for labelled, val, unlabelled, test and pretrain (each with
    its true actions), drawn by one numpy stream in that order. Episodes are split, never steps; the
    pretraining episodes come last, so the other splits do not depend on how many there are. With --patrol
    the unlabelled split draws other numbers, so the test split that follows is other episodes (of the same
    even policy)."""
    world = make_world(cfg)
    logs = log_world(cfg)
    splits = {"labelled": (cfg.labelled_episodes, world), "val": (cfg.val_episodes, world),
              "unlabelled": (cfg.unlabelled_episodes, logs), "test": (cfg.test_episodes, world),
              "pretrain": (cfg.pretrain_episodes, logs)}
    rng = np.random.default_rng(seed)  # one stream through every split
    episodes, start = {}, 0
    for name, (n, policy) in splits.items():
        states, actions = make_episodes(policy, n, rng)
        episodes[name] = [Episode(s, a, f"toy episode {start + i}") for i, (s, a) in enumerate(zip(states, actions))]
        start += n
    return episodes


def make_data(cfg, seed):
    """The seed's episodes -> labelled / val / unlabelled / unlabelled with their actions / test / pretraining
    transitions."""
    parts = {name: transitions(episodes) for name, episodes in draw_splits(cfg, seed).items()}
    unlabelled = [with_action(t, None) for t in parts["unlabelled"]]  # SWIRL never sees these actions
    pretrain = [with_action(t, None) for t in parts["pretrain"]]  # states only, like every pretraining corpus
    return parts["labelled"], parts["val"], unlabelled, parts["unlabelled"], parts["test"], pretrain


def block_size(cfg):
    return 2 * (cfg.size * (cfg.size + 1)) + 16  # two grids + the longest action + markers


def run_seed(cfg, scfg, seed):
    labelled, val, unlabelled, unlabelled_truth, test, pretrain = make_data(cfg, seed)
    tok = byte_tokenizer()
    block = block_size(cfg)
    # a closed world: the FWM writes grid symbols only, the IDM its action words (see data.make_codec)
    codec = make_codec(tok, block, labelled, unlabelled + pretrain, scfg.shared, closed_world=True).to(cfg.device)
    mcfg = GPTConfig(vocab_size=tok.vocab_size, block_size=block, n_layer=cfg.n_layer, n_head=cfg.n_head,
                     n_embd=cfg.n_embd)
    # the IDM is scored only where one action explains the change (see toy_envs/gridworld.py)
    actions = make_world(cfg).actions
    identifiable = [len(consistent_actions(t.x, t.y, actions)) == 1 for t in test]
    seed_dir = os.path.join(cfg.out_dir, f"seed{seed}")

    def checkpoint(name, run, optimizers):  # the toy keeps the models only; train_llm.py also resumes
        save_checkpoint(os.path.join(seed_dir, f"{name}.pt"), fwm=model_state(run.fwm), idm=model_state(run.idm),
                        config=config_dict(cfg, scfg), stage=name)

    print(f"seed {seed}: {len(labelled)} labelled, {len(val)} val, {len(unlabelled)} unlabelled, "
          f"{len(test)} test transitions; models of {GPT(mcfg).num_params():,} parameters")
    stages, (fwm, idm) = swirl.run_swirl(
        scfg, codec, lambda: GPT(mcfg).to(cfg.device), labelled, val, unlabelled, test, seed=seed,
        idm_counted=identifiable, extra_metrics=toy_metrics, unlabelled_truth=unlabelled_truth,
        pretrain_pairs=pretrain or None, checkpoint=checkpoint, stop_after=cfg.stop_after or None,
    )
    return stages, (fwm, idm, codec, test)


# ----------------------------------------------------------------------------------------------------
# One world, one answer: the toy's seed as a user's data, for train_llm.py's text path


def export_seed(cfg, scfg, seed):
    """Write seed `seed`'s splits to cfg.export/seed<k>/ as train_llm.py reads a user's data: train.jsonl.gz
    (the labelled episodes, then the unlabelled ones without their actions), val.jsonl.gz and test.jsonl.gz
    (every action), and recipe.txt, this run's settings as train_llm.py options, which train_llm.py reads
    beside --data. `python train_llm.py --data=<folder>/train.jsonl.gz` then runs this seed as run_seed does,
    with the same numbers but two (README, "One world, one answer"). Returns the folder."""
    if cfg.pretrain_episodes:
        sys.exit("--export: train_llm.py pretrains the FWM on the unlabelled pairs; --pretrain_episodes has no file "
                 "there. Fix: leave --pretrain_episodes at 0.")
    episodes = draw_splits(cfg, seed)
    folder = os.path.join(cfg.export, f"seed{seed}")
    ordered = [e for split in ("labelled", "unlabelled", "val", "test") for e in episodes[split]]  # write_splits'
    write_splits(folder, [e.states for e in ordered], [e.actions for e in ordered], cfg.labelled_episodes,
                 cfg.unlabelled_episodes, cfg.val_episodes)
    lines = [f"--{key}={value}" for key, value in text_options(cfg, scfg, seed).items()]
    with open(os.path.join(folder, "recipe.txt"), "w") as f:
        f.write(f"# train_toy.py's settings for seed {seed} (written by train_toy.py --export), as train_llm.py "
                "options:\n# every SWIRL and GRPO setting, so that no preset's value is left\n")
        f.write("\n".join(lines) + "\n")
    return folder


def text_options(cfg, scfg, seed):
    """The toy's model, tokenizer and masks (run_seed), its every SwirlConfig and GRPOConfig setting, and the
    seed, in train_llm.py's option names. The toy scores its whole test split, on a CPU in float32."""
    model = dict(tokenizer="bytes", closed_world=True, n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                 block_size=block_size(cfg), rope=False, state_slot=False, rename=0.0, device=cfg.device,
                 dtype="float32", max_eval=0, seed=seed)
    settings = {k: v for k, v in config_dict(scfg).items() if k != "grpo"}
    return {**model, **settings, **config_dict(scfg.grpo)}


def plot(stages, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(10, 4))
    names = [s["stage"] for s in stages]
    for m in METRICS:
        ax.errorbar(range(len(names)), [s[m] for s in stages], yerr=[s.get(m + "_std", 0) for s in stages],
                    marker="o", capsize=3, label=m)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("fraction (held-out)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return True


def seed_job(cfg, scfg, seed, threads, log_path=None):
    """One seed, start to end, on `threads` threads; returns ({"seed", "threads", "wall_seconds", "stages"},
    the held-out samples as text). A worker process writes its log to log_path instead of the console."""
    torch.set_num_threads(threads)
    t0 = time.time()
    with contextlib.ExitStack() as stack:
        if log_path:
            os.makedirs(os.path.dirname(log_path), exist_ok=True)
            stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(log_path, "w", buffering=1))))
        stages, last = run_seed(cfg, scfg, seed)
        samples = swirl.show_samples(*last, cfg.samples) if cfg.samples else ""
    return {"seed": seed, "threads": threads, "wall_seconds": time.time() - t0, "stages": stages}, samples


def run_seeds(cfg, scfg):
    """Seeds 0..cfg.seeds-1: in this process one after the other (one worker), or side by side in worker
    processes, each with its share of the cores. Returns (one result per seed in seed order, the last
    seed's samples). Two seeds on one thread each finish sooner than one after the other on two (NOTES.md,
    "Ten seeds side by side")."""
    cores = torch.get_num_threads()
    workers = min(cfg.seeds, cfg.workers or cores)
    threads = max(1, cores // workers)
    if workers == 1:
        results = [seed_job(cfg, scfg, seed, threads) for seed in range(cfg.seeds)]
        return [r for r, _ in results], results[-1][1]
    print(f"{cfg.seeds} seeds on {workers} worker processes, {threads} thread(s) each; "
          f"each seed's log: {cfg.out_dir}/seed<k>/log.txt")
    jobs = [(cfg, scfg, seed, threads, os.path.join(cfg.out_dir, f"seed{seed}", "log.txt"))
            for seed in range(cfg.seeds)]
    # spawn, not fork: a forked child inherits torch's thread pool in whatever state the parent left it
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pending = [pool.apply_async(seed_job, job) for job in jobs]
        results = []
        for job in pending:
            result, samples = job.get()
            row = {s["stage"]: s["fwm_exact"] for s in result["stages"]}
            shown = [name for name in ["sft", *swirl_last(row), "bootstrap"] if name in row]
            print(f"seed {result['seed']} done in {result['wall_seconds']:.0f} s: fwm_exact "
                  + ", ".join(f"{name} {row[name]:.3f}" for name in shown))
            results.append(result)
    return results, samples


def main(argv):
    cfg, scfg = ToyConfig(), swirl.SwirlConfig(**TOY_SWIRL, grpo=GRPOConfig(**TOY_GRPO))
    parse_options(argv, cfg, scfg, scfg.grpo)
    try:
        log_world(cfg)  # a bad world option (--max_step=0, --patrol=2) stops here, before any training
        swirl.check_stop_after(scfg, cfg.stop_after)
    except ValueError as e:
        sys.exit(f"error: {e}")
    if cfg.export:
        folders = [export_seed(cfg, scfg, seed) for seed in range(cfg.seeds)]
        print("wrote " + ", ".join(folders) + f"; run one with python train_llm.py --data={folders[0]}/train.jsonl.gz")
        return
    t0 = time.time()
    per_seed, samples = run_seeds(cfg, scfg)
    runs = [r["stages"] for r in per_seed]
    stages = mean_over_seeds(runs)
    wall = time.time() - t0
    report, gains = paired_report(runs, GAIN_METRICS)
    write_results(cfg.out_dir, config_dict(cfg, scfg), stages, wall, seeds=per_seed, **gains)
    if samples:
        print("\nheld-out samples (last seed, final SWIRL models):\n")
        print(samples)
    threads = sorted({r["threads"] for r in per_seed})
    over = f"mean ± std over seeds 0-{cfg.seeds - 1}" if cfg.seeds > 1 else "seed 0"
    print(f"\nheld-out results ({over}; {'/'.join(map(str, threads))} thread(s) a seed), {wall:.0f} s:\n")
    print(format_table(stages, METRICS))
    print("\nwhere the FWM is wrong (fractions of the held-out transitions; see ERROR_KINDS):\n")
    print(format_table(stages, ["fwm_exact"] + ERROR_KINDS))
    if cfg.seeds > 1:
        print(f"\n{report}")
    drew = plot(stages, os.path.join(cfg.out_dir, "metrics.png"))
    print(f"\nwrote {cfg.out_dir}/results.json" + (f" and {cfg.out_dir}/metrics.png" if drew else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
