"""The ``macflow`` command: ``envs``, ``collect``, ``data info`` and ``quickstart``.

Thin by design: each command parses typed options (tyro, help text from field docstrings), calls
the library and prints. Bad input ends with a one-line error and exit status 2, not a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Generic, TypeVar, Union

import numpy as np
import tyro
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from tyro.extras import SubcommandApp

from macflow import __version__

console = Console()
EnvT = TypeVar("EnvT")
BehaviourT = TypeVar("BehaviourT")


def enable_compile_cache() -> None:
    """Reuse compiled XLA programs across processes (compile time dominates short runs)."""
    import jax

    cache = Path(os.environ.get("MACFLOW_CACHE", Path.home() / ".cache" / "macflow")) / "jax"
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


@dataclasses.dataclass(frozen=True)
class CollectArgs(Generic[EnvT, BehaviourT]):
    """Generate a dataset with the task's scripted behaviour policy."""

    env: EnvT
    """Task parameters."""
    behaviour: BehaviourT
    """Behaviour (data-generating policy) parameters."""
    out: Path
    """Dataset directory to write (atomically: an interrupted write leaves no partial data)."""
    episodes: int = 10_000
    """Number of episodes to collect."""
    seed: int = 0
    """Random seed of the collection."""
    quality: str = "scripted"
    """Quality label recorded in the metadata."""
    overwrite: bool = False
    """Replace an existing dataset at ``out``."""


def _collect_choices():
    from macflow.envs import registered

    members = []
    for e in registered():
        behaviour = e.behaviour_cls()
        if behaviour is None:
            continue
        env = e.env_cls()
        default = CollectArgs(env=env(), behaviour=behaviour(), out=tyro.MISSING)
        members.append(
            Annotated[
                CollectArgs[env, behaviour],
                tyro.conf.subcommand(e.env_id, default=default, description=e.summary),
            ]
        )
    return Union[tuple(members)]  # noqa: UP007 (a runtime-built union)


_ARGV: list[str] = []


def run_collect(args: CollectArgs):
    """Collect, save and return the dataset described by ``args``, with progress bars."""
    from macflow.data import save
    from macflow.data.collect import collect
    from macflow.data.schema import fields_for

    env, behaviour = args.env, args.behaviour
    command = "macflow " + shlex.join(_ARGV)
    with progress() as bar:
        task = bar.add_task(f"collect {env.spec.env_id}", total=args.episodes)
        ds = collect(
            env,
            behaviour,
            args.episodes,
            seed=args.seed,
            quality=args.quality,
            on_chunk=lambda n: bar.update(task, completed=n),
            provenance={"command": command},
        )
        write = bar.add_task(f"write {args.out}", total=len(fields_for(env.spec)))
        return save(ds, args.out, overwrite=args.overwrite, on_field=lambda _: bar.advance(write))


def _histogram(values: np.ndarray, bins: int = 12) -> str:
    counts, edges = np.histogram(values, bins=bins)
    ticks = " ▁▂▃▄▅▆▇█"
    top = counts.max() or 1
    bars = "".join(ticks[int(np.ceil(c / top * (len(ticks) - 1)))] for c in counts)
    return f"{edges[0]:.3g} {bars} {edges[-1]:.3g}"


def print_dataset(ds) -> None:
    """The human-readable summary of a dataset."""
    spec, stats = ds.spec, ds.stats()
    if spec.discrete:
        actions = f"discrete, {spec.action_dim} actions (legal masks)"
    else:
        bounds = f"[{min(spec.action_low)}, {max(spec.action_high)}]"
        actions = f"continuous, {spec.action_dim}-D in {bounds}"
    state = "concatenated observations" if spec.state_is_obs_concat else "from the environment"
    prov = ds.provenance
    made = [str(prov.get("method"))]
    if "behaviour" in prov:
        made.append(f"{prov['behaviour']} {prov.get('behaviour_config', {})}")
    if "seed" in prov:
        made.append(f"seed {prov['seed']}")
    if "created_at" in prov:
        made.append(str(prov["created_at"]))
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")
    rows = [
        ("dataset", str(ds.path or "<in memory>")),
        ("task", f"{spec.env_id} {dict(ds.env_kwargs) or ''}".strip()),
        ("agents", str(spec.num_agents)),
        ("observation", f"{spec.obs_dim} per agent"),
        ("state", f"{spec.state_dim} ({state})"),
        ("actions", actions),
        ("episode limit", str(spec.episode_limit)),
        ("quality", ds.quality),
        ("provenance", " · ".join(made)),
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
        ("return histogram", _histogram(ds.episode_returns)),
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
    per_step = ds.nbytes() / stats["transitions"]
    rows.append(("size", f"{ds.nbytes() / 2**20:.2f} MiB ({per_step:.0f} bytes per transition)"))
    rows.append(("checksum", str(ds.checksum)))
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


def _build_app() -> SubcommandApp:
    app = SubcommandApp()

    @app.command
    def envs() -> None:
        """List every registered task with its spec."""
        from macflow.envs import registered

        table = Table(title="macflow environments (default parameters)")
        table.add_column("id", no_wrap=True, style="bold cyan")
        for col in ("N", "obs", "state", "actions", "limit"):
            table.add_column(col, no_wrap=True)
        table.add_column("description", ratio=1)
        for e in registered():
            spec = e.env_cls()().spec
            kind = f"{spec.action_dim} disc." if spec.discrete else f"{spec.action_dim}-D cont."
            state = f"{spec.state_dim}" + ("*" if spec.state_is_obs_concat else "")
            row = (e.env_id, str(spec.num_agents), str(spec.obs_dim), state, kind)
            table.add_row(*row, str(spec.episode_limit), e.summary)
        console.print(table)
        console.print(
            "* state = concatenated observations. `macflow collect TASK --help` lists a task's "
            "parameters and its scripted data options."
        )

    collect_choices = _collect_choices()

    def collect(args) -> None:
        """Generate a dataset with a task's scripted behaviour: `macflow collect TASK --out DIR`."""
        ds = run_collect(args)
        print_dataset(ds)

    # Set after definition: the union of tasks is built at run time from the registry.
    collect.__annotations__ = {"args": tyro.conf.OmitArgPrefixes[collect_choices], "return": None}
    app.command(collect)

    data = SubcommandApp()

    @data.command
    def info(path: tyro.conf.Positional[Path], verify: bool = True, as_json: bool = False) -> None:
        """Validate a dataset and print its summary (episodes, transitions, returns, spec).

        Args:
            path: Dataset directory.
            verify: Check every array file against its recorded sha256 checksum.
            as_json: Print the metadata as JSON instead of a table.
        """
        from macflow.data import load, read_meta
        from macflow.data.io import leftovers

        ds = load(path, verify=verify)
        for stale in leftovers(ds.path):
            console.print(
                f"[yellow]note:[/] an interrupted write left {stale}; delete it to free space"
            )
        if as_json:
            meta = read_meta(path)
            meta.pop("spec")
            print(json.dumps(meta, indent=2))
        else:
            print_dataset(ds)

    app.command(data, name="data", help="Inspect datasets: `macflow data info PATH`.")

    @app.command
    def quickstart(
        out: Path = Path("runs/quickstart"), episodes: int = 10_000, seed: int = 0
    ) -> None:
        """The default task end to end (what `make run` runs).

        Today: generate the default toy dataset (toy/coordination, rare optimum (1,1) at 5%),
        load it back with every check on, and print its summary.

        Args:
            out: Directory for the quickstart's outputs (replaced on every run).
            episodes: Episodes of behaviour data to collect.
            seed: Random seed.
        """
        from macflow.data import load
        from macflow.envs import entry

        e = entry("toy/coordination")
        data_dir = out / "data" / "toy-coordination"
        args = CollectArgs(
            env=e.env_cls()(),
            behaviour=e.behaviour_cls()(),
            out=data_dir,
            episodes=episodes,
            seed=seed,
            overwrite=True,
        )
        console.print(f"[bold]macflow {__version__} quickstart[/]: collecting toy/coordination")
        run_collect(args)
        ds = load(data_dir)
        actions = np.asarray(ds.arrays["actions"])
        share = float(np.mean((actions[:, 0] == 1) & (actions[:, 1] == 1)))
        print_dataset(ds)
        console.print(
            f"Validated. The optimal joint action (1,1) is {100 * share:.1f}% of the data; the "
            "MAC-Flow issue extends this command to train and evaluate on it."
        )

    return app


def main(argv: list[str] | None = None) -> None:
    from macflow.data.schema import DatasetError

    _ARGV[:] = sys.argv[1:] if argv is None else argv
    enable_compile_cache()
    app = _build_app()
    try:
        app.cli(
            prog="macflow",
            description=f"macflow {__version__}: offline MARL with MAC-Flow.",
            args=argv,
        )
    except (DatasetError, FileExistsError, ValueError) as err:
        if os.environ.get("MACFLOW_DEBUG"):
            raise
        Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
