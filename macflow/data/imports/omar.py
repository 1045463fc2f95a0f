"""OMAR importer: the per-agent ``.npy`` files of ling-pan/OMAR (``utils/buffer.py``, ``main.py``).

OMAR keeps one dataset per seed in ``datasets/<env_id>/<data_type>/seed_<k>_data/``, holding
for every agent i the arrays ``obs_i`` ``(T, O_i)``, ``acs_i`` ``(T, A_i)``, ``rews_i`` ``(T,)``
or ``(T, 1)``, ``next_obs_i`` ``(T, O_i)`` and ``dones_i`` ``(T,)`` or ``(T, 1)``, all flat in
time, plus ``states_i`` and ``next_states_i`` ``(T, S)`` for MA-MuJoCo (``HalfCheetah-v2``).
``env_id`` is ``simple_spread``, ``simple_tag``, ``simple_world`` (MPE) or ``HalfCheetah-v2``;
``data_type`` is ``random``, ``medium-replay``, ``medium`` or ``expert``; k runs over 0..4.

SRC is one ``seed_<k>_data`` directory, or a ``<data_type>`` directory whose ``seed_*_data``
directories are concatenated in seed order into one dataset (as OMAR vaults put the seeds on
their batch axis). The scenario is the ``env_id`` directory's name, the quality the
``data_type`` directory's.

Episodes have a fixed length (25 steps for MPE, 1000 for MA-MuJoCo, ``--episode-limit``
otherwise) and lie end to end. A done flag at an episode's last step makes it a terminal, else
it is a truncation; OMAR's four tasks have no terminal state, so there such a flag is the time
limit (a truncation), and a done flag inside an episode is an error. ``next_obs_i`` gives the
exact final observation, and is checked against ``obs_i`` of the next row inside every episode,
which validates the episode length. MPE has no global state (the observations are
concatenated); MA-MuJoCo's per-agent states are reduced. Agents with different observation or
action sizes are zero-padded to the largest. Every choice is recorded in the provenance.
"""

from __future__ import annotations

import re
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
    is_present,
    reward_note,
    team_reward,
)
from macflow.data.schema import DatasetError
from macflow.data.stream import Block, Located
from macflow.spec import EnvSpec

SEED_DIR = re.compile(r"^seed_(\d+)_data$")
OBS_FILE = re.compile(r"^obs_(\d+)\.npy$")
MPE_LENGTH = 25  # OMAR's --episode_length for the particle tasks
MUJOCO_LENGTH = 1000  # the episode_limit OMAR passes to MujocoMulti
# Tasks without a terminal state: a done flag at an episode's last step is their time limit.
NO_TERMINAL = {"simple_spread", "simple_tag", "simple_world", "HalfCheetah-v2"}
AGENT_FILES = ("obs", "acs", "rews", "next_obs", "dones")
STATE_FILES = ("states", "next_states")


def _seed_dirs(src: Path) -> list[tuple[int, Path]]:
    found = [(SEED_DIR.match(p.name), p) for p in src.iterdir() if p.is_dir()]
    return sorted((int(m[1]), p) for m, p in found if m)


def _is_seed(src: Path) -> bool:
    return (src / "obs_0.npy").is_file() and (src / "acs_0.npy").is_file()


def looks_like(src: Path) -> bool:
    if not src.is_dir():
        return False
    return _is_seed(src) or any(_is_seed(d) for _, d in _seed_dirs(src))


def open_sources(src: Path, options: ImportOptions) -> list[tuple[str, OmarSource]]:
    """One source: a ``seed_<k>_data`` directory, or a ``<data_type>`` directory of them."""
    return [("", OmarSource(src, options))]


class _Seed:
    """One ``seed_<k>_data`` directory: its files' shapes and its episodes."""

    def __init__(self, k: int | None, folder: Path):
        self.k, self.dir = k, folder.absolute()
        self.num_agents = self._count_agents()
        self.has_state = is_present(self.dir / "states_0.npy", "states_0")
        self.arrays: dict[str, list[np.ndarray]] = {}
        names = AGENT_FILES + (STATE_FILES if self.has_state else ())
        for name in names:
            self.arrays[name] = [self._load(name, i) for i in range(self.num_agents)]
        self.rows = int(self.arrays["obs"][0].shape[0])
        self._check_shapes()

    def file(self, name: str, i: int) -> str:
        return str(self.dir / f"{name}_{i}.npy")

    def _count_agents(self) -> int:
        ids = sorted(int(m[1]) for p in self.dir.iterdir() if (m := OBS_FILE.match(p.name)))
        if not ids:
            raise DatasetError(
                self.dir, None, "holds no obs_<i>.npy file (expected OMAR's per-agent files)"
            )
        for i in range(ids[-1] + 1):
            if i not in ids:
                raise DatasetError(
                    self.file("obs", i),
                    f"obs_{i}",
                    f"missing; the agents' files must be numbered 0..N-1 (found obs_{ids[-1]})",
                )
        return len(ids)

    def _load(self, name: str, i: int) -> np.ndarray:
        path = Path(self.file(name, i))
        if not is_present(path, f"{name}_{i}"):
            what = "MA-MuJoCo's states_0.npy is present, so " if name in STATE_FILES else ""
            raise DatasetError(
                path,
                f"{name}_{i}",
                f"missing; {what}every agent i needs {', '.join(n + '_i.npy' for n in AGENT_FILES)}"
                + (" and states_i.npy, next_states_i.npy" if self.has_state else ""),
            )
        try:
            return np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as err:
            raise DatasetError(path, f"{name}_{i}", f"cannot read it as .npy ({err})") from err

    def _check_shapes(self) -> None:
        rows = self.rows
        for name, arrays in self.arrays.items():
            for i, arr in enumerate(arrays):
                if name in ("rews", "dones"):
                    want = "(T,) or (T, 1)"
                    ok = arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 1)
                elif name == "next_obs":
                    want = f"{self.arrays['obs'][i].shape} as obs_{i}"
                    ok = arr.shape == self.arrays["obs"][i].shape
                elif name in STATE_FILES:
                    size = self.arrays["states"][0].shape[-1]
                    want = f"(T, S) with S={size} as states_0"
                    ok = arr.ndim == 2 and arr.shape[1] == size
                else:
                    want = "(T, O)" if name == "obs" else "(T, A)"
                    ok = arr.ndim == 2
                if not ok or arr.shape[0] != rows:
                    raise DatasetError(
                        self.file(name, i),
                        f"{name}_{i}",
                        f"shape {arr.shape}, expected {want} with T={rows} rows as obs_0",
                    )

    def dims(self, name: str) -> list[int]:
        return [int(a.shape[1]) for a in self.arrays[name]]

    def scan(self, length: int, no_terminal: bool) -> tuple[np.ndarray, int]:
        """Episode ends and terminal flags from the dones; returns (terminal, dones at ends)."""
        rows = self.rows
        if rows % length:
            raise DatasetError(
                self.file("obs", 0),
                "obs_0",
                f"holds T={rows} rows, not a multiple of the episode length {length}; OMAR's "
                "episodes have a fixed length (pass --episode-limit if it is not "
                f"{MPE_LENGTH} for MPE or {MUJOCO_LENGTH} for MA-MuJoCo)",
            )
        episodes = rows // length
        done = np.zeros((episodes, length), bool)
        for i, arr in enumerate(self.arrays["dones"]):
            flags = np.asarray(arr).reshape(episodes, length) != 0
            mid = np.argwhere(flags[:, :-1])
            if len(mid):
                e, s = map(int, mid[0])
                raise DatasetError(
                    self.file("dones", i),
                    f"dones_{i}",
                    f"set at step {s} of a {length}-step episode (episode {e}): the episodes do "
                    f"not all last {length} steps, as this importer assumes (OMAR's fixed-length "
                    "episodes; pass --episode-limit if they have another fixed length)",
                    e * length + s,
                )
            done |= flags
        self.ends = np.arange(length - 1, rows, length, dtype=np.int64)
        at_end = done[:, -1]
        self.terminal = np.zeros(episodes, bool) if no_terminal else at_end
        return self.terminal, int(at_end.sum())


class OmarSource:
    """OMAR seed directories, checked on opening and read block by block of episodes."""

    def __init__(self, src: Path, options: ImportOptions):
        self.src, self.options = src.absolute(), options
        self.notes: list[str] = []
        if not src.is_dir():
            raise DatasetError(src, None, "is not a directory (expected OMAR's seed_<k>_data)")
        if any(OBS_FILE.match(p.name) for p in src.iterdir()):
            match = SEED_DIR.match(src.name)
            self.seeds = [_Seed(int(match[1]) if match else None, src)]
            self.single, quality_dir = True, self.src.parent
        else:
            found = _seed_dirs(src)
            if not found:
                raise DatasetError(
                    src,
                    None,
                    "holds neither obs_<i>.npy files (an OMAR seed_<k>_data directory) nor "
                    "seed_<k>_data directories (an OMAR <data_type> directory)",
                )
            self.seeds = [_Seed(k, d) for k, d in found]
            self.single, quality_dir = False, self.src
        self.scenario, self.data_type = quality_dir.parent.name, quality_dir.name
        self._agree()
        self._scan()
        self._describe()

    def _agree(self) -> None:
        """Every seed must hold the same agents, sizes and files as the first."""
        first = self.seeds[0]
        self.num_agents, self.has_state = first.num_agents, first.has_state
        for seed in self.seeds[1:]:
            if seed.num_agents != first.num_agents:
                raise DatasetError(
                    seed.dir,
                    None,
                    f"holds {seed.num_agents} agents' files, but {first.dir.name} holds "
                    f"{first.num_agents}; the seeds must be of one task",
                )
            if seed.has_state != first.has_state:
                raise DatasetError(
                    seed.file("states", 0),
                    "states_0",
                    f"{'present' if seed.has_state else 'missing'} here but not in "
                    f"{first.dir.name}; the seeds must be of one task",
                )
            for name in seed.arrays:
                if name in ("rews", "dones"):
                    continue
                got, want = seed.dims(name), first.dims(name)
                if got != want:
                    i = next(j for j, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
                    raise DatasetError(
                        seed.file(name, i),
                        f"{name}_{i}",
                        f"{got[i]} columns, but {first.dir.name} has {want[i]}; the seeds must "
                        "be of one task",
                    )

    def _scan(self) -> None:
        opts = self.options
        default = MUJOCO_LENGTH if self.has_state else MPE_LENGTH
        self.length = opts.episode_limit or default
        no_terminal = self.scenario in NO_TERMINAL
        terminal, truncated, limit_dones = 0, 0, 0
        for seed in self.seeds:
            term, at_end = seed.scan(self.length, no_terminal)
            terminal += int(term.sum())
            truncated += int((~term).sum())
            limit_dones += at_end if no_terminal else 0
        source = (
            "--episode-limit" if opts.episode_limit else "MA-MuJoCo" if self.has_state else "MPE"
        )
        self.notes.append(
            f"episodes: fixed length {self.length} ({source}), laid end to end; an episode ends "
            "in a terminal when dones_i is set at its last step (any agent), else in a "
            f"truncation; {terminal} terminal and {truncated} truncated episodes"
        )
        if limit_dones:
            self.notes.append(
                f"dones: set at the last step of {limit_dones} episodes, which are truncations: "
                f"{self.scenario} has no terminal state, so these flags mark the time limit"
            )
        self.notes.append(
            "final observations: next_obs_i at each episode's last step"
            + (" (next_states_i for the state)" if self.has_state else "")
            + "; next_obs_i[t] equals obs_i[t+1] inside every episode (checked)"
        )
        self.terminal_count, self.truncated_count = terminal, truncated

    def _describe(self) -> None:
        """Spec, quality, provenance and ``where``, from the first seed's sizes and rows."""
        opts, first, n = self.options, self.seeds[0], self.num_agents
        obs_dims, act_dims = first.dims("obs"), first.dims("acs")
        self._padded_sizes(obs_dims, act_dims)
        obs_dim = self._find_agent_id()
        state_dim = self._state_dim(obs_dim)
        per_agent = n > 1
        note = reward_note(opts.team_reward, per_agent)
        if note:
            self.notes.append(note.replace("per-agent rewards", "per-agent rewards rews_i"))

        self.spec = EnvSpec(
            env_id=opts.env_id or f"omar:{self.scenario}",
            num_agents=n,
            obs_dim=obs_dim,
            state_dim=state_dim,
            action_dim=self.act_size,
            discrete=False,
            episode_limit=self.length,
            state_is_obs_concat=not self.has_state,
            **continuous_bounds(self.act_size, opts.action_bound),
        )
        self.quality = opts.quality or self.data_type
        self.total = sum(seed.rows for seed in self.seeds)
        self.provenance: dict[str, Any] = {
            "omar": self._source_provenance(obs_dims, act_dims),
            "transformations": self.notes,
        }
        self.where = self._locations()

    def _padded_sizes(self, obs_dims: list[int], act_dims: list[int]) -> None:
        """``obs_size`` and ``act_size``: the largest agent's, to which the others are padded."""
        self.obs_size, self.act_size = max(obs_dims), max(act_dims)
        if len(set(obs_dims)) > 1:
            self.notes.append(
                f"observations: agents' sizes {obs_dims} differ; each is zero-padded at the end "
                f"to {self.obs_size}"
            )
        if len(set(act_dims)) > 1:
            self.notes.append(
                f"actions: agents' sizes {act_dims} differ; each is zero-padded at the end "
                f"to {self.act_size}"
            )

    def _find_agent_id(self) -> int:
        """The observation size once a one-hot agent id (looked for on the first seed's first
        rows) is stripped, if it is; sets ``agent_id``."""
        opts, first = self.options, self.seeds[0]
        rows = min(first.rows, opts.block_rows)
        obs = self._stack(first, "obs", 0, rows, self.obs_size)
        file = first.file("obs", 0)
        self.agent_id = AgentId(obs, opts.strip_agent_id, self.notes, file, "obs_0")
        obs = self.agent_id(obs, lambda t, i, d: (first.file("obs", i), f"obs_{i}", (t, d)))
        return obs.shape[2]

    def _state_dim(self, obs_dim: int) -> int:
        """The global state's size: MA-MuJoCo's per-agent states reduced (the first seed decides
        how, on its first rows; the others must agree), else the concatenated observations;
        sets ``reducers`` (per seed, for ``states_i`` and ``next_states_i``)."""
        opts, first, n = self.options, self.seeds[0], self.num_agents
        self.reducers: list[tuple[StateReducer, StateReducer]] = []
        if not self.has_state:
            self.notes.append("states: OMAR's MPE has no global state; observations concatenated")
            return n * obs_dim
        mode = opts.state_reduction
        for seed in self.seeds:
            part = self._stack(seed, "states", 0, min(seed.rows, opts.block_rows))
            reducers = tuple(
                StateReducer(mode, part, str(seed.dir / f"{name}_<i>.npy"), f"{name}_<i>")
                for name in STATE_FILES
            )
            mode = reducers[0].mode  # the first seed decides; the others must agree
            self.reducers.append(reducers)
        self.notes.append(self.reducers[0][0].note.replace("states:", "states (states_i):"))
        return self.reducers[0][0].dim(n, int(first.arrays["states"][0].shape[1]))

    def _source_provenance(self, obs_dims: list[int], act_dims: list[int]) -> dict[str, Any]:
        """The ``omar`` part of the provenance: the task, the seeds' row ranges, the sizes and
        the episodes."""
        seeds, start = [], 0
        for seed in self.seeds:
            seeds.append({"seed": seed.k, "dir": str(seed.dir), "rows": [start, start + seed.rows]})
            start += seed.rows
        return {
            "scenario": self.scenario,
            "data_type": self.data_type,
            "seeds": seeds,
            "num_agents": self.num_agents,
            "obs_dims": obs_dims,
            "action_dims": act_dims,
            "episode_length": self.length,
            "episodes": self.terminal_count + self.truncated_count,
            "terminal_episodes": self.terminal_count,
            "truncated_episodes": self.truncated_count,
        }

    def _locations(self) -> dict[str, Located]:
        """``where``: each output field's agent files (in the seed directory, or in every
        ``seed_<k>_data``, whose concatenation is then noted)."""
        if self.single:
            base = str(self.seeds[0].dir)
        else:
            base = str(self.src / "seed_<k>_data")
            self.notes.append(
                f"seeds {[s.k for s in self.seeds]} concatenated in seed order (row ranges in "
                "provenance omar.seeds); source indices in messages are (k, row, ...)"
            )

        def at(name: str) -> Located:
            return Located(f"{base}/{name}_<i>.npy", f"{name}_<i>")

        state = "states" if self.has_state else "obs"
        final_state = "next_states" if self.has_state else "next_obs"
        return {
            "observations": at("obs"),
            "final_observations": at("next_obs"),
            "states": at(state),
            "final_states": at(final_state),
            "actions": at("acs"),
            "rewards": at("rews"),
            "terminals": at("dones"),
            "truncations": at("dones"),
        }

    def _stack(
        self, seed: _Seed, name: str, lo: int, hi: int, size: int | None = None
    ) -> np.ndarray:
        """Rows ``lo:hi`` of every agent's ``name`` file as ``[t, N, size]`` (zero-padded)."""
        arrays = seed.arrays[name]
        size = size or int(arrays[0].shape[1])
        out = np.zeros((hi - lo, len(arrays), size), np.float32)
        for i, arr in enumerate(arrays):
            out[:, i, : arr.shape[1]] = arr[lo:hi]
        return out

    def blocks(self) -> Iterator[Block]:
        opts = self.options
        for j, seed in enumerate(self.seeds):
            for lo, hi, ends in episode_blocks(seed.ends, opts.block_rows):
                self._check_next(seed, lo, hi, ends)
                obs = self._stack(seed, "obs", lo, hi, self.obs_size)
                final_obs = self._stack(seed, "next_obs", lo, hi, self.obs_size)[ends]
                obs = self.agent_id(obs, _where(seed, "obs", lo + np.arange(hi - lo)))
                final_obs = self.agent_id(final_obs, _where(seed, "next_obs", lo + ends))
                if self.has_state:
                    reduce, reduce_next = self.reducers[j]
                    states = reduce(self._stack(seed, "states", lo, hi), lo)
                    # All rows, so that a disagreement is reported at its source row.
                    final_states = reduce_next(self._stack(seed, "next_states", lo, hi), lo)[ends]
                else:
                    states = obs.reshape(hi - lo, -1)
                    final_states = final_obs.reshape(len(ends), -1)
                rewards = np.stack(
                    [np.asarray(r[lo:hi]).reshape(-1) for r in seed.arrays["rews"]], 1
                )
                first = int(np.searchsorted(seed.ends, lo))
                rows = np.arange(lo, hi)
                origin = rows if self.single else np.stack([np.full_like(rows, seed.k), rows], 1)
                yield assemble(
                    observations=obs,
                    states=states,
                    actions=self._stack(seed, "acs", lo, hi, self.act_size),
                    legal=None,
                    rewards=team_reward(rewards, opts.team_reward),
                    ends=ends,
                    terminal=seed.terminal[first : first + len(ends)],
                    origin=origin,
                    final=opts.final,
                    final_observations=final_obs,
                    final_states=final_states,
                )

    def _check_next(self, seed: _Seed, lo: int, hi: int, ends: np.ndarray) -> None:
        """``next_obs_i[t] == obs_i[t+1]`` inside episodes, and not across a truncation."""
        stop = min(hi + 1, seed.rows)  # one row more: the start of the next block
        inside = np.zeros(hi - lo, bool)
        inside[: stop - lo - 1] = True
        inside[ends] = False
        rows = np.flatnonzero(inside)
        first = int(np.searchsorted(seed.ends, lo))
        cut = ends[~seed.terminal[first : first + len(ends)]]
        cut = cut[cut + lo + 1 < stop]
        continues = np.ones(len(cut), bool)
        pairs = [("next_obs", "obs")] + ([("next_states", "states")] if self.has_state else [])
        for name, now in pairs:
            for i in range(self.num_agents):
                nxt = np.asarray(seed.arrays[name][i][lo:hi], np.float32)
                later = np.asarray(seed.arrays[now][i][lo + 1 : stop], np.float32)
                bad = np.argwhere(nxt[rows] != later[rows])
                if len(bad):
                    t, d = int(rows[bad[0][0]]) + lo, int(bad[0][1])
                    raise DatasetError(
                        seed.file(name, i),
                        f"{name}_{i}",
                        f"differs from {now}_{i} of the next row inside a {self.length}-step "
                        f"episode (step {t % self.length}): the episodes are "
                        f"not {self.length} steps long, or the rows are not in time order; pass "
                        "--episode-limit with the episodes' length",
                        (t, d),
                    )
                if name == "next_obs":
                    continues &= np.all(nxt[cut] == later[cut], axis=1)
        if continues.any():
            t = int(cut[np.argmax(continues)]) + lo
            raise DatasetError(
                str(seed.dir / "next_obs_<i>.npy"),
                "next_obs_<i>",
                "equals the next row's obs_<i> for every agent at the last step of a truncated "
                f"{self.length}-step episode: either the episodes are longer (pass "
                "--episode-limit) or the reset observation was stored as next_obs, and the "
                "final observation would be wrong",
                t,
            )


def _where(seed: _Seed, name: str, rows: np.ndarray):
    """Source file, field and index of (row, agent, dim) of a block of ``name`` rows ``rows``."""
    return lambda t, i, d: (seed.file(name, i), f"{name}_{i}", (int(rows[t]), d))
