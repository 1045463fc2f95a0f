"""Sampling-step ablations: MAC-Flow's flow steps K and the diffusion baseline's steps.

MAC-Flow (``macflow/agents/macflow.py``): the flow teacher (eq. 1, its loss does not depend on K)
is trained once per seed; then for every K in ``--flow-steps`` the students are distilled from
the teacher integrated with K Euler steps (eq. 2; stage 2 with cached targets, fresh students and
critic from the same keys), without and with ``shared_noise``. Reported per K: the return of the
K-step joint teacher (centralised, for reference) and of the decentralised students.

Diffusion baseline (``macflow/agents/diffusion.py``, no Q guidance): one model per T in
``--ddpm-timesteps``, acting with ancestral sampling over all T steps (T changes training too);
and the model with T = ``--ddim-base`` acting with DDIM in ``--ddim-steps`` steps (eta 0).

Time per decision: one jitted call at batch 1 (one environment, the whole team), median of
repeated calls after a warm-up (``common.seconds_per_call``): the K-step teacher, the students,
and each diffusion sampler. Small networks (``--width``), so these show how cost scales with
steps, not deployment-size latencies (``benchmarks/inference.py`` measures those).

Default task ``toy/xor`` (return = P(signs differ); the data's two modes (+1,-1), (-1,+1) always
score 1): it shows whether a sampler reproduces the modes. ``--dataset DIR`` runs the same on a
saved dataset instead (e.g. ``/work/data/mpe-spread/medium``; never downloaded).

    python benchmarks/steps_ablation.py
    python benchmarks/steps_ablation.py --dataset /work/data/mpe-spread/medium --episodes 64 \\
        --out /tmp/steps_spread.png
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import jax
import matplotlib
import matplotlib.ticker
import numpy as np
import tyro
from common import seconds_per_call
from toy_b_common import (
    Trainer,
    save_png,
    scripted,
    seed_slice,
    student_returns,
    teacher_returns,
    write_json,
)

from macflow import enable_compile_cache
from macflow.agents.diffusion import Diffusion, DiffusionConfig
from macflow.agents.macflow import MACFlow, MACFlowConfig
from macflow.data import Sampler, load
from macflow.envs import make_env

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Args:
    dataset: Path | None = None
    """A saved dataset to run on instead of ``toy/xor``'s scripted data (optional)."""
    toy_episodes: int = 10_000
    """Scripted ``toy/xor`` episodes (one transition each)."""
    flow_steps: tuple[int, ...] = (1, 2, 4, 10, 20)
    """MAC-Flow teacher's Euler steps K."""
    shared_noise: tuple[bool, ...] = (False, True)
    """Student variants: independent per-agent noise, and the whole joint noise shared."""
    ddpm_timesteps: tuple[int, ...] = (5, 20, 50, 200)
    """Diffusion T (one model each), acting with ancestral sampling over all T steps."""
    ddim_base: int = 200
    """T of the diffusion model that acts with DDIM."""
    ddim_steps: tuple[int, ...] = (1, 2, 5, 15, 50)
    """DDIM steps K (of the ``--ddim-base`` model)."""
    seeds: tuple[int, ...] = (0, 1)
    """Seeds trained side by side (vmapped); returns are averaged over them."""
    width: int = 64
    """Width of every 2-layer network (teacher, students, critic, diffusion)."""
    teacher_steps: int = 3000
    """MAC-Flow stage 1 updates (once)."""
    steps: int = 2000
    """MAC-Flow stage 2 updates (per K and student variant)."""
    diffusion_steps: int = 3000
    """Diffusion updates (per T)."""
    alpha: float = 1.0
    """MAC-Flow's distillation weight."""
    lr: float = 1e-3
    """Adam learning rate of every network."""
    batch: int = 256
    """Transitions per update."""
    episodes: int = 1000
    """Evaluation episodes per seed and policy."""
    min_time: float = 0.5
    """Seconds of timed calls per latency figure."""
    out: Path = Path("docs/figures/steps_ablation.png")
    """The plot; the JSON goes beside it unless ``--json``."""
    json: Path | None = None
    """Where to write the JSON of the figures (default: beside ``--out``)."""
    from_json: Path | None = None
    """Measure nothing: re-plot an earlier run's JSON (pass the options it ran with)."""


LABELS = {
    "MAC-Flow students": "MAC-Flow students (x = teacher K; they act in 1 step)",
    "MAC-Flow students (shared noise)": "MAC-Flow students, shared noise (x = teacher K)",
    "diffusion DDPM": "diffusion DDPM (x = T, one model per T)",
}


def decision_ms(fn, agent, env, min_time: float) -> float:
    """ms of ``fn(agent, key, obs, state, legal)`` for one environment (batch 1)."""
    _, ts = env.reset(jax.random.PRNGKey(0))
    one = lambda x: None if x is None else x[None]  # noqa: E731
    args = (agent, jax.random.PRNGKey(1), ts.observations[None], ts.state[None],
            one(ts.legal_actions))  # fmt: skip
    return 1e3 * seconds_per_call(jax.jit(fn), *args, repeats=3, min_time=min_time)


def _students(agent, key, obs, state, legal):
    return agent.act(key, obs, legal, "sample", state)


def _teacher(agent, key, obs, state, legal):
    return agent.act_teacher(key, obs, state, legal, "sample")


def main(a: Args) -> None:
    if a.from_json is not None:  # re-plot saved measurements
        saved = json.loads(a.from_json.read_text())
        report(a, saved["task"], saved["data_return"], saved["rows"], saved["seconds"])
        return
    enable_compile_cache()
    if a.dataset is not None:
        ds = load(a.dataset)
        env = make_env(ds.spec.env_id, **ds.env_kwargs)
        sampler = Sampler.from_dataset(ds)
    else:
        env, ds, sampler = scripted("toy/xor", a.toy_episodes)
    spec, seeds, hidden = env.spec, list(a.seeds), (a.width,) * 2
    data = ds.stats()["return_mean"]
    print(
        f"{spec.env_id} ({a.dataset or 'scripted'}; data return {data:.3f}): 2x{a.width}, seeds "
        f"{seeds}, {a.episodes} episodes per figure; load average {os.getloadavg()[0]:.2f}"
    )
    rows: list[dict] = []
    start = time.perf_counter()

    def add(row):
        rows.append(row)
        extra = f" (zero noise {row['return_zero']:.3f})" if "return_zero" in row else ""
        print(
            f"  {row['method']:<28} steps {row['steps']:>3}: return {row['return']:8.3f}{extra}  "
            f"{row['ms_per_decision']:7.3f} ms/decision",
            flush=True,
        )

    # --- MAC-Flow: one teacher, distilled at every K -------------------------------------------
    base = MACFlowConfig(
        teacher_hidden=hidden, student_hidden=hidden, critic_hidden=hidden,
        teacher_steps=a.teacher_steps, alpha=a.alpha, lr=a.lr,
    )  # fmt: skip
    stage1 = Trainer(MACFlow, spec, base, seeds, a.batch)
    stage1.stage(sampler, "teacher", a.teacher_steps, 500)
    teacher = stage1.agents.params["teacher"]
    for k in a.flow_steps:
        config = dataclasses.replace(base, flow_steps=k)
        t = Trainer(MACFlow, spec, config, seeds, a.batch)
        t.agents = t.agents.replace(params=t.agents.params | {"teacher": teacher})
        ret = np.mean(teacher_returns(env, t.agents, a.episodes))
        ms = decision_ms(_teacher, seed_slice(t.agents, 0), env, a.min_time)
        add({"method": "MAC-Flow teacher", "steps": k, "return": ret, "ms_per_decision": ms})
        for shared in a.shared_noise:
            config = dataclasses.replace(base, flow_steps=k, shared_noise=shared)
            t = Trainer(MACFlow, spec, config, seeds, a.batch)
            t.agents = t.agents.replace(params=t.agents.params | {"teacher": teacher})
            t.step = a.teacher_steps  # stage 2 draws the batches macflow train would
            t.stage(sampler, "policy", a.steps, 500, prepare=True)
            name = "MAC-Flow students" + (" (shared noise)" if shared else "")
            add({
                "method": name, "steps": k,
                "return": np.mean(student_returns(env, t.agents, a.episodes)),
                "return_zero": np.mean(student_returns(env, t.agents, a.episodes, "zero")),
                "ms_per_decision": decision_ms(_students, seed_slice(t.agents, 0), env, a.min_time),
            })  # fmt: skip

    # --- diffusion: one model per T (ancestral), DDIM steps of the T = ddim_base model -------
    models = {}
    for big_t in sorted(set(a.ddpm_timesteps) | ({a.ddim_base} if a.ddim_steps else set())):
        config = DiffusionConfig(
            hidden=hidden, timesteps=big_t, ddim_steps=min(15, big_t),
            guide_steps=min(5, big_t), lr=a.lr,
        )  # fmt: skip
        t = Trainer(Diffusion, spec, config, seeds, a.batch)
        t.stage(sampler, "all", a.diffusion_steps, 500)
        models[big_t] = t.agents
    for big_t in a.ddpm_timesteps:
        agents = models[big_t]
        add({
            "method": "diffusion DDPM", "steps": big_t,
            "return": np.mean(student_returns(env, agents, a.episodes)),
            "ms_per_decision": decision_ms(_students, seed_slice(agents, 0), env, a.min_time),
        })  # fmt: skip
    for k in a.ddim_steps:
        agents = models[a.ddim_base]
        config = dataclasses.replace(agents.config, sampler="ddim", ddim_steps=k)
        agents = agents.replace(config=config)
        add({
            "method": f"diffusion DDIM (T={a.ddim_base})", "steps": k,
            "return": np.mean(student_returns(env, agents, a.episodes)),
            "ms_per_decision": decision_ms(_students, seed_slice(agents, 0), env, a.min_time),
        })  # fmt: skip
    elapsed = time.perf_counter() - start
    print(f"total {elapsed:.0f} s")

    report(a, spec.env_id, data, rows, elapsed)


def report(a: Args, task: str, data: float, rows: list[dict], elapsed: float) -> None:
    """Plot and write the JSON of the measured rows."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12.5, 4.6))
    styles = {
        "MAC-Flow teacher": ("C1", "s--"),
        "MAC-Flow students": ("C0", "o-"),
        "MAC-Flow students (shared noise)": ("C9", "o-"),
        "diffusion DDPM": ("C3", "^-"),
        f"diffusion DDIM (T={a.ddim_base})": ("C5", "v-"),
    }
    for method, (color, style) in styles.items():
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        xs = [r["steps"] for r in mine]
        label = LABELS.get(method, method)
        ax.plot(xs, [r["return"] for r in mine], style, color=color, label=label)
        ax2.plot(xs, [r["ms_per_decision"] for r in mine], style, color=color, label=label)
    ax.axhline(data, color="grey", ls=":", lw=0.8, label=f"data ({data:.3g})")
    ticks = sorted({r["steps"] for r in rows})
    for axis in (ax, ax2):
        axis.set_xscale("log")
        axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        axis.set_xticks(ticks, [str(t) for t in ticks])
        axis.set_xlabel("sampling steps (flow K, DDPM T, DDIM K)")
    ax.set_ylabel("mean return")
    ax.set_title(f"{task}: return vs sampling steps ({len(a.seeds)} seeds)")
    ax.legend(fontsize=8)
    ax2.set_yscale("log")
    ax2.set_ylabel("ms per decision (batch 1, median)")
    ax2.set_title(f"time per team decision, 2x{a.width} networks (noisy: shared CPU)")
    ax2.legend(fontsize=8)
    save_png(fig, a.out)
    path = a.json or a.out.with_suffix(".json")
    write_json(
        path,
        {
            "command": "python benchmarks/steps_ablation.py",
            "args": dataclasses.asdict(a) | {"from_json": None},  # the measuring run's
            "task": task,
            "data_return": data,
            "rows": rows,
            "seconds": elapsed,
        },
    )
    print(f"wrote {a.out} and {path}")


if __name__ == "__main__":
    main(tyro.cli(Args))
