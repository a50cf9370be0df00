"""toy_envs: small worlds that emit state-only episodes (see gridworld.py)."""

from toy_envs.gridworld import ACTIONS, GridWorld, consistent_actions, make_episodes, render, step

__all__ = ["ACTIONS", "GridWorld", "consistent_actions", "make_episodes", "render", "step"]
