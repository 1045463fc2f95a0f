"""The ``macflow`` command: ``envs``, ``collect``, ``data info``, ``data import``, ``train``,
``eval``, ``export``, ``finetune``, ``sweep`` and ``quickstart``.

Thin by design: each command parses typed options (tyro, help text from field docstrings), calls
the library and prints (``macflow.report``). Bad input ends with a one-line error and exit
status 2, not a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Generic, TypeVar, Union

import tyro
from rich.console import Console
from rich.markup import escape
from tyro.extras import SubcommandApp

from macflow import __version__, enable_compile_cache
from macflow.data.collect import CollectOptions, collect_and_save
from macflow.data.imports import DEFAULT_OPTIONS, Format, ImportOptions
from macflow.finetune import FinetuneConfig
from macflow.quickstart import Quickstart, run_quickstart
from macflow.report import (
    console,
    missing_extra,
    print_dataset,
    print_envs,
    print_final,
    print_imported,
)
from macflow.train import TrainConfig
from macflow.trainers.qualities import QualityOptions, collect_quality


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
            default = CollectOptions(env=env(), behaviour=behaviour(), out=tyro.MISSING)
            cls = CollectOptions[env, behaviour]
        else:
            default = QualityOptions(env(), trainer(), out=tyro.MISSING, quality=tyro.MISSING)
            cls = QualityOptions[env, trainer]
        members.append(
            Annotated[cls, tyro.conf.subcommand(e.env_id, default=default, description=e.summary)]
        )
    return Union[tuple(members)]  # noqa: UP007 (a runtime-built union)


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


def _placeholder(agent_cls):
    """A spec of the kind ``agent_cls`` supports, for presets shown without a dataset."""
    from macflow.spec import EnvSpec

    spec = EnvSpec("any", 2, 1, 2, 1, False, 1, action_low=(-1.0,), action_high=(1.0,))
    if agent_cls.supports(spec) is None:
        return spec
    return EnvSpec("any", 2, 1, 2, 2, True, 1)


def _task_spec(known, agent_cls, helping: bool):
    """The spec the presets are resolved for: the dataset's, the task's, or a placeholder.

    ``--help`` has no side effects and never fails: it reads a macflow dataset's spec, but does
    not convert a dataset of another format (minutes for a large one) or report a bad one."""
    from macflow.train import dataset_spec

    if helping:
        try:
            if known.dataset and not (Path(known.dataset) / "meta.json").is_file():
                return _placeholder(agent_cls)
            return dataset_spec(known.dataset, known.task) or _placeholder(agent_cls)
        except Exception:  # noqa: BLE001 (help shows the placeholder's defaults instead)
            return _placeholder(agent_cls)
    return dataset_spec(known.dataset, known.task, _command()) or _placeholder(agent_cls)


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
    helping = any(a in ("-h", "--help") for a in argv)
    spec = _task_spec(known, agent_cls, helping)
    if helping and agent_cls.supports(spec) is not None:
        spec = _placeholder(agent_cls)  # help for a task the algorithm cannot run
    default = TrainArgs(
        train=TrainConfig(algo=algo, preset=preset),
        agent=agent_cls.presets[preset](spec),
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
        print_final(result.final, title=f"{algo} final evaluation", console=console)


_ARGV: list[str] = []


def _command() -> str:
    """The command line being run, as recorded in datasets and runs."""
    return "macflow " + shlex.join(_ARGV)


def envs() -> None:
    """List every registered task with its spec."""
    print_envs(console)


def collect(args) -> None:
    """Generate a dataset: `macflow collect TASK --out DIR` (toys: scripted behaviour; real
    tasks: `--quality Q` with a trained behaviour policy)."""
    if isinstance(args, MissingExtra):
        raise ValueError(args.error)
    run = collect_quality if isinstance(args, QualityOptions) else collect_and_save
    ds = run(args, command=_command(), console=console)
    print_dataset(ds, console)


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
    from macflow.report import plot_returns

    ds = load(path, verify=verify)
    for stale in leftovers(ds.path):  # notes go to stderr: stdout may be the JSON
        Console(stderr=True).print(
            f"[yellow]note:[/] an interrupted write left {escape(str(stale))}; delete it to "
            "free space",
            highlight=False,
        )
    if as_json:
        meta = read_meta(path)
        meta.pop("spec")
        print(json.dumps(meta, indent=2))
    else:
        print_dataset(ds, console)
    if not no_plot:
        target = plot or Path(f"{Path(path).resolve().name}-returns.png")
        plot_returns(ds, target)
        if not as_json:
            console.print(f"return histogram written to {target}")


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

    imported = import_dataset(
        format, src, out, convert, overwrite=overwrite, console=console, command=_command()
    )
    for ds in imported:
        print_imported(ds, console)


def train_help() -> None:
    """Train an algorithm on a dataset (`macflow train --help` lists its options)."""


def eval_command(
    run: tyro.conf.Positional[Path], episodes: int | None = None, seed: int = 0
) -> None:
    """Evaluate a run's latest checkpoint: each agent acts on its own observation and noise.

    Args:
        run: Run directory (written by `macflow train`).
        episodes: Episodes per seed and noise mode (default: the run's final-evaluation count).
        seed: Seed of the evaluation episodes.
    """
    from macflow.train import evaluate_run

    final = evaluate_run(run, episodes, seed)
    print_final(final, title=f"{run}: evaluation", console=console)
    console.print(f"written to {Path(run) / 'eval.json'}")


def export_command(
    run: tyro.conf.Positional[Path],
    out: Path,
    seed: int | None = None,
    format: str = "onnx,npz",
) -> None:
    """Export a run's decentralised policy (one seed, the students only) to run without JAX:
    OUT/spec.json (inputs, how to draw the noise, action space, provenance), OUT/policy.onnx
    (one graph, checked with onnxruntime) and OUT/policy.npz (weights for macflow/deploy.py,
    a numpy-only forward). Centralised policies (the diffusion baseline) are refused.

    Args:
        run: Run directory (written by `macflow train`).
        out: Directory of the exported files (created; the files in it are replaced).
        seed: Which of the run's seeds (default: its first).
        format: Comma-separated formats besides spec.json: onnx, npz.
    """
    from macflow.export import export

    written = export(run, out, seed, format, command=_command())
    for path in written.values():
        console.print(f"{escape(str(path))}  {path.stat().st_size:,} bytes", highlight=False)


FINETUNE_DEFAULTS = FinetuneConfig()


def finetune_command(
    run: tyro.conf.Positional[Path],
    options: Annotated[FinetuneConfig, tyro.conf.arg(name="")] = FINETUNE_DEFAULTS,
) -> None:
    """Fine-tune an offline run online: its decentralised policies act in the real environment
    and keep training with the same losses on batches mixing the dataset with the online
    transitions (docs/finetune.md). Writes RUN/<name> (default RUN/finetune); `--resume`
    continues it.

    Args:
        run: The offline run directory (written by `macflow train`).
    """
    from macflow.finetune import finetune

    final = finetune(run, options, console=console, command=_command())
    print_final(final, title=f"{run}: fine-tuned", console=console)


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

    if reps < 1:
        raise ValueError(f"--reps must be >= 1, got {reps}")
    if cpus_per_job is not None and not cpus_per_job > 0:
        raise ValueError(f"--cpus-per-job must be > 0, got {cpus_per_job}")
    if num_cpus is not None and num_cpus < 1:
        raise ValueError(f"--num-cpus must be >= 1, got {num_cpus}")

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


def quickstart(options: Annotated[Quickstart, tyro.conf.arg(name="")]) -> None:
    """The default task end to end (what `make run` runs).

    Trains an MAPPO behaviour policy on mpe/spread (cached after the first run), collects
    a medium dataset with it, trains MAC-Flow on it (optionally also flow-BC, the same
    pipeline without the Q term), evaluates the decentralised students and prints them
    against the data.
    """
    run_quickstart(options, command=_command(), console=console)


def _build_app() -> SubcommandApp:
    app = SubcommandApp()
    app.command(envs)
    # Set here: the union of tasks is built at run time from the registry.
    collect.__annotations__ = {
        "args": tyro.conf.OmitArgPrefixes[_collect_choices()],
        "return": None,
    }
    app.command(collect)
    data = SubcommandApp()
    data.command(info)
    data.command(import_command, name="import")
    app.command(
        data,
        name="data",
        help="Inspect and import datasets: `macflow data info PATH`, "
        "`macflow data import FORMAT SRC --out DIR`.",
    )
    app.command(train_help, name="train")
    app.command(eval_command, name="eval")
    app.command(export_command, name="export")
    app.command(finetune_command, name="finetune")
    app.command(sweep)
    app.command(quickstart)
    return app


def _dispatch() -> None:
    if _ARGV[:1] == ["train"]:
        train_command(_ARGV[1:])
        return
    _build_app().cli(
        prog="macflow",
        description=f"macflow {__version__}: offline MARL with MAC-Flow.",
        args=_ARGV,
    )


@contextlib.contextmanager
def _values_in_one_line():
    """A value a config rejects (``--agent.lr -1``) ends as every bad input does, in one line:
    tyro would draw its multi-line box. The hook is tyro's (marked unstable), so without it the
    box is shown instead."""
    errors = getattr(tyro, "_errors", None)
    failure = getattr(errors, "InstantiationFailure", None)
    if failure is None or not hasattr(errors, "on_parse_error"):
        yield
        return

    def hook(event) -> None:
        if isinstance(event, failure):
            message = str(event.message).removeprefix("error: ")
            arg = getattr(event, "argument", None)
            flags = getattr(getattr(arg, "lowered", None), "name_or_flags", None)
            if flags and not any(f in message for f in flags):
                message = f"{'/'.join(flags)}: {message}"
            raise ValueError(message)

    with errors.on_parse_error(hook):
        yield


def main(argv: list[str] | None = None) -> None:
    """Run a macflow command from Python, as the ``macflow`` command does:
    ``main(["train", "--task", "toy/xor", "--steps", "100"])``.

    ``argv`` defaults to ``sys.argv[1:]``. It exits as the command does: ``SystemExit(2)`` with a
    one-line error on bad input, 3 when training diverges, 0 after ``--help``.
    """
    from macflow.data.schema import DatasetError
    from macflow.train import TrainingDiverged

    _ARGV[:] = sys.argv[1:] if argv is None else argv
    enable_compile_cache()
    try:
        with _values_in_one_line():
            _dispatch()
    except TrainingDiverged as err:
        Console(stderr=True).print(
            f"[bold red]training stopped:[/] {escape(str(err))}", highlight=False
        )
        sys.exit(3)
    except (DatasetError, FileExistsError, ValueError, ImportError, OSError) as err:
        if os.environ.get("MACFLOW_DEBUG"):
            raise
        _fail(err)
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/]", highlight=False)
        sys.exit(130)


def _fail(err: Exception) -> None:
    """The one-line error of ``err`` on stderr, and exit status 2."""
    if isinstance(err, ImportError):
        text = missing_extra(err)
    elif isinstance(err, OSError) and not isinstance(err, FileExistsError) and err.filename:
        # "PATH: Permission denied" rather than "[Errno 13] Permission denied: 'PATH'"
        where = f"{err.filename}" + (f" -> {err.filename2}" if err.filename2 else "")
        text = f"{where}: {err.strerror or err}"
        if err.errno == errno.ENOSPC:
            again = "continue with --resume" if _ARGV[:1] == ["train"] else "run it again"
            text += f" (free some space and {again}; nothing half-written is kept)"
    else:
        text = str(err)
    Console(stderr=True).print(
        f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True
    )
    sys.exit(2)


if __name__ == "__main__":
    main()
