"""OG-MARL vault importer: flashbax ``Vault`` directories read with tensorstore alone.

A vault (flashbax ``flashbax/vault/vault.py``, version 1.x) is ``<name>.vlt/<uid>/`` per dataset:
``metadata.json`` (``version``, and ``structure_shape`` / ``structure_dtype``: a nested dict of the
experience's leaves) plus an OCDBT key-value store holding one zarr v2 array per leaf, named by its
keys joined with a trailing dot (``observations.``, ``infos.state.``), of shape ``(B, 10^13, ...)``
with a virtual time axis, and ``vault_index``: the number of valid steps. Experience is ``[B, T,
N, ...]``: batch rows (OMAR vaults keep their 5 seeds there) each hold episodes laid end to end; a
step with ``terminals`` or ``truncations`` set ends its episode and the next step starts another.

Conversion: batch rows are concatenated in order; per-agent flags and rewards are reduced over
agents; ``infos.state`` is the state (per-agent states reduced, no state: observations
concatenated); ``infos.legals`` is the legal mask of discrete tasks. Vaults store no observation
after an episode's last step, so ``--final`` decides it. Steps after a batch row's last episode
end (an unfinished episode) are dropped. Every choice is recorded in the provenance.
"""

from __future__ import annotations

import ast
import json
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
    reward_note,
    source_fields,
    team_reward,
)
from macflow.data.schema import DatasetError
from macflow.data.stream import Block, Located
from macflow.spec import EnvSpec

METADATA = "metadata.json"
REQUIRED = ("observations.", "actions.", "rewards.", "terminals.", "truncations.")
STATE, LEGALS = "infos.state.", "infos.legals."


def is_uid(path: Path) -> bool:
    return (path / METADATA).is_file() and (path / "manifest.ocdbt").is_file()


def looks_like(src: Path) -> bool:
    if not src.is_dir():
        return False
    return is_uid(src) or any(is_uid(p) for p in src.iterdir() if p.is_dir())


def open_sources(src: Path, options: ImportOptions) -> list[tuple[str, VaultSource]]:
    """One source per uid: ``src`` is a uid directory or a ``.vlt`` directory of uids."""
    if is_uid(src):
        return [("", VaultSource(src, options))]
    uids = sorted(p for p in src.iterdir() if p.is_dir() and is_uid(p)) if src.is_dir() else []
    if not uids:
        raise DatasetError(
            src,
            None,
            f"not a vault: neither it nor a sub-directory holds {METADATA} and manifest.ocdbt "
            "(expected <name>.vlt/<uid>/ as flashbax writes it)",
        )
    if options.uid is not None:
        chosen = [p for p in uids if p.name == options.uid]
        if not chosen:
            names = ", ".join(p.name for p in uids)
            raise DatasetError(src, None, f"has no uid {options.uid!r}; its uids: {names}")
        return [("", VaultSource(chosen[0], options))]
    return [(p.name, VaultSource(p, options)) for p in uids]


def read_metadata(file: Path) -> dict[str, Any]:
    """A uid's ``metadata.json`` as a dict: a DatasetError naming it if it cannot be read, is
    not UTF-8 JSON or not an object."""
    try:
        meta = json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DatasetError(file, None, f"is not UTF-8 text ({err})") from err
    except json.JSONDecodeError as err:
        raise DatasetError(file, None, f"not valid JSON ({err})") from err
    except OSError as err:
        raise DatasetError(file, None, f"cannot be read ({err.strerror or err})") from err
    if not isinstance(meta, dict):
        raise DatasetError(file, None, f"must hold a JSON object, got a {type(meta).__name__}")
    return meta


def structure(meta: dict[str, Any], file: Path) -> tuple[dict[str, tuple], dict[str, np.dtype]]:
    """``({leaf: shape}, {leaf: dtype})`` from ``structure_shape`` and ``structure_dtype``,
    every shape a tuple of at least 2 ints ``(B, T, ...)`` and every dtype a numpy one."""
    trees = {}
    for key in ("structure_shape", "structure_dtype"):
        tree = meta.get(key)
        if not isinstance(tree, dict):
            got = "missing" if tree is None else f"a {type(tree).__name__}"
            raise DatasetError(file, key, f"must be an object of the experience's leaves, {got}")
        trees[key] = _leaves(tree)
    shapes, dtypes = {}, {}
    for name, text in trees["structure_shape"].items():
        try:
            shape = ast.literal_eval(text) if isinstance(text, str) else text
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            shape = None
        ints = isinstance(shape, tuple | list) and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        )
        if not ints or len(shape) < 2:
            raise DatasetError(
                file,
                "structure_shape",
                f"leaf {name!r}: {text!r} is not a shape (B, T, ...) of integers",
            )
        shapes[name] = tuple(shape)
        text = trees["structure_dtype"].get(name)
        try:
            if not isinstance(text, str):
                raise TypeError(text)
            dtypes[name] = np.dtype(text)
        except TypeError:
            raise DatasetError(
                file, "structure_dtype", f"leaf {name!r}: {text!r} is not a numpy dtype"
            ) from None
    return shapes, dtypes


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten the metadata's nested structure into ``{leaf name: value}`` with vault names."""
    if isinstance(tree, dict):
        out = {}
        for key, sub in tree.items():
            out |= _leaves(sub, f"{prefix}{key}.")
        return out
    return {prefix: tree}


class VaultSource:
    """One vault uid, scanned for its episodes and read block by block."""

    def __init__(self, uid: Path, options: ImportOptions):
        import tensorstore as ts

        self.uid, self.options = uid.absolute(), options
        meta_file = self.uid / METADATA
        meta = read_metadata(meta_file)
        version = meta.get("version")
        try:
            major = int(float(version))
        except (TypeError, ValueError, OverflowError):
            major = None
        if major != 1:
            raise DatasetError(
                meta_file, "version", f"vault version {version!r}; this importer reads 1.x"
            )
        shapes, dtypes = structure(meta, meta_file)
        for name in REQUIRED:
            if name not in shapes:
                raise DatasetError(
                    meta_file,
                    "structure_shape",
                    f"no leaf {name!r}; the vault holds {sorted(shapes)}",
                )
        self.version = version
        context = ts.Context({"cache_pool": {"total_bytes_limit": 0}})
        self.stores = {}
        for name in shapes:
            spec = {
                "driver": "zarr",
                "kvstore": {"driver": "ocdbt", "base": f"file://{self.uid}", "path": name},
            }
            try:
                self.stores[name] = ts.open(spec, read=True, context=context).result()
            except ValueError as err:
                raise DatasetError(
                    self.uid, name, f"cannot open the leaf's zarr array: {err}"
                ) from err
            store = self.stores[name]
            want = (shapes[name][0], *shapes[name][2:])
            got = (store.shape[0], *store.shape[2:])
            if got != want or store.dtype.numpy_dtype != np.dtype(dtypes[name]):
                raise DatasetError(
                    self.uid,
                    name,
                    f"array is {store.dtype.numpy_dtype}{list(store.shape)}, but {METADATA} says "
                    f"{dtypes[name]} with batch and item shape {list(want)}",
                )
        index_spec = {
            "driver": "zarr",
            "kvstore": {"driver": "ocdbt", "base": f"file://{self.uid}", "path": "vault_index"},
        }
        try:
            index = ts.open(index_spec, read=True, context=context).result()
            self.steps = int(index.read().result()[0])
        except ValueError as err:
            raise DatasetError(self.uid, "vault_index", f"cannot read it: {err}") from err
        self._check_ranks()
        obs = self.stores["observations."]
        self.batch, self.num_agents, obs_dim = obs.shape[0], obs.shape[2], obs.shape[3]
        if self.steps < 1 or self.steps > obs.shape[1]:
            raise DatasetError(
                self.uid, "vault_index", f"{self.steps} valid steps: the vault is empty"
            )
        self.notes: list[str] = []
        self._scan()
        self._describe(obs_dim, shapes)

    def _check_ranks(self) -> None:
        """The leaves' ranks: experience is ``[B, T, N, ...]``, the agents as many everywhere."""
        ranks = {
            "observations.": ((4,), "(B, T, N, O)"),
            "actions.": ((3, 4), "(B, T, N) or (B, T, N, 1) indices, or (B, T, N, A)"),
            STATE: ((3, 4), "(B, T, S) or (B, T, N, S)"),
            LEGALS: ((4,), "(B, T, N, A)"),
        }
        agents = self.stores["observations."].shape[2:3]
        for name, (allowed, text) in ranks.items():
            store = self.stores.get(name)
            if store is None:
                continue
            shape = tuple(store.shape)
            per_agent = len(shape) == 4 or name == "actions."
            if len(shape) not in allowed or (per_agent and shape[2:3] != agents):
                raise DatasetError(
                    self.uid,
                    name,
                    f"shape {list(shape)}, expected {text} with the N of 'observations.' "
                    f"{list(self.stores['observations.'].shape)}",
                )

    def _read(self, name: str, b: int, lo: int, hi: int) -> np.ndarray:
        return self.stores[name][b, lo:hi].read().result()

    def _scan(self) -> None:
        """Episode ends of every batch row, from the flags alone (1 byte per step kept)."""
        self.ends, self.terminal, self.kept = [], [], []
        disagree = dropped = 0
        chunk = self.options.block_rows
        for b in range(self.batch):
            done = np.empty(self.steps, bool)
            term = np.empty(self.steps, bool)
            for lo in range(0, self.steps, chunk):
                hi = min(self.steps, lo + chunk)
                t = self._read("terminals.", b, lo, hi).reshape(hi - lo, -1) != 0
                u = self._read("truncations.", b, lo, hi).reshape(hi - lo, -1) != 0
                any_t, any_u = t.any(1), u.any(1)
                disagree += int(((t.any(1) != t.all(1)) | (u.any(1) != u.all(1))).sum())
                done[lo:hi], term[lo:hi] = any_t | any_u, any_t
            ends = np.flatnonzero(done)
            kept = int(ends[-1]) + 1 if len(ends) else 0
            dropped += self.steps - kept
            self.ends.append(ends)
            self.terminal.append(term[ends])
            self.kept.append(kept)
        if sum(len(e) for e in self.ends) == 0:
            raise DatasetError(
                self.uid,
                "terminals.",
                "no step ends an episode (terminals and truncations are all 0): no complete "
                "episode to import",
            )
        if disagree:
            self.notes.append(
                f"terminals/truncations: agents disagree on {disagree} steps; a step ends the "
                "episode when any agent's flag is set"
            )
        if dropped:
            self.notes.append(
                f"dropped {dropped} steps after the last episode end of their batch row "
                "(an unfinished episode)"
            )

    def _describe(self, obs_dim: int, shapes: dict[str, tuple]) -> None:
        """Spec, quality, provenance and ``where``, from the stores and the first steps."""
        opts, n = self.options, self.num_agents
        lengths = np.concatenate([np.diff(np.concatenate([[-1], e])) for e in self.ends])
        discrete, num_actions, bounds = self._action_space()
        first = self._read("observations.", 0, 0, min(self.kept[0] or 1, opts.block_rows))
        self.agent_id = AgentId(first, opts.strip_agent_id, self.notes, self.uid, "observations.")
        obs_dim = self.agent_id.size(obs_dim)
        state_dim, concat = self._state_dim(obs_dim)
        self._note_rewards_and_leaves(discrete)

        scenario = self.uid.parent.name.removesuffix(".vlt")
        self.spec = EnvSpec(
            env_id=opts.env_id or f"og-marl:{scenario}",
            num_agents=n,
            obs_dim=obs_dim,
            state_dim=state_dim,
            action_dim=num_actions,
            discrete=discrete,
            episode_limit=opts.episode_limit or int(lengths.max()),
            state_is_obs_concat=concat,
            **bounds,
        )
        self.quality = opts.quality or self.uid.name.lower()
        self.total = sum(self.kept)
        self.provenance = {
            "vault": {"path": str(self.uid), "uid": self.uid.name, "version": self.version},
            "batch_rows": [
                {"row": b, "steps": self.kept[b], "episodes": len(self.ends[b])}
                for b in range(self.batch)
            ],
            "transformations": self.notes,
        }
        self.where = source_fields(
            lambda leaf: Located(str(self.uid), leaf),
            observations="observations.",
            states=STATE,
            actions="actions.",
            rewards="rewards.",
            terminals="terminals.",
            truncations="truncations.",
            legal=LEGALS,
        )

    def _action_space(self) -> tuple[bool, int, dict[str, Any]]:
        """``(discrete, action_dim, bounds)``: integer actions are indices, their number from the
        legal masks or else the largest action taken + 1; sets ``squeeze_actions``."""
        act = self.stores["actions."]
        discrete = np.issubdtype(act.dtype.numpy_dtype, np.integer)
        self.squeeze_actions = discrete and act.ndim == 4 and act.shape[3] == 1
        if discrete:
            if LEGALS in self.stores:
                num_actions = int(self.stores[LEGALS].shape[-1])
            else:
                top = max(
                    int(self._read("actions.", b, 0, self.kept[b]).max())
                    for b in range(self.batch)
                    if self.kept[b]
                )
                num_actions = top + 1
                self.notes.append(
                    f"legal_actions: the vault has no {LEGALS!r}; every action is legal and "
                    f"the number of actions ({num_actions}) is the largest action taken + 1"
                )
            return discrete, num_actions, {}
        num_actions = int(act.shape[3])
        if LEGALS in self.stores:
            self.notes.append(f"{LEGALS!r} not kept: the actions are continuous")
        return discrete, num_actions, continuous_bounds(num_actions, self.options.action_bound)

    def _state_dim(self, obs_dim: int) -> tuple[int, bool]:
        """``(state_dim, state_is_obs_concat)``: the concatenated observations without a state
        leaf, else its state or per-agent states (reduced, decided on the first steps); sets
        ``reducer``."""
        opts, n = self.options, self.num_agents
        self.reducer = None
        if STATE not in self.stores:
            self.notes.append(f"states: the vault has no {STATE!r}; observations concatenated")
            return n * obs_dim, True
        if self.stores[STATE].ndim == 4:
            self.reducer = StateReducer(
                opts.state_reduction,
                self._read(STATE, 0, 0, min(self.kept[0] or 1, opts.block_rows)),
                str(self.uid),
                STATE,
            )
            state_dim = self.reducer.dim(n, int(self.stores[STATE].shape[3]))
            self.notes.append(self.reducer.note)
            return state_dim, False
        return int(self.stores[STATE].shape[2]), False

    def _note_rewards_and_leaves(self, discrete: bool) -> None:
        """The provenance notes of the team reward, the final observations, the batch rows and
        unused leaves."""
        opts = self.options
        note = reward_note(opts.team_reward, self.stores["rewards."].ndim >= 3)
        if note:
            self.notes.append(note)
        self.notes.append(final_note(opts.final, "the vault", legal=discrete))
        if self.batch > 1:
            self.notes.append(f"batch rows 0..{self.batch - 1} concatenated along time, in order")
        unused = sorted(set(self.stores) - {*REQUIRED, STATE, LEGALS})
        if unused:
            self.notes.append(f"leaves not kept: {unused}")

    def blocks(self) -> Iterator[Block]:
        opts = self.options
        for b in range(self.batch):
            ends, terminal = self.ends[b], self.terminal[b]
            for lo, hi, block_ends in episode_blocks(ends, opts.block_rows):
                names = [n for n in (*REQUIRED, STATE, LEGALS) if n in self.stores]
                futures = {n: self.stores[n][b, lo:hi].read() for n in names}
                raw = {n: f.result() for n, f in futures.items()}
                obs = self.agent_id(
                    raw["observations."].astype(np.float32, copy=False),
                    lambda t, i, d, b=b, lo=lo: (str(self.uid), "observations.", (b, lo + t, i, d)),
                )
                if STATE not in raw:
                    states = obs.reshape(hi - lo, -1)
                elif self.reducer is not None:
                    states = self.reducer(raw[STATE], lo)
                else:
                    states = raw[STATE]
                actions = raw["actions."]
                if self.spec.discrete:
                    if self.squeeze_actions:
                        actions = actions[..., 0]
                    actions = actions.astype(np.int32)
                    legal = (
                        raw[LEGALS] != 0
                        if LEGALS in raw
                        else np.ones((hi - lo, self.num_agents, self.spec.action_dim), bool)
                    )
                else:
                    actions, legal = actions.astype(np.float32, copy=False), None
                first = int(np.searchsorted(ends, lo))
                origin = np.stack([np.full(hi - lo, b), np.arange(lo, hi)], axis=1)
                yield assemble(
                    observations=obs,
                    states=states,
                    actions=actions,
                    legal=legal,
                    rewards=team_reward(raw["rewards."], opts.team_reward),
                    ends=block_ends,
                    terminal=terminal[first : first + len(block_ends)],
                    origin=origin,
                    final=opts.final,
                )
