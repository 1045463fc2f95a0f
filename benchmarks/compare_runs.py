"""Are two trees of runs the same? ``python benchmarks/compare_runs.py BASE AFTER``.

What ``benchmarks/same_outputs.sh`` uses to show that a refactor changed no result (issue 17).

For every run directory of BASE: metrics.csv, evals.csv, final.json (and metrics.jsonl,
marl_eval.json) must be equal in AFTER, ignoring exactly the ``train_seconds`` column/field and
the ``hardware`` / timestamp fields; checkpoints/*.msgpack must be byte-identical. Prints every
difference and exits 1 if there is any.
"""

import csv
import json
import sys
from pathlib import Path

IGNORED = {"train_seconds", "hardware", "timestamp", "time", "created", "wall_time"}


def scrub(value):
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k not in IGNORED}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def rows(path: Path):
    with path.open() as f:
        return [{k: v for k, v in r.items() if k not in IGNORED} for r in csv.DictReader(f)]


def jsonl(path: Path):
    return [scrub(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def main(base: Path, after: Path) -> int:
    problems, checked, compared = [], 0, 0
    runs = sorted(p.parent for p in base.glob("*/final.json"))
    if not runs:
        problems.append(f"no runs under {base}")
    for run in runs:
        other = after / run.name
        if not other.is_dir():
            if (after / f"{run.name}.log").exists():
                problems.append(f"{run.name}: missing in {after}")
            else:  # not part of the check (e.g. baseline.sh's resume and quickstart runs)
                print(f"{run.name}: not run in {after}, skipped")
            continue
        compared += 1
        for name, load in (
            ("metrics.csv", rows),
            ("evals.csv", rows),
            ("final.json", lambda p: scrub(json.loads(p.read_text()))),
            ("metrics.jsonl", jsonl),
            ("marl_eval.json", lambda p: scrub(json.loads(p.read_text()))),
        ):
            a, b = run / name, other / name
            if not a.exists():
                continue
            if not b.exists():
                problems.append(f"{run.name}/{name}: missing")
            elif load(a) != load(b):
                problems.append(f"{run.name}/{name}: differs")
            checked += 1
        for ckpt in sorted((run / "checkpoints").glob("*.msgpack")):
            twin = other / "checkpoints" / ckpt.name
            if not twin.exists():
                problems.append(f"{run.name}/checkpoints/{ckpt.name}: missing")
            elif ckpt.read_bytes() != twin.read_bytes():
                problems.append(f"{run.name}/checkpoints/{ckpt.name}: bytes differ")
            checked += 1
    for base_log in sorted(base.glob("*.log")):  # failures (e.g. icq on a continuous task)
        after_log = after / base_log.name
        if not (base / base_log.stem).is_dir() and after_log.exists():
            if base_log.read_text().splitlines()[-1:] != after_log.read_text().splitlines()[-1:]:
                problems.append(f"{base_log.name}: the failure message differs")
            checked += 1
    for p in problems:
        print(p)
    print(
        f"{compared} runs, {checked} files compared: "
        + ("IDENTICAL" if not problems else f"{len(problems)} difference(s)")
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
