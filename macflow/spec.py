"""The shared vocabulary every layer may import: what a task's arrays look like.

:class:`EnvSpec` describes a task statically (agents, observation, state and action sizes, action
bounds, episode limit); datasets record it, agents are built for it and environments expose it.
:class:`TimeStep` is what a team sees after a reset or a step. Nothing here imports the rest of
macflow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """Static description of a task: what every array in its datasets and rollouts looks like."""

    env_id: str
    """Registry id, e.g. ``toy/coordination``."""
    num_agents: int
    """N, the number of agents."""
    obs_dim: int
    """O, the size of each agent's observation vector."""
    state_dim: int
    """S, the size of the global state vector."""
    action_dim: int
    """Continuous: size A of each agent's action vector. Discrete: the number of actions A."""
    discrete: bool
    """True when each agent picks one of ``action_dim`` actions (with legal-action masks)."""
    episode_limit: int
    """Maximum number of steps in an episode; reaching it without a terminal is a truncation."""
    action_low: tuple[float, ...] | None = None
    """Continuous only: per-dimension lower bound of an action (inclusive)."""
    action_high: tuple[float, ...] | None = None
    """Continuous only: per-dimension upper bound of an action (inclusive)."""
    state_is_obs_concat: bool = False
    """True when the task has no global state and ``state`` is the concatenation of all
    observations, ``observations.reshape(N * O)`` (the documented fallback)."""

    def __post_init__(self):
        for name in ("num_agents", "obs_dim", "state_dim", "action_dim", "episode_limit"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"EnvSpec({self.env_id!r}).{name} must be an int >= 1, got {value!r}"
                )
        if self.discrete:
            if self.action_low is not None or self.action_high is not None:
                raise ValueError(f"EnvSpec({self.env_id!r}): discrete tasks have no action bounds")
        else:
            for name in ("action_low", "action_high"):
                bound = getattr(self, name)
                if bound is None or len(bound) != self.action_dim:
                    raise ValueError(
                        f"EnvSpec({self.env_id!r}).{name} must hold {self.action_dim} floats "
                        f"(one per action dimension), got {bound!r}"
                    )
            if any(lo > hi for lo, hi in zip(self.action_low, self.action_high, strict=True)):
                raise ValueError(f"EnvSpec({self.env_id!r}): action_low exceeds action_high")
        if self.state_is_obs_concat and self.state_dim != self.num_agents * self.obs_dim:
            raise ValueError(
                f"EnvSpec({self.env_id!r}): state_is_obs_concat needs state_dim == N * O "
                f"= {self.num_agents * self.obs_dim}, got {self.state_dim}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (tuples become lists)."""
        out = dataclasses.asdict(self)
        for name in ("action_low", "action_high"):
            if out[name] is not None:
                out[name] = [float(x) for x in out[name]]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnvSpec:
        """Inverse of :meth:`to_dict`; unknown or missing keys raise ``KeyError`` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        extra = sorted(set(data) - names)
        missing = sorted(required - set(data))
        if extra:
            raise KeyError(f"unknown key(s) {extra}")
        if missing:
            raise KeyError(f"missing key(s) {missing}")
        kwargs = dict(data)
        for name in ("action_low", "action_high"):
            if kwargs.get(name) is not None:
                kwargs[name] = tuple(float(x) for x in kwargs[name])
        return cls(**kwargs)

    @property
    def action_shape(self) -> tuple[int, ...]:
        """Shape of one joint action: ``(N,)`` discrete, ``(N, A)`` continuous."""
        return (self.num_agents,) if self.discrete else (self.num_agents, self.action_dim)


@struct.dataclass
class TimeStep:
    """What an agent team sees after ``reset`` or ``step``."""

    observations: Array
    """``[N, O]`` float32, each agent's own observation."""
    state: Array
    """``[S]`` float32, the global state (or the concatenated observations, see EnvSpec)."""
    legal_actions: Array | None
    """``[N, A]`` bool for discrete tasks (at least one True per agent), ``None`` otherwise."""
    reward: Array
    """``[]`` float32 team reward of the step that led here (0 after reset)."""
    terminal: Array
    """``[]`` bool: the episode ended in a terminal state (no bootstrapping past it)."""
    truncation: Array
    """``[]`` bool: the episode was cut by the time limit (the next state still has value)."""
    info: dict[str, Array] = struct.field(default_factory=dict)
    """Extra per-step scalars with a fixed structure per task, e.g. ``{"won": bool}``."""

    @property
    def done(self) -> Array:
        """The episode is over (terminal or truncation)."""
        return jnp.logical_or(self.terminal, self.truncation)
