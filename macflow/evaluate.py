"""Evaluation of decentralised policies: every agent acts on its own observation and noise.

All seeds of a run are evaluated in one program (``vmap`` over the stacked agents), each over
``episodes`` parallel episodes. Reported per seed: episode returns (the marl-eval metric), their
mean/std, the normalised score when the dataset carries reference returns, and the win rate when
the environment reports ``info["won"]``. :func:`final_evaluation` is the evaluation that closes
a run (``macflow train``) and re-evaluates one (``macflow eval``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

from macflow.agents import ACT_MODES
from macflow.data.dataset import normalised_score
from macflow.envs.base import Env
from macflow.envs.host import host_rollout
from macflow.envs.rollout import make_rollout


@functools.lru_cache(maxsize=32)
def _evaluator(env: Env, episodes: int, mode: str):
    def init(agent, key, env_state, ts):
        return ()

    def act(agent, key, pstate, env_state, ts):
        return agent.act(key, ts.observations, ts.legal_actions, mode, ts.state), pstate

    run = make_rollout(env, init, act, episodes, record=False)
    return jax.jit(jax.vmap(run))


@functools.lru_cache(maxsize=32)
def _host_act(mode: str):
    # Host envs: one batched call per step over every seed's episodes, seed-major.
    def act(agents, key, ts):
        seeds = jax.tree.leaves(agents)[0].shape[0]
        obs = ts.observations.reshape(seeds, -1, *ts.observations.shape[1:])
        legal = ts.legal_actions
        if legal is not None:
            legal = legal.reshape(seeds, -1, *legal.shape[1:])
        states = ts.state.reshape(seeds, -1, *ts.state.shape[1:])
        keys = jax.random.split(key, seeds)
        acts = jax.vmap(lambda a, k, o, m, s: a.act(k, o, m, mode, s))(
            agents, keys, obs, legal, states
        )
        return acts.reshape(-1, *acts.shape[2:])

    return act


def _host_evaluator(env: Env, episodes: int, mode: str):
    def run(keys, agents):
        seeds = keys.shape[0]
        out = host_rollout(env, _host_act(mode), agents, seeds * episodes, keys[0], record=False)
        return jax.tree.map(lambda x: x.reshape(seeds, episodes, *x.shape[1:]), out)

    return run


def evaluate(
    env: Env,
    agents: Any,
    key: jax.Array,
    episodes: int,
    mode: str = "sample",
    reference: dict[str, float] | None = None,
    chunk: int | None = None,
) -> list[dict[str, Any]]:
    """Evaluate stacked agents (leading seed axis); one result dict per seed.

    ``mode`` is ``sample`` (fresh noise each step) or ``zero`` (noise 0, greedy discrete).
    ``chunk`` runs the episodes in batches of that size, reusing one compiled program (e.g. the
    final evaluation's 10x episodes run through the periodic evaluation's program).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    seeds = jax.tree.leaves(agents)[0].shape[0]
    chunk = min(chunk or episodes, episodes)
    run = (_host_evaluator if env.host else _evaluator)(env, chunk, mode)
    parts = []
    for i in range(-(-episodes // chunk)):
        keys = jax.random.split(jax.random.fold_in(key, i), seeds)
        parts.append(jax.device_get(run(keys, agents)))
    out = jax.tree.map(lambda *xs: np.concatenate(xs, axis=1)[:, :episodes], *parts)
    results = []
    for s in range(seeds):
        returns = np.asarray(out["returns"][s], np.float64)
        r = {
            "returns": returns.tolist(),
            "return_mean": float(returns.mean()),
            "return_std": float(returns.std()),
            "return_min": float(returns.min()),
            "return_max": float(returns.max()),
        }
        if reference:
            r["normalised_score"] = normalised_score(returns.mean(), reference)
        if "won" in out["final_info"]:
            r["win_rate"] = float(np.mean(out["final_info"]["won"][s]))
        results.append(r)
    return results


def final_evaluation(
    env: Env,
    agents: Any,
    key: jax.Array,
    episodes: int,
    chunk: int,
    reference: dict[str, float] | None,
    step: int,
    seeds: list[int],
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Both act modes over ``episodes`` per seed (in batches of ``chunk``), with one ``key``.

    Returns the summary written as ``final.json``/``eval.json`` (``step``, ``episodes``,
    ``seeds`` and per mode the per-seed statistics) and, per mode, :func:`evaluate`'s full
    results (with the episode returns, for the logs)."""
    final = {"step": step, "episodes": episodes, "seeds": list(seeds), "modes": {}}
    full = {}
    for mode in ACT_MODES:
        full[mode] = evaluate(env, agents, key, episodes, mode, reference, chunk)
        final["modes"][mode] = [{k: v for k, v in r.items() if k != "returns"} for r in full[mode]]
    return final, full
