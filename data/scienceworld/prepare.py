"""
data/scienceworld/prepare.py: ScienceWorld, the paper's own text environment, as state-only episodes.

    pip install scienceworld        # needs Java 17; only this script needs it, training does not
    python data/scienceworld/prepare.py            # writes train.jsonl.gz and test.jsonl.gz here (CPU preset)
    python data/scienceworld/prepare.py --name=large --train_variations=40 --test_variations=8
                                                   # train_large / test_large (the GPU preset's default data)

For each task and variation we load the task with its gold path, reset, and follow
get_gold_action_sequence(), recording a state before the first action and after every action. A state
is what a world model should predict:

    the "look around" text (room, its objects, the doors)  +  "\\n"  +  the inventory text

(both as the environment prints them, outer whitespace stripped). The score and the free-text
feedback of a step ("The door is now open.") are left out: they are not part of the world's state.
Splits follow the paper, by task variation: of each task's training variations, alternate ones keep
their actions (SFT) and the others are stripped (SWIRL); test variations keep their actions in a
separate file that is used for metrics only.
"""

import json
import os
import sys
from dataclasses import dataclass

# data.py and common.py live two folders up; this script is run by its path, as nanoGPT's are
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from common import parse_options  # noqa: E402
from data import DataError, Episode, write_episodes  # noqa: E402


@dataclass
class ScienceWorldPrep:
    out: str = os.path.dirname(os.path.abspath(__file__))  # this folder, where train_llm.py looks
    tasks: str = "all"  # comma-separated task names, or "all" (30 tasks)
    train_variations: int = 4  # per task, from the environment's train split; half labelled, half not
    test_variations: int = 2  # per task, from its test split; actions kept, for evaluation only
    max_steps: int = 20  # gold actions followed per episode (long gold paths are cut here)
    max_state_chars: int = 1500  # an episode ends before its first state longer than this
    name: str = ""  # "" writes train.jsonl.gz / test.jsonl.gz; "large" writes train_large.jsonl.gz / ...


def split_file(cfg, split):
    """cfg.out/<split>.jsonl.gz, or <split>_<name>.jsonl.gz (split: train, test, or partial, the resume log)."""
    stem = f"{split}_{cfg.name}" if cfg.name else split
    return os.path.join(cfg.out, stem + (".jsonl" if split == "partial" else ".jsonl.gz"))


def scienceworld_state(info):
    return info["look"].strip() + "\n" + info["inv"].strip()


def scienceworld_episode(env, task, variation, max_steps, max_state_chars):
    """Play one variation's gold path; returns {"states", "actions"} (possibly cut short, see above)."""
    env.load(task, variation, "", generateGoldPath=True)
    _, info = env.reset()
    states, actions = [scienceworld_state(info)], []
    for action in env.get_gold_action_sequence()[:max_steps]:
        _, _, done, info = env.step(action)
        state = scienceworld_state(info)
        if len(state) > max_state_chars:
            break
        states.append(state)
        actions.append(action)
        if done:
            break
    return {"states": states, "actions": actions}


def plan_episodes(env, cfg):
    """(task, variation, split) for every episode to play; split is labelled, unlabelled or test."""
    names = env.get_task_names() if cfg.tasks == "all" else [t.strip() for t in cfg.tasks.split(",")]
    unknown = sorted(set(names) - set(env.get_task_names()))
    if unknown:
        raise DataError(f"--tasks: unknown ScienceWorld task(s) {unknown}. Fix: use names from {env.get_task_names()}.")
    plan = []
    for task in names:
        env.load(task, 0, "")
        for i, v in enumerate(env.get_variations_train()[: cfg.train_variations]):
            plan.append((task, v, "labelled" if i % 2 == 0 else "unlabelled"))
        plan += [(task, v, "test") for v in env.get_variations_test()[: cfg.test_variations]]
    return plan


def prepare(cfg, env):
    """Write cfg.out/train.jsonl.gz (labelled and unlabelled episodes) and cfg.out/test.jsonl.gz (with
    --name=N: train_N.jsonl.gz and test_N.jsonl.gz).

    Resumable: every finished episode is appended to cfg.out/partial.jsonl (partial_N.jsonl) at once, and a
    rerun skips what is there; the final files are written atomically at the end and the partial file removed."""
    from tqdm import tqdm

    os.makedirs(cfg.out, exist_ok=True)
    partial = split_file(cfg, "partial")
    done = {}
    if os.path.exists(partial):
        with open(partial, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut by an interruption: play that episode again
                    continue
                done[(row["task"], row["variation"])] = row
    plan = plan_episodes(env, cfg)
    with open(partial, "a", encoding="utf-8") as f:
        for task, variation, split in tqdm(plan, desc="scienceworld episodes"):
            if (task, variation) in done:
                continue
            row = {"task": task, "variation": variation, "split": split,
                   **scienceworld_episode(env, task, variation, cfg.max_steps, cfg.max_state_chars)}
            f.write(json.dumps(row) + "\n")
            f.flush()
            done[(task, variation)] = row
    rows = [done[(t, v)] for t, v, _ in plan]
    kept = [r for r in rows if len(r["states"]) >= 2]  # an episode whose first step was too long is dropped
    train = [Episode(r["states"], r["actions"] if r["split"] == "labelled" else [None] * len(r["actions"]))
             for r in kept if r["split"] != "test"]
    test = [Episode(r["states"], r["actions"]) for r in kept if r["split"] == "test"]
    write_episodes(split_file(cfg, "train"), train)
    write_episodes(split_file(cfg, "test"), test)
    os.remove(partial)
    return {"train_episodes": len(train), "test_episodes": len(test), "dropped": len(rows) - len(kept),
            "labelled": sum(r["split"] == "labelled" for r in kept),
            "transitions": sum(len(r["actions"]) for r in kept)}


def scienceworld_env():
    try:
        from scienceworld import ScienceWorldEnv
    except ImportError:
        raise SystemExit(
            "data/scienceworld/prepare.py needs the optional package scienceworld (and Java 17):\n"
            "    pip install scienceworld\n"
            "Training does not need it: the prepared snapshot ships in data/scienceworld/."
        ) from None
    return ScienceWorldEnv("", envStepLimit=1000)


def main(argv):
    (cfg,) = parse_options(argv, ScienceWorldPrep())
    try:
        summary = prepare(cfg, scienceworld_env())
    except DataError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {split_file(cfg, 'train')} and {split_file(cfg, 'test')}: {summary}")


if __name__ == "__main__":
    main(sys.argv[1:])
