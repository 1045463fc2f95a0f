"""Aggregate a sweep (``sweep.json``): per-cell mean and std, IQM with stratified-bootstrap CIs,
per family and overall, and the sweep's wall-clock cost.

Per dataset (task x quality) and algorithm the table gives the mean ± std over seeds of each seed's
final evaluation (normalised score when the dataset has reference returns, else the raw return;
win rate where the task reports one). Across datasets, the interquartile mean (IQM) and mean
of the normalised scores, with 95% stratified-bootstrap confidence intervals (runs resampled
within each dataset; Agarwal et al., NeurIPS 2021, as in rliable, here with numpy's seeded
Generator so the intervals are reproducible), summarise each algorithm, over every dataset and
per family (MPE, SMAX, MaMuJoCo). An algorithm that
cannot run every dataset is aggregated only over the datasets it ran, and reported apart, since
intervals over different dataset sets do not compare. Per dataset, a percentile bootstrap of the
mean over seeds (seeds resampled with replacement) gives each cell a 95% interval, which is what
"A beats B on this dataset" is read from.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from macflow.files import write_atomic

MODES = ("sample", "zero")


def _datasets(record: dict) -> list[tuple[str, str]]:
    seen = []
    for row in record["jobs"].values():
        key = (row["task"], row["quality"])
        if key not in seen:
            seen.append(key)
    return seen


def _cells(record: dict) -> list[str]:
    cells = []
    for row in record["jobs"].values():
        if row["cell"] not in cells:
            cells.append(row["cell"])
    return cells


def seed_scores(row: dict, mode: str) -> tuple[np.ndarray, str]:
    """Per-seed scores of one finished job: normalised when available, else raw returns."""
    results = row["final"]["modes"][mode]
    if all("normalised_score" in r for r in results):
        return np.array([r["normalised_score"] for r in results]), "normalised"
    return np.array([r["return_mean"] for r in results]), "return"


def cell_stats(record: dict, mode: str) -> dict:
    """``{(task, quality): {cell: {mean, std, seeds, metric, win_rate?, status}}}``."""
    stats: dict = {}
    for row in record["jobs"].values():
        entry = {"status": row["status"]}
        if row["status"] == "done":
            values, metric = seed_scores(row, mode)
            entry |= {
                "mean": float(values.mean()),
                "std": float(values.std()),
                "seeds": values.tolist(),
                "metric": metric,
            }
            results = row["final"]["modes"][mode]
            if all("win_rate" in r for r in results):
                wins = np.array([r["win_rate"] for r in results])
                entry |= {"win_rate": float(wins.mean()), "win_rate_std": float(wins.std())}
        elif row["status"] == "n/a":
            entry["reason"] = row.get("reason", "")
        stats.setdefault((row["task"], row["quality"]), {})[row["cell"]] = entry
    return stats


def seed_interval(values, reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of ``values`` (seeds resampled)."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (reps, len(values)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def interval_table(record: dict, mode: str, reps: int = 2000) -> str:
    """Per dataset: each cell's mean over seeds with its 95% seed-bootstrap interval."""

    def text(e: dict) -> str:
        lo, hi = seed_interval(e["seeds"], reps)
        return f"{e['mean']:.1f} [{lo:.1f}, {hi:.1f}]"

    return _table(record, mode, text, data_column=False)


def _data_score(record: dict, task: str, quality: str) -> float | None:
    for d in record["data"].values():
        if d["task"] == task and d["quality"] == quality:
            return d["normalised"] if d["normalised"] is not None else d["return_mean"]
    return None


def _table(record: dict, mode: str, text, data_column: bool) -> str:
    """A markdown table, a row per dataset and a column per cell; ``text(entry)`` for done ones."""
    stats = cell_stats(record, mode)
    cells = _cells(record)
    head = ["task", "quality"] + (["data"] if data_column else []) + cells
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for task, quality in _datasets(record):
        row = stats[(task, quality)]
        texts = [task, quality]
        if data_column:
            data = _data_score(record, task, quality)
            texts.append("-" if data is None else f"{data:.1f}")
        for cell in cells:
            e = row.get(cell, {"status": "missing"})
            if e["status"] == "done":
                texts.append(text(e))
            else:
                texts.append({"n/a": "n/a", "failed": "failed"}.get(e["status"], "-"))
        lines.append("| " + " | ".join(texts) + " |")
    return "\n".join(lines)


def markdown_table(record: dict, mode: str) -> str:
    def text(e: dict) -> str:
        out = f"{e['mean']:.1f} ± {e['std']:.1f}"
        if "win_rate" in e:
            out += f" (win {100 * e['win_rate']:.0f}%)"
        return out

    return _table(record, mode, text, data_column=True)


def family(task: str) -> str:
    """The suite a task belongs to (``smax/3m`` -> ``smax``): the table's families."""
    return task.split("/", 1)[0]


def iqm(scores: np.ndarray, axis=None) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% of the scores (25% trimmed each side)."""
    from scipy import stats

    return stats.trim_mean(scores, 0.25, axis=axis)


def stratified_bootstrap(matrix, reps: int = 2000, seed: int = 0) -> dict:
    """IQM and mean of a ``[runs, datasets]`` score matrix with 95% percentile intervals from a
    bootstrap stratified by dataset: each resample draws, within every dataset, as many runs as it
    has, with replacement (Agarwal et al., NeurIPS 2021). Deterministic given ``seed``."""
    matrix = np.asarray(matrix, dtype=float)
    runs, datasets = matrix.shape
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, runs, (reps, runs, datasets))
    resampled = matrix[rows, np.arange(datasets)].reshape(reps, -1)
    out = {}
    for name, values, point in (
        ("iqm", iqm(resampled, axis=1), iqm(matrix)),
        ("mean", resampled.mean(axis=1), matrix.mean()),
    ):
        lo, hi = np.percentile(values, [2.5, 97.5])
        out[name] = float(point)
        out[f"{name}_ci"] = [float(lo), float(hi)]
    return out


def interval_estimates(
    record: dict, mode: str, reps: int = 2000, seed: int = 0, families: tuple[str, ...] = ()
) -> dict:
    """IQM and mean over datasets with 95% stratified-bootstrap CIs, per algorithm (cell), over
    every dataset or only those of ``families``.

    Only normalised scores are aggregated (raw returns of different tasks do not add up)."""
    stats = cell_stats(record, mode)
    datasets = [
        d
        for d in _datasets(record)
        if any(e.get("metric") == "normalised" for e in stats[d].values())
        and (not families or family(d[0]) in families)
    ]
    by_cell: dict[str, dict] = {}
    for cell in _cells(record):
        ran = [d for d in datasets if stats[d].get(cell, {}).get("status") == "done"]
        if not ran:
            continue
        seeds = min(len(stats[d][cell]["seeds"]) for d in ran)
        matrix = np.array([stats[d][cell]["seeds"][:seeds] for d in ran]).T
        by_cell[cell] = {"datasets": ran, "matrix": matrix}
    common = [d for d in datasets if all(d in c["datasets"] for c in by_cell.values())]
    full = [c for c, v in by_cell.items() if len(v["datasets"]) == len(datasets)]
    out = {
        "mode": mode,
        "families": sorted({family(t) for t, _ in datasets}),
        "datasets": [list(d) for d in datasets],
        "reps": reps,
        "cells": {},
    }
    for cell, v in by_cell.items():
        out["cells"][cell] = {
            "datasets": [list(d) for d in v["datasets"]],
            "all_datasets": cell in full,
            **stratified_bootstrap(v["matrix"], reps, seed),
            "runs": int(v["matrix"].shape[0]),
        }
    # Rank by IQM among the algorithms that ran every dataset (others do not compare).
    ranked = sorted(full, key=lambda c: -out["cells"][c]["iqm"])
    for i, cell in enumerate(ranked):
        out["cells"][cell]["rank"] = i + 1
    out["common_datasets"] = [list(d) for d in common]
    return out


def iqm_markdown(est: dict) -> str:
    lines = [
        "| rank | algorithm | datasets | IQM [95% CI] | mean [95% CI] |",
        "|---|---|---|---|---|",
    ]
    rows = sorted(est["cells"].items(), key=lambda kv: (not kv[1]["all_datasets"], -kv[1]["iqm"]))
    for cell, e in rows:
        n = f"{len(e['datasets'])}" + ("" if e["all_datasets"] else " (not all)")
        iqm = f"{e['iqm']:.1f} [{e['iqm_ci'][0]:.1f}, {e['iqm_ci'][1]:.1f}]"
        mean = f"{e['mean']:.1f} [{e['mean_ci'][0]:.1f}, {e['mean_ci'][1]:.1f}]"
        lines.append(f"| {e.get('rank', '-')} | {cell} | {n} | {iqm} | {mean} |")
    return "\n".join(lines)


def plot_intervals(estimates: list[dict], path: Path) -> None:
    """One row per algorithm, IQM and mean with their CIs, one column per acting mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = sorted(estimates[0]["cells"], key=lambda c: estimates[0]["cells"][c]["iqm"])
    fig, axes = plt.subplots(
        1, 2 * len(estimates), figsize=(4.2 * len(estimates) * 2, 0.45 * len(cells) + 1.6)
    )
    for j, est in enumerate(estimates):
        for k, metric in enumerate(("iqm", "mean")):
            ax = axes[2 * j + k]
            for i, cell in enumerate(cells):
                e = est["cells"].get(cell)
                if e is None:
                    continue
                lo, hi = e[f"{metric}_ci"]
                color = "C0" if e["all_datasets"] else "C7"
                ax.plot([lo, hi], [i, i], color=color, lw=6, alpha=0.5, solid_capstyle="butt")
                ax.plot([e[metric]], [i], "|", color="k", ms=12)
            ax.set_yticks(range(len(cells)))
            ax.set_yticklabels(cells if k == 0 and j == 0 else [])
            ax.set_xlabel("normalised score")
            ax.set_title(f"{metric.upper()} ({est['mode']} mode)")
            ax.grid(axis="x", alpha=0.3)
    fig.suptitle(
        f"{', '.join(estimates[0]['families'])}: 95% stratified-bootstrap CIs over "
        f"{len(estimates[0]['datasets'])} datasets (grey: algorithm ran only some datasets)",
        fontsize=9,
    )
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def hardware_text(row: dict) -> str:
    """Where a job ran, from its final evaluation (runs before this was recorded: unknown)."""
    hw = row.get("final", {}).get("hardware")
    if not hw:
        return "hardware not recorded"
    device = hw["device"] if not hw["device"].startswith("cpu") else "CPU"
    return f"{device}, {hw['cpu']} x{hw['cpus']}, jax {hw['jax']}"


def cost_markdown(record: dict) -> str:
    """Wall-clock minutes of the finished jobs, per family and algorithm (cell), and in all."""
    minutes: dict = {}
    unknown: dict = {}
    for row in record["jobs"].values():
        if row["status"] != "done":
            continue
        key = (family(row["task"]), row["cell"])
        if row.get("seconds"):
            minutes.setdefault(key, []).append(row["seconds"] / 60)
        else:
            unknown[key] = unknown.get(key, 0) + 1
    fams = sorted({f for f, _ in minutes} | {f for f, _ in unknown})
    lines = ["| algorithm | " + " | ".join(fams) + " | all |", "|---" * (len(fams) + 2) + "|"]
    for cell in _cells(record):
        texts, total = [], 0.0
        for f in fams:
            m = minutes.get((f, cell), [])
            total += sum(m)
            text = f"{sum(m):.0f} ({len(m)})" if m else "-"
            if unknown.get((f, cell)):
                text += f" +{unknown[(f, cell)]} untimed"
            texts.append(text)
        lines.append(f"| {cell} | " + " | ".join(texts) + f" | {total:.0f} |")
    total = sum(sum(m) for m in minutes.values())
    count = sum(len(m) for m in minutes.values())
    lines.append(
        f"\nIn all: {total:.0f} min ({total / 60:.1f} h) over {count} timed jobs "
        "(minutes (jobs) per cell; a job trains every seed of one dataset)."
    )
    return "\n".join(lines)


def marl_eval_json(record: dict) -> dict:
    """Every finished job's final evaluation in marl-eval's raw-data layout (environment ->
    task_quality -> algorithm -> run_<seed> -> absolute_metrics), sampled act mode; each metric
    list holds the seed's mean over its evaluation episodes (what marl-eval reduces a list to),
    ``elapsed_time`` is the job's wall time (every seed of a job trains in one program)."""
    out: dict = {}
    for row in record["jobs"].values():
        if row["status"] != "done":
            continue
        env_name, _, task = row["task"].partition("/")
        runs = out.setdefault(env_name, {}).setdefault(f"{task}_{row['quality']}", {})
        runs = runs.setdefault(row["cell"], {})
        final = row["final"]
        seeds = final.get("seeds", range(len(final["modes"]["sample"])))
        for seed, r in zip(seeds, final["modes"]["sample"], strict=True):
            metrics = {"step_count": final.get("step"), "elapsed_time": row.get("seconds")}
            metrics["return"] = [r["return_mean"]]
            for name in ("normalised_score", "win_rate"):
                if name in r and r[name] is not None:
                    metrics[name] = [r[name]]
            runs[f"run_{seed}"] = {"absolute_metrics": metrics}
    return out


def write_results(record: dict, out: Path, reps: int = 2000) -> dict:
    """Write ``results.md``, ``results.json``, ``marl_eval.json`` (every run in marl-eval's
    layout) and the plots into ``out``; return the JSON.

    Across datasets: every dataset (``iqm.png``), then each family (``iqm-<family>.png``)."""
    tables = {mode: markdown_table(record, mode) for mode in MODES}
    groups: dict[str, list[dict]] = {}
    if any(
        r["status"] == "done" and seed_scores(r, "sample")[1] == "normalised"
        for r in record["jobs"].values()
    ):
        groups["all"] = [interval_estimates(record, mode, reps) for mode in MODES]
        fams = sorted({family(t) for t, _ in _datasets(record)})
        for f in fams if len(fams) > 1 else []:
            est = [interval_estimates(record, mode, reps, families=(f,)) for mode in MODES]
            if est[0]["cells"]:
                groups[f] = est
    failed = {n: r.get("error", "") for n, r in record["jobs"].items() if r["status"] == "failed"}
    missing = [
        n for n, r in record["jobs"].items() if r["status"] in ("pending", "submitted", "running")
    ]
    text = ["# Sweep results", "", f"Sweep file: `{record['sweep']}`.", ""]
    for mode in MODES:
        text += [f"## Per dataset, {mode} mode (mean ± std over seeds)", "", tables[mode], ""]
    for mode in MODES:
        text += [
            f"## Per dataset, {mode} mode: mean [95% bootstrap interval over seeds]",
            "",
            interval_table(record, mode, reps),
            "",
        ]
    for name, ests in groups.items():
        where = "every dataset" if name == "all" else f"the {name} datasets"
        for est in ests:
            text += [
                f"## Across {where} ({len(est['datasets'])}), {est['mode']} mode",
                "",
                iqm_markdown(est),
                "",
            ]
    text += ["## Wall-clock cost", "", cost_markdown(record), ""]
    if failed:
        text += ["## Failed jobs", ""] + [f"- {n}" for n in failed] + [""]
    if missing:
        text += ["## Not run yet", ""] + [f"- {n}" for n in missing] + [""]
    text += ["## Commands", ""]
    for name, r in record["jobs"].items():
        if r["status"] != "n/a":
            if r.get("seconds"):
                took = f"{r['seconds'] / 60:.1f} min"
            else:
                took = "adopted: run before the sweep" if r.get("adopted") else "time not recorded"
            where = f", {hardware_text(r)}" if r["status"] == "done" else ""
            text.append(f"- {name} ({r['status']}, {took}{where}): `{r['command']}`")
    result = {
        "tables": {
            m: {f"{t}/{q}": v for (t, q), v in cell_stats(record, m).items()} for m in MODES
        },
        "intervals": groups.get("all", []),
        "families": {k: v for k, v in groups.items() if k != "all"},
        "failed": failed,
        "not_run": missing,
    }
    write_atomic(out / "results.md", "\n".join(text) + "\n")
    write_atomic(out / "results.json", json.dumps(result, indent=2))
    write_atomic(out / "marl_eval.json", json.dumps(marl_eval_json(record), indent=1))
    for name, ests in groups.items():
        plot_intervals(ests, out / ("iqm.png" if name == "all" else f"iqm-{name}.png"))
    return result
