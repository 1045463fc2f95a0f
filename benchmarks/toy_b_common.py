"""Shared pieces of ``toy_bound.py``, ``landmarks_scaling.py`` and ``steps_ablation.py``.

In-memory scripted datasets, stage-by-stage training through :func:`macflow.loop.fit` (so what
is trained and timed is what ``macflow train`` runs), evaluation of the
students and of MAC-Flow's joint teacher; atomic JSON/PNG outputs come from ``toy_common``.
"""

from __future__ import annotations

import jax
import numpy as np
from toy_common import save_png, write_json  # noqa: F401  (re-exported to the scripts)
from toy_common import seed as seed_slice  # noqa: F401

from macflow import loop
from macflow.agents import Stage
from macflow.data import Dataset, Sampler
from macflow.data.collect import Uniform, collect
from macflow.envs import entry, make_env
from macflow.envs.rollout import make_rollout
from macflow.evaluate import evaluate


def scripted(task: str, episodes: int, seed: int = 0, behaviour=None, **env_kwargs):
    """``(env, dataset, sampler)``: ``episodes`` of the task's scripted behaviour (or
    ``behaviour``), collected in memory."""
    env = make_env(task, **env_kwargs)
    behaviour = behaviour or entry(task).behaviour_cls()()
    ds = collect(env, behaviour, episodes, seed=seed, chunk=min(episodes, 1000))
    return env, ds, Sampler.from_dataset(ds)


def random_return(env, episodes: int = 500, seed: int = 1) -> float:
    """Mean return of uniformly random actions (the ``random`` reference)."""
    ds: Dataset = collect(env, Uniform(), episodes, seed=seed, chunk=min(episodes, 1000))
    return float(ds.stats()["return_mean"])


class Trainer:
    """Vmapped seeds of one agent, trained stage by stage with :func:`macflow.loop.fit`."""

    def __init__(self, agent_cls, spec, config, seeds=(0,), batch: int = 256):
        self.seeds, self.batch = list(seeds), batch
        self.agents = loop.create_agents(agent_cls, spec, config, self.seeds)
        self.done: list[Stage] = []
        self.step = 0

    def stage(self, sampler, name: str, steps: int, every: int, prepare=False, on_chunk=None):
        """Run ``steps`` updates of stage ``name`` in jitted calls of ``every`` updates;
        ``on_chunk(trainer)`` after each call."""

        def after(c):
            self.agents, self.step = c.agents, c.step
            if on_chunk is not None:
                on_chunk(self)

        # The stages done so far come first so that fit numbers the updates (and draws the
        # batches) on from where they stopped.
        stages = [*self.done, Stage(name, steps, evaluate=False, prepare=prepare)]
        self.agents = loop.fit(
            self.agents, sampler, stages, self.seeds, self.batch, every, self.step, after
        )
        self.done = stages

    def timed(self, sampler, name: str, updates: int, prepare=False):
        """``fn``: ``fn()`` runs ``updates`` updates of stage ``name`` from the current agents
        (results discarded), for timing."""
        aux = loop.prepare(self.agents, sampler, name) if prepare else None
        chunk, keys = loop.make_chunk(self.batch), loop.data_keys(self.seeds)

        def fn():
            return chunk(self.agents, aux, sampler, keys, 0, name, updates)

        return fn


def student_returns(env, agents, episodes: int, mode: str = "sample", seed: int = 7) -> list:
    """Mean return of the decentralised students, one per seed."""
    res = evaluate(env, agents, jax.random.PRNGKey(seed), episodes, mode)
    return [r["return_mean"] for r in res]


def teacher_returns(env, agents, episodes: int, mode: str = "sample", seed: int = 7) -> list:
    """Mean return of MAC-Flow's joint teacher acting centralised (on the state), per seed."""

    def act(agent, key, pstate, env_state, ts):
        one = lambda x: None if x is None else x[None]  # noqa: E731
        a = agent.act_teacher(key, ts.observations[None], ts.state[None], one(ts.legal_actions),
                              mode)  # fmt: skip
        return a[0], pstate

    run = jax.jit(jax.vmap(make_rollout(env, lambda *_: (), act, episodes, record=False)))
    seeds = jax.tree.leaves(agents)[0].shape[0]
    keys = jax.random.split(jax.random.PRNGKey(seed), seeds)
    out = jax.device_get(run(keys, agents))
    return [float(np.mean(r)) for r in out["returns"]]
