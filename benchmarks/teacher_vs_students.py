"""The joint flow teacher against its decentralised students, in the environment.

Loads a MAC-Flow / flow-BC run directory, and evaluates (one seed) the teacher (centralised: it
reads the global state) at several Euler step counts K and the students, with sampled and zero
noise. It separates a poor teacher (the students can only be as good as what they distil) from
a poor distillation or critic.

    python benchmarks/teacher_vs_students.py runs/sweep/smax-3m-medium-flow-bc
    python benchmarks/teacher_vs_students.py RUN --steps 1 10 40 --episodes 500 --seed-index 1
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import tyro

from macflow.envs import make_env
from macflow.envs.rollout import make_rollout
from macflow.train import load_run


@dataclasses.dataclass(frozen=True)
class Args:
    run: tyro.conf.Positional[Path]
    """A run directory of an agent with ``act_teacher`` (macflow, flow-bc)."""
    steps: tuple[int, ...] = (1, 10, 40)
    """Euler steps K of the teacher to evaluate."""
    episodes: int = 320
    """Episodes per figure."""
    seed_index: int = 0
    """Which of the run's seeds to evaluate (position in its --seeds)."""


def _evaluate(env, agent, act, episodes: int) -> str:
    run = make_rollout(env, lambda *_: (), act, episodes, record=False)
    out = jax.device_get(run(jax.random.PRNGKey(3), agent))
    text = f"return {np.mean(out['returns']):8.3f}"
    if "won" in out["final_info"]:
        text += f"  win {100 * np.mean(out['final_info']['won']):5.1f}%"
    return text


def main(a: Args) -> None:
    record, _, _, agents, step = load_run(a.run)
    if not hasattr(agents, "act_teacher"):
        raise SystemExit(f"{a.run}: algorithm {record['algo']} has no joint teacher")
    env = make_env(record["dataset"]["env_id"], **record["dataset"]["env_kwargs"])
    agent = jax.tree.map(lambda x: x[a.seed_index], agents)
    data = record["dataset"]["stats"]["return_mean"]
    print(
        f"{a.run} (update {step}, seed {record['train']['seeds'][a.seed_index]}): data {data:.3f}"
    )
    for mode in ("sample", "zero"):

        def students(ag, key, ps, es, ts, mode=mode):
            return ag.act(key, ts.observations, ts.legal_actions, mode, ts.state), ps

        def teacher(ag, key, ps, es, ts, mode=mode):
            one = lambda x: None if x is None else x[None]  # noqa: E731
            acts = ag.act_teacher(
                key, ts.observations[None], ts.state[None], one(ts.legal_actions), mode
            )
            return acts[0], ps

        print(f"  {mode:6} students          {_evaluate(env, agent, students, a.episodes)}")
        for k in a.steps:
            config = dataclasses.replace(agent.config, flow_steps=k)
            result = _evaluate(env, agent.replace(config=config), teacher, a.episodes)
            print(f"  {mode:6} teacher K={k:<3}     {result}")


if __name__ == "__main__":
    main(tyro.cli(Args))
