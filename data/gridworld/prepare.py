"""
data/gridworld/prepare.py: the toy's gridworld as JSONL episodes, for train_llm.py's text path.

    python data/gridworld/prepare.py              # writes train.jsonl.gz and test.jsonl.gz here
    python train_llm.py --data=data/gridworld/train.jsonl.gz --eval_data=data/gridworld/test.jsonl.gz --preset=cpu

The same world as train_toy.py (toy_envs/gridworld.py), written the way any user's state sequences
would be: the labelled episodes keep their actions, the unlabelled ones have none, and the test episodes
keep all of theirs for metrics. It is the smallest honest check of the text path: a world whose rules we
know, whose states are short, and whose toy results (train_toy.py) the text path can be held against.
"""

import os
import sys
from dataclasses import dataclass

# data.py, common.py and toy_envs/ live two folders up; this script is run by its path
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from common import parse_options  # noqa: E402
from data import write_splits  # noqa: E402
from toy_envs import GridWorld, make_episodes  # noqa: E402


@dataclass
class GridPrep:
    out: str = os.path.dirname(os.path.abspath(__file__))
    size: int = 4  # the toy's defaults (train_toy.ToyConfig)
    n_walls: int = 3
    n_boxes: int = 1
    episode_len: int = 8
    p_move: float = 0.8  # chance that the logging policy picks a move that changes the state (0: any move,
    # so many steps walk into a wall and leave the state as it was: a world where y = x often scores)
    labelled_episodes: int = 40  # with actions (SFT; train_llm.py holds a tenth of them out for early stopping)
    unlabelled_episodes: int = 200  # actions hidden: SWIRL's data
    val_episodes: int = 0  # with actions, for early stopping and the phases' checks (val.jsonl.gz; 0: none,
    # and train_llm.py holds labelled episodes out instead); the toy's split is --labelled_episodes=12 --val_episodes=25
    test_episodes: int = 100  # with actions, for metrics only
    seed: int = 0


def prepare(cfg):
    """Write cfg.out/train.jsonl.gz (labelled, then unlabelled episodes), val.jsonl.gz and test.jsonl.gz."""
    world = GridWorld(cfg.size, cfg.n_walls, cfg.n_boxes, cfg.episode_len, cfg.p_move)
    n = cfg.labelled_episodes + cfg.unlabelled_episodes + cfg.val_episodes + cfg.test_episodes
    states, actions = make_episodes(world, n, seed=cfg.seed)
    return write_splits(cfg.out, states, actions, cfg.labelled_episodes, cfg.unlabelled_episodes, cfg.val_episodes)


if __name__ == "__main__":
    (cfg,) = parse_options(sys.argv[1:], GridPrep())
    n_train, n_val, n_test = prepare(cfg)
    val = f", val.jsonl.gz ({n_val})" if n_val else ""
    print(f"wrote {cfg.out}/train.jsonl.gz ({n_train} episodes){val} and test.jsonl.gz ({n_test})")
