"""Generate a dataset by running a behaviour policy in a JAX environment.

Episodes run in jitted, vmapped chunks (one compile for the whole collection); each chunk is
flattened on the host into the schema's rows, keeping only real steps, with the observation after
every episode's last step stored in the ``final_*`` arrays.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from macflow import __version__
from macflow.data.dataset import Dataset
from macflow.data.io import check_target, created_now, save
from macflow.data.schema import fields_for
from macflow.envs import env_kwargs
from macflow.envs.base import Behaviour, Env
from macflow.envs.host import behaviour_rollout
from macflow.envs.rollout import make_rollout
from macflow.files import hold
from macflow.progress import progress_bar


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


EnvT = TypeVar("EnvT")
BehaviourT = TypeVar("BehaviourT")


@dataclasses.dataclass(frozen=True)
class CollectOptions(Generic[EnvT, BehaviourT]):
    """Generate a dataset with the task's scripted behaviour policy."""

    env: EnvT
    """Task parameters."""
    behaviour: BehaviourT
    """Behaviour (data-generating policy) parameters."""
    out: Path
    """Dataset directory to write (atomically: an interrupted write leaves no partial data)."""
    episodes: int = 10_000
    """Number of episodes to collect."""
    seed: int = 0
    """Random seed of the collection."""
    quality: str = "scripted"
    """Quality label recorded in the metadata."""
    overwrite: bool = False
    """Replace an existing dataset at ``out``."""

    def __post_init__(self):
        # Checked here, so that the command line (tyro builds this class) and Python callers
        # get the same one-line error before anything is collected.
        check_count(self.episodes, "episodes")
        check_seed(self.seed)


def check_count(value: Any, name: str) -> None:
    """Raise a ValueError naming ``--name`` unless ``value`` is an int >= 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")


def check_seed(seed: Any) -> None:
    """A seed is an int in ``[0, 2**32)``, which every random number generator accepts."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 1 << 32:
        raise ValueError(f"--seed must be an integer in [0, 2**32), got {seed!r}")


def collect_and_save(
    options: CollectOptions, command: str | None = None, console: Any = None
) -> Dataset:
    """:func:`collect` what ``options`` describe and save it, with progress bars on ``console``
    (a ``rich`` console); ``command`` is recorded in the provenance. Returns the saved dataset.

    ``out`` is checked first and its write lock held from then on, so an existing dataset (without
    ``overwrite``) or another process writing ``out`` is refused before anything is collected.
    """
    env, out = options.env, Path(options.out).absolute()
    check_target(out, options.overwrite)
    with hold(out, command), progress_bar(console=console) as bar:
        check_target(out, options.overwrite)
        task = bar.add_task(f"collect {env.spec.env_id}", total=options.episodes)
        ds = collect(
            env,
            options.behaviour,
            options.episodes,
            seed=options.seed,
            quality=options.quality,
            on_chunk=lambda n: bar.update(task, completed=n),
            provenance={"command": command},
        )
        write = bar.add_task(f"write {out}", total=len(fields_for(env.spec)))
        return save(ds, out, overwrite=options.overwrite, on_field=lambda _: bar.advance(write))
