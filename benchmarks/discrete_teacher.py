"""How well MAC-Flow's flow teacher models a discrete dataset, alone (no students, no critic).

Trains only the teacher stage on a discrete dataset, then reports (1) how often its sampled
and zero-noise actions equal the data's action on held dataset states, (2) the histogram of
its actions against the data's, and (3) its return when it acts centralised in the environment.
The knobs are the suspects for a poor teacher: capacity and updates, what it conditions on
(``--teacher`` joint or per-agent, ``--teacher-obs``) and the scale of the state
(``--standardise`` the state per feature, with the statistics of the dataset).

    python benchmarks/discrete_teacher.py --dataset DATA/smax-3m/medium
    python benchmarks/discrete_teacher.py --dataset DATA/smax-3m/medium --width 256 --depth 3 \\
        --steps 40000
    python benchmarks/discrete_teacher.py --dataset DATA/smax-3m/medium --standardise
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import tyro

from macflow.agents.macflow import MACFlow
from macflow.cli import enable_compile_cache
from macflow.data import Sampler, load
from macflow.envs import make_env
from macflow.envs.rollout import make_rollout
from macflow.train import _make_chunk


@dataclasses.dataclass(frozen=True)
class Args:
    dataset: Path
    """A discrete dataset (e.g. made by ``macflow collect smax/3m --quality medium``)."""
    steps: int = 10_000
    """Teacher updates."""
    width: int = 128
    """Hidden width of the velocity field."""
    depth: int = 2
    """Hidden layers of the velocity field."""
    teacher: Literal["joint", "per-agent"] = "joint"
    """Joint field on the state, or the per-agent field on each agent's own observation."""
    teacher_obs: bool = False
    """The joint field also reads every agent's observation."""
    standardise: bool = False
    """Standardise the state per feature (dataset mean and std), in training and acting."""
    batch: int = 256
    """Transitions per update."""
    lr: float = 1e-3
    """Adam learning rate."""
    states: int = 4096
    """Dataset states on which the actions are compared with the data's."""
    episodes: int = 320
    """Evaluation episodes per noise mode (0: skip the environment)."""
    seed: int = 0
    """Seed of the teacher."""


def main(a: Args) -> None:
    enable_compile_cache()
    ds = load(a.dataset, verify=False)
    spec = ds.spec
    if not spec.discrete:
        raise SystemExit(f"{a.dataset}: {spec.env_id} has continuous actions; this is for discrete")
    arrays = dict(ds.arrays)
    states = np.asarray(arrays["states"])
    mean, std = states.mean(0), states.std(0)
    std = np.where(std < 1e-6, 1.0, std)  # constant features stay as they are
    if a.standardise:
        for key in ("states", "final_states"):
            arrays[key] = ((np.asarray(arrays[key]) - mean) / std).astype(np.float32)
    sampler = Sampler.from_dataset(dataclasses.replace(ds, arrays=arrays))
    hidden = (a.width,) * a.depth
    config = dataclasses.replace(
        MACFlow.presets["paper"](spec),
        teacher=a.teacher,
        teacher_obs=a.teacher_obs,
        teacher_hidden=hidden,
        lr=a.lr,
        teacher_steps=a.steps,
        q_weight=0.0,
    )
    keys = jnp.stack([jax.random.PRNGKey(a.seed)])
    agents = jax.jit(jax.vmap(lambda k: MACFlow.create(k, spec, config)))(keys)
    chunk = _make_chunk(a.batch)
    done = 0
    while done < a.steps:
        k = min(500, a.steps - done)
        agents, means, _ = chunk(agents, None, sampler, keys, done, "teacher", k)
        done += k
    loss = float(jax.device_get(means["teacher/flow_loss"])[0])
    agent = jax.tree.map(lambda x: x[0], agents)
    print(
        f"{spec.env_id} {ds.quality}: {a.teacher} teacher {a.depth}x{a.width}, {a.steps} updates, "
        f"teacher_obs={a.teacher_obs}, standardise={a.standardise}: flow loss {loss:.3f} "
        "(last 500 updates)"
    )
    batch = sampler.sample(jax.random.PRNGKey(7), a.states)
    data = np.asarray(batch.actions)
    data_hist = np.bincount(data.ravel(), minlength=spec.action_dim) / data.size
    print(f"  data action histogram        {np.round(data_hist, 3)}")
    for mode in ("sample", "zero"):
        acts = jax.device_get(
            agent.act_teacher(
                jax.random.PRNGKey(1), batch.observations, batch.states, batch.legal_actions, mode
            )
        )
        hist = np.bincount(acts.ravel(), minlength=spec.action_dim) / acts.size
        print(
            f"  {mode:6} P(action = data's) {np.mean(acts == data):.3f}  histogram "
            f"{np.round(hist, 3)}"
        )
    if not a.episodes:
        return
    env = make_env(spec.env_id, **ds.env_kwargs)
    mu, sd = jnp.asarray(mean), jnp.asarray(std)
    print(f"  data return {ds.stats()['return_mean']:.3f}")
    for mode in ("sample", "zero"):

        def act(ag, key, ps, es, ts, mode=mode):
            state = (ts.state - mu) / sd if a.standardise else ts.state
            legal = ts.legal_actions[None]
            return ag.act_teacher(key, ts.observations[None], state[None], legal, mode)[0], ps

        run = make_rollout(env, lambda *_: (), act, a.episodes, record=False)
        out = jax.device_get(run(jax.random.PRNGKey(3), agent))
        text = f"  {mode:6} teacher return {np.mean(out['returns']):.3f}"
        if "won" in out["final_info"]:
            text += f"  win {100 * np.mean(out['final_info']['won']):.1f}%"
        print(text, flush=True)


if __name__ == "__main__":
    main(tyro.cli(Args))
