"""The datasets of a sweep file, made again from the behaviour policies kept in the repository.

`macflow collect` trains a task's behaviour policy (minutes to an hour on a laptop) and then
collects from its snapshots; training is not bit-reproducible from one machine to another, but
collecting from a given policy is. So the policies behind the table's datasets are kept in
``sweeps/behaviour/`` (each task's learning curve and only the snapshots its qualities use,
about 80-300 KB each), and this script rebuilds every dataset of a sweep file from them, byte for
byte (the same checksums), in minutes:

    python sweeps/datasets.py sweeps/table.toml --data-root datasets   # collect what is missing
    python sweeps/datasets.py sweeps/table.toml --keep                 # after training new ones

``--keep`` copies the trained policies of the sweep's tasks from the cache into
``sweeps/behaviour/``; without it the kept policies are first copied into the cache, where
`macflow collect` finds them instead of training. A task whose policy is not kept is trained.
Each dataset's row (size, returns, references, checksum, command and time, from its own
metadata) is merged into ``--record`` (default ``docs/table_datasets.json``); ``--table`` prints
those rows as the markdown table of docs/datasets.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from macflow.files import write_atomic

KEPT = Path(__file__).resolve().parent / "behaviour"


def _trained(task: str) -> Path:
    """The cache directory of ``task``'s default behaviour training (seed 0)."""
    from macflow.envs import entry, make_env
    from macflow.trainers.qualities import behaviour_dir

    return behaviour_dir(make_env(task), entry(task).trainer_cls()(), 0)


def keep(task: str, qualities: list[str]) -> None:
    """Copy the curve and the snapshots ``qualities`` use from the cache into ``KEPT``."""
    from macflow.trainers.qualities import Curve

    src = _trained(task)
    if not (src / "curve.json").exists():
        sys.exit(f"{src}: no finished behaviour training of {task}; collect one of its datasets")
    curve = Curve.from_json((src / "curve.json").read_text())
    roles = {r for q in qualities for r in (("medium", "expert") if q == "medium-expert" else (q,))}
    dst = KEPT / src.relative_to(src.parents[1])
    (dst / "snapshots").mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "curve.json", dst / "curve.json")
    for role in sorted(roles - {"random"}):
        name = f"{curve.for_quality(role).index:04d}.msgpack"
        shutil.copy2(src / "snapshots" / name, dst / "snapshots" / name)
    print(f"kept {task}: {dst.relative_to(KEPT.parent)} ({', '.join(sorted(roles))})")


def restore() -> None:
    """Copy every kept policy into the cache (what is already there stays)."""
    from macflow import cache_root

    for curve in KEPT.glob("*/*/curve.json"):
        dst = cache_root() / "behaviour" / curve.parent.relative_to(KEPT)
        if not (dst / "curve.json").exists():
            shutil.copytree(curve.parent, dst, dirs_exist_ok=True)


HEADER = (
    "| task | quality | transitions (episodes) | behaviour return | normalised | random / expert "
    "reference | size | time | checksum |\n|---|---|---|---|---|---|---|---|---|"
)


def row_of(path: Path) -> dict:
    """A dataset's row, from its metadata (provenance gives the command and the time)."""
    from macflow.data import load

    ds = load(path, verify=False)
    stats, ref = ds.stats(), ds.reference_returns
    meta = json.loads((path / "meta.json").read_text())
    return {
        "transitions": stats["transitions"],
        "episodes": stats["episodes"],
        "return_mean": stats["return_mean"],
        "return_std": stats["return_std"],
        "normalised": ds.normalised_score(stats["return_mean"]),
        "random": ref["random"],
        "expert": ref["expert"],
        "bytes": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
        "seconds": meta["provenance"].get("seconds"),
        "created": meta["provenance"].get("created_at"),
        "command": meta["provenance"].get("command"),
        "checksum": ds.checksum,
    }


def markdown(table: dict) -> str:
    lines = [HEADER]
    for key, r in table.items():
        task, quality = key.rsplit(":", 1)
        took = f"{r['seconds'] / 60:.1f} min" if r.get("seconds") else "-"
        lines.append(
            f"| {task} | {quality} | {r['transitions']:,} ({r['episodes']:,}) | "
            f"{r['return_mean']:.2f} ± {r['return_std']:.2f} | {r['normalised']:.1f} | "
            f"{r['random']:.2f} / {r['expert']:.2f} | {r['bytes'] / 2**20:,.0f} MiB | {took} | "
            f"`{r['checksum'][:19]}` |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="sweep file whose [tasks] to collect")
    parser.add_argument("--data-root", type=Path, help="default: the sweep file's data_root")
    parser.add_argument("--keep", action="store_true", help="keep the trained policies instead")
    parser.add_argument("--record", type=Path, default=Path("docs/table_datasets.json"))
    parser.add_argument("--table", action="store_true", help="print the recorded rows")
    parser.add_argument("--tasks", nargs="+", help="only these of the sweep's tasks")
    args = parser.parse_args()
    raw = tomllib.loads(args.sweep.read_text())
    tasks = {t: q for t, q in raw["tasks"].items() if not args.tasks or t in args.tasks}
    table = json.loads(args.record.read_text()) if args.record.exists() else {}
    if args.table:
        keys = [f"{t}:{q}" for t, qs in tasks.items() for q in qs]
        print(markdown({k: table[k] for k in keys if k in table}))
        return
    if args.keep:
        for task, qualities in tasks.items():
            keep(task, qualities)
        return
    restore()
    root = args.data_root or Path(raw.get("data_root", "datasets"))
    macflow = str(Path(sys.executable).with_name("macflow"))
    for task, qualities in tasks.items():
        for quality in qualities:
            out = root / task.replace("/", "-") / quality
            if not (out / "meta.json").exists():
                cmd = [macflow, "collect", task, "--quality", quality, "--out", str(out)]
                print("$", " ".join(cmd[1:]), flush=True)
                subprocess.run(cmd, check=True)
            key = f"{task}:{quality}"
            row = row_of(out)
            if table.get(key, {}).get("checksum") != row["checksum"]:
                table[key] = row
                write_atomic(args.record, json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
