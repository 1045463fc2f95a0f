"""CFCQL SMAC importer: the pymarl EpisodeBatch HDF5 files of thu-rllab/CFCQL.

CFCQL (``discrete/src/run/run.py`` writes them, ``utils/h5dataloader.py`` reads them) stores one
file per dataset, ``<map>_<quality>.h5`` (e.g. ``5m_vs_6m_medium.h5``; the map may contain
underscores, the quality is the part after the last one, or ``medium_replay``). Its root holds
pymarl's episode keys, each padded to ``L = episode_limit + 1`` rows: ``state`` ``(E, L, S)``,
``obs`` ``(E, L, N, O)``, ``actions`` ``(E, L, N, 1)`` int64, ``avail_actions`` ``(E, L, N, A)``,
``probs`` ``(E, L, N, A)``, ``reward`` ``(E, L, 1)``, ``terminated`` ``(E, L, 1)`` and
``filled`` ``(E, L, 1)``, the mask of the rows written.

pymarl's runner writes, for an episode of T steps, rows 0..T-1 as transitions (observation, state
and legal mask at t, the action taken, the reward, and ``terminated`` on the step that ended the
episode in a terminal state, not at the time limit) and row T with the observation, state and
legal mask after the last step. So the ``F`` filled rows of an episode hold ``F - 1`` transitions
and the exact final observation; a terminal episode whose filled rows end at its terminated row
has no final row (its last observation is repeated). Padding rows are removed and the
transitions laid end to end; every choice is recorded in the provenance.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from macflow.data.imports.common import (
    AgentId,
    ImportOptions,
    assemble,
    per_file,
    reward_note,
    source_fields,
    team_reward,
)
from macflow.data.imports.hdf5 import SUFFIXES, HdfSource, holds
from macflow.data.schema import DatasetError
from macflow.data.stream import Block, Located
from macflow.spec import EnvSpec

KEYS = ("state", "obs", "actions", "avail_actions", "reward", "terminated", "filled")
QUALITIES = ("medium_replay",)  # qualities holding an underscore (CFCQL's h5file_suffix)
SHAPES = {
    "state": "(E, L, S)",
    "obs": "(E, L, N, O)",
    "actions": "(E, L, N, 1) or (E, L, N)",
    "avail_actions": "(E, L, N, A)",
    "reward": "(E, L, 1), (E, L) or (E, L, N)",
    "terminated": "(E, L, 1) or (E, L)",
    "filled": "(E, L, 1) or (E, L)",
}


def looks_like(src: Path) -> bool:
    return holds(src, ("filled", "avail_actions"))


def open_sources(src: Path, options: ImportOptions) -> list[tuple[str, CfcqlSource]]:
    """One source per file: ``src`` is a CFCQL ``.h5`` file or a directory of them."""
    expected = "CFCQL's <map>_<quality>.h5 files"
    return per_file(src, SUFFIXES, lambda p: CfcqlSource(p, options), expected)


def split_name(stem: str) -> tuple[str, str | None]:
    """``(map, quality)`` of a ``<map>_<quality>`` file stem (quality None if there is none)."""
    for quality in QUALITIES:
        if stem.endswith("_" + quality) and len(stem) > len(quality) + 1:
            return stem[: -len(quality) - 1], quality
    name, sep, quality = stem.rpartition("_")
    return (name, quality) if sep and name and quality else (stem, None)


class CfcqlSource(HdfSource):
    """One CFCQL file, scanned for its episodes and read block by block of episodes."""

    def _shapes(self, f: h5py.File) -> None:
        for key in KEYS:
            if not isinstance(f.get(key), h5py.Dataset):
                raise DatasetError(
                    self.file,
                    key,
                    f"missing; a CFCQL file holds the pymarl keys {', '.join(KEYS)} "
                    f"(it has {sorted(f)})",
                )
        obs = f["obs"]
        if obs.ndim != 4:
            raise DatasetError(self.file, "obs", f"shape {obs.shape}, expected {SHAPES['obs']}")
        e, length, n, _ = obs.shape
        self.episodes, self.length, self.num_agents = e, length, n
        for key in KEYS:
            shape = f[key].shape
            ok = {
                "state": len(shape) == 3,
                "obs": True,
                "actions": shape[2:] in ((n, 1), (n,)),
                "avail_actions": len(shape) == 4 and shape[2] == n,
                "reward": shape[2:] in ((1,), (), (n,)),
                "terminated": shape[2:] in ((1,), ()),
                "filled": shape[2:] in ((1,), ()),
            }[key]
            if not ok or shape[:2] != (e, length):
                raise DatasetError(
                    self.file,
                    key,
                    f"shape {shape}, expected {SHAPES[key]} with E={e} episodes of L={length} "
                    f"rows and N={n} agents as 'obs' {obs.shape} has",
                )

    def _scan(self, f: h5py.File) -> None:
        """Transitions of every episode from ``filled`` and ``terminated`` alone."""
        e, length = self.episodes, self.length
        filled = np.empty(e, np.int64)
        steps = np.empty(e, np.int64)
        terminal = np.empty(e, bool)
        per = max(1, self.options.block_rows // length)
        for lo in range(0, e, per):
            hi = min(e, lo + per)
            fill = np.asarray(f["filled"][lo:hi]).reshape(hi - lo, length) != 0
            term = np.asarray(f["terminated"][lo:hi]).reshape(hi - lo, length) != 0
            count = fill.sum(1)
            broken = np.flatnonzero((fill != (np.arange(length) < count[:, None])).any(1))
            if len(broken):
                row = fill[broken[0]]
                gap = int(np.argmin(row))
                raise DatasetError(
                    self.file,
                    "filled",
                    f"the filled rows of an episode must come first (1..1 then 0..0); row "
                    f"{gap} is empty but a later one is filled",
                    (lo + int(broken[0]), gap + int(np.argmax(row[gap:]))),
                )
            term &= fill
            ended = term.any(1)
            first = np.where(ended, np.argmax(term, axis=1), -1)
            early = np.flatnonzero(ended & (first < count - 2))
            if len(early):
                k = int(early[0])
                raise DatasetError(
                    self.file,
                    "terminated",
                    f"terminated before the last filled rows (the episode has {int(count[k])} "
                    "filled rows; pymarl sets it on the last transition, before the final row)",
                    (lo + k, int(first[k])),
                )
            filled[lo:hi], terminal[lo:hi] = count, ended
            # The final row is missing when the filled rows end at the terminated one.
            steps[lo:hi] = np.where(ended & (first == count - 1), count, count - 1)
        self.filled, self.terminal = filled, terminal
        self.steps = np.where(filled == 0, 0, steps)
        self.kept = self.steps >= 1
        if not self.kept.any():
            raise DatasetError(
                self.file, "filled", "no episode holds a transition (every episode has <= 1 row)"
            )
        self.no_final = self.kept & terminal & (self.steps == filled)
        kept_term, kept_trunc = self.terminal & self.kept, ~self.terminal & self.kept
        self.notes.append(
            "episodes: the padding rows (filled == 0) are removed; an episode's F filled rows "
            "hold F - 1 transitions and the final observation, state and legal mask (row F - 1); "
            f"{int(kept_term.sum())} terminal episodes (terminated set) and "
            f"{int(kept_trunc.sum())} truncated ones (time limit: terminated never set)"
        )
        skipped = int((~self.kept).sum())
        if skipped:
            self.notes.append(f"skipped {skipped} episodes with no transition (<= 1 filled row)")
        missing = int(self.no_final.sum())
        if missing:
            self.notes.append(
                f"final observations: {missing} terminal episodes have no row after their last "
                "transition (filled ends at the terminated row); their last observation, state "
                "and legal mask are repeated"
            )
        short = int((kept_trunc & (self.steps < length - 1)).sum())
        if short:
            self.notes.append(
                f"{short} truncated episodes end before L - 1 = {length - 1} steps without "
                "terminated (kept as truncations)"
            )

    def _describe(self, f: h5py.File) -> None:
        opts, n = self.options, self.num_agents
        stop = self._first_block_stop()
        obs = self._gather(np.asarray(f["obs"][:stop], np.float32), 0)[0]
        self.agent_id = AgentId(obs, opts.strip_agent_id, self.notes, self.file, "obs")
        obs_dim = self.agent_id.size(int(f["obs"].shape[3]))
        note = reward_note(opts.team_reward, f["reward"].ndim == 3 and f["reward"].shape[2] > 1)
        if note:
            self.notes.append(note)
        self.squeeze = f["actions"].ndim == 4
        self.notes.append("avail_actions: nonzero entries are the legal actions")
        if "probs" in f:
            self.notes.append("probs: behaviour probabilities not kept")
        unused = sorted(set(f) - {*KEYS, "probs"})
        if unused:
            self.notes.append(f"keys not kept: {unused}")

        scenario, quality = split_name(self.file.stem)
        self.spec = EnvSpec(
            env_id=opts.env_id or f"cfcql:{scenario}",
            num_agents=n,
            obs_dim=obs_dim,
            state_dim=int(f["state"].shape[2]),
            action_dim=int(f["avail_actions"].shape[3]),
            discrete=True,
            episode_limit=opts.episode_limit or max(self.length - 1, int(self.steps.max())),
        )
        self.quality = opts.quality or (quality.lower() if quality else "unknown")
        self.total = int(self.filled.sum())
        self.provenance: dict[str, Any] = {
            "cfcql": {
                "file": self.name,
                "episodes": self.episodes,
                "padded_length": self.length,
                "episodes_kept": int(self.kept.sum()),
                "terminal_episodes": int((self.terminal & self.kept).sum()),
                "truncated_episodes": int((~self.terminal & self.kept).sum()),
                "episodes_without_final_row": int(self.no_final.sum()),
                "transitions": int(self.steps.sum()),
            },
            "transformations": self.notes,
        }
        self.where = source_fields(
            lambda key: Located(self.name, key),
            observations="obs",
            states="state",
            actions="actions",
            rewards="reward",
            terminals="terminated",
            truncations="filled",
            legal="avail_actions",
        )

    def _per_block(self) -> int:
        return max(1, self.options.block_rows // self.length)

    def _first_block_stop(self) -> int:
        """End of the first block of episodes that holds a transition."""
        per = self._per_block()
        first = int(np.argmax(self.kept))
        return min(self.episodes, (first // per + 1) * per)

    def _gather(self, arr: np.ndarray, lo: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Transition rows and final rows of the kept episodes in ``arr`` (episodes lo..)."""
        eps = np.flatnonzero(self.kept[lo : lo + len(arr)])
        steps = self.steps[lo + eps]
        ep = np.repeat(eps, steps)
        t = np.arange(len(ep)) - np.repeat(np.cumsum(steps) - steps, steps)
        last = self.filled[lo + eps] - 1
        return arr[ep, t], arr[eps, last], np.stack([lo + ep, t], axis=1)

    def blocks(self) -> Iterator[Block]:
        opts, per = self.options, self._per_block()
        pending = 0  # rows of blocks without a transition, counted with the next block
        with h5py.File(self.file, "r") as f:
            for lo in range(0, self.episodes, per):
                hi = min(self.episodes, lo + per)
                pending += int(self.filled[lo:hi].sum())
                if not self.kept[lo:hi].any():
                    continue
                obs, final_obs, origin = self._gather(np.asarray(f["obs"][lo:hi], np.float32), lo)
                eps = lo + np.flatnonzero(self.kept[lo:hi])
                final_origin = np.stack([eps, self.filled[eps] - 1], axis=1)
                obs = self.agent_id(obs, self._where(origin))
                final_obs = self.agent_id(final_obs, self._where(final_origin))
                states, final_states, _ = self._gather(np.asarray(f["state"][lo:hi]), lo)
                legal, final_legal, _ = self._gather(np.asarray(f["avail_actions"][lo:hi]) != 0, lo)
                actions = np.asarray(f["actions"][lo:hi])
                if self.squeeze:
                    actions = actions[..., 0]
                actions = self._gather(actions, lo)[0].astype(np.int32)
                rewards = team_reward(
                    self._gather(np.asarray(f["reward"][lo:hi]), lo)[0], opts.team_reward
                )
                yield assemble(
                    observations=obs,
                    states=states,
                    actions=actions,
                    legal=legal,
                    rewards=rewards,
                    ends=np.cumsum(self.steps[eps]) - 1,
                    terminal=self.terminal[eps],
                    origin=origin,
                    final=opts.final,
                    final_observations=final_obs,
                    final_states=final_states,
                    final_legal=final_legal,
                    final_origin=final_origin,  # errors in final arrays point at the row read
                    consumed=pending,
                )
                pending = 0

    def _where(self, origin: np.ndarray):
        """Source index of (row, agent, dim) of a block whose rows came from ``origin``."""
        return lambda t, i, d: (str(self.file), "obs", (*origin[t].tolist(), i, d))
