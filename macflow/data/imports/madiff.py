"""MADiff importer: the ``.npy`` datasets of zbzhu99/madiff (``diffuser/datasets/smac_env.py``).

MADiff (and DoF) keep one dataset per directory, ``data/<env>/<scenario>/<quality>/`` (e.g.
``data/smac/3m/Good``; mirrored at huggingface.co/datasets/Avada11/MADiff-Datasets), written by
``scripts/transform_og_marl_dataset.py`` from OG-MARL's TFRecords. Its files are flat in time,
episodes laid end to end: ``obs.npy`` ``(T, N, O)`` with a one-hot agent id prepended,
``actions.npy`` (``(T, N)`` or ``(T, N, 1)`` action indices for SMAC, ``(T, N, A)`` continuous
actions for MA-MuJoCo), ``rewards.npy`` and ``discounts.npy`` (``(T,)``, ``(T, 1)``, ``(T, N)``
or ``(T, N, 1)``), ``path_lengths.npy`` ``(E,)`` the episode lengths, and for SMAC
``legals.npy`` ``(T, N, A)`` and ``states.npy`` ``(T, S)``.

An episode ends in a terminal when its last step's discount is 0 (any agent), else in a
truncation (OG-MARL cut it at the time limit). No observation after an episode's last step is
stored, so ``--final`` decides it. Every choice is recorded in the provenance.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from macflow.data.imports.common import (
    AgentId,
    ImportOptions,
    StateReducer,
    assemble,
    continuous_bounds,
    episode_blocks,
    final_note,
    is_present,
    reward_note,
    source_fields,
    team_reward,
)
from macflow.data.schema import DatasetError
from macflow.data.stream import Block, Located
from macflow.spec import EnvSpec

REQUIRED = ("obs", "actions", "rewards", "discounts", "path_lengths")
OPTIONAL = ("states", "legals")
# Directory names MADiff and OG-MARL give to a dataset's quality (compared in lower case).
QUALITIES = {
    "good",
    "medium",
    "poor",
    "expert",
    "random",
    "replay",
    "mixed",
    "medium-replay",
    "medium_replay",
    "medium-expert",
    "medium_expert",
}
PER_STEP = "(T,), (T, 1), (T, N) or (T, N, 1)"


def looks_like(src: Path) -> bool:
    return src.is_dir() and (src / "path_lengths.npy").is_file() and (src / "obs.npy").is_file()


def open_sources(src: Path, options: ImportOptions) -> list[tuple[str, MadiffSource]]:
    """One source: ``src`` is a MADiff dataset directory."""
    if src.is_dir() and not looks_like(src):
        inner = sorted(p.name for p in src.iterdir() if p.is_dir() and looks_like(p))
        if inner:
            raise DatasetError(
                src,
                None,
                f"holds no obs.npy and path_lengths.npy, but its directories {inner} are MADiff "
                f"datasets: import each of them (e.g. {src / inner[0]})",
            )
    return [("", MadiffSource(src, options))]


def names(src: Path) -> tuple[str, str]:
    """``(scenario, quality)`` from a dataset directory ``.../<scenario>/<quality>``."""
    if src.name.lower() in QUALITIES and src.parent.name:
        return src.parent.name, src.name.lower()
    return src.name, "unknown"


class MadiffSource:
    """One MADiff dataset directory, scanned for its episodes and read block by block."""

    def __init__(self, src: Path, options: ImportOptions):
        self.dir, self.options = src.absolute(), options
        self.notes: list[str] = []
        if not src.is_dir():
            raise DatasetError(src, None, "is not a directory (expected a MADiff dataset's)")
        self.arrays = {name: self._load(name) for name in REQUIRED}
        for name in OPTIONAL:
            if is_present(self.dir / f"{name}.npy", name):
                self.arrays[name] = self._load(name)
        self._shapes()
        self._scan()
        self._describe()

    def file(self, name: str) -> str:
        return str(self.dir / f"{name}.npy")

    def _load(self, name: str) -> np.ndarray:
        path = self.dir / f"{name}.npy"
        if not is_present(path, name):
            raise DatasetError(
                path,
                name,
                f"missing; a MADiff dataset holds {', '.join(n + '.npy' for n in REQUIRED)} "
                f"(and {', '.join(n + '.npy' for n in OPTIONAL)} for SMAC)",
            )
        try:
            return np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as err:
            raise DatasetError(path, name, f"cannot read it as .npy ({err})") from err

    def _shapes(self) -> None:
        obs = self.arrays["obs"]
        if obs.ndim != 3:
            raise DatasetError(self.file("obs"), "obs", f"shape {obs.shape}, expected (T, N, O)")
        rows, n, _ = obs.shape
        self.rows, self.num_agents = rows, n
        acts, legals = self.arrays["actions"], self.arrays.get("legals")
        self.discrete = np.issubdtype(acts.dtype, np.integer) or legals is not None
        want = {
            "actions": "(T, N) or (T, N, 1) action indices" if self.discrete else "(T, N, A)",
            "rewards": PER_STEP,
            "discounts": PER_STEP,
            "states": "(T, S) or (T, N, S)",
            "legals": "(T, N, A)",
        }
        for name, text in want.items():
            if name not in self.arrays:
                continue
            shape = self.arrays[name].shape
            ok = {
                "actions": shape[1:] in ((n,), (n, 1))
                if self.discrete
                else len(shape) == 3 and shape[1] == n,
                "rewards": shape[1:] in ((), (1,), (n,), (n, 1)),
                "discounts": shape[1:] in ((), (1,), (n,), (n, 1)),
                "states": len(shape) == 2 or (len(shape) == 3 and shape[1] == n),
                "legals": len(shape) == 3 and shape[1] == n,
            }[name]
            if not ok or shape[0] != rows:
                raise DatasetError(
                    self.file(name),
                    name,
                    f"shape {shape}, expected {text} with T={rows} rows and N={n} agents as "
                    f"obs.npy {obs.shape} has",
                )
        lengths = self.arrays["path_lengths"]
        if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
            raise DatasetError(
                self.file("path_lengths"),
                "path_lengths",
                f"shape {lengths.shape} dtype {lengths.dtype}, expected (E,) integer episode "
                "lengths",
            )

    def _scan(self) -> None:
        """Episodes from ``path_lengths``, their ends' flags from ``discounts``, in chunks."""
        opts = self.options
        lengths = np.asarray(self.arrays["path_lengths"], np.int64)
        short = np.flatnonzero(lengths < 1)
        if len(short):
            raise DatasetError(
                self.file("path_lengths"),
                "path_lengths",
                f"episode length {lengths[short[0]]}; every episode has at least one step",
                int(short[0]),
            )
        total = int(lengths.sum())
        if total != self.rows:
            raise DatasetError(
                self.file("path_lengths"),
                "path_lengths",
                f"the {len(lengths)} episode lengths sum to {total}, but obs.npy holds "
                f"{self.rows} rows; the episodes must cover the rows exactly",
            )
        self.ends = np.cumsum(lengths) - 1
        self.limit = opts.episode_limit or int(lengths.max())
        long = np.flatnonzero(lengths > self.limit)
        if len(long):
            raise DatasetError(
                self.file("path_lengths"),
                "path_lengths",
                f"episode of {lengths[long[0]]} steps, longer than --episode-limit {self.limit}",
                int(long[0]),
            )

        discounts = self.arrays["discounts"]
        zero = np.empty(self.rows, bool)
        disagree = 0
        for lo in range(0, self.rows, opts.block_rows):
            hi = min(self.rows, lo + opts.block_rows)
            flags = np.asarray(discounts[lo:hi]).reshape(hi - lo, -1) == 0
            zero[lo:hi] = flags.any(1)
            disagree += int((flags.any(1) != flags.all(1))[self._is_end(lo, hi)].sum())
        self.terminal = zero[self.ends]
        early = int(zero.sum() - self.terminal.sum())
        terminal, truncated = int(self.terminal.sum()), int((~self.terminal).sum())
        self.notes.append(
            "episodes: laid end to end with the lengths of path_lengths.npy; an episode ends in "
            "a terminal when its last step's discount is 0 (any agent), else in a truncation; "
            f"{terminal} terminal and {truncated} truncated episodes"
        )
        if disagree:
            self.notes.append(
                f"discounts: the agents disagree at the last step of {disagree} episodes, which "
                "are terminals (a discount of 0 for any agent)"
            )
        if early:
            self.notes.append(
                f"discounts: 0 before an episode's last step on {early} rows (ignored: the "
                "episodes follow path_lengths.npy)"
            )

    def _is_end(self, lo: int, hi: int) -> np.ndarray:
        mask = np.zeros(hi - lo, bool)
        ends = self.ends[(self.ends >= lo) & (self.ends < hi)]
        mask[ends - lo] = True
        return mask

    def _describe(self) -> None:
        """Spec, quality, provenance and ``where``, from the shapes and the first rows."""
        opts, n, arrays = self.options, self.num_agents, self.arrays
        first = min(self.rows, opts.block_rows)
        obs_dim = self._find_agent_id(first)
        state_dim = self._state_dim(first, obs_dim)
        action_dim, bounds = self._action_space()
        self._note_rewards_and_files()

        scenario, quality = names(self.dir)
        self.spec = EnvSpec(
            env_id=opts.env_id or f"madiff:{scenario}",
            num_agents=n,
            obs_dim=obs_dim,
            state_dim=state_dim,
            action_dim=action_dim,
            discrete=bool(self.discrete),
            episode_limit=self.limit,
            state_is_obs_concat="states" not in arrays,
            **bounds,
        )
        self.quality = opts.quality or quality
        self.total = self.rows
        self.provenance: dict[str, Any] = {
            "madiff": {
                "dir": str(self.dir),
                "scenario": scenario,
                "files": sorted(f"{name}.npy" for name in arrays),
                "rows": self.rows,
                "episodes": len(self.ends),
                "terminal_episodes": int(self.terminal.sum()),
                "truncated_episodes": int((~self.terminal).sum()),
                "episode_limit": self.limit,
            },
            "transformations": self.notes,
        }
        state = "states" if "states" in arrays else "obs"
        legal = "legals" if "legals" in arrays else "actions"
        self.where = source_fields(
            lambda name: Located(self.file(name), name),
            observations="obs",
            states=state,
            actions="actions",
            rewards="rewards",
            terminals="discounts",
            legal=legal if self.discrete else None,
        )

    def _find_agent_id(self, first: int) -> int:
        """The observation size once a one-hot agent id (looked for on the ``first`` rows) is
        stripped, if it is; sets ``agent_id``."""
        opts = self.options
        obs = np.asarray(self.arrays["obs"][:first], np.float32)
        self.agent_id = AgentId(obs, opts.strip_agent_id, self.notes, self.file("obs"), "obs")
        obs = self.agent_id(obs, lambda t, i, d: (self.file("obs"), "obs", (t, i, d)))
        return obs.shape[2]

    def _state_dim(self, first: int, obs_dim: int) -> int:
        """The global state's size: the concatenated observations without ``states.npy``, else
        its state or per-agent states (reduced, decided on the ``first`` rows); sets ``reducer``."""
        opts, n, arrays = self.options, self.num_agents, self.arrays
        self.reducer = None
        if "states" not in arrays:
            state_dim = n * obs_dim
            self.notes.append("states: no states.npy; observations concatenated")
        elif arrays["states"].ndim == 3:
            raw = np.asarray(arrays["states"][:first], np.float32)
            self.reducer = StateReducer(opts.state_reduction, raw, self.file("states"), "states")
            self.notes.append(self.reducer.note)
            state_dim = self.reducer.dim(n, raw.shape[2])
        else:
            state_dim = int(arrays["states"].shape[1])
        return state_dim

    def _action_space(self) -> tuple[int, dict[str, Any]]:
        """``(action_dim, bounds)``: the number of actions (from ``legals.npy``, else the largest
        action index + 1), or the continuous actions' size and bounds."""
        acts = self.arrays["actions"]
        if self.discrete:
            if "legals" in self.arrays:
                action_dim = int(self.arrays["legals"].shape[2])
            else:
                action_dim = self._count_actions()
                self.notes.append(
                    "legal actions: no legals.npy, so every action is legal; the number of "
                    f"actions {action_dim} is the largest action index + 1"
                )
            if not np.issubdtype(acts.dtype, np.integer):
                self.notes.append(f"actions: {acts.dtype} action indices converted to int32")
            return action_dim, {}
        action_dim = int(acts.shape[2])
        return action_dim, continuous_bounds(action_dim, self.options.action_bound)

    def _note_rewards_and_files(self) -> None:
        """The provenance notes of the team reward, the final observations and unused files."""
        opts, n = self.options, self.num_agents
        rewards = self.arrays["rewards"]
        per_agent = rewards.ndim >= 2 and rewards.shape[1] == n and n > 1
        note = reward_note(opts.team_reward, per_agent)
        if note:
            self.notes.append(note)
        self.notes.append(final_note(opts.final, "the files", legal=self.discrete))
        unused = sorted(
            p.name
            for p in self.dir.iterdir()
            if p.suffix == ".npy" and p.stem not in (*REQUIRED, *OPTIONAL)
        )
        if unused:
            self.notes.append(f"files not kept: {unused}")

    def _count_actions(self) -> int:
        top = 0
        for lo in range(0, self.rows, self.options.block_rows):
            hi = min(self.rows, lo + self.options.block_rows)
            top = max(top, int(self._actions(lo, hi).max()))
        return top + 1

    def _actions(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` of the actions: int32 indices ``[t, N]`` or float32 ``[t, N, A]``."""
        raw = np.asarray(self.arrays["actions"][lo:hi])
        if not self.discrete:
            return raw.astype(np.float32)
        raw = raw.reshape(hi - lo, self.num_agents)
        bad = np.argwhere((raw != np.round(raw)) | (raw < 0) | ~np.isfinite(raw))
        if len(bad):
            t, i = map(int, bad[0])
            raise DatasetError(
                self.file("actions"),
                "actions",
                f"{raw[t, i]} is not an action index (an integer >= 0)",
                (lo + t, i),
            )
        return raw.astype(np.int32)

    def blocks(self) -> Iterator[Block]:
        opts, arrays, n = self.options, self.arrays, self.num_agents
        for lo, hi, ends in episode_blocks(self.ends, opts.block_rows):
            rows = hi - lo
            obs = np.asarray(arrays["obs"][lo:hi], np.float32)
            file = self.file("obs")
            obs = self.agent_id(obs, lambda t, i, d, lo=lo, f=file: (f, "obs", (lo + t, i, d)))
            if "states" not in arrays:
                states = obs.reshape(rows, -1)
            else:
                states = np.asarray(arrays["states"][lo:hi], np.float32)
                if self.reducer is not None:
                    states = self.reducer(states, lo)
            actions = self._actions(lo, hi)
            legal = None
            if self.discrete:
                if "legals" in arrays:
                    legal = np.asarray(arrays["legals"][lo:hi]) != 0
                else:
                    legal = np.ones((rows, n, self.spec.action_dim), bool)
            first = int(np.searchsorted(self.ends, lo))
            yield assemble(
                observations=obs,
                states=states,
                actions=actions,
                legal=legal,
                rewards=team_reward(arrays["rewards"][lo:hi], opts.team_reward),
                ends=ends,
                terminal=self.terminal[first : first + len(ends)],
                origin=np.arange(lo, hi),
                final=opts.final,
            )
