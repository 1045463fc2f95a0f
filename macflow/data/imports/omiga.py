"""OMIGA MA-MuJoCo importer: HDF5 files of ZhengYinan-AIR/OMIGA (``datasets/offline_dataset.py``).

One file per dataset, ``<scenario>-<agent_conf>-<quality>.hdf5`` (e.g. ``Ant-v2-2x4-expert.hdf5``:
scenario ``Ant-v2``, agent configuration ``2x4``, quality ``expert``), whose root holds five
datasets laid flat in time: ``o`` observations ``(T, N, O)`` (with a one-hot agent id),
``s`` per-agent states ``(T, N, S)`` (OMIGA's MA-MuJoCo state is the observation), ``a``
continuous actions ``(T, N, A)`` (``A`` may be 1), ``r`` rewards ``(T, 1)`` and ``d`` done flags
``(T, k)`` of which OMIGA reads column 0 (``(T,)`` is accepted for both).

Episodes: OMIGA's loader makes a transition of every row t with ``d[t, 0] = 0``, takes row t+1
as its next observation and ``1 - d[t+1]`` as its bootstrap mask; rows with ``d = 1`` start no
transition. So by default (``--omiga-done next-state``) a row with ``d[t, 0] != 0`` is the
terminal observation reached by step t-1: step t-1 ends the episode in a terminal, row t is its
exact final observation and no transition. ``--omiga-done last-step`` reads it as D4RL does: step
t itself is the terminal step. The file does not mark the MuJoCo time-limit resets (OMIGA's
loader bootstraps across them), so an episode also ends, in a truncation, after
``episode_limit`` steps (default 1000, the MuJoCo time limit) without a terminal; the file stores
no observation after those, so ``--final`` decides it. Rows after the last complete episode are
dropped. Every choice is recorded in the provenance.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from macflow.data.imports.common import (
    AgentId,
    ImportOptions,
    StateReducer,
    assemble,
    continuous_bounds,
    episode_blocks,
    final_note,
    per_file,
    reward_note,
    source_fields,
    team_reward,
)
from macflow.data.imports.hdf5 import SUFFIXES, HdfSource, holds
from macflow.data.schema import DatasetError
from macflow.data.stream import Block, Located
from macflow.spec import EnvSpec

SNIFF = ("o", "a", "r", "d")
TIME_LIMIT = 1000  # MuJoCo's (gym v2) time limit, which OMIGA's data were collected under
NAME = re.compile(r"^(?P<task>.+?-\d+x\d+\w*)-(?P<quality>[^.]+)$")
EPISODE_RULE = {
    "last-step": "an episode ends in a terminal at a row with d[t, 0] != 0, and in a truncation "
    "after {limit} rows without one (the file does not mark time-limit resets)",
    "next-state": "a row with d[t, 0] != 0 is the terminal observation reached by the step "
    "before, which ends its episode in a terminal (the row is its final observation, not a "
    "transition, as in OMIGA's loader); an episode ends in a truncation after {limit} steps "
    "without one (the file does not mark time-limit resets)",
}


def looks_like(src: Path) -> bool:
    return holds(src, SNIFF)


def open_sources(src: Path, options: ImportOptions) -> list[tuple[str, OmigaSource]]:
    """One source per file: ``src`` is an OMIGA ``.hdf5`` file or a directory of them."""
    expected = "OMIGA's <scenario>-<agent_conf>-<quality>.hdf5 files"
    return per_file(src, SUFFIXES, lambda p: OmigaSource(p, options), expected)


def split_episodes(
    done: np.ndarray, limit: int, mode: str = "last-step"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Episodes of flat ``done`` flags: first and last step, terminal flag, final-observation row.

    ``last-step``: an episode ends at its first done row within ``limit`` rows. ``next-state``:
    a done row t is the final observation of an episode whose last step is t-1 (at most ``limit``
    steps), and no step. Either way an episode is truncated after ``limit`` steps without a
    terminal, and its final row is -1 (not stored). Also returns the number of done rows that
    follow no step (``next-state``: a terminal observation right after another episode's end).
    The rows after the last end belong to no complete episode.
    """
    terms = np.flatnonzero(done)
    rows, shift = len(done), int(mode == "next-state")
    starts, ends, terminal, finals = [], [], [], []
    start = skipped = 0
    while start < rows:
        i = int(np.searchsorted(terms, start))
        t = int(terms[i]) if i < len(terms) else rows
        if shift and t == start:  # a terminal observation with no step before it
            skipped += 1
            start += 1
            continue
        if t - start < limit + shift and t < rows:
            starts.append(start)
            ends.append(t - shift)
            terminal.append(True)
            finals.append(t if shift else -1)
            start = t + 1
        elif start + limit <= rows:
            starts.append(start)
            ends.append(start + limit - 1)
            terminal.append(False)
            finals.append(-1)
            start += limit
        else:
            break
    as_int = lambda x: np.asarray(x, np.int64)  # noqa: E731
    return as_int(starts), as_int(ends), np.asarray(terminal, bool), as_int(finals), skipped


class OmigaSource(HdfSource):
    """One OMIGA file, scanned for its episodes and read block by block."""

    def _shapes(self, f: h5py.File) -> None:
        """Check the datasets' presence and shapes against ``o``'s ``(T, N, O)``."""
        for key in (*SNIFF, "s"):
            if key == "s" and key not in f:
                continue
            if not isinstance(f.get(key), h5py.Dataset):
                raise DatasetError(
                    self.file,
                    key,
                    f"missing; an OMIGA file holds the datasets s, o, a, r, d (it has {sorted(f)})",
                )
        o = f["o"]
        if o.ndim != 3:
            raise DatasetError(self.file, "o", f"shape {o.shape}, expected (T, N, O)")
        rows, n, _ = o.shape
        self.rows, self.num_agents = rows, n
        self.has_state = "s" in f
        want = {
            "s": "(T, N, S) or (T, S)",
            "a": "(T, N, A)",
            "r": "(T,), (T, 1) or (T, N)",
            "d": "(T,) or (T, k)",
        }
        for key, text in want.items():
            if key not in f:
                continue
            shape = f[key].shape
            ok = {
                "s": len(shape) in (2, 3) and (len(shape) == 2 or shape[1] == n),
                "a": len(shape) == 3 and shape[1] == n,
                "r": len(shape) == 1 or (len(shape) == 2 and shape[1] in (1, n)),
                "d": len(shape) in (1, 2) and (len(shape) == 1 or shape[1] >= 1),
            }[key]
            if not ok or shape[0] != rows:
                raise DatasetError(
                    self.file,
                    key,
                    f"shape {shape}, expected {text} with T={rows} rows and N={n} agents "
                    "as 'o' (T, N, O) has",
                )

    def _scan(self, f: h5py.File) -> None:
        """Episode ends from ``d`` alone, read in chunks."""
        d = f["d"]
        chunk = self.options.block_rows
        done = np.empty(self.rows, bool)
        disagree = 0
        for lo in range(0, self.rows, chunk):
            hi = min(self.rows, lo + chunk)
            flags = np.asarray(d[lo:hi]).reshape(hi - lo, -1) != 0
            done[lo:hi] = flags[:, 0]
            disagree += int((flags.any(1) != flags.all(1)).sum())
        self.limit = self.options.episode_limit or TIME_LIMIT
        self.mode = mode = self.options.omiga_done
        self.starts, self.ends, self.terminal, self.finals, skipped = split_episodes(
            done, self.limit, mode
        )
        self.skipped = skipped
        if len(self.ends) == 0:
            raise DatasetError(
                self.file,
                "d",
                f"no complete episode: no row has d[t, 0] != 0 and the file holds fewer than "
                f"{self.limit} rows (--episode-limit)",
            )
        self.kept = int(max(self.ends[-1], self.finals[-1])) + 1
        terminal, truncated = int(self.terminal.sum()), int((~self.terminal).sum())
        self.notes.append(
            "episodes: "
            + EPISODE_RULE[mode].format(limit=self.limit)
            + f"; {terminal} terminal and {truncated} truncated episodes"
        )
        if disagree:
            self.notes.append(
                f"d: its columns disagree on {disagree} rows; column 0 is used (as OMIGA does)"
            )
        if skipped:
            self.notes.append(
                f"skipped {skipped} rows with d != 0 that follow no step (a terminal observation "
                "right after another episode's end)"
            )
        if self.kept < self.rows:
            self.notes.append(
                f"dropped {self.rows - self.kept} rows after the last episode end "
                "(an unfinished episode)"
            )

    def _describe(self, f: h5py.File) -> None:
        """Spec, quality, provenance and ``where``, from the shapes and the first rows."""
        opts, n = self.options, self.num_agents
        first = min(self.kept, opts.block_rows)
        obs, raw_obs = self._find_agent_id(f, first)
        states = self._first_states(f, first, obs, raw_obs)
        self._note_rewards_and_keys(f)

        match = NAME.match(self.file.stem)
        task = match["task"] if match else self.file.stem
        action_dim = int(f["a"].shape[2])
        self.spec = EnvSpec(
            env_id=opts.env_id or f"omiga:{task}",
            num_agents=n,
            obs_dim=obs.shape[2],
            state_dim=int(states.shape[1]),
            action_dim=action_dim,
            discrete=False,
            episode_limit=self.limit,
            state_is_obs_concat=bool(self.state_is_obs),
            **continuous_bounds(action_dim, opts.action_bound),
        )
        self.quality = opts.quality or (match["quality"].lower() if match else "unknown")
        self.total = self.kept
        self.provenance: dict[str, Any] = {
            "omiga": {
                "file": self.name,
                "rows": self.rows,
                "rows_kept": self.kept,
                "episodes": len(self.ends),
                "terminal_episodes": int(self.terminal.sum()),
                "truncated_episodes": int((~self.terminal).sum()),
                "episode_limit": self.limit,
                "episode_rule": EPISODE_RULE[self.mode].format(limit=self.limit),
                "terminal_observation_rows": int((self.finals >= 0).sum()),
                "skipped_done_rows": self.skipped,
            },
            "transformations": self.notes,
        }
        self.where = source_fields(
            lambda key: Located(self.name, key),
            observations="o",
            states="s" if self.has_state else "o",
            actions="a",
            rewards="r",
            terminals="d",
        )

    def _find_agent_id(self, f: h5py.File, first: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``first`` rows of ``o``, as imported (a one-hot agent id stripped if it is) and as
        stored; sets ``agent_id``."""
        obs = raw_obs = np.asarray(f["o"][:first], np.float32)
        self.agent_id = AgentId(obs, self.options.strip_agent_id, self.notes, self.name, "o")
        obs = self.agent_id(obs, lambda t, i, d: (self.name, "o", (t, i, d)))
        return obs, raw_obs

    def _first_states(
        self, f: h5py.File, first: int, obs: np.ndarray, raw_obs: np.ndarray
    ) -> np.ndarray:
        """The global states of the ``first`` rows: the concatenated observations without ``s``,
        else ``s`` (per-agent states reduced); sets ``reducer`` and ``state_is_obs``."""
        self.reducer = None
        if not self.has_state:
            states = obs.reshape(first, -1)
            self.notes.append("states: the file has no 's'; observations concatenated")
        else:
            raw = np.asarray(f["s"][:first], np.float32)
            self.state_size = raw.shape[-1]
            if raw.ndim == 3:
                if np.array_equal(raw, raw_obs):
                    self.notes.append("s: equals o on the first rows (OMIGA's state is the obs)")
                self.reducer = StateReducer(self.options.state_reduction, raw, self.name, "s")
                self.notes.append(self.reducer.note)
                states = self.reducer(raw)
            else:
                states = raw
        self.state_is_obs = not self.has_state or np.array_equal(states, obs.reshape(first, -1))
        if self.has_state and self.state_is_obs:
            self.notes.append(
                "states: equal the concatenated observations (checked on every row), so the "
                "dataset marks state_is_obs_concat"
            )
        return states

    def _note_rewards_and_keys(self, f: h5py.File) -> None:
        """The provenance notes of the team reward, the final observations and unused keys."""
        opts, n = self.options, self.num_agents
        self.per_agent_reward = f["r"].ndim == 2 and f["r"].shape[1] == n and n > 1
        note = reward_note(opts.team_reward, self.per_agent_reward)
        if note:
            self.notes.append(note)
        self.notes.append(final_note(opts.final, "the file"))
        unused = sorted(set(f) - {*SNIFF, "s"})
        if unused:
            self.notes.append(f"datasets not kept: {unused}")

    def blocks(self) -> Iterator[Block]:
        opts = self.options
        last_rows = np.maximum(self.ends, self.finals)  # an episode's last row read
        with h5py.File(self.file, "r") as f:
            for lo, hi, group_last in episode_blocks(last_rows, opts.block_rows):
                i = int(np.searchsorted(last_rows, lo))
                j = i + len(group_last)
                obs = np.asarray(f["o"][lo:hi], np.float32)
                obs = self.agent_id(obs, lambda t, i, d, lo=lo: (self.name, "o", (lo + t, i, d)))
                flat = obs.reshape(hi - lo, -1)
                if not self.has_state:
                    states = flat
                else:
                    states = np.asarray(f["s"][lo:hi], np.float32)
                    if self.reducer is not None:
                        states = self.reducer(states, lo)
                    if self.state_is_obs:
                        self._check_concat(states, flat, lo)
                starts, ends, finals = self.starts[i:j], self.ends[i:j], self.finals[i:j]
                # The steps only: terminal-observation rows and skipped rows are no transition.
                pairs = zip(starts, ends, strict=True)
                steps = np.concatenate([np.arange(a, b + 1) for a, b in pairs])
                local = steps - lo
                known = finals >= 0
                at = np.where(known, finals, ends) - lo
                yield assemble(
                    observations=obs[local],
                    states=states[local],
                    actions=np.asarray(f["a"][lo:hi], np.float32)[local],
                    legal=None,
                    rewards=team_reward(f["r"][lo:hi], opts.team_reward)[local],
                    ends=np.cumsum(ends - starts + 1) - 1,
                    terminal=self.terminal[i:j],
                    origin=steps,
                    final=opts.final,
                    final_observations=obs[at],
                    final_states=states[at],
                    final_known=known,
                    final_origin=at + lo,
                    consumed=hi - lo,
                )

    def _check_concat(self, states: np.ndarray, flat: np.ndarray, lo: int) -> None:
        bad = np.argwhere(states != flat)
        if len(bad):
            t, j = map(int, bad[0])
            if self.reducer is None:
                index: tuple[int, ...] = (lo + t, j)  # a global state (T, S)
            elif self.reducer.mode == "agent0":
                index = (lo + t, 0, j)
            else:
                index = (lo + t, j // self.state_size, j % self.state_size)
            raise DatasetError(
                self.file,
                "s",
                "the state equals the concatenated observations on the first rows but not here "
                "(state_is_obs_concat would be wrong); the file mixes two state layouts",
                index,
            )
