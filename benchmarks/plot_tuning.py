"""Plot a coefficient search from its sweep record: score against coefficient, one line per method.

Reads a ``sweep.json`` whose cells are labelled ``NAME-VALUE`` (e.g. ``alpha-0.3``, ``beta-1``,
or ``min-alpha-0.1`` for a variant), and draws each (algorithm, variant) as mean ± std over
seeds of the normalised score against the coefficient on a log axis, for both act modes;
algorithms without a coefficient (BC) are a horizontal band. Writes a PNG and prints the best
value of each line.

    python benchmarks/plot_tuning.py docs/smax_tuning/sweep.json --out docs/figures/smax_tuning.png
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from macflow.aggregate import MODES, seed_scores


@dataclass(frozen=True)
class Args:
    record: tyro.conf.Positional[Path]
    """The sweep's ``sweep.json``."""
    out: Path = Path("tuning.png")
    """Where to write the plot."""


LABEL = re.compile(
    r"^(?P<algo>[^\[]+)\[(?:(?P<variant>.+)-)?(?P<name>alpha|beta)-(?P<value>[\d.]+)\]$"
)


def curves(record: dict, mode: str) -> tuple[dict, dict]:
    """``{(algo, variant, coefficient): [(value, mean, std)]}`` and ``{algo: (mean, std)}``."""
    lines: dict = {}
    flat: dict = {}
    for row in record["jobs"].values():
        if row["status"] != "done":
            continue
        scores, _ = seed_scores(row, mode)
        match = LABEL.match(row["cell"])
        if match is None:
            flat[row["cell"]] = (scores.mean(), scores.std())
            continue
        key = (match["algo"], match["variant"] or "", match["name"])
        lines.setdefault(key, []).append((float(match["value"]), scores.mean(), scores.std()))
    return {k: sorted(v) for k, v in lines.items()}, flat


def main(args: Args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    record = json.loads(args.record.read_text())
    fig, axes = plt.subplots(1, len(MODES), figsize=(12, 4.5), sharey=True)
    for ax, mode in zip(axes, MODES, strict=True):
        lines, flat = curves(record, mode)
        for (algo, variant, name), points in lines.items():
            x, m, s = (np.array(c) for c in zip(*points, strict=True))
            label = f"{algo} {variant} ({name})".replace("  ", " ")
            style = "-" if not variant else ":"
            ax.errorbar(x, m, yerr=s, fmt="o" + style, capsize=3, label=label)
            best = int(np.argmax(m))
            print(f"{mode:6s} {label:28s} best {name} {x[best]:g}: {m[best]:.1f} ± {s[best]:.1f}")
        for algo, (m, s) in flat.items():
            ax.axhspan(m - s, m + s, color="grey", alpha=0.25)
            ax.axhline(m, color="grey", lw=1, label=f"{algo} (no coefficient)")
        ax.set_xscale("log")
        ax.set_xlabel(
            "coefficient (MAC-Flow alpha: distillation weight; MA-TD3+BC alpha: Q weight)"
        )
        ax.set_title(f"{mode} policies")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("normalised score (mean ± std over seeds)")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"coefficient search: {record['sweep']}")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(tyro.cli(Args))
