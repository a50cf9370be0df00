"""
common.py: the plumbing every script needs and no reader of the algorithm should have to step over.

  - command-line options: `--key=value` for any field of the given dataclasses (as nanoGPT's
    configurator.py does, without exec);
  - several processes (torchrun): this process's rank, and averaging gradients over processes;
  - results: out_dir/results.json, mean +/- std over seeds, markdown tables, a few held-out samples;
  - seeds as a paired experiment: each method's gain over SFT on the same seed, its mean, a 95% Student-t
    interval and the wins out of N (the t quantile computed here, without scipy).

Imports only the standard library and torch, so every other module may import it.

Read next: nothing; come here when a script calls something you want to see.
"""

import json
import math
import os
import sys
from dataclasses import asdict, fields, is_dataclass

import torch

# ----------------------------------------------------------------------------------------------------
# Command-line options: --key=value for any field of the given dataclasses; unknown keys are an error


def parse_options(argv, *configs):
    """Apply `--key=value` overrides to dataclass instances in place. Values are converted to the
    field's type; an unknown key or a bad value exits with the list of known options. A field that is
    itself a dataclass (SwirlConfig.grpo) is not an option: pass that dataclass too, and its fields are."""
    known = known_options(*configs)
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            sys.exit(f"bad argument {arg!r}: options look like --key=value (e.g. --iterations=2)")
        key, value = arg[2:].split("=", 1)
        if key not in known:
            sys.exit(f"unknown option --{key}. Known options:\n  " + "\n  ".join(f"--{k}" for k in sorted(known)))
        obj = known[key]
        try:
            setattr(obj, key, convert(value, type(getattr(obj, key)), key))
        except ValueError as e:
            sys.exit(str(e))
    return configs


def known_options(*configs):
    """{option name: the dataclass instance that holds it} (a nested dataclass's own fields are not in it)."""
    return {f.name: c for c in configs for f in fields(c) if not is_dataclass(getattr(c, f.name))}


def convert(value, typ, key):
    """value (a string) as the option's type; a bad value raises ValueError with the message to show."""
    try:
        if typ is bool:
            if value.lower() in ("1", "true", "yes"):
                return True
            if value.lower() in ("0", "false", "no"):
                return False
            raise ValueError
        converted = typ(value)
    except ValueError:
        raise ValueError(f"bad value for --{key}: {value!r} is not a {typ.__name__}") from None
    if typ is int and converted < 0:  # every int option is a count, a size or a period
        raise ValueError(f"bad value for --{key}: {value!r}; it counts something, so it must be 0 or more")
    if key in AT_LEAST_ONE and converted < 1:
        raise ValueError(f"bad value for --{key}: {value!r}; it must be 1 or more")
    if key in PROBABILITIES and not 0.0 <= converted <= 1.0:
        raise ValueError(f"bad value for --{key}: {value!r}; it is a probability, so it must be between 0 and 1")
    return converted


PROBABILITIES = {"confidence", "top_p", "rename"}  # options that are probabilities
AT_LEAST_ONE = {"seeds", "max_draws"}  # counts for which 0 means nothing to run


def config_dict(*configs):
    """All settings of a run as one flat dict (a nested dataclass becomes a nested dict)."""
    return {k: v for c in configs for k, v in asdict(c).items()}


# ----------------------------------------------------------------------------------------------------
# Several processes (torchrun): each samples its own groups; gradients are averaged by hand


def rank_and_processes():
    """(this process's rank, number of processes): (0, 1) unless running under torchrun."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_reduce_grads(model):
    """Average gradients over processes: what DistributedDataParallel does in backward. We call it by
    hand after backward because the same module also samples with a KV cache and is deep-copied into
    references and reward models, which a DDP wrapper would get in the way of."""
    _, n = rank_and_processes()
    if n == 1:
        return
    for p in model.parameters():
        if p.grad is None:  # every rank must join every all_reduce, used or not
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)
        p.grad /= n


# ----------------------------------------------------------------------------------------------------
# Results: results.json, mean over seeds, tables, samples


def write_results(out_dir, config, stages, wall_seconds, **more):
    """out_dir/results.json, the shape other tools read, written to a temporary file and renamed.
    more: further top-level entries (the toy's "seeds", one entry per seed, and "paired")."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "results.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"config": config, "wall_seconds": wall_seconds, "stages": stages, **more}, f, indent=1)
    os.replace(path + ".tmp", path)


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


def format_samples(transitions, inferred_actions, predicted_states):
    """Held-out transitions as a student wants to see them: x, the IDM's action, the FWM's y, the real y."""
    blocks = []
    for t, z, y in zip(transitions, inferred_actions, predicted_states):
        blocks.append(
            f"x:\n{t.x}\nIDM's action: {z!r}   (true: {t.action!r})\n"
            f"FWM's next state given that action:\n{y}\nreal next state:\n{t.y}\n"
            f"{'match' if y == t.y else 'MISMATCH'}"
        )
    return "\n\n".join(blocks)


# ----------------------------------------------------------------------------------------------------
# Seeds as a paired experiment: a method's gain over SFT on the same seed (the same data, the same SFT
# models), so that what varies from seed to seed (how good SFT happened to be) cancels out of the gain


def t_critical(df, confidence=0.95):
    """The t with P(|T| <= t) = confidence for Student's t with df degrees of freedom (12.706 for df = 1,
    2.262 for df = 9, 1.96 as df grows). Bisection on P(|T| <= t) = 2 * integral_0^t of the t density,
    the integral by Simpson's rule: a few milliseconds, and no scipy."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def inside(t, n=2000):  # P(|T| <= t), Simpson's rule over [0, t] with n (even) intervals
        h = t / n
        density = [math.exp(log_c - (df + 1) / 2 * math.log1p((k * h) ** 2 / df)) for k in range(n + 1)]
        return 2 * h / 3 * (density[0] + density[-1] + 4 * sum(density[1:-1:2]) + 2 * sum(density[2:-1:2]))

    lo, hi = 0.0, 100.0  # P(|T| <= 100) > 0.99 for every df >= 1
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if inside(mid) < confidence else (lo, mid)
    return (lo + hi) / 2


def paired_gain(runs, stage, metric, baseline="sft"):
    """stage's gain over baseline on metric, seed by seed (runs: one list of stages per seed). Returns
    {"gains", "mean", "lo", "hi", "wins", "ties", "n"}: the 95% interval is mean +/- t * sd / sqrt(n), with
    the sample sd (n - 1) and t for n - 1 degrees of freedom; lo = hi = None for one seed (no spread)."""
    gains = []
    for stages in runs:
        by_name = {s["stage"]: s for s in stages}
        gains.append(by_name[stage][metric] - by_name[baseline][metric])
    n = len(gains)
    mean = sum(gains) / n
    lo = hi = None
    if n > 1:
        sd = math.sqrt(sum((g - mean) ** 2 for g in gains) / (n - 1))
        half = t_critical(n - 1) * sd / math.sqrt(n)
        lo, hi = mean - half, mean + half
    return {"gains": gains, "mean": mean, "lo": lo, "hi": hi, "wins": sum(g > 0 for g in gains),
            "ties": sum(g == 0 for g in gains), "n": n}


def swirl_last(names):
    """[the name of SWIRL's last stage] among stage names ([] where no SWIRL stage ran)."""
    return [n for n in names if n.startswith("swirl_")][-1:]


def methods_against_sft(stages):
    """The stage names a paired table sets against SFT: SWIRL's last stage and every baseline."""
    names = [s["stage"] for s in stages]
    return swirl_last(names) + [n for n in names if n != "sft" and not n.startswith("swirl_")]


def paired_table(runs, stages, metrics, baseline="sft"):
    """Markdown table of paired gains over baseline, in points (x 100): mean [95% interval], wins / n.
    Returns (the table, {stage: {metric: paired_gain}}) for results.json."""
    return gains_table(runs, [(stage, baseline) for stage in stages], metrics, f"gain over {baseline} (points)")


def paired_report(runs, metrics):
    """What a run of several seeds prints after its mean table: each method against SFT, then the combined
    row against the two methods it combines. Returns (the text, {"paired", "combined"} for results.json)."""
    gains, paired = paired_table(runs, methods_against_sft(runs[0]), metrics)
    text = f"each method against SFT on the same seed: mean gain [95% t-interval], seeds where it is higher:\n\n{gains}"
    table, combined = combined_against_parts(runs, runs[0], metrics)
    if table:
        text += f"\n\n{COMBINED} against each method it combines, the same way:\n\n{table}"
    return text, {"paired": paired, **({"combined": combined} if combined else {})}


COMBINED = "swirl+bootstrap"  # swirl.run_baselines' row that combines SWIRL's last stage and Bootstrap


def combined_against_parts(runs, stages, metrics):
    """The combined row against each of the two methods it combines, seed by seed (is it above both?).
    Returns (the table, {part: {metric: paired_gain}}), or (None, None) where the run has no combined row."""
    names = [s["stage"] for s in stages]
    if COMBINED not in names:
        return None, None
    parts = swirl_last(names) + ["bootstrap"]
    table, gains = gains_table(runs, [(COMBINED, part) for part in parts], metrics, f"{COMBINED} minus (points)",
                               row_name=lambda stage, part: part)
    return table, {part: gains[part] for part in parts}


def gains_table(runs, pairs, metrics, head, row_name=lambda stage, baseline: stage):
    """One row per (stage, baseline) pair: stage's paired gain over baseline on each metric, in points."""
    rows, out = [f"| {head} | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 1)], {}
    for stage, baseline in pairs:
        name = row_name(stage, baseline)
        out[name] = {m: paired_gain(runs, stage, m, baseline) for m in metrics}
        cells = []
        for m in metrics:
            g = out[name][m]
            interval = "" if g["lo"] is None else f" [{100 * g['lo']:+.1f}, {100 * g['hi']:+.1f}]"
            ties = f" ({g['ties']} tied)" if g["ties"] else ""
            cells.append(f"{100 * g['mean']:+.1f}{interval}, {g['wins']}/{g['n']} up{ties}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows), out
