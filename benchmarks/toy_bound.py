"""The paper's bound on the value gap of the distillation, measured over MAC-Flow's training.

If ``Q`` is L_Q-Lipschitz in the joint action, then for any two distributions p (the joint
teacher's actions) and q (the product of the decentralised students' actions)

    |E_p Q - E_q Q| <= L_Q * W1(p, q) <= L_Q * W2(p, q)

(Kantorovich-Rubinstein duality, then Jensen). MAC-Flow's distillation loss (eq. 2 of
``macflow/agents/macflow.py``) is the squared distance under the noise coupling, which upper-bounds
W2^2, so driving it down bounds the value lost by decentralising.

On a one-step toy (the state and observations are constant) this script trains MAC-Flow with
``macflow.train``'s jitted program (teacher stage, then critic + students) and every ``--every``
updates measures, per seed, on ``--samples`` draws of the joint noise z:

- ``W2``: exact empirical W2 between the teacher's samples a*(z_j) and the students' samples
  mu(z'_j) (``scipy.optimize.linear_sum_assignment`` on squared distances). The students act on the
  same draws, each agent on its own z_i, so their samples are i.i.d. from the product of their
  marginals; ``W2 proxy`` = sqrt(mean_j ||a*(z_j) - mu(z_j)||^2) is the coupling's cost, never below
  the exact W2 of the same samples (the identity is one admissible assignment).
- ``L_Q``: the largest norm of grad_x Q_tot(x) (critic heads averaged as in the actor loss, then the
  mixer) over the teacher's samples, the students' samples and a ``--grid`` x ``--grid`` grid of
  the action box. A sampled maximum is a LOWER estimate of the true Lipschitz constant, so the
  measured ``L_Q * W2`` may under-state the bound; a violation would still be possible in theory
  without contradicting it.
- ``gap (critic)`` = |mean Q_tot(teacher) - mean Q_tot(students)| on those samples; for these
  empirical measures the inequality above holds exactly (with the true constant).
- ``gap (true)`` = the same under the true payoff. The critic's constant does not bound it; for
  ``toy/intensity`` the payoff's own constant L_r (grad norm, same points) gives ``L_r * W2``;
  ``toy/xor``'s payoff is discontinuous (no finite L_r).

Actions are in the unit box [-1, 1] (both toys' action space). Nothing is asserted: it prints,
for each seed, whether the critic gap stayed below L_Q * W2 at every checkpoint and the smallest
ratio bound / gap.

    python benchmarks/toy_bound.py                      # toy/intensity, zeta 1
    python benchmarks/toy_bound.py --task toy/xor
    python benchmarks/toy_bound.py --zeta 0.5 --teacher-steps 2000 --steps 2000
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import tyro
from scipy.optimize import linear_sum_assignment
from toy_b_common import Trainer, save_png, scripted, seed_slice, write_json

from macflow import enable_compile_cache
from macflow.agents.macflow import MACFlow, MACFlowConfig

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Args:
    task: Literal["toy/intensity", "toy/xor"] = "toy/intensity"
    """One-step toy where coordination matters."""
    zeta: float = 1.0
    """Interaction intensity of ``toy/intensity`` (1: reward a1 * a2)."""
    episodes: int = 10_000
    """Scripted episodes (= transitions) of the dataset."""
    seeds: tuple[int, ...] = (0, 1)
    """Seeds trained side by side (vmapped)."""
    teacher_steps: int = 2000
    """Updates of the flow teacher (stage 1)."""
    steps: int = 4000
    """Updates of critic + students (stage 2)."""
    every: int = 200
    """Measure every this many updates."""
    samples: int = 512
    """Noise draws per measurement (the assignment is samples x samples)."""
    grid: int = 41
    """Points per axis of the action-box grid where grad Q_tot is also evaluated."""
    width: int = 64
    """Width of the 2-layer teacher and students."""
    critic_width: int = 128
    """Width of the 2-layer critic."""
    mixer: str = "vdn"
    """MAC-Flow's mixer (``vdn``, ``qmix``, ...)."""
    alpha: float = 1.0
    """Weight of the distillation loss."""
    shared_noise: bool = False
    """Students also see the whole joint noise (then the students' samples are no longer a
    product of independent marginals: the bound still holds, for their joint)."""
    lr: float = 1e-3
    """Adam learning rate of every network."""
    batch: int = 256
    """Transitions per update."""
    out: Path = Path("docs/figures/toy_bound.png")
    """The plot; the JSON goes beside it unless ``--json``."""
    json: Path | None = None
    """Where to write the JSON of every checkpoint's figures (default: beside ``--out``)."""


def exact_w2(a: np.ndarray, b: np.ndarray) -> float:
    """Exact W2 between two equal-size empirical measures (rows are points)."""
    cost = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols].mean()))


def make_probe(env, samples: int, grid: int):
    """A jitted ``(agent, key) -> dict`` of the quantities measured on one seed's agent."""
    n, d = env.spec.num_agents, env.spec.action_dim
    obs1 = jnp.ones((n, env.spec.obs_dim))  # the one-step toys' constant observation and state
    state1 = obs1.reshape(-1)
    axis = jnp.linspace(-1.0, 1.0, grid)
    box = jnp.stack(jnp.meshgrid(*([axis] * (n * d)), indexing="ij"), -1).reshape(-1, n, d)

    def q_tot(agent, x):  # [B, N, D] unit actions -> [B]
        b = x.shape[0]
        obs = jnp.broadcast_to(obs1, (b, *obs1.shape))
        states = jnp.broadcast_to(state1, (b, state1.shape[0]))
        q = agent._utilities(agent.params["critic"], obs, x).mean(axis=0)
        return agent._mix(agent.params["mixer"], q, states)

    def grad_norms(f, x):
        g = jax.vmap(jax.grad(lambda xi: f(xi[None])[0]))(x)
        return jnp.sqrt((g.reshape(x.shape[0], -1) ** 2).sum(-1))

    payoff = lambda x: jax.vmap(env.payoff)(x)  # noqa: E731

    @jax.jit
    def probe(agent, key):
        obs = jnp.broadcast_to(obs1, (samples, *obs1.shape))
        states = jnp.broadcast_to(state1, (samples, state1.shape[0]))
        # Same key: act and act_teacher draw the same joint noise z, so (teacher, students) is
        # the distillation's coupling; each student still sees only its own z_i.
        teacher = agent.act_teacher(key, obs, states, None, "sample")
        students = agent.act(key, obs, None, "sample")
        points = jnp.concatenate([teacher, students, box])
        return {
            "teacher": teacher,
            "students": students,
            "q_teacher": q_tot(agent, teacher).mean(),
            "q_students": q_tot(agent, students).mean(),
            "r_teacher": payoff(teacher).mean(),
            "r_students": payoff(students).mean(),
            "lq": grad_norms(lambda x: q_tot(agent, x), points).max(),
            "lr": grad_norms(payoff, points).max(),
        }

    return probe


def main(a: Args) -> None:
    enable_compile_cache()
    kwargs = {"zeta": a.zeta} if a.task == "toy/intensity" else {}
    env, ds, sampler = scripted(a.task, a.episodes, **kwargs)
    spec = env.spec
    config = MACFlowConfig(
        teacher_hidden=(a.width,) * 2,
        student_hidden=(a.width,) * 2,
        critic_hidden=(a.critic_width,) * 2,
        teacher_steps=a.teacher_steps,
        mixer=a.mixer,
        alpha=a.alpha,
        shared_noise=a.shared_noise,
        lr=a.lr,
    )
    smooth = a.task == "toy/intensity"  # xor's payoff is a step: no finite Lipschitz constant
    probe = make_probe(env, a.samples, a.grid)
    seeds = list(a.seeds)
    rows: list[dict] = []

    def measure(trainer: Trainer) -> None:
        for i, seed in enumerate(seeds):
            key = jax.random.fold_in(jax.random.PRNGKey(seed), trainer.step)
            m = jax.device_get(probe(seed_slice(trainer.agents, i), key))
            t, s = np.asarray(m["teacher"]), np.asarray(m["students"])
            t, s = t.reshape(len(t), -1), s.reshape(len(s), -1)
            w2 = exact_w2(t, s)
            proxy = float(np.sqrt(((t - s) ** 2).sum(-1).mean()))
            lq = float(m["lq"])
            row = {
                "seed": seed,
                "step": trainer.step,
                "stage": "teacher" if trainer.step <= a.teacher_steps else "policy",
                "w2": w2,
                "w2_proxy": proxy,
                "lq": lq,
                "bound": lq * w2,
                "bound_proxy": lq * proxy,
                "gap_critic": abs(float(m["q_teacher"]) - float(m["q_students"])),
                "gap_true": abs(float(m["r_teacher"]) - float(m["r_students"])),
                "q_teacher": float(m["q_teacher"]),
                "q_students": float(m["q_students"]),
                "return_teacher": float(m["r_teacher"]),
                "return_students": float(m["r_students"]),
            }
            if smooth:
                row["lr_true"] = float(m["lr"])
                row["bound_true"] = float(m["lr"]) * w2
            rows.append(row)

    start = time.perf_counter()
    trainer = Trainer(MACFlow, spec, config, seeds, a.batch)
    measure(trainer)
    trainer.stage(sampler, "teacher", a.teacher_steps, a.every, on_chunk=measure)
    trainer.stage(sampler, "policy", a.steps, a.every, prepare=True, on_chunk=measure)
    elapsed = time.perf_counter() - start

    data = ds.stats()["return_mean"]
    title = f"{a.task}" + (f" zeta={a.zeta}" if smooth else "")
    variant = ", shared noise" if a.shared_noise else ""
    print(
        f"{title}: MAC-Flow {config.mixer}{variant}, 2x{a.width} teacher/students, "
        f"2x{a.critic_width} critic, {a.teacher_steps} teacher + {a.steps} policy updates, "
        f"seeds {seeds}, {a.samples} samples per checkpoint ({elapsed:.0f} s); "
        f"data return {data:.3f}"
    )
    header = (
        f"{'seed':>4} {'update':>6} {'W2':>7} {'proxy':>7} {'L_Q':>7} {'L_Q*W2':>8} "
        f"{'gap(Q)':>8} {'ratio':>7} {'gap(r)':>7} {'R_teach':>7} {'R_stud':>7}"
    )
    print(header)
    show = {a.teacher_steps, a.teacher_steps + a.steps, 0}
    show |= {a.teacher_steps + (a.steps * k) // 4 // a.every * a.every for k in (1, 2, 3)}
    for r in rows:
        if r["step"] in show:
            ratio = r["bound"] / r["gap_critic"] if r["gap_critic"] > 0 else float("inf")
            print(
                f"{r['seed']:>4} {r['step']:>6} {r['w2']:7.4f} {r['w2_proxy']:7.4f} "
                f"{r['lq']:7.3f} {r['bound']:8.4f} {r['gap_critic']:8.4f} {ratio:7.2f} "
                f"{r['gap_true']:7.4f} {r['return_teacher']:7.3f} {r['return_students']:7.3f}"
            )
    summary = {}
    for seed in seeds:
        mine = [r for r in rows if r["seed"] == seed]
        ratios = [r["bound"] / r["gap_critic"] for r in mine if r["gap_critic"] > 0]
        below = all(r["gap_critic"] <= r["bound"] for r in mine)
        below_proxy = all(r["w2"] <= r["w2_proxy"] + 1e-6 for r in mine)
        worst = min(mine, key=lambda r: r["bound"] / max(r["gap_critic"], 1e-12))
        summary[str(seed)] = {
            "critic_gap_below_bound_everywhere": below,
            "min_ratio_bound_over_gap": min(ratios) if ratios else None,
            "at_step": worst["step"],
            "checkpoints": len(mine),
            "w2_never_above_proxy": below_proxy,
        }
        if smooth:
            summary[str(seed)]["true_gap_below_lr_w2_everywhere"] = all(
                r["gap_true"] <= r["bound_true"] for r in mine
            )
        print(
            f"seed {seed}: critic gap <= L_Q * W2 at every one of {len(mine)} checkpoints: "
            f"{below}; smallest bound/gap {min(ratios) if ratios else float('nan'):.2f} "
            f"(update {worst['step']}); exact W2 <= coupled proxy everywhere: {below_proxy}"
            + (
                f"; true gap <= L_r * W2 everywhere: "
                f"{summary[str(seed)]['true_gap_below_lr_w2_everywhere']}"
                if smooth
                else ""
            )
        )
    print(
        "note: L_Q is a sampled maximum of |grad Q_tot|, a lower estimate of the critic's true "
        "Lipschitz constant, so L_Q * W2 is an estimate of the bound, not a certified one."
    )

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    series = [
        ("gap_critic", "gap under the critic |E Q(teacher) - E Q(students)|", "C0", "-"),
        ("bound", "L_Q * W2 (exact W2)", "C3", "-"),
        ("bound_proxy", "L_Q * W2 proxy (coupled)", "C3", ":"),
        ("gap_true", "gap under the true payoff", "C2", "-"),
    ]
    if smooth:
        series.append(("bound_true", "L_r * W2 (payoff's constant)", "C2", ":"))
    for j, seed in enumerate(seeds):
        mine = [r for r in rows if r["seed"] == seed]
        steps = [r["step"] for r in mine]
        for key, label, color, style in series:
            vals = [max(r[key], 1e-6) for r in mine]
            ax.plot(steps, vals, style, color=color, alpha=1.0 if j == 0 else 0.45,
                    label=label if j == 0 else None)  # fmt: skip
        ax2.plot(steps, [r["w2"] for r in mine], "-", color="C4", alpha=1.0 if j == 0 else 0.45,
                 label="W2 exact" if j == 0 else None)  # fmt: skip
        ax2.plot(steps, [r["w2_proxy"] for r in mine], ":", color="C4",
                 alpha=1.0 if j == 0 else 0.45, label="W2 proxy" if j == 0 else None)  # fmt: skip
    lq_ax = ax2.twinx()
    for j, seed in enumerate(seeds):
        mine = [r for r in rows if r["seed"] == seed]
        label = "L_Q (sampled)" if j == 0 else None
        lq_ax.plot([r["step"] for r in mine], [r["lq"] for r in mine], "--", color="C1",
                   alpha=1.0 if j == 0 else 0.45, label=label)  # fmt: skip
    for axis in (ax, ax2):
        axis.axvline(a.teacher_steps, color="grey", lw=0.8)
        axis.set_xlabel("update (grey line: teacher stage ends, critic + students start)")
    ax.set_yscale("log")
    ax.set_ylabel("value (log scale)")
    ax.set_title(f"{title}{variant}: value gap vs L_Q * W2 (seed 0 solid, others faint)")
    ax.legend(fontsize=8, loc="lower left")
    ax2.set_ylabel("W2 (unit action box)")
    lq_ax.set_ylabel("L_Q = max |grad_a Q_tot| (sampled)")
    ax2.set_title("W2(teacher, product of students) and the critic's L_Q")
    h1, l1 = ax2.get_legend_handles_labels()
    h2, l2 = lq_ax.get_legend_handles_labels()
    ax2.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper right")
    save_png(fig, a.out)
    record = {
        "command": "python benchmarks/toy_bound.py",
        "args": dataclasses.asdict(a),
        "data_return": data,
        "summary": summary,
        "checkpoints": rows,
        "seconds": elapsed,
    }
    write_json(a.json or a.out.with_suffix(".json"), record)
    print(f"wrote {a.out} and {a.json or a.out.with_suffix('.json')}")


if __name__ == "__main__":
    main(tyro.cli(Args))
