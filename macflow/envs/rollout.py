"""Batched episodes of a JAX environment under a policy: one ``vmap`` over episodes, one
``lax.scan`` over the time limit, all in one jitted program.

Episodes end at different steps; every episode runs ``episode_limit`` steps and the steps after
its end are marked invalid (the environment state is frozen there), so shapes stay static.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from macflow.envs.base import Env
from macflow.spec import TimeStep

# init(params, key, env_state, ts) -> pstate
# act(params, key, pstate, env_state, ts) -> (actions, pstate)
InitFn = Callable[[Any, jax.Array, Any, TimeStep], Any]
ActFn = Callable[[Any, jax.Array, Any, Any, TimeStep], tuple[jax.Array, Any]]


def _where(cond, old, new):
    return jax.tree.map(lambda a, b: jnp.where(cond, a, b), old, new)


def make_rollout(env: Env, init: InitFn, act: ActFn, num_episodes: int, record: bool = True):
    """A jitted ``(key, params) -> out`` running ``num_episodes`` episodes in parallel.

    ``params`` (any pytree, e.g. a policy's weights) is passed to ``init`` and ``act`` as an
    argument, so new weights reuse the compiled program.

    ``out["returns"]`` is ``[E]``; with ``record`` it also holds every step, ``[E, L, ...]``:
    ``observations, state, legal_actions, actions, rewards, terminals, truncations``, the next
    step's ``next_observations, next_state, next_legal_actions``, ``info`` and ``valid`` (False
    after the episode's end).
    """
    limit = env.spec.episode_limit

    def episode(key, params):
        k_reset, k_init, k_run = jax.random.split(key, 3)
        env_state, ts = env.reset(k_reset)
        pstate = init(params, k_init, env_state, ts)

        def body(carry, key):
            env_state, ts, pstate, done, ret = carry
            k_act, k_step = jax.random.split(key)
            actions, new_pstate = act(params, k_act, pstate, env_state, ts)
            new_state, new_ts = env.step(k_step, env_state, actions)
            out = None
            if record:
                out = {
                    "observations": ts.observations,
                    "state": ts.state,
                    "legal_actions": ts.legal_actions,
                    "actions": actions,
                    "rewards": new_ts.reward,
                    "terminals": new_ts.terminal,
                    "truncations": new_ts.truncation,
                    "next_observations": new_ts.observations,
                    "next_state": new_ts.state,
                    "next_legal_actions": new_ts.legal_actions,
                    "info": new_ts.info,
                    "valid": ~done,
                }
            ret = ret + jnp.where(done, 0.0, new_ts.reward)
            carry = (
                _where(done, env_state, new_state),
                _where(done, ts, new_ts),
                _where(done, pstate, new_pstate),
                done | new_ts.done,
                ret,
            )
            return carry, out

        carry0 = (env_state, ts, pstate, jnp.asarray(False), jnp.float32(0.0))
        (_, last_ts, _, done, ret), steps = jax.lax.scan(
            body, carry0, jax.random.split(k_run, limit)
        )
        out = {"returns": ret, "ended": done, "final_info": last_ts.info}
        if record:
            out["steps"] = steps
        return out

    def run(key, params=()):
        keys = jax.random.split(key, num_episodes)
        return jax.vmap(episode, in_axes=(0, None))(keys, params)

    return jax.jit(run)
