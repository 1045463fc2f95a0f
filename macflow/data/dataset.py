"""Host-side dataset container: the schema's arrays plus what describes them, and episode stats."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from macflow.data.schema import episode_ends, validate
from macflow.spec import EnvSpec

QUALITY_UNKNOWN = "unknown"


def normalised_score(ret: float, reference: dict[str, float]) -> float:
    """``100 * (R - R_random) / (R_expert - R_random)``: 0 at the random policy, 100 at the
    expert reference (docs/datasets.md)."""
    lo, hi = reference["random"], reference["expert"]
    return float(100.0 * (ret - lo) / (hi - lo))


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Arrays of the schema (numpy, possibly memory-mapped) and their description.

    Build one from arrays and save it with :func:`macflow.data.save`; read one with
    :func:`macflow.data.load`, which validates it first.
    """

    arrays: Mapping[str, np.ndarray]
    spec: EnvSpec
    quality: str = QUALITY_UNKNOWN
    """Free label of the behaviour's level, e.g. ``expert``, ``medium``, ``scripted``."""
    provenance: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"method": "user"})
    """How the data were made: ``method`` (collect, import, user) plus e.g. ``seed``,
    ``behaviour``, ``behaviour_config``, ``command``, ``source``."""
    env_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Arguments of ``make_env(spec.env_id, **env_kwargs)`` that rebuild the environment."""
    reference_returns: Mapping[str, float] | None = None
    """``{"random": R_random, "expert": R_expert}`` for normalised scores, when known."""
    path: Path | None = None
    """Directory it was loaded from or saved to."""
    checksum: str | None = None
    """Content checksum (set when loaded or saved)."""

    def validate(self, where: str | Path = "<in-memory dataset>") -> None:
        """Raise :class:`~macflow.data.schema.DatasetError` if any array breaks the schema."""
        validate(self.arrays, self.spec, where)

    @functools.cached_property
    def ends(self) -> np.ndarray:
        """Index of the last step of each episode, ``[E]``."""
        return episode_ends(self.arrays["terminals"], self.arrays["truncations"])

    @property
    def starts(self) -> np.ndarray:
        """Index of the first step of each episode, ``[E]``."""
        return np.concatenate([[0], self.ends[:-1] + 1]).astype(np.int64)

    @property
    def num_transitions(self) -> int:
        return int(self.arrays["rewards"].shape[0])

    @property
    def num_episodes(self) -> int:
        return len(self.ends)

    @functools.cached_property
    def episode_returns(self) -> np.ndarray:
        """Undiscounted team return of each episode, ``[E]`` float64."""
        rewards = np.asarray(self.arrays["rewards"], np.float64)
        return np.add.reduceat(rewards, self.starts)

    @property
    def episode_lengths(self) -> np.ndarray:
        return self.ends - self.starts + 1

    def stats(self) -> dict[str, float | int]:
        """Episode statistics, as recorded in the metadata."""
        ret, length = self.episode_returns, self.episode_lengths
        term = np.asarray(self.arrays["terminals"])[self.ends]
        return {
            "transitions": self.num_transitions,
            "episodes": self.num_episodes,
            "terminated_episodes": int(term.sum()),
            "truncated_episodes": int((~term).sum()),
            "return_min": float(ret.min()),
            "return_mean": float(ret.mean()),
            "return_max": float(ret.max()),
            "return_std": float(ret.std()),
            "length_min": int(length.min()),
            "length_mean": float(length.mean()),
            "length_max": int(length.max()),
        }

    def normalised_score(self, ret: float) -> float | None:
        """:func:`normalised_score` of ``ret``, if reference returns are known."""
        if not self.reference_returns:
            return None
        return normalised_score(ret, self.reference_returns)

    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))
