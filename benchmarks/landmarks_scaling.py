"""MAC-Flow on ``toy/landmarks`` with N = 3, 10, 20, 40 agents: time per update and return.

For every N (``make_env("toy/landmarks", num_agents=N)``: observation and state 4N floats, 2-D
actions) the task's scripted data (``LandmarksData``: each agent heads for its landmark in the
optimal assignment, Gaussian action noise) are collected in memory, then:

- time per update of MAC-Flow's two stages, timed as ``benchmarks/train_cost.py`` times them: the
  real jitted ``lax.scan`` of ``macflow.train`` (batch sampling included), ``--updates`` updates
  per call, median of repeats after a warm-up call (``common.seconds_per_call``); stage 2 with
  its cached teacher targets, as ``macflow train`` runs it. Printed beside it: the ratio to the
  smallest N against the agent ratio (the issue asks that per-update time grow at most
  linearly in N).
- the return after a short training (``--teacher-steps`` + ``--steps`` updates, small networks)
  of the decentralised students (sampled and zero noise) and of the joint teacher (centralised,
  sampled noise), normalised as ``100 * (R - R_random) / (R_data - R_random)`` with the data's
  mean return and that of uniformly random actions.

The batch holds ``--batch`` transitions of all N agents, so the networks process ``batch * N``
agent rows per update (students, critic); the joint teacher's input grows as 6N.

    python benchmarks/landmarks_scaling.py
    python benchmarks/landmarks_scaling.py --agents 3 10 --teacher-steps 500 --steps 500

Defaults take about 15 min on the shared 2-core CPU (N = 40 dominates).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np
import tyro
from common import seconds_per_call
from toy_b_common import (
    Trainer,
    random_return,
    save_png,
    scripted,
    student_returns,
    teacher_returns,
    write_json,
)

from macflow import enable_compile_cache
from macflow.agents.macflow import MACFlow, MACFlowConfig

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Args:
    agents: tuple[int, ...] = (3, 10, 20, 40)
    """Numbers of agents N (= landmarks)."""
    episodes: int = 400
    """Scripted episodes per N (25 steps each)."""
    width: int = 128
    """Width of every network."""
    depth: int = 2
    """Hidden layers of every network."""
    flow_steps: int = 10
    """Euler steps K of the teacher."""
    batch: int = 256
    """Transitions per update in the timing."""
    train_batch: int = 64
    """Transitions per update in the short training (smaller than ``--batch`` to fit the
    time budget at N = 40; every transition still carries N agent rows)."""
    updates: int = 20
    """Updates per timed call (one jitted scan)."""
    min_time: float = 2.0
    """Seconds of timed calls per figure (after the warm-up call)."""
    teacher_steps: int = 1500
    """Training: updates of the flow teacher."""
    steps: int = 1000
    """Training: updates of critic + students."""
    seeds: tuple[int, ...] = (0,)
    """Seeds trained side by side (vmapped); returns are averaged over them."""
    eval_episodes: int = 200
    """Evaluation episodes per seed and policy."""
    random_episodes: int = 200
    """Episodes of uniformly random actions for the random reference."""
    lr: float = 1e-3
    """Adam learning rate of every network."""
    out: Path = Path("docs/figures/landmarks_scaling.png")
    """The plot; the JSON goes beside it unless ``--json``."""
    json: Path | None = None
    """Where to write the JSON of the figures (default: beside ``--out``)."""
    from_json: Path | None = None
    """Measure nothing: re-print and re-plot the results of an earlier run's JSON (pass the same
    budget options it ran with)."""


def main(a: Args) -> None:
    if a.from_json is not None:  # re-report and re-plot saved measurements
        saved = json.loads(a.from_json.read_text())
        report(a, saved["results"], saved["seconds"])
        return
    enable_compile_cache()
    hidden = (a.width,) * a.depth
    config = MACFlowConfig(
        teacher_hidden=hidden,
        student_hidden=hidden,
        critic_hidden=hidden,
        flow_steps=a.flow_steps,
        teacher_steps=a.teacher_steps,
        lr=a.lr,
    )
    print(
        f"MAC-Flow on toy/landmarks: {a.depth}x{a.width}, K={a.flow_steps}, batch {a.batch}, "
        f"training {a.teacher_steps} + {a.steps} updates at batch {a.train_batch}, seeds "
        f"{list(a.seeds)}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    results = []
    start = time.perf_counter()
    for n in a.agents:
        t0 = time.perf_counter()
        env, ds, sampler = scripted("toy/landmarks", a.episodes, num_agents=n)
        data = ds.stats()["return_mean"]
        rand = random_return(env, a.random_episodes)
        trainer = Trainer(MACFlow, env.spec, config, a.seeds, a.batch)
        times = {}
        for stage, cached in (("teacher", False), ("policy", True)):
            fn = trainer.timed(sampler, stage, a.updates, prepare=cached)
            times[stage] = seconds_per_call(fn, repeats=3, min_time=a.min_time) / a.updates
        trainer = Trainer(MACFlow, env.spec, config, a.seeds, a.train_batch)
        trainer.stage(sampler, "teacher", a.teacher_steps, 250)
        trainer.stage(sampler, "policy", a.steps, 250, prepare=True)
        students = np.mean(student_returns(env, trainer.agents, a.eval_episodes, "sample"))
        zero = np.mean(student_returns(env, trainer.agents, a.eval_episodes, "zero"))
        teacher = np.mean(teacher_returns(env, trainer.agents, a.eval_episodes, "sample"))

        def norm(r, lo=rand, hi=data):
            return 100 * (r - lo) / (hi - lo)

        row = {
            "agents": n,
            "ms_teacher": 1e3 * times["teacher"],
            "ms_policy": 1e3 * times["policy"],
            "return_data": data,
            "return_random": rand,
            "return_students": float(students),
            "return_students_zero": float(zero),
            "return_teacher": float(teacher),
            "normalised_students": float(norm(students)),
            "normalised_students_zero": float(norm(zero)),
            "normalised_teacher": float(norm(teacher)),
            "seconds": time.perf_counter() - t0,
        }
        results.append(row)
        print(
            f"N={n:>3}: teacher stage {row['ms_teacher']:7.2f} ms/update, policy stage "
            f"{row['ms_policy']:7.2f} ms/update | return students {students:8.3f} (zero noise "
            f"{zero:8.3f}), teacher {teacher:8.3f}, data {data:8.3f}, random {rand:8.3f} | "
            f"normalised students {row['normalised_students']:6.1f} (zero "
            f"{row['normalised_students_zero']:6.1f}), teacher {row['normalised_teacher']:6.1f} "
            f"({row['seconds']:.0f} s)"
        )
    elapsed = time.perf_counter() - start
    report(a, results, elapsed)


def mlp_macs(inputs: int, hidden: tuple[int, ...], out: int) -> int:
    """Multiply-accumulates of one MLP forward pass on one row."""
    widths = (inputs, *hidden, out)
    return sum(i * o for i, o in zip(widths[:-1], widths[1:], strict=True))


def arithmetic(a: Args, n: int) -> tuple[float, float]:
    """Dense-layer MACs per update of the teacher and policy stages (forward, one pass each).

    Teacher: one row per transition, input the joint x (2N), time features (7) and the state
    (4N). Policy: N rows per transition through the student and every critic head, each with
    input 4N (observation) + N (one-hot id) + 2 (noise or action): the observation itself grows
    with N, so the policy stage's arithmetic grows as N * (5N + c), faster than linearly.
    """
    hidden = (a.width,) * a.depth
    teacher = a.batch * mlp_macs(6 * n + 7, hidden, 2 * n)
    per_row = mlp_macs(5 * n + 2, hidden, 2) + 2 * mlp_macs(5 * n + 2, hidden, 1)
    return float(teacher), float(a.batch * n * per_row)


def report(a: Args, results: list[dict], elapsed: float) -> None:
    base = results[0]
    t0, p0 = arithmetic(a, base["agents"])
    print(
        f"per-update time relative to N={base['agents']} (linear growth = the agent ratio; "
        "'MACs' = the dense layers' arithmetic ratio, see arithmetic()):"
    )
    for r in results:
        ratio = r["agents"] / base["agents"]
        rt = r["ms_teacher"] / base["ms_teacher"]
        rp = r["ms_policy"] / base["ms_policy"]
        mt, mp = arithmetic(a, r["agents"])
        r |= {
            "agent_ratio": ratio,
            "teacher_ratio": rt,
            "policy_ratio": rp,
            "teacher_macs_ratio": mt / t0,
            "policy_macs_ratio": mp / p0,
        }
        print(
            f"  N={r['agents']:>3}: agents x{ratio:5.2f}  teacher stage x{rt:5.2f} (MACs "
            f"x{mt / t0:5.2f})  policy stage x{rp:5.2f} (MACs x{mp / p0:5.2f})  at most linear: "
            f"teacher {rt <= ratio}, policy {rp <= ratio}"
        )
    print(f"total {elapsed:.0f} s")

    ns = np.array([r["agents"] for r in results])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, label, color in (
        ("normalised_students", "students, sampled noise", "C0"),
        ("normalised_students_zero", "students, zero noise", "C9"),
        ("normalised_teacher", "joint teacher (centralised)", "C1"),
    ):
        ax.plot(ns, [r[key] for r in results], "o-", color=color, label=label)
    ax.axhline(100, color="grey", ls="--", lw=0.8, label="data (100)")
    ax.axhline(0, color="grey", ls=":", lw=0.8, label="uniform random (0)")
    ax.set_xlabel("agents N")
    ax.set_ylabel("normalised return")
    ax.set_title(f"toy/landmarks: return after {a.teacher_steps}+{a.steps} updates")
    ax.legend(fontsize=8)
    for key, macs, label, color in (
        ("ms_teacher", "teacher_macs_ratio", "teacher stage", "C1"),
        ("ms_policy", "policy_macs_ratio", "policy stage (critic + students)", "C0"),
    ):
        vals = np.array([r[key] for r in results])
        ax2.plot(ns, vals, "o-", color=color, label=label)
        ax2.plot(ns, vals[0] * ns / ns[0], ":", color=color, label=f"{label}: linear in N")
        arith = vals[0] * np.array([r[macs] for r in results])
        ax2.plot(ns, arith, "--", color=color, alpha=0.5, label=f"{label}: dense-layer MACs")
    ax2.set_xlabel("agents N")
    ax2.set_ylabel("ms per update (median)")
    ax2.set_yscale("log")
    ax2.set_xscale("log")
    ax2.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax2.set_xticks(ns, [str(n) for n in ns])
    ax2.set_title(f"time per update, {a.depth}x{a.width}, batch {a.batch}")
    ax2.legend(fontsize=7)
    save_png(fig, a.out)
    path = a.json or a.out.with_suffix(".json")
    write_json(
        path,
        {
            "command": "python benchmarks/landmarks_scaling.py",
            "args": dataclasses.asdict(a) | {"from_json": None},  # the measuring run's
            "results": results,
            "seconds": elapsed,
            "cpus": os.cpu_count(),
        },
    )
    print(f"wrote {a.out} and {path}")


if __name__ == "__main__":
    main(tyro.cli(Args))
