"""Per-decision latency: decentralised one-step students vs the joint flow teacher at K Euler steps.

Three figures per setting, each jitted, warmed up, median wall time of many calls:
- ``one agent``: what a deployed agent computes per decision, its student on its own observation
  (``MACFlow.act_agent``; batch 1 only). Agents decide in parallel on their own hardware.
- ``team``: every agent's student for one environment (batch 1) or 1024 environments, in one call.
- ``teacher K``: the joint flow teacher (centralised: it needs the state) with K Euler steps.
Sizes: ``toy/landmarks`` (observation and state 4N), 2-D continuous actions, 4x512 networks.

    python benchmarks/inference.py
    python benchmarks/inference.py --agents 3 --batches 1
"""

from __future__ import annotations

import dataclasses

import jax
import tyro
from common import seconds_per_call

from macflow.agents.macflow import MACFlow, MACFlowConfig
from macflow.envs import make_env


@dataclasses.dataclass(frozen=True)
class Args:
    agents: tuple[int, ...] = (3, 10, 40)
    batches: tuple[int, ...] = (1, 1024)
    steps: tuple[int, ...] = (1, 4, 10, 20)
    """Euler steps K of the teacher."""
    width: int = 512
    depth: int = 4


def main(a: Args) -> None:
    hidden = (a.width,) * a.depth
    print(
        f"per-decision latency, {a.depth}x{a.width} networks, CPU. (Nx) = teacher time / one "
        "agent's time at batch 1, / the team's time at batch 1024; all measured in this run"
    )
    for n in a.agents:
        spec = make_env("toy/landmarks", num_agents=n).spec
        for batch in a.batches:
            obs = jax.random.normal(jax.random.PRNGKey(0), (batch, n, spec.obs_dim))
            states = jax.random.normal(jax.random.PRNGKey(1), (batch, spec.state_dim))
            key = jax.random.PRNGKey(2)
            config = MACFlowConfig(teacher_hidden=hidden, student_hidden=hidden, critic_hidden=(8,))
            full = MACFlow.create(jax.random.PRNGKey(0), spec, config)
            # Deployed policies carry only their own weights (fewer arguments to dispatch).
            agent = full.replace(params={"student": full.params["student"]}, target={}, opt={})
            teacher = full.replace(params={"teacher": full.params["teacher"]}, target={}, opt={})
            act = jax.jit(lambda ag, o, k: ag.act(k, o, None, "sample"))
            team = seconds_per_call(act, agent, obs, key, min_time=2.0)
            line = f"  N={n:<3} batch {batch:<5}"
            base = team
            if batch == 1:
                alone = jax.jit(lambda ag, o, k: ag.act_agent(k, 0, o, None, "sample"))
                base = seconds_per_call(alone, agent, obs[0, 0], key, min_time=2.0)
                line += f" one agent {base * 1e3:7.3f} ms |"
            line += f" team {team * 1e3:8.3f} ms"
            teach = jax.jit(lambda ag, o, s, k: ag.act_teacher(k, o, s, None, "sample"))
            for k in a.steps:
                teacher_agent = teacher.replace(config=dataclasses.replace(config, flow_steps=k))
                t = seconds_per_call(teach, teacher_agent, obs, states, key, min_time=2.0)
                line += f" | teacher K={k} {t * 1e3:8.3f} ms ({t / base:5.1f}x)"
            print(line)


if __name__ == "__main__":
    main(tyro.cli(Args))
