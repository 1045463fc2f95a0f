"""A run directory: resolved config, metrics (CSV + JSONL, optional TensorBoard), evaluations in
the marl-eval layout, and atomically written checkpoints.

    runs/<name>/
      config.json            everything needed to rebuild and resume the run
      metrics.csv            training metrics, one row per (log step, seed), averaged over the K
                             updates of the jitted call
      evals.csv              one row per (evaluation, seed, noise mode); ``train_seconds`` is
                             the training wall clock so far (evaluations excluded)
      metrics.jsonl          both kinds of rows as JSON lines
      marl_eval.json         env -> task -> algo -> run_<seed> -> step_<i> (marl-eval's layout;
                             i numbers the evaluations, step_count is the update)
      checkpoints/latest.msgpack   all seeds' agents and the update counter
      final.json             the final evaluation (10x episodes; marl-eval "absolute metrics")
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from flax import serialization

from macflow.files import write_atomic

CHECKPOINT = Path("checkpoints") / "latest.msgpack"


def save_checkpoint(run: Path, agents: Any, step: int) -> Path:
    path = run / CHECKPOINT
    state = {"step": step, "agents": serialization.to_state_dict(agents)}
    write_atomic(path, serialization.msgpack_serialize(state))
    return path


def load_checkpoint(run: Path, template: Any) -> tuple[Any, int]:
    """Restore agents shaped like ``template`` and the update counter."""
    raw = serialization.msgpack_restore((run / CHECKPOINT).read_bytes())
    return serialization.from_state_dict(template, raw["agents"]), int(raw["step"])


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class RunLog:
    """Appends metrics; on resume, drops rows written after the checkpoint being resumed."""

    def __init__(self, run: Path, train_columns: list[str], tensorboard: bool = False):
        self.run = run
        self.train_columns = ["step", "seed", "stage", *train_columns]
        self.eval_columns = [
            "step",
            "seed",
            "mode",
            "episodes",
            "return_mean",
            "return_std",
            "return_min",
            "return_max",
            "normalised_score",
            "win_rate",
            "train_seconds",  # last: readers of the older columns keep working
        ]
        self.tb = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError as err:
                raise ImportError(
                    "--tensorboard needs tensorboardX: pip install -e '.[tensorboard]'"
                ) from err
            self.tb = SummaryWriter(str(run / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Forget everything logged after update ``step`` (it will be recomputed)."""
        for name, columns in (
            ("metrics.csv", self.train_columns),
            ("evals.csv", self.eval_columns),
        ):
            kept = [r for r in _rows(self.run / name) if int(r["step"]) <= step]
            self._write_csv(name, columns, kept, mode="w")
        jsonl = self.run / "metrics.jsonl"
        if jsonl.exists():
            lines = [ln for ln in jsonl.read_text().splitlines() if json.loads(ln)["step"] <= step]
            write_atomic(jsonl, "".join(ln + "\n" for ln in lines))
        marl = self.run / "marl_eval.json"
        if marl.exists():
            data = json.loads(marl.read_text())
            for env in data.values():
                for task in env.values():
                    for algo in task.values():
                        for seed_run in algo.values():
                            for k in [k for k in seed_run if k.startswith("step_")]:
                                if seed_run[k]["step_count"] > step:
                                    del seed_run[k]
            write_atomic(marl, json.dumps(data, indent=1))

    def _write_csv(self, name, columns, rows, mode="a"):
        path = self.run / name
        new = mode == "w" or not path.exists()
        with open(path, mode, newline="") as f:
            w = csv.DictWriter(f, columns, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerows(rows)

    def _jsonl(self, rows):
        with open(self.run / "metrics.jsonl", "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")

    def train(self, step: int, stage: str, per_seed: list[dict[str, float]], seeds) -> None:
        rows = [
            {"step": step, "seed": s, "stage": stage, **m}
            for s, m in zip(seeds, per_seed, strict=True)
        ]
        self._write_csv("metrics.csv", self.train_columns, rows)
        self._jsonl([{"kind": "train", **r} for r in rows])
        if self.tb is not None:
            for s, m in zip(seeds, per_seed, strict=True):
                for k, v in m.items():
                    self.tb.add_scalar(f"seed_{s}/{k}", v, step)

    def evaluation(self, step: int, mode: str, results: list[dict], seeds) -> None:
        rows = []
        for s, r in zip(seeds, results, strict=True):
            summary = {k: v for k, v in r.items() if k != "returns"}
            rows.append(
                {"step": step, "seed": s, "mode": mode, "episodes": len(r["returns"]), **summary}
            )
        self._write_csv("evals.csv", self.eval_columns, rows)
        self._jsonl([{"kind": "eval", **r} for r in rows])
        if self.tb is not None:
            for s, r in zip(seeds, results, strict=True):
                self.tb.add_scalar(f"seed_{s}/eval_{mode}/return_mean", r["return_mean"], step)

    def marl_eval(
        self, env_id: str, algo: str, step: int, results: list[dict], seeds, absolute=False
    ):
        """Record per-episode returns in marl-eval's JSON layout (``sample`` noise mode)."""
        env_name, _, task = env_id.partition("/")
        path = self.run / "marl_eval.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        runs = data.setdefault(env_name, {}).setdefault(task, {}).setdefault(algo, {})
        for s, r in zip(seeds, results, strict=True):
            entry = {"step_count": step, "return": r["returns"]}
            if "win_rate" in r:
                entry["win_rate"] = [r["win_rate"]]
            run = runs.setdefault(f"run_{s}", {})
            index = sum(k.startswith("step_") for k in run)  # marl-eval numbers evaluations
            run["absolute_metrics" if absolute else f"step_{index}"] = entry
        write_atomic(path, json.dumps(data, indent=1))

    def close(self):
        if self.tb is not None:
            self.tb.close()
