"""Offline-to-online fine-tuning against its alternatives, on one dataset, 3 seeds (issue 19).

    python benchmarks/finetune.py --dataset datasets/mpe-spread/medium --out runs/finetune-spread
    python benchmarks/finetune.py --dataset datasets/smax-3m/medium --out runs/finetune-3m

Four curves of the normalised return (win rate on SMAX) against environment steps:

(a) MAC-Flow trained offline at the results table's budget and coefficients, then fine-tuned
    (``macflow finetune``) for ``--env-steps``;
(b) the same offline run continued offline for the same number of updates (``train --resume``
    with ``--steps`` raised; its updates are put on the environment-step axis at the rate the
    fine-tuning does them);
(c) MA-TD3+BC, trained and fine-tuned the same way;
(d) the behaviour trainer (MAPPO) from scratch at the same environment-step budget.

For (a) and (c) it reports the **dip** (the lowest evaluation in the first 10% of the budget
minus the start) and the **final gain** (final evaluation minus the start), mean and 95%
bootstrap interval over the seeds. Every step is a macflow command (printed), so a stopped
benchmark resumes: finished runs are reused, unfinished ones resumed. Writes ``summary.json``
and ``finetune.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ALPHA = {"mpe": {"macflow": "0.01", "matd3bc": "10"}, "smax": {"macflow": "0.01", "matd3bc": "300"}}
TABLE = [
    "--log-every",
    "500",
    "--eval-every",
    "0",
    "--checkpoint-every",
    "0",
    "--agent.lr",
    "0.001",
]


def _run(argv: list[str]) -> None:
    print("$ macflow " + " ".join(argv), flush=True)
    subprocess.run([sys.executable, "-m", "macflow", *argv], check=True)


def _hidden(args, algo: str) -> list[str]:
    if algo == "macflow":
        return [
            "--agent.teacher-hidden", "128", "128", "--agent.student-hidden", "128", "128",
            "--agent.critic-hidden", "128", "128", "--agent.teacher-steps", str(args.offline_steps),
        ]  # fmt: skip
    return ["--agent.actor-hidden", "128", "128", "--agent.critic-hidden", "128", "128"]


def offline(args, algo: str) -> Path:
    run = args.out / algo
    if not (run / "final.json").exists():
        family = args.task.split("/")[0]
        resume = ["--resume"] if run.exists() else []
        _run([
            "train", "--dataset", str(args.dataset), "--algo", algo, "--seeds", *args.seeds,
            "--steps", str(args.offline_steps), *TABLE, *_hidden(args, algo),
            "--agent.alpha", ALPHA[family][algo], "--out", str(args.out), "--name", algo,
            "--no-progress", *resume,
        ])  # fmt: skip
    return run


def finetune(args, run: Path) -> Path:
    out = run / "finetune"
    if not (out / "final.json").exists():
        resume = ["--resume"] if (out / "config.json").exists() else []
        _run([
            "finetune", str(run), "--env-steps", str(args.env_steps), "--envs", str(args.envs),
            "--updates-per-step", str(args.updates), "--log-every", str(args.every),
            "--eval-every", str(args.every), "--checkpoint-every", str(args.every),
            "--no-progress", *resume,
        ])  # fmt: skip
    return out


def continued(args, run: Path) -> Path:
    """The offline run continued offline for the fine-tuning's number of updates."""
    copy = args.out / "continued"
    updates = args.env_steps // args.envs * args.updates
    every = args.every // args.envs * args.updates
    final = copy / "final.json"
    if (
        not final.exists()
        or json.loads(final.read_text())["step"] < 2 * args.offline_steps + updates
    ):
        if not copy.exists():
            shutil.copytree(run, copy, ignore=shutil.ignore_patterns("finetune"))
        family = args.task.split("/")[0]
        _run([
            "train", "--dataset", str(args.dataset), "--algo", "macflow", "--seeds", *args.seeds,
            "--steps", str(args.offline_steps + updates), "--log-every", "500",
            "--eval-every", str(every), "--checkpoint-every", "0", "--agent.lr", "0.001",
            *_hidden(args, "macflow"), "--agent.alpha", ALPHA[family]["macflow"],
            "--out", str(args.out), "--name", "continued", "--resume", "--no-progress",
        ])  # fmt: skip
    return copy


def scratch(args) -> list[list[tuple[int, float]]]:
    """MAPPO from scratch: each seed's (env steps, mean return) snapshots."""
    from macflow.envs import make_env
    from macflow.trainers.ppo import PPO

    env = make_env(args.task)
    ppo = PPO(env_steps=args.env_steps, num_envs=args.envs * 4, snapshots=10, eval_episodes=64)
    curves = []
    for seed in args.seeds:
        curve = ppo.fit(env, int(seed), args.out / "mappo" / f"seed{seed}")
        curves.append([(s.env_steps, s.return_mean) for s in curve.snapshots])
    return curves


def _evals(path: Path, metric: str) -> dict[int, dict[int, float]]:
    """seed -> step -> metric of the sample-mode evaluations (the final one at its step)."""
    out: dict[int, dict[int, float]] = {}
    with open(path / "evals.csv") as f:
        for r in csv.DictReader(f):
            if r["mode"] in ("sample", "final-sample"):
                value = r[metric] if r[metric] != "" else r["return_mean"]
                out.setdefault(int(r["seed"]), {})[int(r["step"])] = float(value)
    return out


def _ci(values: list[float], reps: int = 2000) -> list[float]:
    rng = np.random.default_rng(0)
    x = np.asarray(values)
    means = rng.choice(x, (reps, len(x))).mean(axis=1)
    return [float(x.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def summarise(curves: dict[int, dict[int, float]], budget: int) -> dict:
    dips, gains = [], []
    for by_step in curves.values():
        start, final = by_step[0], by_step[max(by_step)]
        early = [v for s, v in by_step.items() if 0 < s <= budget // 10] or [start]
        dips.append(min(0.0, min(early) - start))
        gains.append(final - start)
    return {"dip": _ci(dips), "gain": _ci(gains), "start": _ci([c[0] for c in curves.values()]),
            "final": _ci([c[max(c)] for c in curves.values()])}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--env-steps", type=int, default=200_000)
    parser.add_argument("--envs", type=int, default=16)
    parser.add_argument("--updates", type=int, default=4, help="updates per vector step")
    parser.add_argument("--every", type=int, default=10_000, help="env steps between evals")
    parser.add_argument("--seeds", nargs="+", default=["0", "1", "2"])
    parser.add_argument("--offline-steps", type=int, default=10_000, help="the table's budget")
    args = parser.parse_args()
    if args.every % args.envs or args.env_steps % args.every:
        parser.error("--every must be a multiple of --envs and divide --env-steps")
    if (args.every // args.envs * args.updates) % 500:
        parser.error("the continued run evaluates every --every / --envs * --updates updates: "
                     "make that a multiple of 500 (its --log-every)")  # fmt: skip
    from macflow.data import read_meta

    meta = read_meta(args.dataset)
    args.task = meta["spec"].env_id
    metric = "win_rate" if args.task.startswith("smax/") else "normalised_score"
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "task": args.task, "dataset": str(args.dataset), "metric": metric,
        "env_steps": args.env_steps, "envs": args.envs, "updates_per_step": args.updates,
    }  # fmt: skip
    curves = {}
    for algo in ("macflow", "matd3bc"):
        run = offline(args, algo)
        curves[algo] = _evals(finetune(args, run), metric)
        result[algo] = summarise(curves[algo], args.env_steps)
    rate = args.envs / args.updates  # environment steps per update of the fine-tuning
    cont = _evals(continued(args, args.out / "macflow"), metric)
    # It starts from the same agents as (a): (a)'s evaluation at 0 is its start too.
    begin = 2 * args.offline_steps  # the continued run's first update past the offline run
    curves["continued"] = {
        s: {
            0: curves["macflow"][s][0],
            **{int((k - begin) * rate): x for k, x in v.items() if k > begin},
        }
        for s, v in cont.items()
    }
    result["continued"] = summarise(curves["continued"], args.env_steps)
    reference = meta["reference_returns"]
    mappo = scratch(args)
    if metric == "normalised_score" and reference:
        lo, hi = reference["random"], reference["expert"]
        mappo = [[(s, 100 * (r - lo) / (hi - lo)) for s, r in c] for c in mappo]
    curves["mappo"] = {i: dict(c) for i, c in enumerate(mappo)}
    result["mappo_final"] = _ci([c[-1][1] for c in mappo])
    result["curves"] = {k: {str(s): v for s, v in c.items()} for k, c in curves.items()}
    (args.out / "summary.json").write_text(json.dumps(result, indent=1))
    _plot(curves, args, metric)
    for key in ("macflow", "matd3bc", "continued"):
        r = result[key]
        gain, dip = r["gain"], r["dip"][0]
        print(f"{key}: start {r['start'][0]:.1f}, final {r['final'][0]:.1f}, gain {gain[0]:.1f} "
              f"[{gain[1]:.1f}, {gain[2]:.1f}], dip {dip:.1f}")  # fmt: skip
    print(f"mappo from scratch: final {result['mappo_final'][0]:.1f}")


def _plot(curves, args, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"macflow": "MAC-Flow fine-tuned", "continued": "MAC-Flow continued offline",
              "matd3bc": "MA-TD3+BC fine-tuned", "mappo": "MAPPO from scratch"}  # fmt: skip
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in labels.items():
        steps = sorted(set().union(*(c.keys() for c in curves[key].values())))
        rows = [[c.get(s, np.nan) for s in steps] for c in curves[key].values()]
        mean = np.nanmean(rows, axis=0)
        ax.plot(steps, mean, label=label)
        ax.fill_between(steps, np.nanmin(rows, axis=0), np.nanmax(rows, axis=0), alpha=0.2)
    ax.set_xlabel("environment steps per seed")
    ax.set_ylabel("win rate" if metric == "win_rate" else "normalised return")
    ax.set_title(f"{args.task}: offline-to-online ({len(args.seeds)} seeds, min-max band)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "finetune.png", dpi=120)


if __name__ == "__main__":
    main()
