"""toy/xor: the failure mode of independent noise, and the ``shared_noise`` fix.

The team earns 1 when the two agents' signs differ; the scripted data sit at (+1,-1) and (-1,+1)
(Gaussian noise 0.1). MAC-Flow's joint teacher (paper eq. 1) keeps both modes. Students distilled
under the noise coupling (eq. 2) see only their own noise ``z_i``, so they cannot agree on which
mode to play: the best a squared-error student can do is ``E[a*_i | z_i]``, and the team wins
only about half the time. With ``shared_noise`` every student also sees the joint noise ``z``
(regenerated from a seed all agents share at execution, see ``MACFlow.act``), so the students can
reproduce the teacher's joint map ``z -> a*``.

For each Q weight in ``--q-weights`` (0: distillation only; 1: with the VDN critic, which the
non-additive XOR payoff defeats anyway) it trains students without and with shared noise and
reports, per seed and as mean +- std: the environment's return (= P(signs differ)), the sign
agreement and mean |a| of ``--samples`` sampled joint actions, for the teacher too. The plot
scatters 1000 joint actions of the data, the teacher, and both kinds of students.

    python benchmarks/toy_xor.py
    python benchmarks/toy_xor.py --q-weights 0 --seeds 0 1
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

from macflow import enable_compile_cache
from macflow.agents.macflow import MACFlowConfig
from macflow.data import load
from macflow.envs.toys import XorData

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Args:
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds trained side by side (vmapped)."""
    q_weights: tuple[float, ...] = (0.0, 1.0)
    """Q weights to train with (0 isolates the distillation)."""
    scatter_q: float = 0.0
    """Which Q weight's students the scatter plot shows."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden widths of the teacher, students and critic."""
    teacher_steps: int = 2000
    """Teacher (flow matching) updates."""
    steps: int = 2000
    """Student (+ critic) updates after the teacher's."""
    batch: int = 128
    """Transitions per update."""
    lr: float = 1e-3
    """Adam learning rate."""
    episodes: int = 10_000
    """Dataset episodes (one step each)."""
    samples: int = 4000
    """Sampled joint actions per seed for the statistics (and episodes of the evaluation)."""
    png: Path = Path("docs/figures/toy_xor.png")
    """Plot path."""
    json: Path = Path("docs/figures/toy_xor.json")
    """Numbers path."""


def stats(actions: np.ndarray) -> dict[str, float]:
    """``actions [E, 2]``: P(signs differ) (the payoff), sign agreement, mean |a|, P(a_1 > 0)."""
    pos = actions > 0
    agree = float(np.mean(pos[:, 0] == pos[:, 1]))
    return {"return": 1 - agree, "agreement": agree, "mean_abs": float(np.abs(actions).mean()),
            "p_a1_positive": float(pos[:, 0].mean())}  # fmt: skip


def sampled(agents, samples: int, teacher: bool) -> np.ndarray:
    """``[S, E, 2]`` sampled joint actions of every seed's students (or joint teacher)."""
    obs, key = jnp.ones((samples, 2, 1)), jax.random.PRNGKey(7)

    def one(agent):
        if teacher:
            return agent.act_teacher(key, obs, jnp.ones((samples, 2)), None, "sample")
        return agent.act(key, obs, None, "sample")

    return np.asarray(jax.vmap(one)(agents))[..., 0]


def per_seed(actions: np.ndarray, env_returns=None) -> dict:
    rows = [stats(a) for a in actions]
    out = {k: tc.summary([r[k] for r in rows]) for k in rows[0]}
    if env_returns is not None:
        out["env_return"] = tc.summary(env_returns)
    return out


def line(name: str, s: dict) -> str:
    env = f" (env {s['env_return']['mean']:.3f})" if "env_return" in s else ""
    return (
        f"{name:30} return {s['return']['mean']:.3f} +- {s['return']['std']:.3f}{env}  "
        f"sign agreement {s['agreement']['mean']:.3f}  mean |a| {s['mean_abs']['mean']:.2f}  "
        f"P(a1>0) {s['p_a1_positive']['mean']:.2f}"
    )


def main(a: Args) -> None:
    enable_compile_cache()
    base = MACFlowConfig(
        teacher_hidden=a.hidden, student_hidden=a.hidden, critic_hidden=a.hidden, lr=a.lr,
        teacher_steps=a.teacher_steps,
    )  # fmt: skip
    results, clouds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        data = tc.dataset(Path(tmp), "toy/xor", XorData(), a.episodes)
        clouds["data"] = np.asarray(load(data).arrays["actions"])[:1000, :, 0]
        results["data"] = per_seed(np.asarray(load(data).arrays["actions"])[None, ..., 0])
        print(line("data", results["data"]))
        for q in a.q_weights:
            for shared in (False, True):
                config = dataclasses.replace(base, q_weight=q, shared_noise=shared)
                name = f"students{' + shared noise' if shared else ''} q={q:g}"
                run, agents = tc.fit(data, Path(tmp), name.replace(" ", "_"), config, a.steps,
                                     a.seeds, a.batch, a.samples)  # fmt: skip
                acts = sampled(agents, a.samples, teacher=False)
                results[name] = per_seed(acts, tc.final_returns(run))
                results[name]["config"] = dataclasses.asdict(config)
                if "teacher" not in results:  # the teacher stage is the same in every run
                    teacher = sampled(agents, a.samples, teacher=True)
                    results["teacher"] = per_seed(teacher)
                    clouds["teacher"] = teacher[0, :1000]
                    print(line("joint teacher", results["teacher"]))
                print(line(name, results[name]))
                if q == a.scatter_q:
                    clouds["students + shared noise" if shared else "students"] = acts[0, :1000]
    ind, sh = (results[f"students{s} q={a.q_weights[0]:g}"]["return"]["mean"]
               for s in ("", " + shared noise"))  # fmt: skip
    print(f"return ratio shared / independent (q={a.q_weights[0]:g}): {sh / max(ind, 1e-9):.2f}")

    tc.write_json(
        a.json,
        {
            "args": tc.plain(a),
            "results": results,
        },
    )
    fig, axes = plt.subplots(1, len(clouds), figsize=(4 * len(clouds), 4), sharey=True)
    for ax, (name, pts) in zip(axes, clouds.items(), strict=True):
        s = stats(pts)
        ax.scatter(pts[:, 0], pts[:, 1], s=4, alpha=0.3, label=f"return {s['return']:.2f}")
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set(xlim=(-1.1, 1.1), ylim=(-1.1, 1.1), xlabel="$a_1$", title=name)
        ax.legend(loc="upper right", fontsize=8)
    axes[0].set_ylabel("$a_2$")
    fig.suptitle(f"toy/xor: 1000 joint actions (seed {a.seeds[0]}, students q={a.scatter_q:g})")
    tc.save_png(fig, a.png)
    print(f"wrote {a.png} and {a.json}")


if __name__ == "__main__":
    main(tyro.cli(Args))
