"""The ``macflow`` command: ``envs``, ``collect``, ``data info``, ``sweep`` and ``quickstart``.

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
from rich.markup import escape
from rich.table import Table
from tyro.extras import SubcommandApp

from macflow import __version__, enable_compile_cache
from macflow.data.imports import DEFAULT_OPTIONS, Format, ImportOptions
from macflow.progress import progress_bar
from macflow.train import TrainConfig

console = Console()
EnvT = TypeVar("EnvT")
BehaviourT = TypeVar("BehaviourT")


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


TrainerT = TypeVar("TrainerT")


@dataclasses.dataclass(frozen=True)
class QualityArgs(Generic[EnvT, TrainerT]):
    """Generate a dataset at one of the field's quality levels with a trained behaviour policy.

    The behaviour policy is trained on first use and cached (``~/.cache/macflow/behaviour``,
    resumable if interrupted); later qualities of the same task reuse it."""

    env: EnvT
    """Task parameters."""
    trainer: TrainerT
    """The online trainer that produces the behaviour policies."""
    out: Path
    """Dataset directory to write (atomically: an interrupted write leaves no partial data)."""
    quality: str
    """MPE and MuJoCo: expert, medium, medium-replay, random, medium-expert. SMAX: good, medium,
    poor, replay. See docs/datasets.md for the definitions."""
    transitions: int | None = None
    """Size of the dataset in transitions, rounded up to whole episodes (default 1,000,000, the
    field's size; 100,000 with --quick). medium-replay/replay hold at most what training made."""
    episodes: int | None = None
    """Size in episodes instead of transitions."""
    quick: bool = False
    """A much cheaper behaviour training (minutes) and a smaller default size; trainer options
    given explicitly still apply."""
    seed: int = 0
    """Seed of the behaviour training and of the collection."""
    overwrite: bool = False
    """Replace an existing dataset at ``out``."""


@dataclasses.dataclass(frozen=True)
class MissingExtra:
    """This task's optional dependencies are not installed."""

    error: tyro.conf.Suppress[str] = ""


def _collect_choices():
    from macflow.envs import registered

    members = []
    for e in registered():
        try:
            env = e.env_cls()
            behaviour, trainer = e.behaviour_cls(), e.trainer_cls()
        except ImportError as err:
            default = MissingExtra(str(err).splitlines()[0])
            members.append(
                Annotated[
                    MissingExtra,
                    tyro.conf.subcommand(e.env_id, default=default, description=default.error),
                ]
            )
            continue
        if behaviour is not None:
            default = CollectArgs(env=env(), behaviour=behaviour(), out=tyro.MISSING)
            cls = CollectArgs[env, behaviour]
        else:
            default = QualityArgs(env(), trainer(), out=tyro.MISSING, quality=tyro.MISSING)
            cls = QualityArgs[env, trainer]
        members.append(
            Annotated[cls, tyro.conf.subcommand(e.env_id, default=default, description=e.summary)]
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
    with progress_bar(console=console) as bar:
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


def run_quality_collect(args: QualityArgs):
    """Train (or reuse) the behaviour policy, collect the quality level, save and return it."""
    import time

    from macflow.behaviour.qualities import make_dataset
    from macflow.data import save
    from macflow.data.schema import fields_for

    trainer = args.trainer
    if args.quick:
        base = type(trainer)()
        changed = {
            f.name: getattr(trainer, f.name)
            for f in dataclasses.fields(trainer)
            if getattr(trainer, f.name) != getattr(base, f.name)
        }
        trainer = dataclasses.replace(type(trainer).quick(), **changed)
    env = args.env
    size = args.transitions or (100_000 if args.quick else 1_000_000)
    if args.episodes is not None:
        size = None
    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} already exists; pass --overwrite to replace it")
    start = time.perf_counter()
    ds = make_dataset(
        env, trainer, args.quality, size, args.seed, console=console, episodes=args.episodes
    )
    provenance = dict(ds.provenance)
    provenance["command"] = "macflow " + shlex.join(_ARGV)
    provenance["seconds"] = round(time.perf_counter() - start, 1)
    ds = dataclasses.replace(ds, provenance=provenance)
    with progress_bar(console=console) as bar:
        write = bar.add_task(f"write {args.out}", total=len(fields_for(env.spec)))
        return save(ds, args.out, overwrite=args.overwrite, on_field=lambda _: bar.advance(write))


def _histogram(values: np.ndarray, bins: int = 12) -> str:
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

    from macflow.runs import write_atomic

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
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(Path(path), buf.getvalue())


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


AgentT = TypeVar("AgentT")


@dataclasses.dataclass(frozen=True)
class TrainArgs(Generic[AgentT]):
    """Train an offline MARL algorithm on a dataset and evaluate its policy."""

    train: tyro.conf.OmitArgPrefixes[TrainConfig]
    """Run options."""
    agent: AgentT
    """The algorithm's hyper-parameters (defaults: the --preset's, for this task)."""


def _peek(argv: list[str]):
    import argparse

    peek = argparse.ArgumentParser(add_help=False)
    for flag in ("--algo", "--preset", "--dataset", "--task"):
        peek.add_argument(flag)
    known, _ = peek.parse_known_args(argv)
    return known


def _task_spec(known):
    """The spec the presets are resolved for: the dataset's, the task's, or a placeholder."""
    from macflow.envs import EnvSpec
    from macflow.train import dataset_spec

    spec = dataset_spec(known.dataset, known.task)
    if spec is None:
        return EnvSpec("any", 2, 1, 2, 1, False, 1, action_low=(-1.0,), action_high=(1.0,))
    return spec


def train_command(argv: list[str]) -> None:
    """`macflow train`: parsed in two passes, so that --algo and --preset decide which
    hyper-parameters the rest of the command line sets, and their defaults."""
    from macflow.agents import AGENTS, get_agent
    from macflow.train import train

    known = _peek(argv)
    algo = known.algo or "macflow"
    agent_cls = get_agent(algo)
    preset = known.preset or "paper"
    if preset not in agent_cls.presets:
        raise ValueError(
            f"{algo} has no preset {preset!r}; presets: {', '.join(agent_cls.presets)}"
        )
    default = TrainArgs(
        train=TrainConfig(algo=algo, preset=preset),
        agent=agent_cls.presets[preset](_task_spec(known)),
    )
    policy = (
        "centralised policy (it reads the global state)"
        if agent_cls.centralised
        else ("decentralised policy")
    )
    desc = (
        f"Train {algo} (preset {preset}) and evaluate its {policy}. Algorithms: "
        f"{', '.join(AGENTS)}; presets of {algo}: {', '.join(agent_cls.presets)}. The --agent.* "
        "defaults shown are the preset's for the given --dataset or --task."
    )
    args = tyro.cli(
        TrainArgs[agent_cls.Config],
        default=default,
        args=argv,
        prog="macflow train",
        description=desc,
    )
    command = "macflow " + shlex.join(["train", *argv])
    result = train(args.train, args.agent, console=console, command=command)
    console.print(f"run directory: {result.path}")
    if result.final:
        print_final(result.final, title=f"{algo} final evaluation")


def print_final(final: dict, title: str) -> None:
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
    console.print(table)
    console.print(f"{final['episodes']} episodes per seed and mode, after {final['step']} updates.")


def _build_app() -> SubcommandApp:
    app = SubcommandApp()

    @app.command
    def envs() -> None:
        """List every registered task with its spec."""
        from macflow.envs import registered

        table = Table(title="macflow environments (default parameters)")
        table.add_column("id", no_wrap=True, style="bold cyan")
        for col in ("N", "obs", "state", "actions", "limit", "extra"):
            table.add_column(col, no_wrap=True)
        table.add_column("description", ratio=1)
        missing = {}
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
        console.print(table)
        console.print(
            "* state = concatenated observations. `macflow collect TASK --help` lists a task's "
            "parameters and its scripted data options."
        )
        for extra, ids in missing.items():
            console.print(
                f"{len(ids)} task(s) need the '{extra}' extra, not installed here: "
                f"pip install 'macflow[{extra}]' (from a clone: pip install -e '.[{extra}]')",
                markup=False,
            )

    collect_choices = _collect_choices()

    def collect(args) -> None:
        """Generate a dataset: `macflow collect TASK --out DIR` (toys: scripted behaviour; real
        tasks: `--quality Q` with a trained behaviour policy)."""
        if isinstance(args, MissingExtra):
            raise ValueError(args.error)
        ds = run_quality_collect(args) if isinstance(args, QualityArgs) else run_collect(args)
        print_dataset(ds)

    # Set after definition: the union of tasks is built at run time from the registry.
    collect.__annotations__ = {"args": tyro.conf.OmitArgPrefixes[collect_choices], "return": None}
    app.command(collect)

    data = SubcommandApp()

    @data.command
    def info(
        path: tyro.conf.Positional[Path],
        verify: bool = True,
        as_json: bool = False,
        plot: Path | None = None,
        no_plot: bool = False,
    ) -> None:
        """Validate a dataset, print its summary (episodes, transitions, returns, spec) and plot
        its episode-return histogram to a PNG file.

        Args:
            path: Dataset directory.
            verify: Check every array file against its recorded sha256 checksum.
            as_json: Print the metadata as JSON instead of a table.
            plot: PNG file for the return histogram (default: ``<dataset name>-returns.png`` in
                the current directory).
            no_plot: Do not write the plot.
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
        if not no_plot:
            target = plot or Path(f"{Path(path).resolve().name}-returns.png")
            plot_returns(ds, target)
            if not as_json:
                console.print(f"return histogram written to {target}")

    @data.command(name="import")
    def import_command(
        format: tyro.conf.Positional[Format],
        src: tyro.conf.Positional[Path],
        out: Path,
        convert: tyro.conf.OmitArgPrefixes[ImportOptions] = DEFAULT_OPTIONS,
        overwrite: bool = False,
    ) -> None:
        """Convert a dataset of the field's formats into a macflow dataset (docs/importers.md).

        FORMAT is og-marl (a flashbax vault: a `<name>.vlt` directory, every uid into
        `OUT/<uid>`, or one uid directory), omar (a `seed_<k>_data` directory of per-agent .npy
        files, or a directory of them: seeds concatenated), omiga (a MA-MuJoCo .hdf5 file),
        cfcql (a pymarl .h5 file) or madiff (a directory with path_lengths.npy). Every
        transformation is recorded in the dataset's provenance (`macflow data info OUT --as-json`).

        Args:
            format: Source format.
            src: The source file or directory.
            out: Directory of the converted dataset (of one dataset per uid for a `.vlt`).
            convert: How the source's conventions map onto the macflow format.
            overwrite: Replace an existing dataset at OUT.
        """
        from macflow.data.imports import import_dataset

        command = "macflow " + shlex.join(_ARGV)
        imported = import_dataset(
            format, src, out, convert, overwrite=overwrite, console=console, command=command
        )
        for ds in imported:
            print_dataset(ds)
            notes = ds.provenance.get("transformations") or []
            for note in notes:
                console.print(f"  [dim]-[/] {note}")
            console.print(f"written to {ds.path}")

    app.command(
        data,
        name="data",
        help="Inspect and import datasets: `macflow data info PATH`, "
        "`macflow data import FORMAT SRC --out DIR`.",
    )

    @app.command(name="train")
    def train_help() -> None:
        """Train an algorithm on a dataset (`macflow train --help` lists its options)."""

    @app.command(name="eval")
    def eval_command(
        run: tyro.conf.Positional[Path], episodes: int | None = None, seed: int = 0
    ) -> None:
        """Evaluate a run's latest checkpoint: each agent acts on its own observation and noise.

        Args:
            run: Run directory (written by `macflow train`).
            episodes: Episodes per seed and noise mode (default: the run's final-evaluation count).
            seed: Seed of the evaluation episodes.
        """
        final = evaluate_run(run, episodes, seed)
        print_final(final, title=f"{run}: evaluation")
        console.print(f"written to {Path(run) / 'eval.json'}")

    @app.command
    def sweep(
        config: tyro.conf.Positional[Path],
        address: str | None = None,
        cpus_per_job: float | None = None,
        num_cpus: int | None = None,
        out: Path | None = None,
        data_root: Path | None = None,
        dry_run: bool = False,
        aggregate_only: bool = False,
        reps: int = 2000,
    ) -> None:
        """Run algorithms x tasks x dataset qualities x seeds on Ray and aggregate them.

        Each job is one `macflow train` run; finished jobs are skipped when the sweep is run
        again, failed ones retried. Writes `sweep.json`, `results.md`, `results.json` and
        `iqm.png` (IQM and mean with stratified-bootstrap CIs) into the sweep's `out`.
        The sweep file format is described in `macflow/sweep.py`.

        Args:
            config: Sweep file (TOML).
            address: Ray cluster to join (e.g. `auto` or `HOST:6379`); default: a local Ray.
            cpus_per_job: CPUs each job asks Ray for (default: all of the cluster's, so jobs
                run one after another, each using every core through XLA).
            num_cpus: CPUs of the local Ray (default: all of this machine's).
            out: Override the sweep file's `out` directory.
            data_root: Override the sweep file's `data_root` (datasets at
                `<data_root>/<task with / replaced by ->/<quality>`).
            dry_run: Print the planned jobs and their commands without running them.
            aggregate_only: Only rebuild the tables and plot from `sweep.json`.
            reps: Bootstrap resamples of the confidence intervals.
        """
        from macflow.aggregate import write_results
        from macflow.sweep import load_sweep, run_sweep, sweep_out

        if aggregate_only:  # needs only the record, not the datasets
            out = out or sweep_out(config)
            if not (out / "sweep.json").exists():
                raise ValueError(f"{out / 'sweep.json'}: no sweep record yet; run the sweep first")
            record = json.loads((out / "sweep.json").read_text())
        else:
            planned = load_sweep(config, out, data_root)
            out = planned.out
            if dry_run:
                for job in planned.jobs:
                    text = f"n/a ({job.na})" if job.na else job.command
                    console.print(f"{job.name}: {text}", soft_wrap=True)
                return
            try:
                record = run_sweep(planned, address, cpus_per_job, num_cpus, echo=console.print)
            except KeyboardInterrupt:
                console.print("[yellow]interrupted[/]: run the same command again to resume")
                sys.exit(130)
        result = write_results(record, out, reps)
        print((out / "results.md").read_text())
        if result["failed"]:
            console.print(f"[bold red]{len(result['failed'])} job(s) failed[/] (see sweep.json)")
            sys.exit(1)

    @app.command
    def quickstart(
        out: Path = Path("runs/quickstart"),
        transitions: int = 100_000,
        behaviour_steps: int = 1_000_000,
        teacher_steps: int = 3000,
        steps: int = 3000,
        seeds: tuple[int, ...] = (0, 1),
        flow_bc: bool = False,
    ) -> None:
        """The default task end to end (what `make run` runs).

        Trains an MAPPO behaviour policy on mpe/spread (cached after the first run), collects
        a medium dataset with it, trains MAC-Flow on it (optionally also flow-BC, the same
        pipeline without the Q term), evaluates the decentralised students and prints them
        against the data.

        Args:
            out: Directory for the quickstart's outputs (replaced on every run).
            transitions: Size of the medium dataset.
            behaviour_steps: Environment steps of the MAPPO behaviour training.
            teacher_steps: Updates of the flow teacher (stage 1).
            steps: Updates of students and critic (stage 2).
            seeds: Seeds trained side by side.
            flow_bc: Also train flow-BC (no Q term) for comparison.
        """
        run_quickstart(out, transitions, behaviour_steps, teacher_steps, steps, seeds, flow_bc)

    return app


def evaluate_run(run: Path, episodes: int | None = None, seed: int = 0) -> dict:
    """Evaluate a run directory's checkpoint in both noise modes; writes ``run/eval.json``."""
    import jax

    from macflow.agents import ACT_MODES
    from macflow.data import read_meta
    from macflow.envs import make_env
    from macflow.evaluate import evaluate
    from macflow.runs import write_atomic
    from macflow.train import load_run

    record, _, _, agents, step = load_run(run)
    try:
        env = make_env(record["dataset"]["env_id"], **record["dataset"]["env_kwargs"])
    except KeyError as err:
        raise ValueError(f"{run} cannot be evaluated: {err.args[0]}") from err
    train = record["train"]
    episodes = episodes or train["eval_episodes"] * train["final_eval_factor"]
    reference = None
    if Path(train["dataset"], "meta.json").exists():
        reference = read_meta(train["dataset"])["reference_returns"]
    final = {"step": step, "episodes": episodes, "seeds": train["seeds"], "modes": {}}
    for mode in ACT_MODES:
        chunk = min(episodes, train["eval_episodes"])
        res = evaluate(env, agents, jax.random.PRNGKey(seed), episodes, mode, reference, chunk)
        final["modes"][mode] = [{k: v for k, v in r.items() if k != "returns"} for r in res]
    write_atomic(Path(run) / "eval.json", json.dumps(final, indent=2))
    return final


def run_quickstart(
    out: Path,
    transitions: int,
    behaviour_steps: int,
    teacher_steps: int,
    steps: int,
    seeds: tuple[int, ...],
    flow_bc: bool,
) -> None:
    import shutil

    from macflow.agents.macflow import MACFlowConfig
    from macflow.behaviour.ppo import PPO
    from macflow.envs import make_env
    from macflow.train import train

    task = "mpe/spread"
    data_dir = out / "data" / "mpe-spread-medium"
    console.print(f"[bold]macflow {__version__} quickstart[/]: {task}, medium quality")
    trainer = PPO(env_steps=behaviour_steps)
    ds = run_quality_collect(
        QualityArgs(make_env(task), trainer, data_dir, "medium", transitions, overwrite=True)
    )
    print_dataset(ds)
    # Widths and steps sized for minutes on a 2-core CPU (the paper uses 4x512 and 1M updates).
    # alpha 0.1 (paper preset: 1): measured on this dataset (3000+3000 updates, 2 seeds), the
    # sampled-noise normalised score is 57 / 61 / 73 at alpha 1 / 0.3 / 0.1 (data: 52).
    hidden = (128, 128)
    macflow = MACFlowConfig(
        teacher_hidden=hidden,
        student_hidden=hidden,
        critic_hidden=hidden,
        alpha=0.1,
        lr=1e-3,
        teacher_steps=teacher_steps,
    )
    configs = [("MAC-Flow", macflow)]
    if flow_bc:
        configs.insert(0, ("flow-BC", dataclasses.replace(macflow, q_weight=0.0)))
    rows = []
    for name, config in configs:
        shutil.rmtree(out / "runs" / name, ignore_errors=True)
        cfg = TrainConfig(
            dataset=data_dir,
            steps=steps,
            seeds=seeds,
            log_every=min(500, steps),
            eval_every=0,
            eval_episodes=32,
            checkpoint_every=0,
            out=out / "runs",
            name=name,
        )
        console.print(f"training {name} ({'no Q term' if config.q_weight == 0 else 'with Q'})")
        rows.append((name, train(cfg, config, console=console)))
    stats, ref = ds.stats(), ds.reference_returns
    table = Table(title=f"{task} medium: decentralised students vs the behaviour data")
    for col in ("policy", "return, sampled noise", "return, zero noise", "normalised (sampled)"):
        table.add_column(col, justify="right")
    table.add_row(
        "behaviour data",
        f"{stats['return_mean']:.2f}",
        "-",
        f"{ds.normalised_score(stats['return_mean']):.1f}",
    )
    for name, result in rows:
        cells = []
        for mode in ("sample", "zero"):
            means = [r["return_mean"] for r in result.final["modes"][mode]]
            cells.append(f"{np.mean(means):.2f} ± {np.std(means):.2f}")
        scores = [r["normalised_score"] for r in result.final["modes"]["sample"]]
        table.add_row(name, *cells, f"{np.mean(scores):.1f}")
    console.print(table)
    console.print(
        f"Means ± std over seeds {list(seeds)}, {rows[0][1].final['episodes']} episodes each. "
        f"Normalised: 100 (R - random) / (expert - random), random {ref['random']:.2f}, expert "
        f"{ref['expert']:.2f} (the behaviour training's best policy). Runs in {out / 'runs'}; "
        f"`macflow eval {out / 'runs' / 'MAC-Flow'}` re-evaluates."
    )


def main(argv: list[str] | None = None) -> None:
    from macflow.data.schema import DatasetError
    from macflow.train import TrainingDiverged

    _ARGV[:] = sys.argv[1:] if argv is None else argv
    enable_compile_cache()
    try:
        if _ARGV[:1] == ["train"]:
            train_command(_ARGV[1:])
            return
        _build_app().cli(
            prog="macflow",
            description=f"macflow {__version__}: offline MARL with MAC-Flow.",
            args=_ARGV,
        )
    except TrainingDiverged as err:
        Console(stderr=True).print(
            f"[bold red]training stopped:[/] {escape(str(err))}", highlight=False
        )
        sys.exit(3)
    except (DatasetError, FileExistsError, ValueError, ImportError) as err:
        if os.environ.get("MACFLOW_DEBUG"):
            raise
        text = escape(missing_extra(err) if isinstance(err, ImportError) else str(err))
        Console(stderr=True).print(f"[bold red]error:[/] {text}", highlight=False, soft_wrap=True)
        sys.exit(2)


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


if __name__ == "__main__":
    main()
