"""toy/coordination: does MAC-Flow's critic move the students to the rare optimum (1,1)?

The payoff is 0 for (0,0), 1 for (0,1) and (1,0), 2 for (1,1); the scripted data play (1,1) 5% of
the time and (0,1)/(1,0) otherwise. Three variants of MAC-Flow (paper eq. 1-4) are trained on the
same data, each with ``--seeds`` side by side:

- ``full``: VDN critic ``Q_tot = Q_1 + Q_2`` and the Q term (eq. 3-4);
- ``no-Q``: ``q_weight = 0``, flow BC + distillation only (eq. 1-2);
- ``independent``: each ``Q_i(o_i, a_i)`` regressed on the team reward by itself (no IGM mixing).

Reasoning: the payoff is additive (r = a_1 + a_2), so VDN represents it exactly and its utility
gap ``Q_i(1) - Q_i(0)`` is 1. Independent utilities learn ``E[r | a_i]``: 0.575 / 0.525 = 1.095
for ``a_i = 1`` against 1 for ``a_i = 0``, a gap of 0.095, so their pull toward 1 is ~10x weaker
against the same distillation pull toward each agent's data marginal (P(a_i = 1) = 0.525). Without
Q the decentralised students imitate the marginals: P(1,1) = 0.525^2 = 0.28.

Reported per variant: the students' distribution over the 4 joint actions (``--samples`` sampled
decisions per seed), P(1,1), their mean return (in the environment's final evaluation), the greedy
(zero-noise) joint action, and the learnt utility gaps; plus the data's P(1,1).

    python benchmarks/toy_coordination.py
    python benchmarks/toy_coordination.py --alphas 0.03 --seeds 0 1
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
from macflow.envs.toys import CoordinationData

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

JOINT = ("(0,0)", "(0,1)", "(1,0)", "(1,1)")


@dataclasses.dataclass(frozen=True)
class Args:
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds trained side by side (vmapped)."""
    alphas: tuple[float, ...] = (0.03, 1.0)
    """Distillation weights alpha to compare (the no-Q variant does not depend on alpha)."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden widths of the teacher, students and critic."""
    teacher_steps: int = 1500
    """Teacher (flow matching) updates."""
    steps: int = 1500
    """Critic + student updates after the teacher's."""
    batch: int = 128
    """Transitions per update."""
    lr: float = 1e-3
    """Adam learning rate."""
    episodes: int = 10_000
    """Dataset episodes (one step each)."""
    samples: int = 4000
    """Sampled joint decisions per seed for the distribution (and the final evaluation)."""
    png: Path = Path("docs/figures/toy_coordination.png")
    """Plot path."""
    json: Path = Path("docs/figures/toy_coordination.json")
    """Numbers path."""


def variants(a: Args) -> dict[str, MACFlowConfig]:
    base = MACFlowConfig(
        teacher_hidden=a.hidden, student_hidden=a.hidden, critic_hidden=a.hidden, lr=a.lr,
        teacher_steps=a.teacher_steps,
    )  # fmt: skip
    out = {}
    for alpha in a.alphas:
        tag = f" a={alpha:g}" if len(a.alphas) > 1 else ""
        out[f"full (VDN){tag}"] = dataclasses.replace(base, alpha=alpha)
        out[f"independent{tag}"] = dataclasses.replace(base, alpha=alpha, mixer="independent")
    out["no-Q (flow BC)"] = dataclasses.replace(base, alpha=a.alphas[0], q_weight=0.0)
    return out


def joint_distribution(agents, mode: str, samples: int) -> np.ndarray:
    """``[S, 4]`` frequencies of (0,0), (0,1), (1,0), (1,1) in the students' decisions."""
    obs, legal = jnp.ones((samples, 2, 1)), jnp.ones((samples, 2, 2), bool)

    def one(agent):
        act = agent.act(jax.random.PRNGKey(11), obs, legal, mode)
        return jnp.bincount(act[:, 0] * 2 + act[:, 1], length=4) / samples

    return np.asarray(jax.vmap(one)(agents))


def utility_gaps(agents) -> np.ndarray:
    """``[S, N]`` target-critic ``Q_i(1) - Q_i(0)`` (heads averaged)."""
    q = jax.vmap(lambda g: g._critic().apply(g.target["critic"], jnp.ones((1, 2, 1))))(agents)
    q = np.asarray(q).mean(axis=1)[:, 0]
    return q[..., 1] - q[..., 0]


def main(a: Args) -> None:
    enable_compile_cache()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = tc.dataset(Path(tmp), "toy/coordination", CoordinationData(), a.episodes)
        acts = np.asarray(load(data).arrays["actions"])
        data_dist = np.bincount(acts[:, 0] * 2 + acts[:, 1], minlength=4) / len(acts)
        print(f"data: P(joint) {dict(zip(JOINT, data_dist.round(4).tolist(), strict=True))}")
        for name, config in variants(a).items():
            run, agents = tc.fit(data, Path(tmp), name.replace(" ", "_"), config, a.steps,
                                 a.seeds, a.batch, a.samples)  # fmt: skip
            dist = joint_distribution(agents, "sample", a.samples)
            greedy = joint_distribution(agents, "zero", 1)
            gaps = utility_gaps(agents) if config.q_weight else None
            results[name] = {
                "config": dataclasses.asdict(config),
                "p11": tc.summary(dist[:, 3]),
                "distribution": {j: tc.summary(dist[:, i]) for i, j in enumerate(JOINT)},
                "return": tc.summary(tc.final_returns(run)),
                "greedy_joint_action": [JOINT[int(np.argmax(g))] for g in greedy],
                "q_gap": None if gaps is None else tc.summary(gaps.mean(axis=1)),
            }
            r = results[name]
            gap = "" if gaps is None else f"  Q_i(1)-Q_i(0) {r['q_gap']['mean']:.3f}"
            print(
                f"{name:22} P(1,1) {r['p11']['mean']:.3f} +- {r['p11']['std']:.3f}  "
                f"return {r['return']['mean']:.3f} +- {r['return']['std']:.3f}  "
                f"greedy {r['greedy_joint_action']}{gap}"
            )
    ref = results[next(iter(results))]["p11"]["mean"]
    for name, r in results.items():
        print(f"  P(1,1) {name:22} / full: {r['p11']['mean'] / max(ref, 1e-9):.2f}")

    tc.write_json(
        a.json,
        {
            "args": tc.plain(a),
            "data_distribution": dict(zip(JOINT, data_dist.tolist(), strict=True)),
            "data_p11": float(data_dist[3]),
            "variants": results,
        },
    )
    fig, ax = plt.subplots(figsize=(8, 4))
    names = ["data", *results]
    width = 0.8 / len(names)
    x = np.arange(4)
    for k, name in enumerate(names):
        if name == "data":
            mean, err = data_dist, None
        else:
            d = results[name]["distribution"]
            mean = np.array([d[j]["mean"] for j in JOINT])
            err = np.array([d[j]["std"] for j in JOINT])
        ax.bar(x + (k - (len(names) - 1) / 2) * width, mean, width, yerr=err, capsize=3, label=name)
    ax.set_xticks(x, JOINT)
    ax.set_xlabel("joint action (payoff 0, 1, 1, 2)")
    ax.set_ylabel("probability (students: mean +- std over seeds)")
    ax.set_title(f"toy/coordination: decentralised students' joint actions ({len(a.seeds)} seeds)")
    ax.legend(fontsize=8)
    tc.save_png(fig, a.png)
    print(f"wrote {a.png} and {a.json}")


if __name__ == "__main__":
    main(tyro.cli(Args))
