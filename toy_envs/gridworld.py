"""
gridworld.py: a tiny box-pushing world rendered as text, one character per cell.

    #..o.      '#' wall     '.' floor
    .A..#      'A' agent    'o' box
    ..#..
    .....
    #...#

Actions are the words "up", "down", "left", "right". The agent moves one cell; if a box is in the
way, it is pushed one cell further when that cell is floor; the agent stays put when it would walk
into a wall, off the grid, or push a box into something. Every episode draws a new layout (walls,
agent, box), so a world model must learn the rules, not memorise a map. With max_step=2 the world
also has "up 2" ... "right 2": two single steps in one action (blocked half-way, it moves one cell).

Why this world fits the paper's regime: reading the action back from (x, y) needs only where 'A' went,
while writing the next grid needs every cell (copy the grid, move the agent, push the box, respect the
walls), so from few labels neither model is good. train_toy.py pretrains the FWM on the states first
(the paper's models are pretrained LLMs), which teaches it to copy; what both models then get wrong
is the action: where the agent goes, and which action moved it. That is what SWIRL's two rewards see.

Steps that change nothing (the agent blocked) make the action unidentifiable: several actions explain
the same (x, y). They stay in the episodes, as they would in real logs. `consistent_actions(x, y)`
lists the actions that explain a transition, and the evaluation scores the IDM on transitions that
exactly one action explains (see swirl.evaluate).

The true actions are returned beside the states and are used only for the labelled SFT split and for
evaluation; SWIRL never sees them. Everything is seeded by numpy's Generator: same seed, same episodes.
"""

from dataclasses import dataclass

import numpy as np

ACTIONS = ("up", "down", "left", "right")
MOVES = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
WALL, FLOOR, AGENT, BOX = "#", ".", "A", "o"


@dataclass
class GridWorld:
    size: int = 5  # the grid is size x size cells
    n_walls: int = 5  # random walls per layout
    n_boxes: int = 1
    episode_len: int = 8  # actions per episode (so episode_len + 1 states)
    p_move: float = 0.8  # chance that the policy picks among the actions that change the state
    max_step: int = 1  # > 1 adds "up 2" ... "right <max_step>": one action, that many single steps
    patrol: float = 0.0  # chance that the policy moves left or right (when one of them moves): a patrolling agent

    def __post_init__(self):
        if self.max_step < 1:
            raise ValueError(f"max_step={self.max_step}: it must be at least 1 (1 = one cell per action)")
        if not 0.0 <= self.patrol <= 1.0:
            raise ValueError(f"patrol={self.patrol}: it is a probability, between 0 and 1 (0 = the even policy)")

    @property
    def actions(self):
        return [d if k == 1 else f"{d} {k}" for k in range(1, self.max_step + 1) for d in ACTIONS]


def render(grid):
    """Grid (a list of lists of characters) -> text, rows joined by newlines."""
    return "\n".join("".join(row) for row in grid)


def parse(text):
    return [list(row) for row in text.split("\n")]


def step(text, action):
    """The world's true dynamics: next state's text after `action` in state `text`.
    "up 2" is two single steps up, each with the rules below."""
    direction, _, repeat = action.partition(" ")
    for _ in range(int(repeat or 1)):
        text = single_step(text, direction)
    return text


def single_step(text, action):
    """One cell in direction `action`, with the pushing and blocking rules of the module docstring."""
    grid = parse(text)
    n_rows, n_cols = len(grid), len(grid[0])
    (r, c), = [(i, j) for i, row in enumerate(grid) for j, ch in enumerate(row) if ch == AGENT]
    dr, dc = MOVES[action]

    def free(i, j):
        return 0 <= i < n_rows and 0 <= j < n_cols and grid[i][j] == FLOOR

    r1, c1 = r + dr, c + dc
    if 0 <= r1 < n_rows and 0 <= c1 < n_cols and grid[r1][c1] == BOX and free(r1 + dr, c1 + dc):
        grid[r1 + dr][c1 + dc] = BOX  # push the box ahead
        grid[r1][c1] = FLOOR
    if free(r1, c1):
        grid[r][c], grid[r1][c1] = FLOOR, AGENT
    return render(grid)


def consistent_actions(x, y, actions=ACTIONS):
    """All actions (of the list given) that turn state x into state y under the true dynamics."""
    return [a for a in actions if step(x, a) == y]


def random_layout(world, rng):
    cells = rng.permutation(world.size * world.size)
    grid = [[FLOOR] * world.size for _ in range(world.size)]
    things = [AGENT] + [BOX] * world.n_boxes + [WALL] * world.n_walls
    for ch, cell in zip(things, cells):
        grid[cell // world.size][cell % world.size] = ch
    return render(grid)


def random_action(state, world, rng):
    """The logging policy: usually a move that does something (as in real logs), sometimes any move.
    With world.patrol > 0 it is an agent that mostly walks along the rows: logs whose actions are far from
    even, which is what a self-labelling baseline's labels depend on (NOTES.md, "Logs from a patrolling agent")."""
    moving = [a for a in world.actions if step(state, a) != state]
    if world.patrol and rng.random() < world.patrol:  # no draw at patrol = 0: the same episodes as before
        along_rows = [a for a in moving if a.split()[0] in ("left", "right")]
        if along_rows:
            return along_rows[rng.integers(len(along_rows))]
    pool = moving if moving and rng.random() < world.p_move else world.actions
    return pool[rng.integers(len(pool))]


def make_episodes(world, n_episodes, seed):
    """n_episodes episodes of the logging policy. Returns (states, actions): a list of state
    lists and, separately, the list of true action lists (for SFT labels and evaluation only).
    seed: an int, or a numpy Generator to go on drawing from (several calls, one stream)."""
    rng = np.random.default_rng(seed)  # a Generator passes through unchanged
    all_states, all_actions = [], []
    for _ in range(n_episodes):
        states, actions = [random_layout(world, rng)], []
        for _ in range(world.episode_len):
            a = random_action(states[-1], world, rng)
            actions.append(a)
            states.append(step(states[-1], a))
        all_states.append(states)
        all_actions.append(actions)
    return all_states, all_actions
