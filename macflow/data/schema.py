"""The macflow dataset schema, version 1: which arrays a dataset holds and the checks they pass.

A dataset is a sequence of complete episodes laid end to end along the step axis T. Row t holds
the observation, state and legal mask seen at step t, the joint action taken, and the team
reward, ``terminals`` and ``truncations`` that the action produced. A step with ``terminals`` or
``truncations`` set is the last of its episode; the next row starts a new episode. The state after
an episode's last step is stored once per episode in the ``final_*`` arrays (axis E), so every
row is a complete transition and no observation is stored twice. ``docs/data_format.md`` is the
field-by-field reference.

Every check raises :class:`DatasetError` naming the file, the field and the first bad index.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from macflow.spec import EnvSpec

SCHEMA_VERSION = 1
FORMAT = "macflow-dataset"
META_FILE = "meta.json"
CHUNK_ROWS = 1 << 15  # rows checked at a time, so memory stays bounded on memory-mapped data


class DatasetError(ValueError):
    """Bad dataset input. ``file``, ``field`` and ``index`` locate the first problem."""

    def __init__(self, file, field: str | None, message: str, index=None):
        if index is not None:
            index = tuple(int(i) for i in np.atleast_1d(index))
        self.file, self.field, self.index, self.message = str(file), field, index, message
        where = self.file
        if field is not None:
            where += f": field '{field}'"
        if index is not None:
            where += f" at index {format_index(index)}"
        super().__init__(f"{where}: {message}")


def format_index(index: tuple[int, ...]) -> str:
    return str(index[0]) if len(index) == 1 else str(index)


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    dims: tuple[str, ...]
    """Symbols: T steps, E episodes, N agents, O observation, S state, A action size/count."""
    dtype: np.dtype
    doc: str


def fields_for(spec: EnvSpec) -> dict[str, Field]:
    """The fields a dataset of ``spec`` must hold, in storage order."""
    f32, b = np.dtype(np.float32), np.dtype(np.bool_)
    out = [
        Field("observations", ("T", "N", "O"), f32, "each agent's observation at step t"),
        Field("states", ("T", "S"), f32, "global state at step t"),
    ]
    if spec.discrete:
        out += [
            Field("actions", ("T", "N"), np.dtype(np.int32), "each agent's action index"),
            Field("legal_actions", ("T", "N", "A"), b, "legal-action mask at step t"),
        ]
    else:
        out += [Field("actions", ("T", "N", "A"), f32, "each agent's action vector")]
    out += [
        Field("rewards", ("T",), f32, "team reward of the step"),
        Field("terminals", ("T",), b, "the step ended the episode in a terminal state"),
        Field("truncations", ("T",), b, "the step ended the episode at its time limit"),
        Field("final_observations", ("E", "N", "O"), f32, "observations after each episode"),
        Field("final_states", ("E", "S"), f32, "global state after each episode"),
    ]
    if spec.discrete:
        out += [Field("final_legal_actions", ("E", "N", "A"), b, "legal mask after each episode")]
    return {f.name: f for f in out}


def episode_ends(terminals: np.ndarray, truncations: np.ndarray) -> np.ndarray:
    """Indices of the last step of every episode."""
    return np.flatnonzero(np.logical_or(terminals, truncations))


def _first(mask: np.ndarray, offset: int = 0) -> tuple[int, ...] | None:
    """Index of the first True in ``mask`` (row offset added), or None."""
    if not mask.any():
        return None
    idx = np.unravel_index(int(np.argmax(mask.reshape(-1))), mask.shape)
    return (int(idx[0]) + offset, *(int(i) for i in idx[1:]))


def _chunks(n: int):
    for start in range(0, n, CHUNK_ROWS):
        yield start, min(n, start + CHUNK_ROWS)


def validate(arrays: Mapping[str, np.ndarray], spec: EnvSpec, where: str | Path) -> None:
    """Check every field of a dataset against ``spec``; raise :class:`DatasetError` if bad.

    ``where`` is the dataset directory (or a label for in-memory data); messages name
    ``where/<field>.npy``. Works chunk by chunk, so memory-mapped arrays are never fully loaded.
    """

    def file(name: str) -> str:
        return str(Path(where) / f"{name}.npy")

    expected = fields_for(spec)
    for name in expected:
        if name not in arrays:
            raise DatasetError(file(name), name, "missing (required for this task's spec)")
    for name in arrays:
        if name not in expected:
            raise DatasetError(
                file(name),
                name,
                f"unexpected field; a {'discrete' if spec.discrete else 'continuous'}"
                f" task's dataset holds exactly {sorted(expected)}",
            )
    for name, fld in expected.items():
        if arrays[name].dtype != fld.dtype:
            raise DatasetError(
                file(name),
                name,
                f"dtype is {arrays[name].dtype}, expected {fld.dtype}"
                f" (convert with .astype(np.{fld.dtype.name}))",
            )

    term, trunc = arrays["terminals"], arrays["truncations"]
    if term.ndim != 1 or term.shape[0] < 1:
        raise DatasetError(
            file("terminals"), "terminals", f"shape {term.shape}, expected (T,), T>=1"
        )
    if trunc.shape != term.shape:
        raise DatasetError(
            file("truncations"), "truncations", f"shape {trunc.shape}, expected (T,) = {term.shape}"
        )
    ends = episode_ends(term, trunc)
    _check_episodes(term, trunc, ends, spec, file)
    sizes = {
        "T": term.shape[0],
        "E": len(ends),
        "N": spec.num_agents,
        "O": spec.obs_dim,
        "S": spec.state_dim,
        "A": spec.action_dim,
    }
    for name, fld in expected.items():
        want = tuple(sizes[d] for d in fld.dims)
        got = arrays[name].shape
        if got != want:
            diff = [i for i, (g, w) in enumerate(zip(got, want, strict=False)) if g != w]
            axis = diff[0] if diff else min(len(got), len(want))
            names = ", ".join(f"{d}={sizes[d]}" for d in fld.dims)
            message = f"shape {got}, expected ({names}) = {want}; first mismatch on axis {axis}"
            if "E" in fld.dims:
                message += " (E = number of episodes = steps with terminals or truncations set)"
            raise DatasetError(file(name), name, message)

    _check_values(arrays, spec, ends, file)


def _check_episodes(term, trunc, ends, spec: EnvSpec, file) -> None:
    both = _first(np.logical_and(term, trunc))
    if both is not None:
        raise DatasetError(
            file("truncations"),
            "truncations",
            "terminals and truncations are both set; an "
            "episode ends in a terminal state or at its time limit, not both (a terminal state "
            "reached at the limit is a terminal: set only terminals)",
            both,
        )
    last = len(term) - 1
    if len(ends) == 0 or ends[-1] != last:
        raise DatasetError(
            file("terminals"),
            "terminals",
            "the last step does not end an episode (neither "
            "terminals nor truncations is set); a dataset holds complete episodes only",
            last,
        )
    lengths = np.diff(np.concatenate([[-1], ends]))
    long = _first(lengths > spec.episode_limit)
    if long is not None:
        k = long[0]
        start = int(ends[k] - lengths[k] + 1)
        raise DatasetError(
            file("terminals"),
            "terminals",
            f"episode {k} (steps {start}..{int(ends[k])}) lasts "
            f"{int(lengths[k])} steps, longer than the episode limit {spec.episode_limit}; "
            "an episode marker is missing",
            start + spec.episode_limit - 1,
        )


def _check_concat(arrays, name: str, obs_name: str, file) -> None:
    """``spec.state_is_obs_concat``: each row of ``name`` is the row's observations flattened."""
    states, obs = arrays[name], arrays[obs_name]
    size = obs.shape[2]
    for lo, hi in _chunks(states.shape[0]):
        flat = np.asarray(obs[lo:hi]).reshape(hi - lo, -1)
        bad = _first(np.asarray(states[lo:hi]) != flat, lo)
        if bad is not None:
            t, j = bad
            raise DatasetError(
                file(name),
                name,
                f"value {states[bad]} is not the concatenated observations' "
                f"{obs_name}[{t}, {j // size}, {j % size}] = {obs[t, j // size, j % size]}; "
                "spec.state_is_obs_concat says the state is observations.reshape(N * O) (set it "
                "to false if the state is the task's own)",
                bad,
            )


def _check_values(arrays, spec: EnvSpec, ends, file) -> None:
    floats = ["observations", "states", "rewards", "final_observations", "final_states"]
    if not spec.discrete:
        floats.append("actions")
    for name in floats:
        arr = arrays[name]
        for lo, hi in _chunks(arr.shape[0]):
            bad = _first(~np.isfinite(arr[lo:hi]), lo)
            if bad is not None:
                raise DatasetError(file(name), name, f"value {arr[bad]} is not finite", bad)
    if spec.state_is_obs_concat:
        _check_concat(arrays, "states", "observations", file)
        _check_concat(arrays, "final_states", "final_observations", file)

    actions = arrays["actions"]
    if not spec.discrete:
        low = np.asarray(spec.action_low, np.float32)
        high = np.asarray(spec.action_high, np.float32)
        for lo, hi in _chunks(actions.shape[0]):
            chunk = actions[lo:hi]
            bad = _first((chunk < low) | (chunk > high), lo)
            if bad is not None:
                d = bad[-1]
                raise DatasetError(
                    file("actions"),
                    "actions",
                    f"value {float(actions[bad])} lies outside the "
                    f"action bounds [{low[d]}, {high[d]}] of dimension {d}",
                    bad,
                )
        return

    legal = arrays["legal_actions"]
    for lo, hi in _chunks(actions.shape[0]):
        acts, mask = actions[lo:hi], legal[lo:hi]
        bad = _first((acts < 0) | (acts >= spec.action_dim), lo)
        if bad is not None:
            raise DatasetError(
                file("actions"),
                "actions",
                f"action {int(actions[bad])} is not in [0, {spec.action_dim})",
                bad,
            )
        bad = _first(~mask.any(axis=-1), lo)
        if bad is not None:
            raise DatasetError(
                file("legal_actions"),
                "legal_actions",
                "no legal action for this agent (every "
                "agent needs at least one, e.g. a no-op when dead)",
                bad,
            )
        taken = np.take_along_axis(mask, acts[..., None].astype(np.intp), axis=-1)[..., 0]
        bad = _first(~taken, lo)
        if bad is not None:
            raise DatasetError(
                file("actions"),
                "actions",
                f"action {int(actions[bad])} is forbidden by legal_actions at the same index",
                bad,
            )
    # After a truncation the next state is bootstrapped, so its mask must allow an action.
    truncated = np.asarray(arrays["truncations"])[ends]
    final = np.asarray(arrays["final_legal_actions"])
    bad = _first(~final.any(axis=-1) & truncated[:, None])
    if bad is not None:
        raise DatasetError(
            file("final_legal_actions"),
            "final_legal_actions",
            "a truncated episode's final "
            "legal mask allows no action for this agent (it is bootstrapped from)",
            bad,
        )
