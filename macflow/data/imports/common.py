"""What every importer shares: its options, the source protocol and the episode assembly.

An importer turns one source (a vault uid, an OMAR seed directory, an HDF5 file, ...) into a
:class:`Source`: the task spec, the provenance, and an iterator of blocks
(:class:`~macflow.data.stream.Block`: complete episodes in the macflow schema) that
:func:`macflow.data.stream.save_stream` writes.
Sources first scan the cheap per-step flags (episode ends, lengths) to find the episodes, then
read the large arrays one block of episodes at a time, so memory stays bounded.

Conventions every importer applies, each recorded in the provenance's ``transformations``:

- **Team reward**: per-agent rewards are reduced by their mean over agents (OG-MARL's metric), or
  their sum or agent 0's (``--team-reward sum|agent0``).
- **Episode ends**: a step ends the episode when any agent's terminal or truncation flag is set; a
  step with both is a terminal (the schema's rule).
- **Final observation** (the observation after an episode's last step): taken from the source
  when it stores one. When it does not, ``--final repeat`` (default) repeats the last step's
  observation, state and legal mask (exact for terminal episodes, which are never bootstrapped;
  an approximation for truncated ones), and ``--final drop`` drops the last step of every truncated
  episode and uses its observation as the true final observation of the step before.
- **Per-agent state** ``[T, N, S]``: agent 0's copy when every agent holds the same state (checked
  on every step), otherwise the concatenation ``[T, N*S]`` (``--state-reduction``).
- **Agent id**: a one-hot agent id inside the observations is detected and recorded; it is kept
  unless ``--strip-agent-id``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from macflow.data.schema import DatasetError
from macflow.data.stream import Block, Located
from macflow.spec import EnvSpec


@dataclasses.dataclass(frozen=True)
class ImportOptions:
    """Options of ``macflow data import``; every importer reads the ones that apply to it."""

    env_id: str | None = None
    """Task id recorded in the dataset (default ``<format>:<scenario>``, e.g. ``og-marl:3m``). An
    id macflow cannot run trains without evaluation; a macflow id (``macflow envs``) enables it
    only if the data's observations match that environment's."""
    quality: str | None = None
    """Quality label (default: the source's, e.g. the vault uid ``Good`` -> ``good``)."""
    final: Literal["repeat", "drop"] = "repeat"
    """Where the source stores no observation after an episode's last step: ``repeat`` the last
    one, or ``drop`` the last step of each truncated episode to get an exact one."""
    team_reward: Literal["mean", "sum", "agent0"] = "mean"
    """How per-agent rewards become the team reward: their mean or sum over agents, or agent 0's
    (OMAR scores simple_tag and simple_world by the first predator's reward)."""
    state_reduction: Literal["auto", "agent0", "concat"] = "auto"
    """Per-agent states ``[T, N, S]``: ``agent0`` keeps agent 0's copy (all copies must agree),
    ``concat`` flattens to ``[T, N*S]``, ``auto`` picks ``agent0`` when the copies agree."""
    strip_agent_id: bool = False
    """Remove a one-hot agent id found in the observations."""
    episode_limit: int | None = None
    """Episode length (OMAR, fixed-length episodes) or time limit (OMIGA: a run of this many steps
    without a terminal is a truncated episode). Default: the source's convention."""
    action_bound: float = 1.0
    """Continuous actions lie in ``[-bound, bound]`` in every dimension (MPE, MA-MuJoCo: 1)."""
    omiga_done: Literal["next-state", "last-step"] = "next-state"
    """OMIGA: how ``d[t] = 1`` is read. ``next-state``, as OMIGA's own loader reads it: row t holds
    the terminal observation that step t-1 reached, so step t-1 ends the episode (its exact final
    observation is row t) and row t is no transition. ``last-step`` (D4RL's convention): step t
    is the episode's terminal step."""
    uid: str | None = None
    """OG-MARL: import only this uid of a ``.vlt`` directory (default: every uid)."""
    block_rows: int = 1 << 16
    """Source rows read at a time (memory use is proportional)."""

    def __post_init__(self):
        # Checked here, so that the command line (tyro builds this class) and Python callers
        # get the same one-line error before anything is read or written.
        for name, kind in typing.get_type_hints(ImportOptions).items():
            value = getattr(self, name)
            choices = typing.get_args(kind)
            if typing.get_origin(kind) is Literal and value not in choices:
                raise ValueError(f"{flag(name)} must be one of {', '.join(choices)}, got {value!r}")
        positive_int(self.block_rows, "block_rows")
        if self.episode_limit is not None:
            positive_int(self.episode_limit, "episode_limit", "; leave it out for the default")
        bound = self.action_bound
        number = isinstance(bound, int | float) and not isinstance(bound, bool)
        if not (number and 0 < bound < math.inf):
            raise ValueError(f"--action-bound must be a finite number > 0, got {bound!r}")


def flag(name: str) -> str:
    """The command-line flag of an option field: ``block_rows`` -> ``--block-rows``."""
    return "--" + name.replace("_", "-")


def positive_int(value: Any, name: str, hint: str = "") -> None:
    """Raise a ValueError naming ``name``'s flag unless ``value`` is an int >= 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{flag(name)} must be an integer >= 1, got {value!r}{hint}")


class Source(Protocol):
    """One dataset inside a source, ready to stream."""

    spec: EnvSpec
    quality: str
    provenance: dict[str, Any]
    """Source format, files and every transformation applied (``transformations``: list of str)."""
    where: dict[str, Located]
    """Output field -> its file and field in the source (for error messages)."""
    total: int
    """Source rows, for progress."""

    def blocks(self) -> Iterator[Block]: ...


def team_reward(rewards: np.ndarray, how: str) -> np.ndarray:
    """``[t]`` team reward from ``[t]``, ``[t, 1]`` or per-agent ``[t, N]`` rewards."""
    r = np.asarray(rewards, np.float32)
    if r.ndim == 1:
        return r
    r = r.reshape(r.shape[0], -1)
    if r.shape[1] == 1:
        return r[:, 0]
    if how == "agent0" or (how == "mean" and (r == r[:, :1]).all()):
        return r[:, 0].astype(np.float32)  # a shared reward's mean is itself, without rounding
    return (r.mean(axis=1) if how == "mean" else r.sum(axis=1)).astype(np.float32)


def reward_note(how: str, per_agent: bool) -> str | None:
    if not per_agent:
        return None
    if how == "agent0":
        return "rewards: agent 0's reward is the team reward (the other agents' are not kept)"
    return f"rewards: per-agent rewards reduced to the team reward by their {how} over agents"


def agent_id_dims(obs: np.ndarray) -> tuple[int, int] | None:
    """``(lo, hi)`` if ``obs[..., lo:hi]`` is the one-hot agent id on every row, else None."""
    n, o = obs.shape[1], obs.shape[2]
    if n < 2 or o < n:
        return None
    eye = np.eye(n, dtype=obs.dtype)
    for lo in (0, o - n):
        if np.array_equal(obs[:, :, lo : lo + n], np.broadcast_to(eye, (obs.shape[0], n, n))):
            return lo, lo + n
    return None


def strip_dims(obs: np.ndarray, dims: tuple[int, int]) -> np.ndarray:
    return np.concatenate([obs[..., : dims[0]], obs[..., dims[1] :]], axis=-1)


Where = Callable[[int, int, int], tuple[str, str, tuple[int, ...]]]
"""``(row, agent, dim)`` of a block's observations -> ``(file, field, index)`` in the source."""


class AgentId:
    """A one-hot agent id inside the observations: found on the first rows and recorded; with
    ``--strip-agent-id`` checked on every row and removed."""

    def __init__(self, first: np.ndarray, strip: bool, notes: list[str], file, field: str):
        self.dims, self.strip = agent_id_dims(first), strip
        if self.dims is not None:
            lo, hi = self.dims
            notes.append(
                f"observations: one-hot agent id at dims [{lo}, {hi})"
                + (", removed (--strip-agent-id)" if strip else ", kept")
            )
        elif strip:
            raise DatasetError(file, field, "--strip-agent-id: no one-hot agent id found")

    def size(self, obs_dim: int) -> int:
        """The observation size once the id is removed (if it is)."""
        return obs_dim - (self.dims[1] - self.dims[0] if self.strip else 0)

    def __call__(self, obs: np.ndarray, where: Where) -> np.ndarray:
        """``obs`` ``[t, N, O]`` without the id (if stripped), checked to hold it on every row."""
        if not self.strip:
            return obs
        lo, hi = self.dims
        bad = np.argwhere(obs[:, :, lo:hi] != np.eye(obs.shape[1], dtype=obs.dtype))
        if len(bad):
            t, i, d = map(int, bad[0])
            file, field, index = where(t, i, lo + d)
            raise DatasetError(
                file,
                field,
                "--strip-agent-id: the one-hot agent id found on the first rows is missing here",
                index,
            )
        return strip_dims(obs, self.dims)


def is_present(path: Path, field: str) -> bool:
    """Whether the optional source file ``path`` is there: True for a file, False for nothing;
    anything else (a directory, a broken link) is refused rather than taken for a missing file,
    which would change what is imported (e.g. every action legal without ``legals.npy``)."""
    if path.is_file():
        return True
    if not os.path.lexists(path):
        return False
    if path.is_dir():
        kind = "a directory"
    elif path.is_symlink():
        kind = "a broken symbolic link (or a link loop)"
    else:
        kind = "not a regular file"
    raise DatasetError(path, field, f"is {kind}, not a file; replace it with the file or remove it")


def per_file(
    src: Path, suffixes: tuple[str, ...], make: Callable[[Path], Any], expected: str
) -> list[tuple[str, Any]]:
    """One source per file: ``src`` is such a file, or a directory of them (named by stem)."""
    if src.is_file():
        return [("", make(src))]
    files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix in suffixes)
    if not files:
        raise DatasetError(src, None, f"holds no {'/'.join(suffixes)} file (expected {expected})")
    return [(p.stem, make(p)) for p in files]


def final_note(final: str, source: str, legal: bool = False) -> str:
    """The provenance sentence of the final-observation policy, for a source storing none."""
    if final == "drop":
        return (
            "final observations: the last step of every truncated episode was dropped and its "
            "observation is the final observation of the step before (--final drop)"
        )
    what = "observation, state and legal mask" if legal else "observation and state"
    return (
        f"final observations: {source} stores none, so each episode's last {what} are repeated "
        "(--final repeat; inexact only for truncated episodes, whose bootstrap they feed)"
    )


class StateReducer:
    """Per-agent states ``[t, N, S]`` to a global state, decided once and checked on every block."""

    def __init__(self, mode: str, first: np.ndarray, file: str, field: str):
        self.file, self.field = file, field
        same = bool(np.array_equal(first, np.broadcast_to(first[:, :1], first.shape)))
        self.mode = ("agent0" if same else "concat") if mode == "auto" else mode
        if self.mode == "agent0" and not same:
            self._raise(first, 0)

    def _raise(self, states: np.ndarray, offset: int) -> None:
        diff = np.argwhere(states != states[:, :1])[0]
        raise DatasetError(
            self.file,
            self.field,
            "agents hold different states, so agent 0's copy is not the global state; "
            "pass --state-reduction concat",
            (int(diff[0]) + offset, *map(int, diff[1:])),
        )

    @property
    def note(self) -> str:
        if self.mode == "agent0":
            return "states: per-agent states [T, N, S] are identical; agent 0's copy is the state"
        return "states: per-agent states [T, N, S] concatenated into [T, N*S]"

    def dim(self, n: int, s: int) -> int:
        return s if self.mode == "agent0" else n * s

    def __call__(self, states: np.ndarray, offset: int = 0) -> np.ndarray:
        if self.mode == "agent0":
            if not np.array_equal(states, np.broadcast_to(states[:, :1], states.shape)):
                self._raise(states, offset)
            return states[:, 0]
        return states.reshape(states.shape[0], -1)


def assemble(
    *,
    observations: np.ndarray,
    states: np.ndarray,
    actions: np.ndarray,
    legal: np.ndarray | None,
    rewards: np.ndarray,
    ends: np.ndarray,
    terminal: np.ndarray,
    origin: np.ndarray,
    final: str,
    final_observations: np.ndarray | None = None,
    final_states: np.ndarray | None = None,
    final_legal: np.ndarray | None = None,
    final_known: np.ndarray | None = None,
    final_origin: np.ndarray | None = None,
    consumed: int | None = None,
) -> Block:
    """A :class:`Block` from rows of complete episodes laid end to end.

    ``ends[e]`` is the row of episode e's last step and ``terminal[e]`` whether it ended in a
    terminal state (else it was truncated). ``final_*`` ``[E, ...]`` are the observation, state
    and legal mask after each episode's last step where the source stores them: for every
    episode, or for those where ``final_known[e]`` is set. For the others ``final`` (``repeat``
    or ``drop``) decides, as described in the module docstring. ``legal`` is None for continuous
    tasks. ``origin[t]`` is the source index of row t and ``final_origin[e]`` that of episode e's
    final observation (default: its last row).
    """
    ends = np.asarray(ends, np.int64)
    terminal = np.asarray(terminal, bool)
    rows, num = len(rewards), len(ends)
    if final_observations is None:
        known = np.zeros(num, bool)
    else:
        known = np.ones(num, bool) if final_known is None else np.asarray(final_known, bool)
    # Where nothing is stored: repeat the last step, or drop a truncated episode's last step so
    # that its observation becomes the exact final observation of the step before.
    dropped = (~terminal) & (~known) if final == "drop" else np.zeros(num, bool)
    fin_obs, fin_states = observations[ends], states[ends]
    fin_legal = None if legal is None else legal[ends]
    fin_origin = origin[ends] if final_origin is None else np.asarray(final_origin)
    if known.any():
        fin_obs[known] = final_observations[known]
        fin_states[known] = final_states[known]
        if fin_legal is not None:
            fin_legal[known] = final_legal[known]
    keep = np.ones(rows, bool)
    keep[ends[dropped]] = False
    starts = np.concatenate([[0], ends[:-1] + 1])
    alive = ~dropped | (ends > starts)  # a dropped 1-step episode vanishes entirely
    last = np.where(dropped, ends - 1, ends)[alive]
    term = terminal[alive]
    term_rows = np.zeros(rows, bool)
    trunc_rows = np.zeros(rows, bool)
    term_rows[last[term]] = True
    trunc_rows[last[~term]] = True
    arrays = {
        "observations": np.asarray(observations[keep], np.float32),
        "states": np.asarray(states[keep], np.float32),
        "actions": actions[keep],
        "rewards": np.asarray(rewards[keep], np.float32),
        "terminals": term_rows[keep],
        "truncations": trunc_rows[keep],
        "final_observations": np.asarray(fin_obs[alive], np.float32),
        "final_states": np.asarray(fin_states[alive], np.float32),
    }
    if legal is not None:
        arrays["legal_actions"] = np.asarray(legal[keep], bool)
        arrays["final_legal_actions"] = np.asarray(fin_legal[alive], bool)
    return Block(
        arrays=arrays,
        origin=origin[keep],
        final_origin=fin_origin[alive],
        consumed=rows if consumed is None else consumed,
    )


def continuous_bounds(action_dim: int, bound: float) -> dict[str, tuple[float, ...]]:
    return {"action_low": (-bound,) * action_dim, "action_high": (bound,) * action_dim}


def episode_blocks(ends: np.ndarray, block_rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """Split episodes (by their last rows ``ends``) into runs of about ``block_rows`` rows.

    Yields ``(row_start, row_stop, ends_in_block)``; a block always holds whole episodes.
    """
    start, i = 0, 0
    while i < len(ends):
        j = int(np.searchsorted(ends, start + block_rows - 1, side="right"))
        j = max(j, i + 1)
        stop = int(ends[j - 1]) + 1
        yield start, stop, ends[i:j] - start
        start, i = stop, j


def source_fields(
    at: Callable[[str], Located],
    *,
    observations: str,
    states: str,
    actions: str,
    rewards: str,
    terminals: str,
    truncations: str | None = None,
    legal: str | None = None,
) -> dict[str, Located]:
    """A source's ``where`` when each final array comes from the same source field as its
    per-step one: output field -> ``at(source field)``. Truncations come from ``terminals``'
    field unless given; without ``legal``, no legal-action fields."""
    where = {
        "observations": at(observations),
        "final_observations": at(observations),
        "states": at(states),
        "final_states": at(states),
        "actions": at(actions),
        "rewards": at(rewards),
        "terminals": at(terminals),
        "truncations": at(terminals if truncations is None else truncations),
    }
    if legal is not None:
        where["legal_actions"] = at(legal)
        where["final_legal_actions"] = at(legal)
    return where
