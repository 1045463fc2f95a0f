"""Multi-agent particle environments (JaxMARL's MPE) with continuous actions, as OMAR uses them.

- ``mpe/spread``: 3 agents cover 3 landmarks without colliding (JaxMARL ``simple_spread``).
- ``mpe/tag``: 3 slow predators (MPE's "adversaries", the learning team) chase 1 fast prey
  among 2 obstacles (``simple_tag``). The prey is the opponent and follows a scripted escape
  policy shipped here, in place of OMAR's pre-trained prey.
- ``mpe/world``: 4 predators (one of them the leader) chase 2 fast agents that forage for food
  and hide in forests (``simple_world_comm``). The 2 foragers are scripted.

Every learning agent's action is OMAR's 2-D force in [-1, 1]^2; it is mapped to JaxMARL's 5-D
``[no-op, -x, +x, -y, +y]`` in [0, 1]. In ``mpe/world`` the leader's 4-D communication output is
not part of the action (it stays 0, so the other predators' view of it is constant).
The team reward is the mean over the team of JaxMARL's per-agent rewards (the OG-MARL
convention). Episodes are 25 steps and always end by truncation. MPE has no global state:
``state`` is the concatenation of the team's observations.

JaxMARL's ``step`` resets automatically; we call ``step_env`` so the final observation is kept.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp

from macflow.envs._jaxmarl import jaxmarl
from macflow.envs.base import concat_state, require
from macflow.spec import EnvSpec, TimeStep

require("jaxmarl")  # cheap; JaxMARL itself is imported on first use

LIMIT = 25


def _jaxmarl_make(name: str, **kwargs):
    return jaxmarl().make(name, action_type="Continuous", max_steps=LIMIT + 1, **kwargs)


def to_jaxmarl(force: jax.Array) -> jax.Array:
    """``[..., 2]`` forces in [-1, 1] -> JaxMARL's ``[..., 5]`` continuous action in [0, 1]."""
    force = jnp.clip(force, -1.0, 1.0)
    zero = jnp.zeros_like(force[..., :1])
    neg, pos = jnp.maximum(-force, 0.0), jnp.maximum(force, 0.0)
    return jnp.concatenate([zero, neg[..., :1], pos[..., :1], neg[..., 1:], pos[..., 1:]], -1)


def flee(pos: jax.Array, chasers: jax.Array, targets: jax.Array | None = None) -> jax.Array:
    """Scripted opponent: run from the chasers (inverse-square repulsion), keep inside the arena,
    and, given ``targets``, drift toward the nearest one. Returns a 2-D force in [-1, 1]."""
    away = pos - chasers
    dist2 = jnp.sum(away**2, -1, keepdims=True) + 1e-2
    force = jnp.sum(away / dist2, 0)
    force = force - 4.0 * jnp.sign(pos) * jnp.maximum(jnp.abs(pos) - 0.7, 0.0) / 0.3
    if targets is not None:
        to = targets - pos
        nearest = to[jnp.argmin(jnp.sum(to**2, -1))]
        force = force + 0.5 * nearest / (jnp.linalg.norm(nearest) + 1e-3)
    return force / (jnp.linalg.norm(force) + 1e-6)


class _MPE:
    """Shared reset/step; subclasses set ``name``, ``env_id`` and the opponents' policy."""

    host: ClassVar[bool] = False
    env_id: ClassVar[str]
    name: ClassVar[str]

    @functools.cached_property
    def _env(self):
        # Built on first use (JaxMARL imports slowly), outside any trace even inside jit.
        with jax.ensure_compile_time_eval():
            return _jaxmarl_make(self.name)

    @property
    def team(self) -> list[str]:
        return self._env.agents

    def _opponents(self, state) -> dict[str, jax.Array]:
        return {}

    @property
    def spec(self) -> EnvSpec:
        env = self._env
        obs = env.observation_space(self.team[0]).shape[0]
        n = len(self.team)
        return EnvSpec(
            self.env_id,
            n,
            obs,
            n * obs,
            2,
            discrete=False,
            episode_limit=LIMIT,
            action_low=(-1.0, -1.0),
            action_high=(1.0, 1.0),
            state_is_obs_concat=True,
        )

    def _timestep(self, state, obs, reward, truncation) -> TimeStep:
        team = jnp.stack([obs[a] for a in self.team]).astype(jnp.float32)
        return TimeStep(
            observations=team,
            state=concat_state(team),
            legal_actions=None,
            reward=jnp.asarray(reward, jnp.float32),
            terminal=jnp.asarray(False),
            truncation=jnp.asarray(truncation),
        )

    def reset(self, key: jax.Array):
        obs, state = self._env.reset(key)
        return state, self._timestep(state, obs, 0.0, False)

    def step(self, key: jax.Array, state, actions: jax.Array):
        moves = to_jaxmarl(actions)
        acts = {a: moves[i] for i, a in enumerate(self.team)}
        acts.update({a: to_jaxmarl(f) for a, f in self._opponents(state).items()})
        obs, state, rewards, _, _ = self._env.step_env(key, state, acts)
        reward = jnp.mean(jnp.stack([rewards[a] for a in self.team]))
        return state, self._timestep(state, obs, reward, state.step >= LIMIT)


@dataclasses.dataclass(frozen=True)
class Spread(_MPE):
    """3 agents, 3 landmarks: cover every landmark, avoid collisions."""

    env_id: ClassVar[str] = "mpe/spread"
    name: ClassVar[str] = "MPE_simple_spread_v3"


@dataclasses.dataclass(frozen=True)
class Tag(_MPE):
    """3 predators chase 1 scripted prey around 2 obstacles."""

    env_id: ClassVar[str] = "mpe/tag"
    name: ClassVar[str] = "MPE_simple_tag_v3"

    @property
    def team(self) -> list[str]:
        return self._env.adversaries

    def _opponents(self, state):
        env = self._env
        chasers = state.p_pos[: env.num_adversaries]
        return {
            a: flee(state.p_pos[env.num_adversaries + i], chasers)
            for i, a in enumerate(env.good_agents)
        }


@dataclasses.dataclass(frozen=True)
class World(_MPE):
    """4 predators (one leader) chase 2 scripted foragers among forests and food."""

    env_id: ClassVar[str] = "mpe/world"
    name: ClassVar[str] = "MPE_simple_world_comm_v3"

    @property
    def team(self) -> list[str]:
        return [self._env.leader, *self._env.adversaries]

    def step(self, key: jax.Array, state, actions: jax.Array):
        # The leader's action has 4 extra communication entries, kept at 0.
        env = self._env
        moves = to_jaxmarl(actions)
        acts = {a: moves[i] for i, a in enumerate(self.team)}
        leader = self.team[0]
        acts[leader] = jnp.concatenate([moves[0], jnp.zeros(env.dim_c)])
        n = env.num_adversaries
        chasers = state.p_pos[:n]
        food = state.p_pos[env.num_agents + env.num_obs : env.num_agents + env.num_obs + 2]
        for i, a in enumerate(env.good_agents):
            acts[a] = to_jaxmarl(flee(state.p_pos[n + i], chasers, food))
        obs, state, rewards, _, _ = env.step_env(key, state, acts)
        reward = jnp.mean(jnp.stack([rewards[a] for a in self.team]))
        return state, self._timestep(state, obs, reward, state.step >= LIMIT)
