"""Build every quality level of some tasks with `macflow collect`, timed, and print the table
rows of docs/datasets.md (size, behaviour return mean/std, reference returns, command, time).

Each dataset is made by the real command in a subprocess, so the recorded command is exactly what
a user runs. The first quality of a task includes training its behaviour policy (cached after).

    python benchmarks/datasets.py --tasks mpe/spread
    python benchmarks/datasets.py --tasks smax/8m mamujoco/3hopper --quick
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import tyro

from macflow.data import load
from macflow.envs import entry
from macflow.files import write_atomic
from macflow.trainers.qualities import qualities


@dataclasses.dataclass(frozen=True)
class Args:
    tasks: tuple[str, ...] = ("mpe/spread",)
    """Registered real tasks (with a behaviour trainer)."""
    out: Path = Path("datasets")
    """Parent directory of the datasets (``out/<task>/<quality>``)."""
    quick: bool = False
    """Pass --quick (cheap behaviour training, 100k transitions)."""
    qualities: tuple[str, ...] = ()
    """Only these levels (default: all of the task's suite)."""
    transitions: int | None = None
    """Pass --transitions (default: the command's, 1M or 100k with --quick)."""
    record: Path = Path("docs/datasets.json")
    """JSON file the rows are merged into (keyed by task and quality)."""
    table: bool = False
    """Only print the markdown table of everything in ``record``."""


HEADER = (
    "| task | quality | transitions (episodes) | behaviour return | normalised | "
    "random / expert reference | time | command |\n|---|---|---|---|---|---|---|---|"
)


def markdown_row(task: str, quality: str, row: dict) -> str:
    return (
        f"| {task} | {quality} | {row['transitions']:,} ({row['episodes']:,}) | "
        f"{row['return_mean']:.2f} ± {row['return_std']:.2f} | {row['normalised']:.1f} | "
        f"{row['random']:.2f} / {row['expert']:.2f} | {row['seconds'] / 60:.1f} min | "
        f"`{row['command']}` |"
    )


def main(a: Args) -> None:
    macflow = str(Path(sys.executable).with_name("macflow"))
    table = json.loads(a.record.read_text()) if a.record.exists() else {}
    if a.table:
        print(HEADER)
        for task in sorted(table):
            for quality, row in table[task].items():
                print(markdown_row(task, quality, row))
        return
    for task in a.tasks:
        spec = entry(task).env_cls()().spec
        for quality in a.qualities or qualities(spec.discrete):
            out = a.out / task.replace("/", "-") / quality
            args = ["collect", task, "--quality", quality, "--out", str(out), "--overwrite"]
            args += ["--quick"] * a.quick
            if a.transitions:
                args += ["--transitions", str(a.transitions)]
            start = time.perf_counter()
            subprocess.run([macflow, *args], check=True, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - start
            ds = load(out)
            stats, ref = ds.stats(), ds.reference_returns
            row = {
                "transitions": stats["transitions"],
                "episodes": stats["episodes"],
                "return_mean": stats["return_mean"],
                "return_std": stats["return_std"],
                "normalised": ds.normalised_score(stats["return_mean"]),
                "random": ref["random"],
                "expert": ref["expert"],
                "seconds": round(seconds, 1),
                "command": "macflow " + shlex.join(args),
            }
            table.setdefault(task, {})[quality] = row
            write_atomic(a.record, json.dumps(table, indent=2))
            print(markdown_row(task, quality, row), flush=True)


if __name__ == "__main__":
    main(tyro.cli(Args))
