"""The act-step-store-update loop of offline-to-online fine-tuning, for JAX environments.

One jitted call runs ``T`` vector steps of every seed (``vmap`` over seeds, ``lax.scan`` over
steps). A vector step: the decentralised policies act in ``E`` environments (sampled noise, legal
masks), the environments step, the ``E`` transitions go into the seed's
:class:`~macflow.online.OnlineBuffer`, finished environments are reset, and then ``U`` updates
run on batches of which a share ``R`` comes from the buffer and the rest from the offline
dataset (the symmetric sampling of RLPD, arXiv 2302.02948, at ``R = 0.5``). Every key is
derived from (seed, vector step), and the whole carry (agents, buffer, environments, episode
returns) is the checkpoint, so a resumed fine-tuning repeats exactly what an uninterrupted one
computes.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from macflow.online import OnlineBuffer, concat

Array = jax.Array


class Carry(NamedTuple):
    """What one seed carries from one vector step to the next (and what a checkpoint holds)."""

    agent: Any
    buffer: OnlineBuffer
    env_state: Any  # [E, ...]
    ts: Any  # [E, ...] the time steps the agents see next
    returns: Array  # [E] return of each environment's episode so far


def _where(cond, new, old):
    return jax.tree.map(
        lambda a, b: jnp.where(cond.reshape(cond.shape + (1,) * (a.ndim - cond.ndim)), a, b),
        new,
        old,
    )


def start(env: Any, agent: Any, buffer: OnlineBuffer, key: Array, envs: int) -> Carry:
    """One seed's carry before its first step: ``envs`` environments freshly reset."""
    env_state, ts = jax.vmap(env.reset)(jax.random.split(key, envs))
    return Carry(agent, buffer, env_state, ts, jnp.zeros((envs,), jnp.float32))


class Plan(NamedTuple):
    """The static shape of the loop (one compiled program per plan)."""

    stage: str
    """The agent's stage that keeps training (its last offline stage)."""
    batch_size: int
    online: int
    """Rows of each batch drawn from the online buffer (``round(R * batch_size)``)."""
    updates: int
    """U: updates per vector step."""


def mixed_batch(sampler: Any, buffer: OnlineBuffer, key: Array, plan: Plan):
    """One update's batch: ``plan.online`` rows from the buffer after ``batch_size - online``
    from the dataset (online rows have ``index`` -1)."""
    k_off, k_on = jax.random.split(key)
    offline = plan.batch_size - plan.online
    parts = [buffer.sample(k_on, plan.online)] if plan.online else []
    if offline:
        parts.insert(0, sampler.sample(k_off, offline))
    return parts[0] if len(parts) == 1 else concat(*parts)


def make_chunk(env: Any, plan: Plan):
    """The jitted ``(carries, sampler, keys, start, t) -> (carries, metrics, finite, episodes)``
    of ``t`` vector steps of every seed. ``keys`` are the seeds' base keys; ``metrics`` are
    the updates' means, ``episodes`` the sum and count of the returns of episodes that ended."""

    def one_step(carry: Carry, sampler, key):
        k_act, k_env, k_reset, k_upd = jax.random.split(key, 4)
        ts = carry.ts
        actions = carry.agent.act(k_act, ts.observations, ts.legal_actions, "sample", ts.state)
        envs = actions.shape[0]
        env_state, after = jax.vmap(env.step)(
            jax.random.split(k_env, envs), carry.env_state, actions
        )
        buffer = carry.buffer.add(ts, actions, after)
        returns = carry.returns + after.reward
        done = after.done
        ended = (jnp.sum(jnp.where(done, returns, 0.0)), jnp.sum(done))
        fresh_state, fresh_ts = jax.vmap(env.reset)(jax.random.split(k_reset, envs))

        def update(agent, k):
            return agent.update(mixed_batch(sampler, buffer, k, plan), plan.stage, None)

        agent, infos = jax.lax.scan(update, carry.agent, jax.random.split(k_upd, plan.updates))
        carry = Carry(
            agent,
            buffer,
            _where(done, fresh_state, env_state),
            _where(done, fresh_ts, after),
            jnp.where(done, 0.0, returns),
        )
        return carry, (infos, ended)

    def chunk(carries, sampler, keys, first, t):
        def seed(carry, key):
            def body(carry, i):
                return one_step(carry, sampler, jax.random.fold_in(key, first + i))

            carry, (infos, (total, count)) = jax.lax.scan(body, carry, jnp.arange(t))
            means = jax.tree.map(lambda x: x.mean(), infos)
            finite = jax.tree.map(lambda x: jnp.isfinite(x).all(), infos)
            return carry, means, finite, (total.sum(), count.sum())

        return jax.vmap(seed)(carries, keys)

    return jax.jit(chunk, static_argnames=("t",))


@functools.partial(jax.jit, static_argnames=("env", "envs", "capacity"))
def start_all(env, agents, keys, envs: int, capacity: int):
    """Every seed's starting carry (stacked), with an empty buffer of ``capacity`` rows."""
    spec = env.spec

    def one(agent, key):
        return start(env, agent, OnlineBuffer.empty(spec, capacity), key, envs)

    return jax.vmap(one)(agents, keys)
