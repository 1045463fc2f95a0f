"""The training loop's core: seeds side by side, stages in order, K updates per jitted call.

    agents = create_agents("macflow", spec, config, seeds=[0, 1, 2])
    agents = fit(agents, sampler, stages, seeds=[0, 1, 2], batch_size=256, on_chunk=print)

``create_agents`` stacks one agent per seed on a leading axis (``vmap``); ``fit`` runs the
agent's stages (``Agent.stages``) over a :class:`~macflow.data.Sampler`: each host call is one
jitted ``lax.scan`` of K updates of every seed, batches drawn with keys derived from (seed,
update number), so that a run continued from ``start`` repeats exactly what an uninterrupted one
computes. After each call it checks the metrics for NaN/inf and hands them to ``on_chunk``.
``macflow.train`` adds the run directory, logging, evaluation and checkpoints around it; the
benchmarks and tests call it directly, without a run directory.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from macflow.agents import Stage, get_agent

Array = jax.Array


class TrainingDiverged(RuntimeError):
    """A loss became NaN or inf."""


def seed_keys(seeds: Sequence[int]) -> Array:
    """The PRNG key each seed's agent is created from, ``[n_seeds, 2]``."""
    return jnp.stack([jax.random.PRNGKey(s) for s in seeds])


def data_keys(seeds: Sequence[int]) -> Array:
    """The key each seed draws its batches from (folded with the update number)."""
    return jax.vmap(lambda k: jax.random.fold_in(k, 0x5EED))(seed_keys(seeds))


def create_agents(algo: str | type, spec: Any, config: Any, seeds: Sequence[int]) -> Any:
    """One agent per seed, stacked on a leading axis; ``algo`` is a registered name or a class."""
    cls = get_agent(algo) if isinstance(algo, str) else algo
    return jax.jit(jax.vmap(lambda k: cls.create(k, spec, config)))(seed_keys(seeds))


def make_chunk(batch_size: int):
    """The jitted K-update program ``(agents, aux, sampler, keys, start, stage, k) -> (agents,
    mean metrics, finite)``; ``aux`` is each seed's stage precomputation (or None), ``keys``
    the seeds' data keys. A new program per call (its executables go with it): a caller that
    times it first passes it on to :func:`fit` so that nothing compiles twice."""

    def chunk(agents, aux, sampler, keys, start, stage, k):
        def body(agents, i):
            step_keys = jax.vmap(lambda key: jax.random.fold_in(key, start + i))(keys)
            batch = jax.vmap(lambda key: sampler.sample(key, batch_size))(step_keys)
            return jax.vmap(lambda a, x, b: a.update(b, stage, x))(agents, aux, batch)

        agents, infos = jax.lax.scan(body, agents, jnp.arange(k))
        means = jax.tree.map(lambda x: x.mean(axis=0), infos)
        finite = jax.tree.map(lambda x: jnp.isfinite(x).all(axis=0), infos)
        return agents, means, finite

    return jax.jit(chunk, static_argnames=("stage", "k"))


@functools.partial(jax.jit, static_argnames=("stage",))
def prepare(agents, sampler, stage: str):
    """Every seed's precomputation for ``stage`` (``Agent.prepare``, e.g. a teacher cache)."""
    return jax.vmap(lambda a: a.prepare(sampler, stage))(agents)


class Chunk(NamedTuple):
    """What ``fit`` hands to ``on_chunk`` after each jitted call."""

    agents: Any
    step: int
    """Updates done so far, over all stages."""
    stage: Stage
    offset: int
    """The update at which ``stage`` began."""
    updates: int
    """Updates in this call (K)."""
    means: dict[str, np.ndarray]
    """Each metric averaged over the call, one value per seed."""
    seconds: float
    """Wall clock of this call."""
    train_seconds: float
    """Wall clock of ``fit``'s updates and stage preparations so far (compilation included)."""


def check_finite(
    finite: dict, seeds: Sequence[int], step: int, k: int, stage: str, unit: str = "updates"
) -> None:
    """Raise :class:`TrainingDiverged` naming the first metric and seed that is not finite."""
    for metric, ok in finite.items():
        bad = np.flatnonzero(~np.asarray(ok))
        if bad.size:
            raise TrainingDiverged(
                f"loss '{metric}' became NaN/inf for seed {seeds[bad[0]]} between {unit} {step} "
                f"and {step + k} (stage {stage}); stopped."
            )


def fit(
    agents: Any,
    sampler: Any,
    stages: Sequence[Stage],
    seeds: Sequence[int],
    batch_size: int = 256,
    log_every: int = 1000,
    start: int = 0,
    on_chunk: Callable[[Chunk], None] | None = None,
    on_prepare: Callable[[Stage], None] | None = None,
    chunk: Callable | None = None,
) -> Any:
    """Train stacked ``agents`` (one per seed of ``seeds``) through ``stages`` from update
    ``start`` (stages already done are skipped) in jitted calls of at most ``log_every``
    updates; returns the trained agents. Raises :class:`TrainingDiverged` at the first call
    whose metrics hold a NaN or inf. ``on_prepare(stage)`` runs before a stage's
    precomputation, ``on_chunk(chunk)`` after every call; ``chunk`` is a program of
    :func:`make_chunk` to reuse (default: a new one)."""
    chunk = chunk or make_chunk(batch_size)
    keys = data_keys(seeds)
    step, offset, train_seconds = start, 0, 0.0
    for stage in stages:
        end = offset + stage.steps
        aux = None
        if stage.prepare and step < end:
            if on_prepare is not None:
                on_prepare(stage)
            t0 = time.perf_counter()
            aux = jax.block_until_ready(prepare(agents, sampler, stage.name))
            train_seconds += time.perf_counter() - t0
        while step < end:
            k = min(log_every, end - step)
            t0 = time.perf_counter()
            agents, means, finite = chunk(agents, aux, sampler, keys, step, stage.name, k)
            means, finite = jax.device_get((means, finite))
            dt = time.perf_counter() - t0
            train_seconds += dt
            check_finite(finite, seeds, step, k, stage.name)
            step += k
            if on_chunk is not None:
                on_chunk(Chunk(agents, step, stage, offset, k, means, dt, train_seconds))
        offset = end
    return agents
