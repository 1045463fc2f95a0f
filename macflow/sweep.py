"""``macflow sweep CONFIG``: algorithms x tasks x dataset qualities on Ray, resumable, aggregated.

A sweep file (TOML) names the datasets, the algorithms and the options they share::

    out = "runs/sweep"                  # one run directory per job, plus sweep.json / results.*
    data_root = "datasets"              # datasets at <data_root>/<task with / -> ->/<quality>
    seeds = [0, 1, 2]                   # trained side by side in each job (vmap)
    retries = 1                         # extra attempts of a failed job
    train = ["--steps", "10000"]        # `macflow train` options of every job
    family_train = { mamujoco = ["--final-eval-factor", "1"] }   # more, per suite
    width = [128, 128]                  # every layer-width tuple (`*_hidden`) of every algorithm
    agent = { lr = 0.001, teacher_steps = 10000 }   # set where an algorithm has the field

    [tasks]
    "mpe/spread" = ["medium", "expert"]

    [[algos]]
    algo = "macflow"
    preset = "paper"                    # optional
    label = ""                          # optional: a variant's suffix, e.g. diffusion[ql]
    args = []                           # optional: more `macflow train` options
    family_args = { smax = ["--agent.alpha", "0.01"] }       # optional, per suite (after args)
    task_args = { "mpe/spread" = ["--agent.alpha", "0.1"] }   # optional, per task (after those)
    only = ["mpe/spread:medium"]        # optional: run only on these task:quality datasets

Each job is one real ``macflow train`` command (its exact command line is recorded) run by a Ray
task in a subprocess; Ray schedules jobs by the CPUs they ask for (``--cpus-per-job``), locally by
default or on a cluster (``--address``; ``out`` must then be a filesystem every node shares). A job
is finished when its run directory holds ``final.json``, or when ``sweep.json`` records it done
with the same command: a re-run (after a crash, Ctrl-C or ``kill``) skips finished jobs,
continues one that left a checkpoint (``--resume``) and restarts the others, dataset by dataset.
A failed job is retried ``retries`` times, then reported with the end of its log; the other jobs
go on. ``sweep.json`` (atomic, updated after every job) keeps each job's status, command,
attempts, wall time and final evaluation (with the dataset's checksum and the hardware it ran
on), and each dataset's spec; ``macflow.aggregate`` turns it into tables and plots.

The record is enough to go on elsewhere: copied into ``out`` on another machine or a fresh
checkout, it keeps the finished jobs finished without their run directories or datasets. A
dataset that is not there yet (known from the record, or one ``macflow collect`` can make) is
planned from its spec, and its unfinished jobs wait until it is collected. Dropping a job's entry
from the record (or changing its command) runs it again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import warnings
from pathlib import Path
from typing import Any

from macflow.files import hold, write_atomic

FINAL = "final.json"
TOP_LEVEL = {
    "out", "data_root", "seeds", "retries", "train", "family_train", "width", "agent", "tasks",
    "algos",
}  # fmt: skip
ALGO_KEYS = {"algo", "preset", "label", "args", "family_args", "task_args", "only"}


class SweepError(ValueError):
    """A malformed sweep file; the message names the file and the field."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One ``macflow train`` run: an algorithm (variant) on one dataset."""

    name: str
    """Run directory name under the sweep's ``out``."""
    task: str
    quality: str
    cell: str
    """Column of the tables: the algorithm, with ``[label]`` for a variant."""
    argv: tuple[str, ...]
    """``macflow train`` arguments (without the program name)."""
    dataset: str
    na: str = ""
    """Why the algorithm cannot run this dataset (then the job is not run)."""

    @property
    def command(self) -> str:
        return "macflow " + shlex.join(self.argv)


@dataclasses.dataclass(frozen=True)
class Sweep:
    path: Path
    out: Path
    jobs: tuple[Job, ...]
    retries: int
    data: dict[str, dict[str, Any]]
    """Per dataset directory: its task, quality, mean return, normalised data score, size,
    checksum and spec."""
    missing: frozenset[str] = frozenset()
    """Dataset directories absent here, known from the record: their unfinished jobs wait."""


def _fail(path: Path, field: str, message: str):
    raise SweepError(f"{path}: {field}: {message}")


def _strings(path: Path, field: str, value) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        _fail(path, field, f"expected a list of strings, got {value!r}")
    return value


def _absent_spec(task: str, quality: str, recorded: dict):
    """The spec of a dataset that is not here: the record's, else the registered task's when
    ``macflow collect`` can make that quality (so a mistyped quality stays an error); or None."""
    from macflow.envs import entry, make_env
    from macflow.spec import EnvSpec

    if "spec" in recorded:
        return EnvSpec.from_dict(recorded["spec"])
    try:
        if entry(task).trainer is None:
            return None
    except KeyError:
        return None
    from macflow.trainers.qualities import qualities

    spec = make_env(task).spec
    return spec if quality in qualities(spec.discrete) else None


def _agent_flags(cls, spec, preset: str, width, agent: dict) -> list[str] | None:
    """``--agent.*`` flags for the shared widths/fields; None if ``cls`` cannot run ``spec``
    (its ``supports``, e.g. a discrete-only algorithm on a continuous task)."""
    if cls.supports(spec) is not None:
        return None
    config = cls.presets[preset](spec)
    flags = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        option = f"--agent.{f.name.replace('_', '-')}"
        # Layer widths (tuples); scalar widths such as a mixer's hypernetwork keep the preset's.
        if width and f.name.endswith("hidden") and isinstance(value, tuple):
            flags += [option, *map(str, width)]
        elif f.name in agent:
            flags += [option, str(agent[f.name])]
    return flags


def sweep_out(path: Path) -> Path:
    """The ``out`` directory a sweep file names (without checking the rest of it)."""
    try:
        return Path(tomllib.loads(Path(path).read_text()).get("out", "runs/sweep"))
    except (FileNotFoundError, tomllib.TOMLDecodeError) as err:
        raise SweepError(f"{path}: {err}") from None


@dataclasses.dataclass(frozen=True)
class _Shared:
    """A sweep file's top-level fields, checked: what every job of the sweep shares."""

    out: Path
    data_root: Path
    seeds: list[int]
    retries: int
    train: list[str]
    family_train: dict[str, list[str]]
    width: list[int]
    agent: dict[str, Any]
    tasks: dict[str, list[str]]
    algos: list[Any]


def load_sweep(path: Path, out: Path | None = None, data_root: Path | None = None) -> Sweep:
    """Parse and check a sweep file and plan its jobs (datasets are opened to read their spec).

    Relative ``out`` and ``data_root`` are taken from the current directory."""
    path = Path(path)
    shared = _shared(path, _read_sweep_file(path), out, data_root)
    datasets, data, missing = _plan_datasets(path, shared)
    jobs, names = [], set()
    for i, entry in enumerate(shared.algos):
        jobs += _algo_jobs(path, f"algos[{i}]", entry, shared, datasets, names)
    return Sweep(path, shared.out, tuple(jobs), shared.retries, data, frozenset(missing))


def _read_sweep_file(path: Path) -> dict:
    """The TOML table of a sweep file."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SweepError(f"{path}: no such sweep file") from None
    except tomllib.TOMLDecodeError as err:
        raise SweepError(f"{path}: not valid TOML: {err}") from None


def _shared(path: Path, raw: dict, out: Path | None, data_root: Path | None) -> _Shared:
    """The top-level fields of a sweep file, checked one by one (the first fault raises)."""
    unknown = set(raw) - TOP_LEVEL
    if unknown:
        _fail(path, ", ".join(sorted(unknown)), f"unknown field(s); known: {sorted(TOP_LEVEL)}")
    for required in ("tasks", "algos"):
        if required not in raw:
            _fail(path, required, "missing")
    out = Path(out or raw.get("out", "runs/sweep"))
    data_root = Path(data_root or raw.get("data_root", "datasets"))
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        _fail(path, "seeds", f"expected a non-empty list of integers, got {seeds!r}")
    retries = raw.get("retries", 1)
    if not isinstance(retries, int) or retries < 0:
        _fail(path, "retries", f"expected an integer >= 0, got {retries!r}")
    train = _strings(path, "train", raw.get("train", []))
    family_train = raw.get("family_train", {})
    if not isinstance(family_train, dict):
        _fail(path, "family_train", "expected a table: suite = [options]")
    width = raw.get("width", [])
    if not isinstance(width, list) or not all(isinstance(w, int) and w > 0 for w in width):
        _fail(path, "width", f"expected a list of positive integers, got {width!r}")
    agent = raw.get("agent", {})
    if not isinstance(agent, dict):
        _fail(path, "agent", f"expected a table of config fields, got {agent!r}")
    tasks = raw["tasks"]
    if not isinstance(tasks, dict) or not tasks:
        _fail(path, "tasks", "expected a table: task = [qualities]")
    for fam, extra in family_train.items():
        if fam not in {t.split("/", 1)[0] for t in tasks}:
            _fail(path, f"family_train.{fam}", f"no task of the sweep is in {fam}/")
        _strings(path, f"family_train.{fam}", extra)
    algos = raw["algos"]
    if not isinstance(algos, list) or not algos:
        _fail(path, "algos", "expected one or more [[algos]] tables")
    return _Shared(out, data_root, seeds, retries, train, family_train, width, agent, tasks, algos)


def _plan_datasets(path: Path, shared: _Shared):
    """``(datasets, data, missing)``: each task:quality's directory and spec, its row of the
    record, and the directories absent here.

    A dataset that is not on this machine yet (described by the record of an earlier run of the
    sweep, e.g. on another machine, or one `macflow collect` can make): its finished jobs stay
    finished, the others wait for it."""
    record_path = shared.out / "sweep.json"
    recorded = json.loads(record_path.read_text()).get("data", {}) if record_path.exists() else {}
    datasets, data, missing = {}, {}, set()
    for task, qualities in shared.tasks.items():
        for quality in _strings(path, f"tasks.{task}", qualities):
            d = shared.data_root / task.replace("/", "-") / quality
            if not d.exists():
                spec = _absent_spec(task, quality, recorded.get(str(d), {}))
                if spec is not None:
                    base = {"task": task, "quality": quality, "return_mean": None}
                    data[str(d)] = recorded.get(str(d), base | {"normalised": None})
                    datasets[(task, quality)] = (d, spec)
                    missing.add(str(d))
                    continue
            datasets[(task, quality)], data[str(d)] = _open_dataset(path, task, quality, d)
    return datasets, data, missing


def _open_dataset(path: Path, task: str, quality: str, d: Path):
    """``((d, spec), row of the record)`` of a dataset directory, checked to be of ``task``."""
    from macflow.data import load

    try:
        ds = load(d, verify=False)
    except Exception as err:
        _fail(path, f"tasks.{task}", f"dataset {quality!r} at {d}: {err}")
    if ds.spec.env_id != task:
        _fail(path, f"tasks.{task}", f"{d} holds a {ds.spec.env_id} dataset")
    mean = float(ds.stats()["return_mean"])
    row = {
        "task": task,
        "quality": quality,
        "return_mean": mean,
        "normalised": ds.normalised_score(mean),
        "transitions": int(ds.stats()["transitions"]),
        "checksum": ds.checksum,
        "spec": ds.spec.to_dict(),
    }
    return (d, ds.spec), row


@dataclasses.dataclass(frozen=True)
class _Algo:
    """One ``[[algos]]`` table, checked."""

    algo: str
    cls: Any
    preset: str
    label: str
    args: list[str]
    family_args: dict[str, list[str]]
    task_args: dict[str, list[str]]
    only: list[str]


def _check_algo(path: Path, where: str, entry, tasks: dict, datasets: dict) -> _Algo:
    """An ``[[algos]]`` table's fields, checked against the known algorithms and the sweep's
    tasks and datasets."""
    from macflow.agents import AGENTS, get_agent

    if not isinstance(entry, dict) or "algo" not in entry:
        _fail(path, where, "needs `algo = NAME`")
    unknown = set(entry) - ALGO_KEYS
    if unknown:
        _fail(path, f"{where}.{sorted(unknown)[0]}", f"unknown; known: {sorted(ALGO_KEYS)}")
    algo = entry["algo"]
    if algo not in AGENTS:
        _fail(path, f"{where}.algo", f"unknown algorithm {algo!r}; known: {sorted(AGENTS)}")
    cls = get_agent(algo)
    preset = entry.get("preset", "paper")
    if preset not in cls.presets:
        _fail(path, f"{where}.preset", f"{algo} has presets {sorted(cls.presets)}")
    label = entry.get("label", "")
    args = _strings(path, f"{where}.args", entry.get("args", []))
    family_args = entry.get("family_args", {})
    families = {t.split("/", 1)[0] for t in tasks}
    for fam, extra in family_args.items():
        if fam not in families:
            _fail(path, f"{where}.family_args.{fam}", f"no task of the sweep is in {fam}/")
        _strings(path, f"{where}.family_args.{fam}", extra)
    task_args = entry.get("task_args", {})
    for task, extra in task_args.items():
        if task not in tasks:
            _fail(path, f"{where}.task_args.{task}", "not one of the sweep's tasks")
        _strings(path, f"{where}.task_args.{task}", extra)
    only = _strings(path, f"{where}.only", entry.get("only", []))
    for item in only:
        if tuple(item.rsplit(":", 1)) not in datasets:
            _fail(path, f"{where}.only", f"{item!r} is not one of the sweep's task:quality")
    return _Algo(algo, cls, preset, label, args, family_args, task_args, only)


def _algo_jobs(
    path: Path, where: str, entry, shared: _Shared, datasets: dict, names: set[str]
) -> list[Job]:
    """The jobs of one ``[[algos]]`` table: one per dataset (of ``only``, if given); ``names``
    (the names taken so far) gains theirs."""
    a = _check_algo(path, where, entry, shared.tasks, datasets)
    algo, label, preset = a.algo, a.label, a.preset
    cell = f"{algo}[{label}]" if label else algo
    jobs = []
    for (task, quality), (d, spec) in datasets.items():
        if a.only and f"{task}:{quality}" not in a.only:
            continue
        name = f"{task.replace('/', '-')}-{quality}-{algo}" + (f"-{label}" if label else "")
        if name in names:
            _fail(path, where, f"two jobs named {name}; give variants distinct labels")
        names.add(name)
        flags = _agent_flags(a.cls, spec, preset, shared.width, shared.agent)
        if flags is None:
            na = f"{algo} cannot run {task} ({'discrete' if spec.discrete else 'continuous'})"
            jobs.append(Job(name, task, quality, cell, (), str(d), na))
            continue
        argv = ["train", "--dataset", str(d), "--algo", algo]
        argv += ["--preset", preset] if preset != "paper" else []
        fam = task.split("/", 1)[0]
        argv += ["--seeds", *map(str, shared.seeds), *shared.train]
        argv += [*shared.family_train.get(fam, []), *flags, *a.args]
        argv += [*a.family_args.get(fam, []), *a.task_args.get(task, [])]
        argv += ["--out", str(shared.out), "--name", name, "--no-progress"]
        jobs.append(Job(name, task, quality, cell, tuple(argv), str(d)))
    return jobs


def _die_with_parent() -> None:
    """In the child: receive SIGTERM when the Ray worker that started it dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_job(argv: list[str], run_dir: str) -> dict:
    """Run one ``macflow train`` job to completion (resuming from its checkpoint if it has one);
    returns its final evaluation, or raises with the end of its log."""
    run = Path(run_dir)
    argv = list(argv)
    if (run / "checkpoints" / "latest.msgpack").exists() and (run / "config.json").exists():
        argv.append("--resume")
    elif run.exists():
        # A run that died before its first checkpoint starts over.
        shutil.rmtree(run)
    run.parent.mkdir(parents=True, exist_ok=True)
    log = run.parent / f".{run.name}.log"
    macflow = Path(sys.executable).with_name("macflow")
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run(
            [str(macflow), *argv], stdout=f, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        ).returncode
    seconds = time.perf_counter() - start
    if code != 0 or not (run / FINAL).exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"exit code {code}; last lines of {log}:\n{tail}")
    return {"final": json.loads((run / FINAL).read_text()), "seconds": round(seconds, 1)}


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _record(path: Path, record: dict) -> None:
    write_atomic(path, json.dumps(record, indent=2))


def run_sweep(
    sweep: Sweep,
    address: str | None = None,
    cpus_per_job: float | None = None,
    num_cpus: int | None = None,
    echo=print,
) -> dict:
    """Run every unfinished job of ``sweep`` on Ray; returns (and writes) ``sweep.json``.

    One sweep at a time per ``out``: a second is refused while the first runs (``files.hold``)."""
    sweep.out.mkdir(parents=True, exist_ok=True)
    with hold(sweep.out / "sweep.json"):
        return _run_sweep(sweep, address, cpus_per_job, num_cpus, echo)


def _run_sweep(sweep: Sweep, address, cpus_per_job, num_cpus, echo) -> dict:
    import ray

    out = sweep.out
    record_path = out / "sweep.json"
    old = json.loads(record_path.read_text()) if record_path.exists() else {}
    # Jobs no longer in the sweep file are dropped from the record (their run directories stay).
    kept = {j.name: old["jobs"][j.name] for j in sweep.jobs if j.name in old.get("jobs", {})}
    record = {"sweep": str(sweep.path), "data": sweep.data, "jobs": kept}
    todo, waiting = _triage(sweep, record)
    _record(record_path, record)
    _announce(sweep, todo, waiting, echo)
    if not todo:
        return record

    _start_ray(address, num_cpus)
    cpus = cpus_per_job or ray.cluster_resources().get("CPU", 1)
    remote = ray.remote(num_cpus=cpus, max_retries=0)(run_job)
    attempts = dict.fromkeys((j.name for j in todo), 0)
    pending = {}

    def submit(job: Job):
        attempts[job.name] += 1
        record["jobs"][job.name]["status"] = "submitted"
        record["jobs"][job.name]["attempts"] = attempts[job.name]
        pending[remote.remote(list(job.argv), str(out / job.name))] = job

    # Dataset by dataset, so that a sweep stopped part-way leaves whole rows of the table.
    order = {d: i for i, d in enumerate(sweep.data)}
    for job in sorted(todo, key=lambda j: order.get(j.dataset, len(order))):
        submit(job)
    _record(record_path, record)
    try:
        _collect(pending, record, record_path, attempts, submit, sweep.retries, echo)
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: the running jobs die with their Ray workers; record and leave.
        for job in pending.values():
            record["jobs"][job.name]["status"] = "interrupted"
        _record(record_path, record)
        ray.shutdown()
        raise
    return record


def _triage(sweep: Sweep, record: dict) -> tuple[list[Job], list[Job]]:
    """Each job's row of ``record`` (n/a, done, or pending); returns the pending jobs whose
    dataset is here (to run) and those whose dataset is not (waiting)."""
    out = sweep.out
    todo, waiting = [], []
    for job in sweep.jobs:
        row = {
            "task": job.task,
            "quality": job.quality,
            "cell": job.cell,
            "dataset": job.dataset,
        }
        prev = record["jobs"].get(job.name, {})
        if job.na:
            record["jobs"][job.name] = row | {"status": "n/a", "reason": job.na}
        elif prev.get("status") == "done" and prev.get("command") == job.command:
            # Finished in an earlier invocation: the record holds its final evaluation, so the
            # run directory need not be here (a record carried to a fresh checkout resumes).
            record["jobs"][job.name] = prev
        elif (out / job.name / FINAL).exists() and prev.get("command", job.command) == job.command:
            # Finished while the sweep was interrupted, or by hand before the sweep existed:
            # take its final evaluation as it is.
            final = json.loads((out / job.name / FINAL).read_text())
            record["jobs"][job.name] = row | {
                "status": "done",
                "command": job.command,
                "adopted": not prev,
                "attempts": prev.get("attempts", 0),
                "seconds": None,
                "final": final,
            }
        else:
            if (out / job.name / FINAL).exists():  # the command changed: run it again
                (out / job.name / FINAL).unlink()
            record["jobs"][job.name] = row | {"status": "pending", "command": job.command}
            if job.dataset in sweep.missing:
                waiting.append(job)
            else:
                todo.append(job)
    return todo, waiting


def _announce(sweep: Sweep, todo: list[Job], waiting: list[Job], echo) -> None:
    """Say how many jobs are finished, to run, and waiting for a dataset."""
    done = len(sweep.jobs) - len(todo) - len(waiting)
    echo(f"{len(sweep.jobs)} jobs: {done} finished or n/a, {len(todo)} to run")
    if waiting:
        absent = sorted({j.dataset for j in waiting})
        echo(
            f"{len(waiting)} job(s) wait for dataset(s) not on this machine (collect them, then "
            f"run the sweep again): {', '.join(absent)}"
        )


def _start_ray(address: str | None, num_cpus: int | None) -> None:
    """Join the cluster at ``address`` or start a local Ray (unless one is running); SIGTERM
    then stops the sweep like Ctrl-C."""
    import ray

    # Ray starts its processes with fork + exec, which is safe although JAX (imported above to
    # check the algorithms) runs threads; Python's generic warning about fork would only alarm.
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    if not ray.is_initialized():
        options = {"include_dashboard": False, "log_to_driver": False}
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), **options)
    if threading.current_thread() is threading.main_thread():
        # After ray.init, which installs its own SIGTERM handler: stop like Ctrl-C instead.
        signal.signal(signal.SIGTERM, _interrupt)


def _collect(pending, record, record_path, attempts, submit, retries, echo) -> None:
    """Wait for jobs as they finish; resubmit failed ones up to ``retries`` times."""
    import ray

    total = len(record["jobs"])
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        job = pending.pop(ready[0])
        row = record["jobs"][job.name]
        try:
            result = ray.get(ready[0])
        except Exception as err:  # the job failed (or its worker died)
            message = str(getattr(err, "cause", None) or err)
            row["error"] = message[-3000:]
            if attempts[job.name] <= retries:
                echo(f"  {job.name}: failed (attempt {attempts[job.name]}), retrying")
                submit(job)
            else:
                row["status"] = "failed"
                echo(f"  {job.name}: FAILED after {attempts[job.name]} attempt(s)\n{message}")
        else:
            row.pop("error", None)
            row |= {"status": "done", "seconds": result["seconds"], "final": result["final"]}
            done = sum(r["status"] in ("done", "n/a") for r in record["jobs"].values())
            echo(f"  [{done}/{total}] {job.name} done in {result['seconds'] / 60:.1f} min")
        _record(record_path, record)
