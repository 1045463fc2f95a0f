"""Shared pieces of ``toy_coordination.py``, ``toy_xor.py`` and ``toy_intensity.py``.

The toys' scripted datasets are collected with macflow's own ``collect`` into a directory, then
MAC-Flow is trained with ``macflow.train.train`` (what ``macflow train`` runs: vmapped seeds,
two stages, final evaluation) and its stacked agents are read back for sampling.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from macflow.agents.macflow import MACFlowConfig
from macflow.data import save
from macflow.data.collect import collect
from macflow.envs import make_env
from macflow.files import write_atomic
from macflow.train import Run, TrainConfig, load_run, train


def dataset(root: Path, task: str, behaviour, episodes: int, **env_kwargs) -> Path:
    """Collect ``episodes`` of ``behaviour`` in ``task`` (env kwargs recorded) into ``root``."""
    path = Path(root) / f"{task.replace('/', '-')}-{len(list(Path(root).glob('*')))}"
    save(collect(make_env(task, **env_kwargs), behaviour, episodes), path)
    return path


def fit(data: Path, out: Path, name: str, config: MACFlowConfig, steps: int, seeds, batch: int,
        episodes: int):  # fmt: skip
    """Train MAC-Flow (``steps`` policy updates after ``config.teacher_steps`` teacher updates)
    on every seed side by side; returns the run and its stacked agents ``[S, ...]``."""
    cfg = TrainConfig(
        dataset=data, steps=steps, batch_size=batch, seeds=tuple(seeds), log_every=500,
        eval_every=0, eval_episodes=episodes, final_eval_factor=1, checkpoint_every=0, out=out,
        name=name, progress=False,
    )  # fmt: skip
    run: Run = train(cfg, config)
    return run, load_run(run.path)[3]


def seed(agents, i: int):
    """Seed ``i``'s agent out of the stacked agents."""
    return jax.tree.map(lambda x: x[i], agents)


def final_returns(run: Run, mode: str = "sample") -> list[float]:
    """Per-seed mean return of the run's final evaluation in the environment."""
    return [r["return_mean"] for r in run.final["modes"][mode]]


def summary(values) -> dict[str, Any]:
    """Mean, std over seeds and the per-seed values."""
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "per_seed": v.tolist()}


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic | jax.Array):
        return np.asarray(obj).tolist()
    return str(obj)  # paths


def write_json(path: Path, data: Any) -> None:
    write_atomic(Path(path), json.dumps(data, indent=2, default=_plain))


def save_png(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    write_atomic(Path(path), buf.getvalue())


def plain(args) -> dict[str, Any]:
    """A script's ``Args`` as JSON-ready values (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(args).items()}
