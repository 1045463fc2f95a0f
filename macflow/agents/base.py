"""What every agent provides, and small helpers agents share.

An agent is an immutable ``flax.struct.PyTreeNode`` (fql's shape) with

    Agent.create(key, spec, config)           -> agent
    Agent.stages(config, steps)               -> [Stage, ...]   the training schedule
    agent.prepare(sampler, stage)             -> aux            per-stage precomputation
    agent.update(batch, stage, aux)           -> (agent, info)  jittable, ``stage`` static
    agent.act(key, observations, legal, mode, states) -> env actions    jittable

and the class attributes ``Config`` (a frozen dataclass), ``presets`` (name -> function of the
EnvSpec returning a Config) and ``centralised``. A decentralised agent (``centralised = False``)
ignores ``states``: each agent acts on its own observation. A centralised one (the diffusion
baseline, which denoises the joint action at test time as diffusion MARL does) also reads the
global state ``[..., S]``; evaluation always passes it. The training loop and the CLI use nothing
else, so no code outside an agent's own file needs to know which algorithm it runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax

from macflow.envs.base import EnvSpec

Array = jax.Array
ACT_MODES = ("sample", "zero")
"""``sample``: each agent draws fresh noise every step (discrete students then sample their
softmax); ``zero``: noise fixed at 0 and discrete students act greedily (deterministic)."""


class Stage(NamedTuple):
    name: str
    """Passed to ``update`` as its static ``stage`` argument."""
    steps: int
    """Number of updates in this stage."""
    evaluate: bool
    """Whether the policy is worth evaluating during this stage."""
    prepare: bool = False
    """Call ``agent.prepare(sampler, name)`` when the stage starts (or resumes) and pass its
    result to every ``update`` of the stage as ``aux`` (e.g. cached teacher targets). ``aux`` is
    recomputed, never checkpointed."""


class Agent(Protocol):
    Config: type
    presets: dict[str, Any]
    centralised: bool

    @classmethod
    def create(cls, key: Array, spec: EnvSpec, config: Any) -> Agent: ...

    @classmethod
    def stages(cls, config: Any, steps: int) -> list[Stage]: ...

    def prepare(self, sampler: Any, stage: str) -> Any: ...

    def update(self, batch: Any, stage: str, aux: Any = None) -> tuple[Agent, dict[str, Array]]: ...

    def act(
        self,
        key: Array,
        observations: Array,
        legal: Array | None,
        mode: str,
        states: Array | None = None,
    ) -> Array: ...


def adam_step(lr: float, params, grads, opt_state):
    """One Adam step; the optimiser is rebuilt from static config, only its state is carried."""
    updates, opt_state = optax.adam(lr).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def polyak(target, online, tau: float):
    """``target <- tau * online + (1 - tau) * target``."""
    return jax.tree.map(lambda t, o: tau * o + (1 - tau) * t, target, online)


def to_unit(spec: EnvSpec, actions: Array) -> Array:
    """Continuous env actions -> [-1, 1] per dimension."""
    low, high = jnp.asarray(spec.action_low), jnp.asarray(spec.action_high)
    return 2 * (actions - low) / (high - low) - 1


def from_unit(spec: EnvSpec, unit: Array) -> Array:
    """[-1, 1] -> continuous env actions within the spec's bounds."""
    low, high = jnp.asarray(spec.action_low), jnp.asarray(spec.action_high)
    return jnp.clip(low + (unit + 1) * (high - low) / 2, low, high)


def masked_logits(logits: Array, legal: Array | None) -> Array:
    """Illegal actions get a large negative logit (finite, so gradients stay finite)."""
    return logits if legal is None else jnp.where(legal, logits, -1e9)


def categorical_kl(target: Array, logits: Array) -> Array:
    """``KL(target || softmax(logits))`` over the last axis, ``[...]``.

    ``target`` is a probability vector that is 0 wherever ``logits`` are masked. Its gradient in
    the logits is ``softmax(logits) - target`` (the soft-label cross-entropy's), so it vanishes
    exactly when the two distributions agree; for a one-hot target it is the hard-label
    cross-entropy.
    """
    logp = jax.nn.log_softmax(logits)
    return (jax.scipy.special.xlogy(target, target) - target * logp).sum(axis=-1)


def small(preset):
    """The CPU-sized variant of a preset (``--preset small``): the results table's budget, every
    layer-width tuple 2 x 128, a flow teacher's stage 10,000 updates, Adam 1e-3 (with
    ``macflow train --steps 10000``: minutes per seed on a laptop, docs/results.md)."""

    def make(spec):
        config = preset(spec)
        changes = {}
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if f.name.endswith("hidden") and isinstance(value, tuple):
                changes[f.name] = (128, 128)
        for name, value in (("teacher_steps", 10_000), ("lr", 1e-3)):
            if name in {f.name for f in dataclasses.fields(config)}:
                changes[name] = value
        return dataclasses.replace(config, **changes)

    return make
