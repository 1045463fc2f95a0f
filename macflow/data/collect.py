"""Generate a dataset by running a behaviour policy in a JAX environment.

Episodes run in jitted, vmapped chunks (one compile for the whole collection); each chunk is
flattened on the host into the schema's rows, keeping only real steps, with the observation after
every episode's last step stored in the ``final_*`` arrays.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from macflow import __version__
from macflow.data.dataset import Dataset
from macflow.data.io import created_now
from macflow.envs import env_kwargs
from macflow.envs.base import Behaviour, Env
from macflow.envs.host import behaviour_rollout
from macflow.envs.rollout import make_rollout


@dataclasses.dataclass(frozen=True)
class Uniform:
    """Uniformly random actions: legal ones on discrete tasks, the whole box on continuous ones
    (small real datasets for tests, and the ``random`` reference)."""

    name: ClassVar[str] = "uniform"

    def init(self, env: Env, key: jax.Array, env_state: Any, ts: Any) -> Any:
        return ()

    def act(self, env: Env, key: jax.Array, pstate: Any, env_state: Any, ts: Any) -> jax.Array:
        spec = env.spec
        if spec.discrete:
            return jax.random.categorical(key, jnp.where(ts.legal_actions, 0.0, -jnp.inf))
        low, high = jnp.asarray(spec.action_low), jnp.asarray(spec.action_high)
        return jax.random.uniform(key, spec.action_shape, minval=low, maxval=high)


def flatten(out: dict[str, Any], discrete: bool) -> dict[str, np.ndarray]:
    """``[E, L, ...]`` rollout arrays -> schema rows ``[T, ...]`` and finals ``[E, ...]``."""
    steps, valid = out["steps"], np.asarray(out["steps"]["valid"])
    last = valid.sum(axis=1) - 1  # index of each episode's last step
    rows = {
        "observations": steps["observations"][valid],
        "states": steps["state"][valid],
        "actions": steps["actions"][valid],
        "rewards": steps["rewards"][valid],
        "terminals": steps["terminals"][valid],
        "truncations": steps["truncations"][valid],
    }
    episodes = np.arange(valid.shape[0])
    rows["final_observations"] = steps["next_observations"][episodes, last]
    rows["final_states"] = steps["next_state"][episodes, last]
    if discrete:
        rows["legal_actions"] = steps["legal_actions"][valid]
        rows["final_legal_actions"] = steps["next_legal_actions"][episodes, last]
    return rows


def collect(
    env: Env,
    behaviour: Behaviour,
    num_episodes: int,
    seed: int = 0,
    quality: str = "scripted",
    chunk: int = 1000,
    on_chunk: Callable[[int], None] | None = None,
    provenance: dict[str, Any] | None = None,
) -> Dataset:
    """Run ``num_episodes`` episodes of ``behaviour`` in ``env``; return them as a Dataset.

    ``on_chunk(done_episodes)`` reports progress. ``provenance`` adds entries (e.g. the command).
    """
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    spec = env.spec
    chunk = min(chunk, num_episodes)

    def init(params, key, env_state, ts):
        return behaviour.init(env, key, env_state, ts)

    def act(params, key, pstate, env_state, ts):
        return behaviour.act(env, key, pstate, env_state, ts), pstate

    if env.host:  # MuJoCo: episodes step in worker processes, the behaviour acts batched
        run = functools.partial(behaviour_rollout, env, behaviour, chunk)
    else:
        run = make_rollout(env, init, act, chunk)
    key = jax.random.PRNGKey(seed)
    parts, done = [], 0
    for i in range((num_episodes + chunk - 1) // chunk):
        out = jax.device_get(run(jax.random.fold_in(key, i)))
        if not np.all(out["ended"]):
            raise RuntimeError(f"{spec.env_id}: an episode did not end within its episode limit")
        take = min(chunk, num_episodes - done)  # the last chunk keeps its shape; drop extras
        out = jax.tree.map(lambda x, n=take: x[:n], out)
        parts.append(flatten(out, spec.discrete))
        done += take
        if on_chunk is not None:
            on_chunk(done)
    arrays = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    record = {
        "method": "collect",
        "behaviour": behaviour.name,
        "behaviour_config": dataclasses.asdict(behaviour),
        "seed": seed,
        "episodes": num_episodes,
        "macflow_version": __version__,
        "created_at": created_now(),
    }
    record.update(provenance or {})
    return Dataset(
        arrays=arrays,
        spec=spec,
        quality=quality,
        provenance=record,
        env_kwargs=env_kwargs(env),
    )
