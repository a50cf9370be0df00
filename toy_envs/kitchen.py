"""
kitchen.py: a small text kitchen, the second world the text path is checked on (after the gridworld).

    the fridge is closed. in it: egg, milk.
    the cupboard is open. in it: cup.
    on the table: apple, bread, plate.
    you hold nothing.

Six objects lie in the fridge, the cupboard or on the table, or in your hand (one at a time). Actions
are short sentences, as in ScienceWorld: "open fridge", "close cupboard", "take apple", "put apple in
fridge", "put cup on table". A closed fridge or cupboard can be seen into (its contents are listed) but
not reached: nothing is taken from it or put in it until it is opened. Every episode starts from a new
random kitchen.

Why this world: its states are sentences, not grids; its 28 actions are words of several tokens (the
IDM writes "put egg in cupboard", not one symbol); and an action changes one or two lines while the rest
must be copied, as in ScienceWorld's rooms, but with states short enough that a small model from scratch
learns to copy them on a CPU. So "does Phase II keep the world model given the IDM's action" is a real
question here, where on ScienceWorld that world model is too weak to ask it (README, "One world, one answer").

The policy picks among the actions that change the state, so each step is explained by exactly one
action (a move of one object, or one door) and the IDM's ceiling is 1. Seeded by numpy's Generator.
"""

from dataclasses import dataclass

import numpy as np

OBJECTS = ("apple", "bread", "cup", "egg", "milk", "plate")  # listed in this order wherever they lie
CONTAINERS = ("fridge", "cupboard")  # places with a door
PLACES = CONTAINERS + ("table",)


@dataclass(frozen=True)
class KitchenState:
    where: tuple  # where[i]: the place of OBJECTS[i], or "hand"
    open: tuple  # open[j]: whether CONTAINERS[j]'s door is open


def render(s):
    """The state as the text a model reads and writes."""

    def contents(place):
        return ", ".join(o for o, w in zip(OBJECTS, s.where) if w == place) or "nothing"

    lines = [f"the {c} is {'open' if s.open[j] else 'closed'}. in it: {contents(c)}." for j, c in enumerate(CONTAINERS)]
    held = contents("hand")
    return "\n".join(lines + [f"on the table: {contents('table')}.", f"you hold {held}."])


def parse(text):
    """The inverse of render (the tests read episodes back with it)."""
    lines = text.split("\n")
    where = {}
    for place, line in zip(PLACES + ("hand",), lines):
        for o in line.rstrip(".").split(": ")[-1].removeprefix("you hold ").split(", "):
            if o != "nothing":
                where[o] = place
    return KitchenState(tuple(where[o] for o in OBJECTS), tuple(" is open." in line for line in lines[:2]))


def put_action(obj, place):
    """The sentence that puts obj in (or on) place: "put egg in fridge", "put cup on table"."""
    return f"put {obj} {'on' if place == 'table' else 'in'} {place}"


def reachable(s, place):
    return place == "table" or s.open[CONTAINERS.index(place)]


def effective_actions(s):
    """Every action that changes s, each with the state it leads to (in a fixed order)."""
    out = []
    for j, c in enumerate(CONTAINERS):
        door = s.open[:j] + (not s.open[j],) + s.open[j + 1 :]
        out.append((("close " if s.open[j] else "open ") + c, KitchenState(s.where, door)))
    held = [i for i, w in enumerate(s.where) if w == "hand"]
    for i, o in enumerate(OBJECTS):
        if not held and reachable(s, s.where[i]):
            out.append((f"take {o}", KitchenState(s.where[:i] + ("hand",) + s.where[i + 1 :], s.open)))
        if held == [i]:
            for place in PLACES:
                if reachable(s, place):
                    out.append((put_action(o, place), KitchenState(s.where[:i] + (place,) + s.where[i + 1 :], s.open)))
    return out


def all_actions():
    """The 28 action sentences of the world."""
    verbs = [f"{v} {c}" for c in CONTAINERS for v in ("open", "close")] + [f"take {o}" for o in OBJECTS]
    return verbs + [put_action(o, p) for o in OBJECTS for p in PLACES]


@dataclass
class Kitchen:
    episode_len: int = 8  # actions per episode (so episode_len + 1 states)


def make_kitchen_episodes(world, n_episodes, seed):
    """n_episodes of world.episode_len random effective actions from random kitchens:
    (list of state-text lists, list of action lists)."""
    rng = np.random.default_rng(seed)
    states, actions = [], []
    for _ in range(n_episodes):
        s = KitchenState(tuple(PLACES[k] for k in rng.integers(len(PLACES), size=len(OBJECTS))),
                         tuple(bool(b) for b in rng.integers(2, size=len(CONTAINERS))))
        texts, acts = [render(s)], []
        for _ in range(world.episode_len):
            options = effective_actions(s)
            action, s = options[rng.integers(len(options))]
            texts.append(render(s))
            acts.append(action)
        states.append(texts)
        actions.append(acts)
    return states, actions
