"""The baselines table of docs/baselines.md: every algorithm on a few datasets, 3 seeds each.

Each cell is one real ``macflow train`` command in a subprocess (its seeds side by side under
``vmap``), so the recorded command is exactly what a user runs. Results (final evaluation of every
seed, both acting modes, wall time, command) are merged into ``--record`` after each cell, and a
cell already there is skipped: an interrupted run resumes at the next cell.

All algorithms get the same budget: ``--steps`` updates of their final stage (flow-based methods
first train their teacher for ``--teacher-steps``), batch 256, and every ``*_hidden`` width of
their config set to ``--width`` (the diffusion network and MAC-Flow's teacher stay equally wide).

    python benchmarks/baselines.py --data-root /work/data            # run the missing cells
    python benchmarks/baselines.py --table                           # print the markdown table
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import tyro

from macflow.agents import get_agent
from macflow.data import load
from macflow.runs import write_atomic

# Dataset directory (under --data-root) of each task in the table.
DATASETS = {"mpe/spread": "mpe-spread/medium", "smax/3m": "smax-3m/medium"}
# Per-algorithm settings that differ from the preset, with the reason beside each.
OVERRIDES: dict[str, dict[str, list[str]]] = {
    # alpha measured on mpe/spread medium (docs/datasets.md): 0.1 beats the preset's 1.
    "macflow": {"mpe/spread": ["--agent.alpha", "0.1"], "smax/3m": []},
}


@dataclasses.dataclass(frozen=True)
class Args:
    data_root: Path = Path("datasets")
    """Where ``macflow collect`` wrote the datasets (``<root>/<task>-<level>``)."""
    tasks: tuple[str, ...] = tuple(DATASETS)
    """Tasks (rows of the table)."""
    algos: tuple[str, ...] = ("bc", "flow-bc", "macflow", "matd3bc", "omiga", "icq", "diffusion")
    """Algorithms; one that cannot run a task's action kind is recorded as n/a."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of every cell."""
    steps: int = 10_000
    """Updates of each algorithm's final stage."""
    teacher_steps: int = 10_000
    """Updates of a flow teacher's stage (MAC-Flow, flow BC)."""
    width: int = 128
    """Width of every hidden layer (two layers)."""
    lr: float = 1e-3
    """Learning rate of every algorithm."""
    preset: str = "paper"
    """Preset of every algorithm of this invocation."""
    extra: str = ""
    """More ``macflow train`` options for every cell, one string: ``"--extra=--agent.alpha 1"``."""
    label: str = ""
    """Suffix of the cells' names in the table for a variant, e.g. ``ql`` -> ``diffusion[ql]``."""
    out: Path = Path("runs/baselines")
    """Parent directory of the run directories."""
    record: Path = Path("docs/baselines.json")
    """JSON file the cells are merged into (keyed by task and algorithm)."""
    table: bool = False
    """Only print the markdown table of everything in ``record``."""


def _agent_flags(algo: str, a: Args, spec) -> list[str] | None:
    """``--agent.*`` flags giving ``algo`` the shared budget; None if it cannot run ``spec``."""
    cls = get_agent(algo)
    try:
        config = cls.presets[a.preset](spec)
        jax.eval_shape(lambda k: cls.create(k, spec, config), jax.random.PRNGKey(0))
    except ValueError:  # e.g. a discrete-only algorithm on a continuous task
        return None
    fields = {f.name for f in dataclasses.fields(config)}
    flags = []
    for name in sorted(fields):
        # Layer widths (tuples); scalar widths such as a mixer's hypernetwork keep the preset's.
        if name.endswith("hidden") and isinstance(getattr(config, name), tuple):
            flags += [f"--agent.{name.replace('_', '-')}", str(a.width), str(a.width)]
    if "lr" in fields:
        flags += ["--agent.lr", str(a.lr)]
    if "teacher_steps" in fields:
        flags += ["--agent.teacher-steps", str(a.teacher_steps)]
    return flags


def _summary(final: dict, ds) -> dict:
    out = {}
    for mode, results in final["modes"].items():
        returns = [r["return_mean"] for r in results]
        scores = [r["normalised_score"] for r in results]
        out[mode] = {
            "return_mean": float(np.mean(returns)),
            "return_std": float(np.std(returns)),
            "normalised_mean": float(np.mean(scores)),
            "normalised_std": float(np.std(scores)),
            "per_seed": returns,
        }
        if "win_rate" in results[0]:
            wins = [r["win_rate"] for r in results]
            out[mode] |= {
                "win_rate_mean": float(np.mean(wins)),
                "win_rate_std": float(np.std(wins)),
            }
    out["data_return"] = ds.stats()["return_mean"]
    return out


def _cell(row: dict | None, mode: str) -> str:
    if row is None:
        return "-"
    if row.get("na"):
        return "n/a"
    m = row[mode]
    text = f"{m['normalised_mean']:.1f} ± {m['normalised_std']:.1f}"
    if "win_rate_mean" in m:
        text += f" (win {100 * m['win_rate_mean']:.0f}%)"
    return text


def print_table(record: dict, algos: tuple[str, ...]) -> None:
    """Markdown tables (both acting modes) of ``algos`` and their variants found in ``record``."""
    cells = {c for rows in record.values() for c in rows if c.split("[")[0] in algos}
    algos = tuple(sorted(cells, key=lambda c: (algos.index(c.split("[")[0]), c)))
    for mode in ("sample", "zero"):
        print(f"\nNormalised score, {mode} mode (mean ± std over seeds):\n")
        print("| task | data | " + " | ".join(algos) + " |")
        print("|---" * (len(algos) + 2) + "|")
        for task, rows in record.items():
            some = next(r for r in rows.values() if not r.get("na"))
            data = some["data_normalised"]
            cells = [_cell(rows.get(algo), mode) for algo in algos]
            print(f"| {task} | {data:.1f} | " + " | ".join(cells) + " |")
    print("\nCommands and wall times:\n")
    for task, rows in record.items():
        for algo, row in rows.items():
            if not row.get("na"):
                print(f"- {task} {algo} ({row['seconds'] / 60:.1f} min): `{row['command']}`")


def _save(path: Path, task: str, algo: str, row: dict) -> dict:
    """Merge one cell into the record file (re-read first: runners may share the file)."""
    record = json.loads(path.read_text()) if path.exists() else {}
    record.setdefault(task, {})[algo] = row
    write_atomic(path, json.dumps(record, indent=2))
    return record


def main(a: Args) -> None:
    record = json.loads(a.record.read_text()) if a.record.exists() else {}
    if a.table:
        print_table(record, a.algos)
        return
    macflow = str(Path(sys.executable).with_name("macflow"))
    for task in a.tasks:
        data = a.data_root / DATASETS[task]
        ds = load(data)
        for algo in a.algos:
            cell = f"{algo}[{a.label}]" if a.label else algo
            if cell in record.get(task, {}):
                continue
            flags = _agent_flags(algo, a, ds.spec)
            if flags is None:
                record = _save(a.record, task, cell, {"na": True})
                continue
            name = f"{task.replace('/', '-')}-{algo}" + (f"-{a.label}" if a.label else "")
            args = ["train", "--dataset", str(data), "--algo", algo, "--steps", str(a.steps)]
            args += ["--preset", a.preset] if a.preset != "paper" else []
            args += ["--seeds", *map(str, a.seeds), "--log-every", "500", "--eval-every", "0"]
            args += ["--checkpoint-every", "0", "--out", str(a.out), "--name", name]
            args += ["--no-progress", *flags, *OVERRIDES.get(algo, {}).get(task, [])]
            args += shlex.split(a.extra)
            shutil.rmtree(a.out / name, ignore_errors=True)  # an interrupted cell starts over
            start = time.perf_counter()
            subprocess.run([macflow, *args], check=True, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - start
            final = json.loads((a.out / name / "final.json").read_text())
            row = _summary(final, ds) | {
                "data_normalised": ds.normalised_score(ds.stats()["return_mean"]),
                "seconds": round(seconds, 1),
                "command": "macflow " + shlex.join(args),
            }
            record = _save(a.record, task, cell, row)
            print(f"{task} {cell}: {_cell(row, 'sample')} in {seconds / 60:.1f} min", flush=True)
    print_table(record, a.algos)


if __name__ == "__main__":
    main(tyro.cli(Args))
