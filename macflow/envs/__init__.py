"""Environment registry: ``make_env("toy/coordination", **kwargs)`` and the list of tasks.

Entries name their classes as ``"module:Class"`` strings so that a suite's heavy dependencies
(JaxMARL, MuJoCo) are imported only when one of its tasks is made.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from typing import Any

from macflow.envs.base import Behaviour, Env, concat_state
from macflow.envs.smax_maps import MAPS
from macflow.spec import EnvSpec, TimeStep


@dataclasses.dataclass(frozen=True)
class EnvEntry:
    """One registered task."""

    env_id: str
    env: str
    """``"module:Class"`` of the environment, a frozen dataclass whose fields are its kwargs."""
    behaviour: str | None
    """``"module:Class"`` of the scripted data generator, if the task has one."""
    summary: str
    extra: str | None = None
    """The pip extra that provides the suite's dependencies, if any."""
    trainer: str | None = None
    """``"module:Class"`` of the frozen config of the online trainer whose policies generate the
    task's datasets at the field's quality levels (see :mod:`macflow.trainers`)."""
    host: bool = False
    """The environment steps on the host with numpy (MuJoCo), not under ``jit``."""

    def _load(self, target: str) -> type:
        module, name = target.split(":")
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError as err:
            if self.extra is None:
                raise
            raise ImportError(
                f"{self.env_id} needs the '{self.extra}' extra: pip install -e '.[{self.extra}]' "
                f"({err})"
            ) from err

    def env_cls(self) -> type:
        return self._load(self.env)

    def behaviour_cls(self) -> type | None:
        return None if self.behaviour is None else self._load(self.behaviour)

    def trainer_cls(self) -> type | None:
        return None if self.trainer is None else self._load(self.trainer)


_REGISTRY: dict[str, EnvEntry] = {}


def register(entry: EnvEntry) -> None:
    """Add a task; ids are unique."""
    if entry.env_id in _REGISTRY:
        raise ValueError(f"environment {entry.env_id!r} is already registered")
    _REGISTRY[entry.env_id] = entry


def registered() -> list[EnvEntry]:
    """Every registered task, sorted by id."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


class UnknownTask(KeyError, ValueError):
    """A task id that is not registered (a ``KeyError`` for lookups, a ``ValueError`` for the CLI's
    one-line errors)."""

    def __str__(self) -> str:
        return str(self.args[0])


def entry(env_id: str) -> EnvEntry:
    """The registry entry of ``env_id``; an unknown id names the closest registered ones."""
    if env_id not in _REGISTRY:
        close = difflib.get_close_matches(env_id, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownTask(
            f"unknown environment {env_id!r}.{hint} Registered: {', '.join(sorted(_REGISTRY))} "
            "(`macflow envs` lists them)."
        )
    return _REGISTRY[env_id]


def make_env(env_id: str, **kwargs: Any) -> Env:
    """Build a registered environment; ``kwargs`` are the fields of its class."""
    cls = entry(env_id).env_cls()
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(kwargs) - set(names))
    if unknown:
        raise TypeError(
            f"{env_id} has no parameter(s) {unknown}; its parameters are {names or 'none'}"
        )
    return cls(**kwargs)


def env_kwargs(env: Env) -> dict[str, Any]:
    """The kwargs that rebuild ``env`` with :func:`make_env` (recorded in dataset metadata)."""
    return dataclasses.asdict(env)


_TOYS = "macflow.envs.toys"
for _entry in (
    EnvEntry(
        "toy/coordination",
        f"{_TOYS}:Coordination",
        f"{_TOYS}:CoordinationData",
        "2 agents, actions {0,1}; (0,1),(1,0) pay 1, (1,1) pays 2 but is rare in the data",
    ),
    EnvEntry(
        "toy/xor",
        f"{_TOYS}:Xor",
        f"{_TOYS}:XorData",
        "2 agents, 1-D actions; reward when signs differ; data at (+1,-1) and (-1,+1)",
    ),
    EnvEntry(
        "toy/intensity",
        f"{_TOYS}:Intensity",
        f"{_TOYS}:IntensityData",
        "2 agents, 1-D actions; zeta moves the reward from decomposable (0) to interaction (1)",
    ),
    EnvEntry(
        "toy/landmarks",
        "macflow.envs.landmarks:Landmarks",
        "macflow.envs.landmarks:LandmarksData",
        "N agents cover N landmarks in 2-D; scripted data head for the optimal assignment",
    ),
):
    register(_entry)

_MAMUJOCO = "macflow.envs.mamujoco"
for _id, _cls, _summary in (
    ("2halfcheetah", "HalfCheetah2x3", "HalfCheetah, 2 agents x 3 joints; run forward"),
    ("6halfcheetah", "HalfCheetah6x1", "HalfCheetah, 6 agents x 1 joint; run forward"),
    ("2ant", "Ant2x4", "Ant, 2 agents x 4 joints; walk forward, episodes end if it falls"),
    ("3hopper", "Hopper3x1", "Hopper, 3 agents x 1 joint; hop forward, episodes end if it falls"),
):
    register(
        EnvEntry(
            f"mamujoco/{_id}",
            f"{_MAMUJOCO}:{_cls}",
            None,
            f"MaMuJoCo: {_summary} (gymnasium-robotics, host-side)",
            extra="mamujoco",
            trainer="macflow.trainers.td3:TD3",
            host=True,
        )
    )

_SMAX = "macflow.envs.smax"
for _id, _map in MAPS.items():
    register(
        EnvEntry(
            f"smax/{_id}",
            f"{_SMAX}:{_map.cls}",
            None,
            f"SMAX: {_map.summary} (JaxMARL, heuristic enemies)",
            extra="jaxmarl",
            trainer="macflow.trainers.ppo:PPO",
        )
    )

_MPE = "macflow.envs.mpe"
_PPO = "macflow.trainers.ppo:PPO"
for _entry in (
    EnvEntry(
        "mpe/spread",
        f"{_MPE}:Spread",
        None,
        "MPE: 3 agents cover 3 landmarks without colliding (JaxMARL, 2-D forces)",
        extra="jaxmarl",
        trainer=_PPO,
    ),
    EnvEntry(
        "mpe/tag",
        f"{_MPE}:Tag",
        None,
        "MPE: 3 predators chase a fast scripted prey around 2 obstacles",
        extra="jaxmarl",
        trainer=_PPO,
    ),
    EnvEntry(
        "mpe/world",
        f"{_MPE}:World",
        None,
        "MPE: 4 predators (1 leader) chase 2 scripted foragers among forests and food",
        extra="jaxmarl",
        trainer=_PPO,
    ),
):
    register(_entry)

__all__ = [
    "Behaviour",
    "Env",
    "EnvEntry",
    "EnvSpec",
    "TimeStep",
    "concat_state",
    "entry",
    "env_kwargs",
    "make_env",
    "register",
    "registered",
]
