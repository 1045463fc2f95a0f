"""What the commands print and plot: dataset summaries, return histograms, evaluation tables
and the task list.

Every printer writes to the ``console`` it is given, else to this module's ``console``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

console = Console()


def _out(given: Console | None) -> Console:
    return console if given is None else given


def histogram(values: np.ndarray, bins: int = 12) -> str:
    """A one-line text histogram: ``low ▁▃█▅▂ high``."""
    counts, edges = np.histogram(values, bins=bins)
    ticks = " ▁▂▃▄▅▆▇█"
    top = counts.max() or 1
    bars = "".join(ticks[int(np.ceil(c / top * (len(ticks) - 1)))] for c in counts)
    return f"{edges[0]:.3g} {bars} {edges[-1]:.3g}"


def plot_returns(ds, path: Path) -> None:
    """PNG histogram of a dataset's episode returns, with the reference returns marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from macflow.files import write_atomic

    returns = ds.episode_returns
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.hist(returns, bins=min(50, max(5, len(returns) // 20)), color="#4C72B0")
    ax.axvline(returns.mean(), color="k", ls="--", lw=1, label=f"mean {returns.mean():.4g}")
    for name, colour in (("random", "#C44E52"), ("expert", "#55A868")):
        if ds.reference_returns and name in ds.reference_returns:
            value = ds.reference_returns[name]
            ax.axvline(value, color=colour, lw=1.5, label=f"{name} reference {value:.4g}")
    ax.set_xlabel("episode return")
    ax.set_ylabel("episodes")
    ax.set_title(f"{ds.spec.env_id} · {ds.quality} · {len(returns):,} episodes", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(Path(path), buf.getvalue())


def _provenance(prov: dict[str, Any]) -> str:
    made = [str(prov.get("method"))]
    if "behaviour" in prov:
        made.append(f"{prov['behaviour']} {prov.get('behaviour_config', {})}")
    if "seed" in prov:
        made.append(f"seed {prov['seed']}")
    if "created_at" in prov:
        made.append(str(prov["created_at"]))
    return " · ".join(made)


def _spec_rows(ds) -> list[tuple[str, str]]:
    spec = ds.spec
    if spec.discrete:
        actions = f"discrete, {spec.action_dim} actions (legal masks)"
    else:
        bounds = f"[{min(spec.action_low)}, {max(spec.action_high)}]"
        actions = f"continuous, {spec.action_dim}-D in {bounds}"
    state = "concatenated observations" if spec.state_is_obs_concat else "from the environment"
    return [
        ("dataset", str(ds.path or "<in memory>")),
        ("task", f"{spec.env_id} {dict(ds.env_kwargs) or ''}".strip()),
        ("agents", str(spec.num_agents)),
        ("observation", f"{spec.obs_dim} per agent"),
        ("state", f"{spec.state_dim} ({state})"),
        ("actions", actions),
        ("episode limit", str(spec.episode_limit)),
    ]


def _stats_rows(ds, stats: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [
        ("transitions", f"{stats['transitions']:,}"),
        (
            "episodes",
            f"{stats['episodes']:,} ({stats['terminated_episodes']:,} terminated, "
            f"{stats['truncated_episodes']:,} truncated)",
        ),
        (
            "length",
            f"min {stats['length_min']} / mean {stats['length_mean']:.1f} / "
            f"max {stats['length_max']}",
        ),
        (
            "return",
            f"min {stats['return_min']:.4g} / mean {stats['return_mean']:.4g} / "
            f"max {stats['return_max']:.4g} (std {stats['return_std']:.3g})",
        ),
        ("return histogram", histogram(ds.episode_returns)),
    ]
    if ds.reference_returns:
        ref = ds.reference_returns
        score = ds.normalised_score(stats["return_mean"])
        rows.append(
            (
                "reference",
                f"random {ref['random']:.4g}, expert {ref['expert']:.4g} "
                f"(mean normalised score {score:.1f})",
            )
        )
    return rows


def print_dataset(ds, console: Console | None = None) -> None:
    """The human-readable summary of a dataset: spec, provenance, sizes, returns."""
    stats = ds.stats()
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")
    rows = _spec_rows(ds)
    rows += [("quality", ds.quality), ("provenance", _provenance(ds.provenance))]
    rows += _stats_rows(ds, stats)
    per_step = ds.nbytes() / stats["transitions"]
    rows.append(("size", f"{ds.nbytes() / 2**20:.2f} MiB ({per_step:.0f} bytes per transition)"))
    rows.append(("checksum", str(ds.checksum)))
    for k, v in rows:
        table.add_row(k, v)
    _out(console).print(table)


def print_imported(ds, console: Console | None = None) -> None:
    """An imported dataset's summary, the transformations its import applied and its place."""
    out = _out(console)
    print_dataset(ds, out)
    for note in ds.provenance.get("transformations") or []:
        out.print(f"  [dim]-[/] {note}")
    out.print(f"written to {ds.path}")


def print_final(final: dict, title: str, console: Console | None = None) -> None:
    """Per-seed table of a final evaluation."""
    table = Table(title=title)
    for col in ("mode", "seed", "return mean", "std", "min", "max", "normalised", "win rate"):
        table.add_column(col, justify="right")
    for mode, results in final["modes"].items():
        for seed, r in zip(final["seeds"], results, strict=True):
            norm = f"{r['normalised_score']:.1f}" if "normalised_score" in r else "-"
            win = f"{100 * r['win_rate']:.1f}%" if "win_rate" in r else "-"
            stats = [
                f"{r[k]:.4g}" for k in ("return_mean", "return_std", "return_min", "return_max")
            ]
            table.add_row(mode, str(seed), *stats, norm, win)
    out = _out(console)
    out.print(table)
    after = (
        f"{final['env_steps']:,} environment steps of fine-tuning"
        if "env_steps" in final
        else f"{final['step']} updates"
    )
    out.print(f"{final['episodes']} episodes per seed and mode, after {after}.")


def print_comparison(
    title: str, ds, runs: list[tuple[str, Any]], console: Console | None = None
) -> None:
    """The behaviour data's mean return against each run's final evaluation (mean ± std over
    seeds, both noise modes, and the normalised score of sampled noise)."""
    stats = ds.stats()
    table = Table(title=title)
    for col in ("policy", "return, sampled noise", "return, zero noise", "normalised (sampled)"):
        table.add_column(col, justify="right")
    table.add_row(
        "behaviour data",
        f"{stats['return_mean']:.2f}",
        "-",
        f"{ds.normalised_score(stats['return_mean']):.1f}",
    )
    for name, result in runs:
        cells = []
        for mode in ("sample", "zero"):
            means = [r["return_mean"] for r in result.final["modes"][mode]]
            cells.append(f"{np.mean(means):.2f} ± {np.std(means):.2f}")
        scores = [r["normalised_score"] for r in result.final["modes"]["sample"]]
        table.add_row(name, *cells, f"{np.mean(scores):.1f}")
    _out(console).print(table)


def print_envs(console: Console | None = None) -> None:
    """Every registered task with its spec; tasks whose extra is missing name it."""
    from macflow.envs import registered

    table = Table(title="macflow environments (default parameters)")
    table.add_column("id", no_wrap=True, style="bold cyan")
    for col in ("N", "obs", "state", "actions", "limit", "extra"):
        table.add_column(col, no_wrap=True)
    table.add_column("description", ratio=1)
    missing: dict[str, list[str]] = {}
    for e in registered():
        try:
            spec = e.env_cls()().spec
        except ImportError:
            missing.setdefault(e.extra, []).append(e.env_id)
            row = (e.env_id, "-", "-", "-", "-", "-", f"[red]{e.extra} (missing)[/]")
            table.add_row(*row, e.summary)
            continue
        kind = f"{spec.action_dim} disc." if spec.discrete else f"{spec.action_dim}-D cont."
        state = f"{spec.state_dim}" + ("*" if spec.state_is_obs_concat else "")
        row = (e.env_id, str(spec.num_agents), str(spec.obs_dim), state, kind)
        table.add_row(*row, str(spec.episode_limit), e.extra or "core", e.summary)
    out = _out(console)
    out.print(table)
    out.print(
        "* state = concatenated observations. `macflow collect TASK --help` lists a task's "
        "parameters and its scripted data options."
    )
    for extra, ids in missing.items():
        out.print(
            f"{len(ids)} task(s) need the '{extra}' extra, not installed here: "
            f"pip install 'macflow[{extra}]' (from a clone: pip install -e '.[{extra}]')",
            markup=False,
        )


# Optional modules and the extra that installs each.
EXTRAS = {
    "jaxmarl": "jaxmarl",
    "gymnasium": "jaxmarl",
    "gymnasium_robotics": "mamujoco",
    "mujoco": "mamujoco",
    "ray": "ray",
    "rliable": "analysis",
    "tensorstore": "vault",
    "h5py": "hdf5",
    "tensorboardX": "tensorboard",
}


def missing_extra(err: ImportError) -> str:
    """One line for a missing optional dependency, naming the extra that installs it."""
    text = str(err).splitlines()[0] if str(err) else repr(err)
    extra = EXTRAS.get((err.name or "").split(".")[0])
    if extra and "extra" not in text:
        text += f" (it comes with the '{extra}' extra: pip install 'macflow[{extra}]')"
    return text
