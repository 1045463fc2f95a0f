"""Shared pieces of the benchmark scripts: synthetic datasets of a given shape and timers."""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np

from macflow.data import Dataset, Sampler
from macflow.spec import EnvSpec


def synthetic(
    agents: int, obs: int, state: int, actions: int, discrete: bool, rows: int, length: int = 25
) -> Sampler:
    """A random dataset of the given shape on the device (content does not change the speed)."""
    rng = np.random.default_rng(0)
    episodes = rows // length
    rows = episodes * length
    if discrete:
        spec = EnvSpec("bench/synthetic", agents, obs, state, actions, True, length)
        acts = rng.integers(0, actions, (rows, agents)).astype(np.int32)
    else:
        box = {"action_low": (-1.0,) * actions, "action_high": (1.0,) * actions}
        spec = EnvSpec("bench/synthetic", agents, obs, state, actions, False, length, **box)
        acts = rng.uniform(-1, 1, (rows, agents, actions)).astype(np.float32)
    ends = np.zeros(rows, bool)
    ends[length - 1 :: length] = True
    arrays = {
        "observations": rng.standard_normal((rows, agents, obs), np.float32),
        "states": rng.standard_normal((rows, state), np.float32),
        "actions": acts,
        "rewards": rng.standard_normal(rows, np.float32),
        "terminals": np.zeros(rows, bool),
        "truncations": ends,
        "final_observations": rng.standard_normal((episodes, agents, obs), np.float32),
        "final_states": rng.standard_normal((episodes, state), np.float32),
    }
    if discrete:
        arrays["legal_actions"] = np.ones((rows, agents, actions), bool)
        arrays["final_legal_actions"] = np.ones((episodes, agents, actions), bool)
    ds = Dataset(arrays=arrays, spec=spec, provenance={"method": "benchmark"})
    ds.validate()
    return Sampler.from_dataset(ds), spec


def seconds_per_call(fn, *args, repeats: int = 5, min_time: float = 1.0) -> float:
    """Median wall time of ``fn(*args)`` (blocked until ready) after a warm-up call."""
    jax.block_until_ready(fn(*args))
    samples = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            jax.block_until_ready(fn(*args))
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time / repeats:
                break
        samples.append(elapsed / calls)
    return statistics.median(samples)
