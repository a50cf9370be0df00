"""
data/kitchen/prepare.py: the small text kitchen (toy_envs/kitchen.py) as JSONL episodes, for train_llm.py.

    python data/kitchen/prepare.py              # writes train.jsonl.gz and test.jsonl.gz here
    python train_llm.py --data=data/kitchen/train.jsonl.gz --eval_data=data/kitchen/test.jsonl.gz --preset=cpu ...

Like data/gridworld/prepare.py, the labelled episodes keep their actions, the unlabelled ones have none,
and the validation and test episodes keep theirs. The README's section "One world, one answer" runs the
kitchen at the toy's split (--labelled_episodes=12 --val_episodes=25) with the toy's settings.
"""

import os
import sys
from dataclasses import dataclass

# data.py, common.py and toy_envs/ live two folders up; this script is run by its path
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from common import parse_options  # noqa: E402
from data import write_splits  # noqa: E402
from toy_envs.kitchen import Kitchen, make_kitchen_episodes  # noqa: E402


@dataclass
class KitchenPrep:
    out: str = os.path.dirname(os.path.abspath(__file__))
    episode_len: int = 8
    labelled_episodes: int = 40  # with actions (SFT; train_llm.py holds some out for early stopping)
    unlabelled_episodes: int = 200  # actions hidden: SWIRL's data
    val_episodes: int = 0  # with actions, for early stopping and the phases' checks (val.jsonl.gz; 0: none,
    # and train_llm.py holds labelled episodes out instead); the toy's split is --labelled_episodes=12 --val_episodes=25
    test_episodes: int = 100  # with actions, for metrics only
    seed: int = 0


def prepare(cfg):
    """Write cfg.out/train.jsonl.gz (labelled, then unlabelled episodes), val.jsonl.gz and test.jsonl.gz."""
    n = cfg.labelled_episodes + cfg.unlabelled_episodes + cfg.val_episodes + cfg.test_episodes
    states, actions = make_kitchen_episodes(Kitchen(cfg.episode_len), n, seed=cfg.seed)
    return write_splits(cfg.out, states, actions, cfg.labelled_episodes, cfg.unlabelled_episodes, cfg.val_episodes)


if __name__ == "__main__":
    (cfg,) = parse_options(sys.argv[1:], KitchenPrep())
    n_train, n_val, n_test = prepare(cfg)
    val = f", val.jsonl.gz ({n_val})" if n_val else ""
    print(f"wrote {cfg.out}/train.jsonl.gz ({n_train} episodes){val} and test.jsonl.gz ({n_test})")
