"""
train_llm.py: SWIRL on real text states, on one CUDA GPU (or several, or a CPU for a small run).

    python train_llm.py                          # ScienceWorld's 30 tasks (train_large), GPU-sized defaults
    python train_llm.py --preset=cpu             # a small model on the small snapshot, on a CPU (README: its time)
    python train_llm.py --data=my.jsonl.gz --eval_data=my_test.jsonl --out_dir=out-mine
    torchrun --nproc_per_node=4 train_llm.py     # several GPUs: sampling split across ranks
    python train_llm.py --resume=True            # continue an interrupted run in --out_dir
    python train_llm.py --preset=cpu --seeds=5   # seeds 0-4, and each method's gain over SFT on the same seed

Data (see data.py for the JSONL format): steps with an action feed SFT, steps without one feed SWIRL;
--eval_data holds episodes with every action, used only for metrics, and --val_data the same for early stopping
and each phase's checks (by default the test* and val* files beside a train* --data file; without them we hold
out part of the labelled episodes). The tokenizer is a BPE vocabulary trained on the training states and
actions and cached next to the data (--tokenizer=bytes reads bytes, --tokenizer=gpt2 uses GPT-2's, when
tiktoken can load it). `python train_toy.py --export=DIR` writes the toy's own splits and settings as such
files: run through here, they give the toy's numbers (README, "One world, one answer").

It runs the same swirl.run_swirl as train_toy.py and writes out_dir/results.json in the same shape, with
text metrics: idm_action_acc, fwm_exact, fwm_bleu, fwm_rougeL (given the true action) and
fwm_exact_inferred (given the IDM's action). Checkpoints: out_dir/<stage>.pt after SFT and every phase
(models, optimiser, config, step, random state) and out_dir/resume.pt, the full state --resume needs.

Read this after train_toy.py: the algorithm is the same; only data, size and devices change.
"""

import contextlib
import copy
import json
import math
import os
import random
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, replace

import torch

import swirl
from common import (config_dict, convert, format_table, known_options, mean_over_seeds, paired_report, parse_options,
                    rank_and_processes, write_results)
from data import (DataError, Renamer, bpe_tokenizer, byte_tokenizer, corpus_hash, gpt2_tokenizer,
                  labelled_and_unlabelled, load_episodes, make_codec, split_episodes, transitions)
from model import (GPT, GPTConfig, WeightsError, copy_model, gpt2_from_folder, load_checkpoint, model_state,
                   save_checkpoint)
from tqdm import tqdm


@dataclass
class LLMConfig:
    # ScienceWorld, 30 tasks, 898 training episodes (README, "The shipped ScienceWorld data"); the CPU preset
    # reads the small snapshot data/scienceworld/train.jsonl.gz instead
    data: str = "data/scienceworld/train_large.jsonl.gz"
    # held-out episodes, every action given, for metrics only: "auto" = the file beside --data named test* where
    # --data is named train* (train_large.jsonl.gz -> test_large.jsonl.gz), when it exists; "" or no such file =
    # hold out test_fraction of the labelled episodes of --data; or a path
    eval_data: str = "auto"
    # labelled episodes for early stopping and each phase's checks (every action given): "auto" = the file
    # beside --data named val* where --data is named train*, when it exists; "" or no such file = hold out
    # val_fraction of the labelled episodes of --data; or a path
    val_data: str = "auto"
    out_dir: str = "out-llm"
    preset: str = "gpu"  # "gpu" (these defaults) or "cpu" (see PRESETS); explicit options win over both
    # settings that belong to a data set (read_recipe): "auto" = the file RECIPE beside --data, when there is one
    # (data/scienceworld/ has one); "" = none; or a path. It wins over the preset; the command line wins over it
    recipe: str = "auto"
    # "bpe" (trained on the training data, offline), "bytes" (one token a byte, as the toy's) or "gpt2" (needs
    # tiktoken's download)
    tokenizer: str = "bpe"
    vocab_size: int = 2048  # of the trained BPE
    # where both models start: "scratch" (the sizes below), "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"
    # (downloaded once into --cache_dir), or a folder with GPT-2's config.json, model.safetensors, vocab.json
    # and merges.txt (offline). A pretrained start brings its own sizes and tokenizer.
    init_from: str = "scratch"
    cache_dir: str = os.path.join(os.path.expanduser("~"), ".cache", "swirl")
    # the model from scratch (each role is one GPT; ~30M parameters with these defaults)
    n_layer: int = 8
    n_head: int = 8
    n_embd: int = 512
    block_size: int = 1024  # must hold the IDM's prompt (two states) plus an action; see data.check_fits
    dropout: float = 0.0
    rope: bool = False  # rotary positions (model.GPTConfig.rope) instead of learned ones; from scratch only
    state_slot: bool = False  # x padded to the longest training state in both prompts (data.in_slot)
    rename: float = 0.0  # > 0: the FWM's pretraining pairs, and one more copy of each SFT triple, with each word
    # renamed with this probability (data.Renamer; ScienceWorld's recipe)
    closed_world: bool = False  # each role writes only the tokens its training outputs use (the FWM the states',
    # the IDM the actions'; data.make_codec), as the toy's do; False: any text
    # the machine
    device: str = "auto"  # "auto": cuda when available, else cpu
    dtype: str = "auto"  # "auto": bfloat16 autocast on a GPU that has it, else float32
    compile: bool = False  # torch.compile the passes over whole sequences (GPT.compile_forward); sampling stays eager
    # the run
    seed: int = 0
    # > 1: seeds seed, seed + 1, ... one after another, each in out_dir/seed<k> (its own results.json and
    # checkpoints); out_dir/results.json then holds every seed ("seeds") and each method's gain over SFT on
    # the same seed ("paired"), printed as a table: mean, 95% t-interval, wins
    seeds: int = 1
    val_fraction: float = 0.1  # of the labelled episodes: early stopping of every SFT, when there is no val_data
    test_fraction: float = 0.2  # of the labelled episodes, used as the test set when there is no eval_data
    max_eval: int = 0  # evaluate on this many held-out transitions (drawn once with the seed); 0 = all
    resume: bool = False
    stop_after: str = ""  # a stage name: stop after it (its checkpoint is written); "" = run everything
    samples: int = 2  # held-out transitions printed at the end


# Settings a preset changes (fields of LLMConfig, swirl.SwirlConfig or grpo.GRPOConfig); a data set's recipe
# (read_recipe) and anything given on the command line win over them. A preset holds only what does no harm on
# any world: sizes, step budgets, the device, and the paper's text settings for GRPO: beta 0.1 (GRPOConfig's
# default), temperature 0.7, top-p 0.96, a cosine rate with 25 warm-up steps, and the authors' filter (mean
# token log-prob of the IDM's action >= -2). The GPU preset also takes G = 16, a rate of 5e-5 and one pass
# over the unlabelled pairs per phase; the CPU preset keeps a small G and a few steps, to run on a CPU.
# Settings that are not the paper's (README, "The paper and this code"):
#   - the FWM from scratch is first pretrained on the unlabelled pairs, the action unknown (swirl.pretrain_fwm):
#     it stands in for a pretrained LLM's ability to copy a state; the IDM starts from it as well
#     (swirl.SwirlConfig.idm_from_pretrained), as the paper's two roles start from one LLM: in one seed on six
#     worlds it raised the SFT IDM on five (+5 to +44 points), lowered it on one (-7), and left the FWM as it was
#     (NOTES.md, "One preset for every world");
#   - each phase keeps its best check on the held-out labelled split (phase_eval_every, the start included), as
#     SFT's early stopping keeps its best step: a phase that lowers the held-out score is undone;
#   - Dr. GRPO advantages (r - mean, no division by the group's std, scale_rewards=False): the rewards are
#     mean log-likelihoods of long states that differ by hundredths of a nat within a group, and dividing by
#     that std pushes their noise at full size (NOTES.md, "The toy's world through the text path").
# What ScienceWorld's small FWM needed to copy a held-out room (renamed pairs, the state slot, rotary positions,
# its step caps) is data/scienceworld/recipe.txt, with the reasons: on other worlds the same settings cost the
# FWM its copy (NOTES.md, "One preset for every world").
PAPER_TEXT = dict(temperature=0.7, top_p=0.96, lr_schedule="cosine", lr_warmup=25, confidence=math.exp(-2))
NOT_PAPER = dict(scale_rewards=False)
PRESETS = {
    "gpu": dict(PAPER_TEXT, **NOT_PAPER, pretrain_steps=2000, sft_lr=6e-4, sft_batch=32, sft_max_steps=5000,
                sft_eval_every=250, steps_per_phase=0, prompts_per_step=8, group_size=16, lr=5e-5, micro_batch=64,
                phase_eval_every=25, idm_from_pretrained=True),
    "cpu": dict(PAPER_TEXT, **NOT_PAPER, data="data/scienceworld/train.jsonl.gz", pretrain_steps=1000, n_layer=2,
                n_head=4, n_embd=128, device="cpu", dtype="float32", max_eval=48, sft_lr=3e-3, sft_batch=16,
                sft_max_steps=3000, sft_eval_every=50, iterations=1, lr_warmup=0, steps_per_phase=6, prompts_per_step=4,
                group_size=4, best_of="2", phase_eval_every=3, idm_from_pretrained=True),
}

METRICS = ["idm_action_acc", "fwm_exact", "fwm_exact_inferred", "fwm_bleu", "fwm_rougeL"]


# ----------------------------------------------------------------------------------------------------
# Text metrics for predicted next states (whitespace tokens; the paper reports BLEU and ROUGE-L)


def text_metrics(predicted, real):
    return {"fwm_bleu": bleu(predicted, real), "fwm_rougeL": rouge_l(predicted, real)}


def ngrams(words, n):
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def bleu(predictions, references, max_n=4):
    """Corpus BLEU-4 (Papineni et al. 2002): clipped n-gram precisions summed over the whole corpus,
    their geometric mean, times the brevity penalty exp(1 - ref_len / pred_len) when predictions are
    shorter. A corpus with no matching n-gram of some order scores 0. Returns a fraction in [0, 1]."""
    matches, totals = [0] * max_n, [0] * max_n
    pred_len = ref_len = 0
    for p, r in zip(predictions, references):
        pw, rw = p.split(), r.split()
        pred_len, ref_len = pred_len + len(pw), ref_len + len(rw)
        for n in range(1, max_n + 1):
            pc, rc = ngrams(pw, n), ngrams(rw, n)
            matches[n - 1] += sum(min(c, rc[g]) for g, c in pc.items())
            totals[n - 1] += max(0, len(pw) - n + 1)
    if pred_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    brevity = 1.0 if pred_len > ref_len else math.exp(1 - ref_len / pred_len)
    return brevity * math.exp(log_precision)


def lcs_length(a, b):
    """Length of the longest common subsequence of two lists (dynamic programming, one row at a time)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(predictions, references):
    """Mean ROUGE-L F1 over pairs: LCS of the word sequences, P = lcs / |pred|, R = lcs / |ref|."""
    scores = []
    for p, r in zip(predictions, references):
        pw, rw = p.split(), r.split()
        lcs = lcs_length(pw, rw)
        scores.append(0.0 if lcs == 0 else 2 * lcs / (len(pw) + len(rw)))  # = 2PR / (P + R)
    return sum(scores) / max(1, len(scores))


def copy_baseline(test):
    """The FWM metrics of the trivial world model that predicts 'nothing changes' (y = x): the floor a
    useful FWM must clear. In ScienceWorld many gold steps (focus on, wait, read) leave the look and the
    inventory unchanged, so this floor is high."""
    xs, ys = [t.x for t in test], [t.y for t in test]
    return {"fwm_exact": sum(x == y for x, y in zip(xs, ys)) / len(test), **text_metrics(xs, ys)}


def majority_baseline(labelled, test):
    """The IDM's floor: always answer the most common action of the labelled training steps."""
    action = Counter(t.action for t in labelled).most_common(1)[0][0]
    return {"idm_action_acc": sum(t.action == action for t in test) / len(test), "action": action}


def floors_line(floors):
    """The floors as main prints them before training."""
    copy = " ".join(f"{k}={v:.3f}" for k, v in floors["y=x"].items())
    majority = floors["majority"]
    return (f"floors, no model: the FWM writing y = x {copy}; the IDM writing the majority action "
            f"idm_action_acc={majority['idm_action_acc']:.3f} (always {majority['action']!r})")


def configure(argv):
    """LLMConfig and SwirlConfig from the command line: defaults, then the preset, then the data set's recipe,
    then a pretrained start's settings, then --key=value. cfg.recipe becomes the recipe's path ("" for none),
    cfg.eval_data and cfg.val_data the held-out files' ("" for a split of --data)."""
    cfg, scfg = LLMConfig(), swirl.SwirlConfig()
    preset = last_value(argv, "preset", cfg.preset)
    if preset not in PRESETS:
        sys.exit(f"unknown --preset={preset}; choose one of {sorted(PRESETS)}")
    data = last_value(argv, "data", PRESETS[preset].get("data", cfg.data))
    path = recipe_path(last_value(argv, "recipe", cfg.recipe), data)
    pretrained = FROM_PRETRAINED if last_value(argv, "init_from", cfg.init_from) != "scratch" else {}
    recipe = read_recipe(path, preset) if path else {}
    known = known_options(cfg, scfg, scfg.grpo)
    for key, value in {**PRESETS[preset], **recipe, **pretrained}.items():
        setattr(known[key], key, value)
    parse_options(argv, cfg, scfg, scfg.grpo)
    cfg.recipe = path
    cfg.eval_data = beside(cfg.eval_data, cfg.data, "test")
    cfg.val_data = beside(cfg.val_data, cfg.data, "val")
    return cfg, scfg


def beside(option, data, prefix):
    """The held-out file a run reads: "auto" -> the file beside a train* --data file whose name starts with
    prefix instead (train_large.jsonl.gz -> test_large.jsonl.gz) if it exists, else "" (that split comes from
    --data's labelled episodes)."""
    if option != "auto":
        return option
    folder, name = os.path.split(data)
    path = os.path.join(folder, prefix + name[len("train"):])
    return path if name.startswith("train") and os.path.exists(path) else ""


# ----------------------------------------------------------------------------------------------------
# A data set's recipe: settings measured on that data, kept beside it (as nanoGPT keeps
# config/train_shakespeare_char.py beside its data), so that no preset carries one world's tricks to another.
# The format is the command line's, one option a line; "#" starts a comment; a line "[cpu]" or "[gpu]" starts
# settings for that preset only (step budgets measured at that preset's size). data/scienceworld/recipe.txt:
#
#     --rename=0.5            # for every preset
#     [cpu]
#     --sft_max_steps=250     # for --preset=cpu only

RECIPE = "recipe.txt"
# run options, not data ones
NOT_IN_RECIPE = {"data", "eval_data", "val_data", "recipe", "preset", "out_dir", "resume", "stop_after"}


def recipe_path(recipe, data):
    """The recipe file a run reads: "auto" -> RECIPE beside the data file if it exists, else ""."""
    if recipe != "auto":
        return recipe
    path = os.path.join(os.path.dirname(data), RECIPE)
    return path if os.path.exists(path) else ""


def read_recipe(path, preset):
    """{key: value} of a recipe file's settings for this preset, each key checked and each value converted to
    its option's type (one error naming the file and line otherwise)."""
    if not os.path.exists(path):
        raise DataError(f"--recipe={path}: no such file. Fix: give a recipe file, or --recipe= for none.")
    scfg = swirl.SwirlConfig()
    known = known_options(LLMConfig(), scfg, scfg.grpo)
    settings, section = {}, None
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            where = f"{path}, line {n}"
            if not line:
                continue
            if line.startswith("["):
                section = line[1:-1] if line.endswith("]") else None
                if section not in PRESETS:
                    raise DataError(f"{where}: {line} names no preset. Fix: [{'] or ['.join(sorted(PRESETS))}].")
                continue
            key, _, value = line[2:].partition("=") if line.startswith("--") else ("", "", "")
            if key not in known or key in NOT_IN_RECIPE or not value:
                raise DataError(f"{where}: {line!r} is not a setting a recipe can hold. Fix: --key=value with a "
                                "train_llm.py option (an unknown one on the command line lists them all) other than "
                                + ", ".join(f"--{k}" for k in sorted(NOT_IN_RECIPE)) + ".")
            try:
                value = convert(value, type(getattr(known[key], key)), key)
            except ValueError as e:
                raise DataError(f"{where}: {e}. Fix: a value of the option's type.") from None
            if section in (None, preset):
                settings[key] = value
    return settings


def last_value(argv, key, default):
    """The value the command line gives --key (the last one wins, as in parse_options), or the default."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{key}=")]
    return values[-1] if values else default


def load_data(cfg):
    """Training episodes -> labelled / val / unlabelled transitions; eval episodes -> test transitions. The val
    and test episodes come from their files (--val_data, --eval_data), or else from the labelled episodes of
    --data, split by episode with the seed."""
    episodes = load_episodes(cfg.data)
    with_labels = [e for e in episodes if any(a is not None for a in e.actions)]
    if not with_labels:
        raise DataError(f"{cfg.data}: no step has an action, and SFT needs some. Fix: keep the actions of part "
                        "of the episodes (SWIRL uses the steps whose action is null or missing).")
    fractions = [0.0 if cfg.val_data else cfg.val_fraction, 0.0 if cfg.eval_data else cfg.test_fraction]
    val_ep, test_episodes, _ = split_episodes(with_labels, fractions + [1 - sum(fractions)], cfg.seed)
    held_out = {id(e) for e in test_episodes}  # (when they come from --data)
    val_ep = answers(cfg.val_data, "--val_data") if cfg.val_data else val_ep
    test_episodes = answers(cfg.eval_data, "--eval_data") if cfg.eval_data else test_episodes
    rest = [e for e in episodes if id(e) not in held_out]
    steps = transitions(rest)
    val_sources = {e.source for e in val_ep}  # "file:line" names each episode
    with_action, unlabelled = labelled_and_unlabelled(steps)  # val episodes' unlabelled steps stay in SWIRL's data
    labelled = [t for t in with_action if t.source not in val_sources]
    val = [t for t in transitions(val_ep) if t.action is not None]
    test = [t for t in transitions(test_episodes) if t.action is not None]
    if not unlabelled:
        raise DataError(f"{cfg.data}: every step has an action, so SWIRL has nothing to learn from. Fix: null the "
                        "actions of part of the episodes (data.strip_actions), or add state-only episodes.")
    if not val or not labelled or not test:
        raise DataError(f"{cfg.data}: too few labelled episodes to split into train / val / test "
                        f"({len(labelled)} / {len(val)} / {len(test)} transitions). Fix: more labelled episodes, "
                        "or --val_data and --eval_data.")
    if cfg.max_eval and len(test) > cfg.max_eval:
        test = random.Random(cfg.seed).sample(test, cfg.max_eval)
    return labelled, val, unlabelled, test


def answers(path, option):
    """The episodes of a held-out file, each with every action (they are what the models are scored on)."""
    episodes = load_episodes(path)
    for e in episodes:
        if any(a is None for a in e.actions):
            raise DataError(f"{e.source}: {option} episodes need every action (they are the answers). "
                            f"Fix: give every action, or leave {option} empty to hold out labelled episodes.")
    return episodes


# A pretrained start fine-tunes at nanoGPT's order of rate for GPT-2 (not one we have measured) and needs no
# state-only pretraining: GPT-2 already copies text. Options given on the command line win.
FROM_PRETRAINED = dict(sft_lr=1e-4, pretrain_steps=0, rope=False)
GPT2_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
GPT2_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")
HUB_URL = "https://huggingface.co/{model}/resolve/main/{file}"


def pretrained_folder(cfg):
    """The folder that holds the pretrained model's files (downloading a named GPT-2 there first), or
    None for a start from scratch."""
    if cfg.init_from == "scratch":
        return None
    if cfg.init_from not in GPT2_MODELS:
        if not os.path.isdir(cfg.init_from):
            raise WeightsError(f"--init_from={cfg.init_from}: neither scratch, one of {', '.join(GPT2_MODELS)}, nor a "
                               "folder. Fix: give a folder holding " + ", ".join(GPT2_FILES) + ".")
        return cfg.init_from
    folder = os.path.join(cfg.cache_dir, cfg.init_from)
    for name in GPT2_FILES:
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            download(HUB_URL.format(model=cfg.init_from, file=name), path, folder)
    return folder


def download(url, path, folder):
    """url -> path, with a progress bar; written to a temporary file and renamed, so a broken download never
    looks like a file. Offline, one error that says which files to put where."""
    os.makedirs(folder, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path + ".tmp", "wb") as f:
            size = int(response.headers.get("Content-Length") or 0)
            with tqdm(total=size or None, unit="B", unit_scale=True, desc=os.path.basename(path)) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except OSError as e:  # URLError, timeouts and refused connections are all OSErrors
        raise WeightsError(f"could not download {url} ({e}). Fix: without internet, put {', '.join(GPT2_FILES)} "
                           f"of that model in {folder} (or in any folder, and pass --init_from=FOLDER).") from None
    os.replace(path + ".tmp", path)


def make_tokenizer(cfg, train, folder=None):
    """BPE trained on the training transitions' states and actions (never on held-out test data), cached
    next to --data under a name that carries the corpus hash: with --eval_data the corpus is the whole
    --data file (every seed shares one cache, the shipped one for ScienceWorld); without it, each held-out
    split gets its own file and none overwrites another. A pretrained model reads its own vocabulary."""
    if folder is not None or cfg.tokenizer == "gpt2":
        return gpt2_tokenizer(folder)
    if cfg.tokenizer == "bytes":
        return byte_tokenizer()
    if cfg.tokenizer != "bpe":
        sys.exit(f"unknown --tokenizer={cfg.tokenizer}; choose bpe, bytes or gpt2")
    texts = sorted({t.x for t in train} | {t.y for t in train} | {t.action for t in train if t.action is not None})
    name = f"bpe{cfg.vocab_size}-{corpus_hash(texts)[:8]}.txt"
    return bpe_tokenizer(texts, cfg.vocab_size, os.path.join(os.path.dirname(os.path.abspath(cfg.data)), name))


def setup_devices(cfg):
    """(rank, device, autocast context). Under torchrun: one process per GPU (NCCL) or per CPU (gloo)."""
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if "RANK" in os.environ and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(device)
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"
    if dtype not in ("bfloat16", "float32"):
        sys.exit(f"unknown --dtype={cfg.dtype}; choose auto, bfloat16 or float32")
    # bf16 autocast: matmuls in bfloat16, weights, softmax and log-probs in float32 (no loss scaling needed).
    # cache_enabled=False: autocast keeps the bf16 copy of each trainable weight until the OUTERMOST context
    # exits, and this one spans the whole run, so with the cache every forward pass after the first would
    # read the weights as they were then: optimiser steps would never reach the model (test_bf16_learns_...).
    ctx = (torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, cache_enabled=False)
           if dtype == "bfloat16" else contextlib.nullcontext())
    return rank_and_processes()[0], device, ctx


def model_factory(cfg, tok, device, folder=None):
    """new_model() for swirl.run_swirl, the models' GPTConfig and size. From scratch: a fresh GPT each call.
    Pretrained: GPT-2's weights, read once; each call returns a copy, so both roles start from them.
    Its vocabulary is GPT-2's plus our special tokens, padded to a multiple of 64 as nanoGPT does."""
    if folder is not None:
        if cfg.rope:
            sys.exit("--rope=true is for a model from scratch: GPT-2's weights were trained with learned positions")
        pretrained = gpt2_from_folder(folder, vocab_size=64 * math.ceil(tok.vocab_size / 64))
        mcfg, n_params = pretrained.config, pretrained.num_params()
    else:
        mcfg = GPTConfig(vocab_size=tok.vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer,
                         n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, rope=cfg.rope)
        n_params = GPT(mcfg).num_params()

    def new_model():
        model = (copy.deepcopy(pretrained) if folder is not None else GPT(mcfg)).to(device)
        return model.compile_forward() if cfg.compile else model

    return new_model, mcfg, n_params


# ----------------------------------------------------------------------------------------------------
# Checkpoints and --resume: a run that is interrupted goes on where it stopped, with the same numbers


def pair_state(pair):
    """(fwm, idm) -> their state dicts (one when the weights are shared; None stays None)."""
    if pair is None:
        return None
    fwm, idm = pair
    return {"fwm": fwm.state_dict() if fwm is not None else None,
            "idm": None if idm is None or idm is fwm else idm.state_dict()}


def restore_pair(state, fwm_like, idm_like):
    """The inverse of pair_state: fresh copies of the given models with the saved weights."""
    if state is None:
        return None
    fwm = copy_model(fwm_like)
    fwm.load_state_dict(state["fwm"])
    if state["idm"] is None:
        return (fwm, fwm) if fwm_like is idm_like else (fwm, None)
    idm = copy_model(idm_like)
    idm.load_state_dict(state["idm"])
    return fwm, idm


def run_state(run, optimizers):
    """Everything swirl.run_swirl needs to continue after a stage: the models (now, at init, after SFT, the
    iteration's references), the stages so far, the update steps taken, every random stream, and the
    optimiser of the phase that just ended (each phase starts a fresh one, so resuming does not need
    it; it is kept for inspection and for anyone who wants to continue that phase)."""
    return {
        "stages": copy.deepcopy(run.stages),
        "step": run.swirl_steps,
        "models": pair_state((run.fwm, run.idm)),
        "init": pair_state(run.init),
        "sft": pair_state(run.sft_models),
        "refs": pair_state(run.refs),
        "optimizers": {role: o.state_dict() for role, o in optimizers.items()},
        "rng": run.rng.getstate(),
        "generator": run.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
    }


def resumer(state):
    """swirl.run_swirl's resume: refill its fresh RunState from a run_state dict."""

    def resume(run):
        fwm, idm = run.fwm, run.idm
        run.fwm, run.idm = restore_pair(state["models"], fwm, idm)
        run.init, run.sft_models, run.refs = (restore_pair(state[k], fwm, idm) for k in ("init", "sft", "refs"))
        if run.refs is not None:  # references are frozen
            run.refs = tuple(r and r.eval().requires_grad_(False) for r in run.refs)
        run.stages, run.swirl_steps = state["stages"], state["step"]
        run.rng.setstate(state["rng"])
        run.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])

    return resume


def checkpointer(cfg, config, rank, started):
    """After SFT and every phase: out_dir/<stage>.pt (models, optimiser, config, step, random state) and
    out_dir/resume.pt (everything run_swirl needs to go on). Ranks > 0 save only their random streams,
    which differ from rank 0's; the weights are the same on every rank."""

    def checkpoint(name, run, optimizers):
        state = run_state(run, optimizers)
        streams = {k: state[k] for k in ("rng", "generator", "torch_rng")}
        if rank > 0:
            save_checkpoint(os.path.join(cfg.out_dir, f"resume.rank{rank}.pt"), **streams)
            return
        save_checkpoint(os.path.join(cfg.out_dir, f"{name}.pt"), fwm=model_state(run.fwm), idm=model_state(run.idm),
                        optimizers=state["optimizers"], config=config, stage=name, step=state["step"], **streams)
        save_checkpoint(os.path.join(cfg.out_dir, "resume.pt"), config=config, wall_seconds=time.time() - started,
                        **state)

    return checkpoint


def load_resume(cfg, config, rank):
    """The state to resume from, checked against this run's settings."""
    path = os.path.join(cfg.out_dir, "resume.pt")
    if not os.path.exists(path):
        sys.exit(f"--resume=True: {path} does not exist (no stage of a run in {cfg.out_dir} has finished). "
                 "Fix: run without --resume, or point --out_dir at the interrupted run.")
    state = load_checkpoint(path)
    ignore = {"resume", "stop_after", "device", "samples"}
    changed = sorted(k for k in config if k not in ignore and state["config"].get(k) != config[k])
    if changed:
        sys.exit(f"--resume=True: {path} was made with other settings ({', '.join(changed)}). "
                 "Fix: resume with the same options, or start a new run in another --out_dir.")
    if rank > 0:
        state.update(load_checkpoint(os.path.join(cfg.out_dir, f"resume.rank{rank}.pt")))
    return state


def run_seed(cfg, scfg, device, autocast, log):
    """One seed, start to end (or from its resume.pt with --resume). Returns {"seed", "wall_seconds",
    "stages", "floors"} and writes cfg.out_dir/results.json (rank 0)."""
    rank = rank_and_processes()[0]
    resume = None
    if cfg.resume:
        resume = load_resume(cfg, config_dict(cfg, scfg), rank)
    started = time.time() - (resume["wall_seconds"] if resume else 0.0)  # wall time counts every session
    labelled, val, unlabelled, test = load_data(cfg)
    folder = pretrained_folder(cfg)
    tok = make_tokenizer(cfg, labelled + val + unlabelled, folder)
    new_model, mcfg, n_params = model_factory(cfg, tok, device, folder)
    codec = make_codec(tok, mcfg.block_size, labelled, unlabelled, scfg.shared, scfg.truncate,
                       vocab_size=mcfg.vocab_size, state_slot=cfg.state_slot, closed_world=cfg.closed_world).to(device)
    config = config_dict(cfg, scfg)
    log(f"seed {cfg.seed}: {len(labelled)} labelled, {len(val)} val, {len(unlabelled)} unlabelled, {len(test)} test "
        f"transitions; {tok.vocab_size} tokens; models of {n_params:,} parameters "
        f"({'from ' + folder if folder else 'from scratch'}) on {device} "
        f"({rank_and_processes()[1]} process(es))")
    if cfg.recipe:
        settings = " ".join(f"--{k}={v}" for k, v in read_recipe(cfg.recipe, cfg.preset).items())
        log(f"the data set's recipe {cfg.recipe}: {settings} (the command line wins over it)")
    split = "a split of the labelled episodes of " + cfg.data
    log(f"held-out transitions from {cfg.eval_data or split}; validation from {cfg.val_data or split}")
    floors = {"y=x": copy_baseline(test), "majority": majority_baseline(labelled, test)}
    log(floors_line(floors))
    with autocast:
        stages, (fwm, idm) = swirl.run_swirl(
            scfg, codec, new_model, labelled, val, unlabelled, test, seed=cfg.seed, extra_metrics=text_metrics,
            checkpoint=checkpointer(cfg, config, rank, started), resume=resume and resumer(resume),
            stop_after=cfg.stop_after or None, renamer=Renamer(tok, cfg.rename) if cfg.rename else None, log=log)
        samples = swirl.show_samples(fwm, idm, codec, test, cfg.samples) if cfg.samples else ""
    wall = time.time() - started
    if rank == 0:
        write_results(cfg.out_dir, config, stages, wall, floors=floors)
        log(f"\nheld-out samples:\n\n{samples}" if samples else "")
        log(f"\nheld-out results, {wall:.0f} s:\n\n{format_table(stages, METRICS)}\n\nwrote {cfg.out_dir}/results.json")
    return {"seed": cfg.seed, "wall_seconds": wall, "stages": stages, "floors": floors}


GAIN_METRICS = ["idm_action_acc", "fwm_exact", "fwm_exact_inferred", "fwm_rougeL"]  # the paired table's columns


def run_seeds(cfg, scfg, device, autocast, log):
    """--seeds=N: seeds cfg.seed ... cfg.seed + N - 1, one after another (a text run uses every core, or
    every GPU under torchrun), each a run of its own in out_dir/seed<k>. With --resume a seed whose
    results.json exists is read, not run again, and the one that was interrupted goes on from its resume.pt."""
    per_seed = []
    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        seed_cfg = replace(cfg, seed=seed, seeds=1, out_dir=os.path.join(cfg.out_dir, f"seed{seed}"))
        done = os.path.join(seed_cfg.out_dir, "results.json")
        if cfg.resume and os.path.exists(done):
            with open(done) as f:
                result = json.load(f)
            per_seed.append({"seed": seed, **{k: result[k] for k in ("wall_seconds", "stages", "floors")}})
            log(f"seed {seed}: done before, read from {done}")
            continue
        seed_cfg.resume = cfg.resume and os.path.exists(os.path.join(seed_cfg.out_dir, "resume.pt"))
        per_seed.append(run_seed(seed_cfg, scfg, device, autocast, log))
    runs = [r["stages"] for r in per_seed]
    report, gains = paired_report(runs, GAIN_METRICS)
    stages = mean_over_seeds(runs)
    if rank_and_processes()[0] == 0:
        write_results(cfg.out_dir, config_dict(cfg, scfg), stages, sum(r["wall_seconds"] for r in per_seed),
                      seeds=per_seed, **gains)
        log(f"\nheld-out results, mean ± std over seeds {cfg.seed}-{cfg.seed + cfg.seeds - 1}:\n\n"
            f"{format_table(stages, METRICS)}\n\n{report}\n\nwrote {cfg.out_dir}/results.json")


def main(argv):
    cfg, scfg = configure(argv)
    if cfg.seeds < 1:
        sys.exit(f"--seeds={cfg.seeds}: give 1 or more")
    try:
        swirl.check_stop_after(scfg, cfg.stop_after)  # before any data is read or model trained
    except ValueError as e:
        sys.exit(f"error: {e}")
    rank, device, autocast = setup_devices(cfg)
    log = print if rank == 0 else (lambda *a, **k: None)
    if cfg.seeds == 1:
        run_seed(cfg, scfg, device, autocast, log)
    else:
        run_seeds(cfg, scfg, device, autocast, log)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def cli(argv):
    """main, as the command line runs it: bad data or weights end the run with one line, not a traceback."""
    try:
        main(argv)
    except (DataError, WeightsError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    cli(sys.argv[1:])
