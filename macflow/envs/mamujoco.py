"""Multi-agent MuJoCo (MaMuJoCo, gymnasium-robotics) as host environments.

Four tasks of the offline MARL literature, each a Gymnasium MuJoCo robot (``*-v5``) whose joints
are split between agents, built with ``mamujoco_v1.parallel_env(scenario, agent_conf,
agent_obsk=1)`` (every agent sees its own joints and their neighbours one hop away):

- ``mamujoco/2halfcheetah``: HalfCheetah, 2 agents x 3 joints.
- ``mamujoco/6halfcheetah``: HalfCheetah, 6 agents x 1 joint.
- ``mamujoco/2ant``: Ant, 2 agents x 4 joints (it can fall: terminal).
- ``mamujoco/3hopper``: Hopper, 3 agents x 1 joint (it can fall: terminal).

Observations are ``[N, O]`` float32 where O is the largest per-agent observation; agents whose
observation is shorter (the end joints of 6halfcheetah and 3hopper see fewer neighbours) get it
zero-padded at the end. The state is the robot's single-agent observation (``env.state()``), the
reward the team reward, ``terminal`` Gymnasium's ``terminated`` (the robot fell) and
``truncation`` the 1000-step limit. Actions ``[N, A]`` lie within the robot's actuator bounds
([-1, 1] for all four).

The environments are stateful: each instance lazily owns one Gymnasium environment (not a
dataclass field, so equality, hashing and pickling ignore it). ``reset(key)`` seeds MuJoCo's
initial-state noise from the key; ``step`` ignores its key (the physics is deterministic). Both
return ``(None, TimeStep)`` of numpy arrays. Run many at once with :mod:`macflow.envs.host`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import warnings
from typing import Any, ClassVar

import numpy as np

from macflow.envs.base import require
from macflow.spec import EnvSpec, TimeStep

require("mujoco", "gymnasium_robotics")  # cheap; the imports themselves wait for first use

LIMIT = 1000
"""Episode limit of every task (the MuJoCo robots' standard time limit)."""


def seed_of(key: Any) -> int:
    """A non-negative int seed from a JAX key (raw ``uint32[2]`` or typed) or an int."""
    if isinstance(key, int | np.integer):
        return int(key)
    if not isinstance(key, np.ndarray) and "key<" in str(getattr(key, "dtype", "")):
        import jax  # typed keys only exist when JAX is in use anyway

        key = jax.random.key_data(key)
    words = np.asarray(key, np.uint32).reshape(-1)
    return int.from_bytes(words.tobytes(), "little")


def _mamujoco():
    """gymnasium-robotics' MaMuJoCo module, imported on first use: the import takes seconds and
    prints a notice about unrelated (Adroit) environments to stderr."""

    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stderr(quiet):
        warnings.simplefilter("ignore")
        from gymnasium_robotics import mamujoco_v1
    return mamujoco_v1


@contextlib.contextmanager
def _mujoco_warnings():
    """MuJoCo's default warning handler prints and appends to ``MUJOCO_LOG.TXT`` in the working
    directory; Gymnasium's HalfCheetah model warns on every build (a deprecated attribute under
    MuJoCo 4). While models are built, that one is dropped and others become Python warnings."""

    import mujoco

    def handle(message: str) -> None:
        if "settotalmass" not in message:
            warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)

    old = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(handle)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(old)


@dataclasses.dataclass(frozen=True)
class MaMuJoCo:
    """A MaMuJoCo task; subclasses fix the robot and how its joints are split."""

    host: ClassVar[bool] = True
    env_id: ClassVar[str]
    scenario: ClassVar[str]
    """Gymnasium robot, e.g. ``HalfCheetah``."""
    agent_conf: ClassVar[str]
    """``{agents}x{joints per agent}``."""

    def __getstate__(self) -> dict[str, Any]:
        # The Gymnasium env stays with its process; a copy makes its own on first use.
        return {k: v for k, v in self.__dict__.items() if k == "spec"}

    def _gym(self):
        gym = self.__dict__.get("_env")
        if gym is None:
            with _mujoco_warnings():
                gym = _mamujoco().parallel_env(
                    self.scenario, self.agent_conf, agent_obsk=1, disable_env_checker=True
                )
            # Frozen dataclass: runtime state goes straight into __dict__ (not a field).
            self.__dict__.update(_env=gym, _t=0, _over=True)
        return gym

    @functools.cached_property
    def spec(self) -> EnvSpec:
        gym = self._gym()
        agents = gym.possible_agents
        spaces = [gym.action_space(a) for a in agents]
        if len({s.shape for s in spaces}) != 1:
            raise ValueError(f"{self.env_id}: agents have different action sizes")
        return EnvSpec(
            env_id=self.env_id,
            num_agents=len(agents),
            obs_dim=max(gym.observation_space(a).shape[0] for a in agents),
            state_dim=int(gym.state().shape[0]),
            action_dim=int(spaces[0].shape[0]),
            discrete=False,
            episode_limit=LIMIT,
            action_low=tuple(float(x) for x in spaces[0].low),
            action_high=tuple(float(x) for x in spaces[0].high),
        )

    def _timestep(self, obs: dict, reward: float, terminal: bool, truncation: bool) -> TimeStep:
        gym, spec = self._gym(), self.spec
        out = np.zeros((spec.num_agents, spec.obs_dim), np.float32)
        for i, agent in enumerate(gym.possible_agents):
            o = obs[agent]
            out[i, : o.shape[0]] = o  # zero padding for agents that see fewer joints
        return TimeStep(
            observations=out,
            state=np.asarray(gym.state(), np.float32),
            legal_actions=None,
            reward=np.asarray(reward, np.float32),
            terminal=np.asarray(terminal),
            truncation=np.asarray(truncation),
        )

    def reset(self, key: Any) -> tuple[None, TimeStep]:
        """Start an episode; ``key`` (a JAX key or an int) seeds the initial-state noise."""
        gym = self._gym()
        obs, _ = gym.reset(seed=seed_of(key))
        self.__dict__.update(_t=0, _over=False)
        return None, self._timestep(obs, 0.0, False, False)

    def step(self, key: Any, state: None, actions: Any) -> tuple[None, TimeStep]:
        """One step of the joint action ``[N, A]`` (clipped to the actuator bounds)."""
        del key, state
        gym, spec = self._gym(), self.spec
        if self.__dict__["_over"]:
            raise RuntimeError(f"{self.env_id}: step after the episode ended; call reset first")
        acts = np.clip(
            np.asarray(actions, np.float32).reshape(spec.action_shape),
            np.asarray(spec.action_low, np.float32),
            np.asarray(spec.action_high, np.float32),
        )
        obs, rewards, terminated, _, _ = gym.step(
            {a: acts[i] for i, a in enumerate(gym.possible_agents)}
        )
        agent = gym.possible_agents[0]
        t = self.__dict__["_t"] + 1
        # Gymnasium's own 1000-step TimeLimit coincides with ours; the counter decides.
        terminal = bool(terminated[agent])
        truncation = t >= spec.episode_limit and not terminal
        self.__dict__.update(_t=t, _over=terminal or truncation)
        return None, self._timestep(obs, float(rewards[agent]), terminal, truncation)

    def close(self) -> None:
        """Release the MuJoCo environment (a later reset makes a new one)."""
        gym = self.__dict__.pop("_env", None)
        if gym is not None:
            gym.close()


@dataclasses.dataclass(frozen=True)
class HalfCheetah2x3(MaMuJoCo):
    """HalfCheetah split into 2 agents of 3 joints (back and front leg)."""

    env_id: ClassVar[str] = "mamujoco/2halfcheetah"
    scenario: ClassVar[str] = "HalfCheetah"
    agent_conf: ClassVar[str] = "2x3"


@dataclasses.dataclass(frozen=True)
class HalfCheetah6x1(MaMuJoCo):
    """HalfCheetah with one agent per joint (6 agents)."""

    env_id: ClassVar[str] = "mamujoco/6halfcheetah"
    scenario: ClassVar[str] = "HalfCheetah"
    agent_conf: ClassVar[str] = "6x1"


@dataclasses.dataclass(frozen=True)
class Ant2x4(MaMuJoCo):
    """Ant split into 2 agents of 4 joints (two legs each)."""

    env_id: ClassVar[str] = "mamujoco/2ant"
    scenario: ClassVar[str] = "Ant"
    agent_conf: ClassVar[str] = "2x4"


@dataclasses.dataclass(frozen=True)
class Hopper3x1(MaMuJoCo):
    """Hopper with one agent per joint (thigh, leg, foot)."""

    env_id: ClassVar[str] = "mamujoco/3hopper"
    scenario: ClassVar[str] = "Hopper"
    agent_conf: ClassVar[str] = "3x1"
