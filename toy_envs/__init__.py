"""toy_envs: small worlds that emit state-only episodes (gridworld.py, the toy's; kitchen.py, text for train_llm.py)."""

from toy_envs.gridworld import ACTIONS, AGENT, BOX, GridWorld, consistent_actions, make_episodes, render, step

__all__ = ["ACTIONS", "AGENT", "BOX", "GridWorld", "consistent_actions", "make_episodes", "render", "step"]
