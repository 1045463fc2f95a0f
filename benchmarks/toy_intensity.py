"""toy/intensity: W2 between the joint teacher and its students, and the value gap, against zeta.

The reward ``r = (1 - zeta) (a_1^2 + a_2^2) / 2 + zeta a_1 a_2`` goes from a sum of per-agent
terms (zeta = 0) to the pure interaction ``a_1 a_2`` (zeta = 1); the data are the coupled modes
(+m,+m) and (-m,-m). For every zeta in ``--zetas`` MAC-Flow is trained on that task's data
(``--q-weights``: 0 isolates the distillation, paper eq. 1-2; >0 adds the VDN critic, eq. 3-4),
and measured per seed:

- ``w2``: the exact empirical 2-Wasserstein distance between ``--w2-samples`` joint samples of
  the teacher and as many of the students' (product) samples, by optimal assignment
  (``scipy.optimize.linear_sum_assignment`` on squared distances). ``w2_floor`` is the same
  estimator between two independent teacher sample sets: the finite-sample floor.
- ``coupled_rms``: ``sqrt(E ||teacher(z) - students(z)||^2)`` with the same joint noise ``z``,
  the distillation's coupling (eq. 2), an upper bound on the true W2 without sampling floor.
- ``gap``: ``|E r(teacher) - E r(students)|`` under the true payoff, on ``--value-samples`` each;
  ``signed_gap`` (plotted) keeps the sign: with a Q term the students may beat the teacher.

Prediction: independent students that match the teacher's marginals keep every per-agent term
and lose the interaction, ``E[a_1 a_2] = m^2 -> E[a_1] E[a_2] = 0``: a gap of ``zeta m^2`` (with
the data's m), or ``zeta Cov_teacher(a_1, a_2)`` with the trained teacher's own coupling. The
script also splits each gap into its per-agent part ``(1 - zeta) dE[(a_1^2 + a_2^2) / 2]`` and its
interaction part ``zeta dE[a_1 a_2]``, which shows how far the students are from matching the
marginals. With ``q_weight = 0`` nothing in training reads the reward, so the networks (hence
W2) are the same for every zeta up to floating point; only the payoff changes.

    python benchmarks/toy_intensity.py
    python benchmarks/toy_intensity.py --zetas 0 1 --seeds 0 --q-weights 0 --no-shared-noise
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import toy_common as tc
import tyro
from scipy.optimize import linear_sum_assignment

from macflow import enable_compile_cache
from macflow.agents.macflow import MACFlowConfig
from macflow.envs.toys import IntensityData

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Args:
    zetas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    """Interaction intensities to train and measure."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds trained side by side (vmapped)."""
    q_weights: tuple[float, ...] = (0.0, 1.0)
    """Q weights to train with (0 isolates the distillation)."""
    shared_noise: bool = True
    """Also train students with the shared joint noise (they can reproduce the coupling)."""
    mode: float = 0.8
    """Position m of the data's modes (+m,+m), (-m,-m)."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden widths of the teacher, students and critic."""
    teacher_steps: int = 4000
    """Teacher (flow matching) updates."""
    steps: int = 5000
    """Student (+ critic) updates after the teacher's (shared-noise students need ~4000 to fit
    the teacher's map at this width; at 2000 they still erred by 0.02 in squared error)."""
    batch: int = 128
    """Transitions per update."""
    lr: float = 1e-3
    """Adam learning rate."""
    episodes: int = 10_000
    """Dataset episodes (one step each)."""
    w2_samples: int = 512
    """Samples per side of the exact empirical W2."""
    value_samples: int = 20_000
    """Samples per side of the expected rewards."""
    png: Path = Path("docs/figures/toy_intensity.png")
    """Plot path."""
    json: Path = Path("docs/figures/toy_intensity.json")
    """Numbers path."""


def w2(x: np.ndarray, y: np.ndarray) -> float:
    """Exact 2-Wasserstein distance between two equal-size empirical sets ``[E, 2]``."""
    cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols].mean()))


def sampled(agents, n: int, key: int, teacher: bool) -> np.ndarray:
    """``[S, n, 2]`` sampled joint actions of every seed's students (or teacher)."""
    obs, k = jnp.ones((n, 2, 1)), jax.random.PRNGKey(key)

    def one(agent):
        if teacher:
            return agent.act_teacher(k, obs, jnp.ones((n, 2)), None, "sample")
        return agent.act(k, obs, None, "sample")

    return np.asarray(jax.vmap(one)(agents))[..., 0]


def parts(a: np.ndarray) -> tuple[float, float]:
    """``(E[(a_1^2 + a_2^2) / 2], E[a_1 a_2])`` of joint actions ``[E, 2]``."""
    return float(((a**2).sum(-1) / 2).mean()), float((a[:, 0] * a[:, 1]).mean())


def measure(agents, zeta: float, a: Args) -> dict:
    """Per-seed W2, its floor, values, gap and the gap's split (see the module docstring)."""
    t_w2, t_floor = sampled(agents, a.w2_samples, 1, True), sampled(agents, a.w2_samples, 2, True)
    s_w2 = sampled(agents, a.w2_samples, 3, False)
    coupled = sampled(agents, a.value_samples, 4, False)  # the teacher's noise draws of t_val
    t_val, s_val = sampled(agents, a.value_samples, 4, True), sampled(agents, a.value_samples, 5,
                                                                       False)  # fmt: skip
    rows = []
    for i in range(len(a.seeds)):
        (t_sq, t_x), (s_sq, s_x) = parts(t_val[i]), parts(s_val[i])
        t_r, s_r = (1 - zeta) * t_sq + zeta * t_x, (1 - zeta) * s_sq + zeta * s_x
        rows.append({
            "w2": w2(t_w2[i], s_w2[i]), "w2_floor": w2(t_w2[i], t_floor[i]),
            "coupled_rms": float(np.sqrt(((t_val[i] - coupled[i]) ** 2).sum(-1).mean())),
            "teacher_value": t_r, "student_value": s_r, "gap": abs(t_r - s_r),
            "signed_gap": t_r - s_r,
            "gap_per_agent_part": (1 - zeta) * (t_sq - s_sq), "gap_interaction_part":
            zeta * (t_x - s_x), "teacher_E_a1a2": t_x, "student_E_a1a2": s_x,
            "teacher_E_a2": t_sq, "student_E_a2": s_sq,
            "analytic_gap_teacher": zeta * (t_x - t_val[i, :, 0].mean() * t_val[i, :, 1].mean()),
        })  # fmt: skip
    return {k: tc.summary([r[k] for r in rows]) for k in rows[0]}


def main(a: Args) -> None:
    enable_compile_cache()
    base = MACFlowConfig(
        teacher_hidden=a.hidden, student_hidden=a.hidden, critic_hidden=a.hidden, lr=a.lr,
        teacher_steps=a.teacher_steps,
    )  # fmt: skip
    variants = {f"q={q:g}": dataclasses.replace(base, q_weight=q) for q in a.q_weights}
    if a.shared_noise:
        variants |= {f"q={q:g} shared noise": dataclasses.replace(base, q_weight=q,
                     shared_noise=True) for q in a.q_weights}  # fmt: skip
    results: dict[str, dict[str, dict]] = {name: {} for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for zeta in a.zetas:
            data = tc.dataset(Path(tmp), "toy/intensity", IntensityData(mode=a.mode), a.episodes,
                              zeta=zeta)  # fmt: skip
            for name, config in variants.items():
                run, agents = tc.fit(data, Path(tmp), f"{name}-{zeta}".replace(" ", "_"), config,
                                     a.steps, a.seeds, a.batch, a.w2_samples)  # fmt: skip
                m = measure(agents, zeta, a)
                m["env_return"] = tc.summary(tc.final_returns(run))
                m["analytic_gap"] = zeta * a.mode**2
                results[name][f"{zeta:g}"] = m
                ratio = f"{m['gap']['mean'] / m['analytic_gap']:.2f}" if zeta else "-"
                print(
                    f"zeta {zeta:4.2f} {name:16} W2 {m['w2']['mean']:.3f} +- {m['w2']['std']:.3f}"
                    f" (floor {m['w2_floor']['mean']:.3f}, coupled "
                    f"{m['coupled_rms']['mean']:.3f})  teacher "
                    f"{m['teacher_value']['mean']:.3f} students {m['student_value']['mean']:.3f} "
                    f"(env {m['env_return']['mean']:.3f})  gap {m['gap']['mean']:.3f} +- "
                    f"{m['gap']['std']:.3f} = per-agent {m['gap_per_agent_part']['mean']:+.3f} "
                    f"+ interaction {m['gap_interaction_part']['mean']:+.3f}  analytic "
                    f"zeta*m^2 {m['analytic_gap']:.3f} (zeta*Cov_teacher "
                    f"{m['analytic_gap_teacher']['mean']:.3f})  ratio {ratio}"
                )
    tc.write_json(a.json, {"args": tc.plain(a), "results": results})
    zetas = np.asarray(a.zetas)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, by_zeta in results.items():
        rows = [by_zeta[f"{z:g}"] for z in a.zetas]
        mean, std = (
            {
                k: np.array([r[k][stat] for r in rows])
                for k in rows[0]
                if isinstance(rows[0][k], dict)
            }
            for stat in ("mean", "std")
        )
        bars = left.errorbar(zetas, mean["w2"], std["w2"], marker="o", capsize=3, label=name)
        left.plot(zetas, mean["coupled_rms"], ls="--", color=bars[0].get_color(),
                  label=f"same-noise RMS (upper bound) {name}")  # fmt: skip
        right.errorbar(zetas, mean["signed_gap"], std["signed_gap"], marker="o", capsize=3,
                       label=name)  # fmt: skip
    floor = next(iter(results.values()))  # one teacher per zeta, shared by the variants
    floor = [floor[f"{z:g}"]["w2_floor"]["mean"] for z in a.zetas]
    left.plot(zetas, floor, ":", color="grey", label="floor: teacher vs teacher samples")
    right.plot(zetas, zetas * a.mode**2, "k--", label=r"analytic $\zeta m^2$ (marginal-matching)")
    cov = next(iter(results.values()))
    cov = [cov[f"{z:g}"]["analytic_gap_teacher"]["mean"] for z in a.zetas]
    right.plot(zetas, cov, "k:", label=r"$\zeta\,$Cov$_{teacher}(a_1, a_2)$ (marginal-matching)")
    left.set(xlabel=r"interaction intensity $\zeta$", ylabel="W2 (teacher joint, students)",
             title=f"W2 over {a.w2_samples} samples each")  # fmt: skip
    right.axhline(0, color="grey", lw=0.5)
    right.set(xlabel=r"interaction intensity $\zeta$", ylabel="E r(teacher) - E r(students)",
              title="value gap, true payoff (< 0: students beat the teacher)")  # fmt: skip
    for ax in (left, right):  # below the axes: the curves fill the panels
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.15), ncol=2)
    fig.suptitle(f"toy/intensity (m = {a.mode}, {len(a.seeds)} seeds, mean +- std)")
    tc.save_png(fig, a.png)
    print(f"wrote {a.png} and {a.json}")


if __name__ == "__main__":
    main(tyro.cli(Args))
