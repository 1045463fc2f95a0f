"""Every ``macflow`` command over bad inputs, run as a hostile new user would (issue 18).

    python tests/bad_inputs.py                      # all cases, 2 at a time
    python tests/bad_inputs.py --only import --jobs 1
    python tests/bad_inputs.py --markdown docs/reliability_cases.md

Each case copies a few small, real inputs (a toy dataset, a trained toy run, importer sources
written by numpy, h5py and flashbax) into its own directory, damages them, runs one ``macflow``
command in a subprocess and classifies what happened:

- ``error``: exit status 2 and exactly one ``error:`` line (with ``names`` in it: the file or
  flag at fault), no traceback;
- ``usage``: exit status 2 with tyro's usage box (an unknown flag, a missing argument);
- ``ok``: exit status 0, and the case's own check of the result passed;
- anything else is a failure: ``traceback``, ``silent`` (exit 0 where an error was due),
  ``wrong`` (the check of the result failed), ``exit N``.

The cases run as root can not see permission errors, so those run as user ``nobody`` (setpriv);
the disk-full cases mount a small tmpfs. Where either is impossible the case is ``skipped`` with
the reason. ``tests/test_faults.py`` runs a sample of these cases in ``make test``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
MACFLOW = [sys.executable, "-m", "macflow"]
TINY = ["--steps", "20", "--log-every", "10", "--eval-every", "10", "--checkpoint-every", "10"]
TINY += ["--eval-episodes", "2", "--final-eval-factor", "1", "--no-progress"]
BC8 = ["--algo", "bc", "--agent.hidden", "8", "8"]


@dataclasses.dataclass
class Case:
    """One command over one bad input."""

    group: str
    name: str
    argv: list[str] | Callable[[Path], list[str]]
    """The command's arguments after ``macflow`` (``{d}`` is the case's directory)."""
    expect: str = "error"
    """``error``, ``usage`` or ``ok``."""
    names: str | None = None
    """Text the error line must contain (the file, field or flag at fault)."""
    setup: Callable[[Path], None] | None = None
    check: Callable[[Path, subprocess.CompletedProcess], str | None] | None = None
    """After the command: None if the result is right, else what is wrong."""
    user: bool = False
    """Run as user ``nobody`` (permission errors are invisible to root)."""
    disk: int = 0
    """Mount a tmpfs of this many KiB at ``{d}/full`` first."""
    run: Callable[[Path, dict], subprocess.CompletedProcess] | None = None
    """A custom runner (kills, concurrent writers) instead of one command."""


# -- inputs --------------------------------------------------------------------------------------


def build_inputs(base: Path, env: dict) -> None:
    """The small, valid inputs the cases damage: datasets, runs and importer sources."""
    sys.path.insert(0, str(HERE))
    import numpy as np

    from macflow.data import save
    from macflow.data.collect import collect
    from macflow.envs import entry

    for task, name, episodes in (("toy/xor", "ds", 300), ("toy/landmarks", "cont", 100)):
        e = entry(task)
        save(collect(e.env_cls()(), e.behaviour_cls()(), episodes), base / name)
    for name, hidden in (("run", "8"), ("run16", "16")):
        argv = ["train", "--dataset", str(base / "ds"), *TINY, *BC8[:2], "--agent.hidden"]
        argv += [hidden, hidden, "--out", str(base), "--name", name]
        subprocess.run([*MACFLOW, *argv], env=env, check=True, capture_output=True)

    import test_import_cfcql as cfcql
    import test_import_madiff as madiff
    import test_import_omiga as omiga

    from vaults import smac_like, write_vault

    rng = np.random.default_rng(0)
    madiff.write(base / "madiff", madiff.smac_like(rng))
    from macflow.data.imports import import_dataset

    import_dataset("madiff", base / "madiff", base / "legal", quiet=True)  # with legal masks
    (base / "omiga").mkdir()
    omiga.write(base / "omiga" / "a-expert.hdf5", **omiga.omiga_like(rng))
    bad = omiga.omiga_like(rng)
    bad["o"] = bad["o"][:5]  # fewer rows than the other keys
    omiga.write(base / "omiga" / "b-expert.hdf5", **bad)
    (base / "cfcql").mkdir()
    cfcql.write(base / "cfcql" / "a.h5", cfcql.pymarl_batch(rng))
    broken = cfcql.pymarl_batch(rng)
    del broken["filled"]
    cfcql.write(base / "cfcql" / "b.h5", broken)
    for uid in ("Good", "Poor"):
        write_vault(base, "smac.vlt", uid, smac_like(rng))


# -- damage --------------------------------------------------------------------------------------


def edit_meta(rel: str, change: Callable[[dict], object]) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        path = d / rel / "meta.json"
        meta = json.loads(path.read_text())
        change(meta)
        path.write_text(json.dumps(meta))

    return setup


def write_text(rel: str, text: str | bytes) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        path = d / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)

    return setup


def replace_with_dir(rel: str) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        (d / rel).unlink()
        (d / rel).mkdir()

    return setup


def symlink_loop(rel: str) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        path = d / rel
        path.unlink(missing_ok=True)
        os.symlink(path.name, path)

    return setup


def truncate(rel: str, keep: float = 0.5) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        data = (d / rel).read_bytes()
        (d / rel).write_bytes(data[: int(len(data) * keep)])

    return setup


def remove(rel: str) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        path = d / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return setup


def npy(rel: str, change: Callable) -> Callable[[Path], None]:
    """Rewrite a field file with ``change(array)`` (meta.json's checksum left stale: load with
    ``--no-verify`` to reach the check under test)."""

    def setup(d: Path) -> None:
        import numpy as np

        arr = np.load(d / rel)
        np.save(d / rel, change(arr.copy()))

    return setup


def chmod(rel: str, mode: int) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        os.chmod(d / rel, mode)

    return setup


def both(*setups) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        for s in setups:
            s(d)

    return setup


def set_item(arr, index, value):
    arr[index] = value
    return arr


# -- checks --------------------------------------------------------------------------------------


def absent(rel: str) -> Callable:
    """Nothing was written at ``rel``, and no hidden sibling (temp directory, lock) is left."""

    def check(d: Path, proc) -> str | None:
        path = d / rel
        if path.exists():
            return f"{rel} was written"
        left = sorted(p.name for p in path.parent.glob(f".{path.name}.*"))
        return f"left {', '.join(left)}" if left else None

    return check


def loads(rel: str) -> Callable:
    def check(d: Path, proc) -> str | None:
        from macflow.data import load

        try:
            load(d / rel)
        except Exception as err:  # noqa: BLE001
            return f"{rel} does not load: {err}"
        return None

    return check


def final_rows_once(rel: str) -> Callable:
    def check(d: Path, proc) -> str | None:
        import csv

        with open(d / rel / "evals.csv") as f:
            rows = [r for r in csv.DictReader(f) if r["mode"].startswith("final")]
        seeds = len(json.loads((d / rel / "config.json").read_text())["train"]["seeds"])
        return None if len(rows) == 2 * seeds else f"{len(rows)} final rows, not {2 * seeds}"

    return check


def same_as(rel: str, other: str) -> Callable:
    """The resumed run's logs and checkpoint equal the uninterrupted run's."""

    def check(d: Path, proc) -> str | None:
        import csv

        def evals(run):
            with open(d / run / "evals.csv") as f:
                return [
                    {k: v for k, v in r.items() if k != "train_seconds"} for r in csv.DictReader(f)
                ]

        a, b = d / rel, d / other
        if (a / "metrics.csv").read_text() != (b / "metrics.csv").read_text():
            return "metrics.csv differs"
        if evals(rel) != evals(other):
            return "evals.csv differs"
        ca, cb = (p / "checkpoints" / "latest.msgpack" for p in (a, b))
        if ca.read_bytes() != cb.read_bytes():
            return "checkpoint differs"
        return None

    return check


# -- custom runners ------------------------------------------------------------------------------


def _run(argv, env, cwd, user=False, timeout=600):
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if user else []
    return subprocess.run(
        [*prefix, *MACFLOW, *argv], env=env, cwd=cwd, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def two_writers(argv: Callable[[Path], list[str]], expect_busy: str = "being written"):
    """Start the same command twice at once: one must succeed and the other be refused, while
    the first writes (``expect_busy``) or, if it started after the first had finished, because
    the output exists (``--overwrite`` / ``--resume``)."""

    def run(d: Path, env: dict) -> subprocess.CompletedProcess:
        procs = [
            subprocess.Popen(
                [*MACFLOW, *argv(d)],
                env=env,
                cwd=d,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for _ in range(2)
        ]
        outs = [(p, *p.communicate(timeout=600)) for p in procs]
        codes = sorted(p.returncode for p, *_ in outs)
        err = "".join(e for _, _, e in outs)
        if codes == [0, 2] and any(m in err for m in (expect_busy, "--overwrite", "exists")):
            line = next(ln for ln in err.splitlines() if ln.startswith("error:"))
            return subprocess.CompletedProcess(argv, 2, "", line + "\n")
        if codes == [0, 0]:
            return subprocess.CompletedProcess(argv, 0, "", "both writers exited 0\n")
        return subprocess.CompletedProcess(argv, max(codes), "", err)

    return run


def killed(argv: Callable[[Path], list[str]], when: Callable[[Path], bool], then: list[str]):
    """Start ``argv``, SIGKILL it once ``when(d)`` holds, then run ``then`` (the recovery)."""

    def run(d: Path, env: dict) -> subprocess.CompletedProcess:
        proc = subprocess.Popen(
            [*MACFLOW, *argv(d)], env=env, cwd=d, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.time() + 300
        while proc.poll() is None and not when(d) and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return _run([a.format(d=d) for a in then], env, d)

    return run


def grows(rel: str, size: int = 1) -> Callable[[Path], bool]:
    def when(d: Path) -> bool:
        path = d / rel
        return path.exists() and path.stat().st_size >= size

    return when


def hidden_sibling(rel: str) -> Callable[[Path], bool]:
    def when(d: Path) -> bool:
        path = d / rel
        return any(path.parent.glob(f".{path.name}.tmp-*"))

    return when


# -- the cases -----------------------------------------------------------------------------------

D = "{d}"
DS, RUN, CONT = f"{D}/ds", f"{D}/run", f"{D}/cont"


def train(*args: str) -> list[str]:
    return ["train", "--dataset", DS, *TINY, *BC8, "--out", f"{D}/runs", *args]


def resume(*args: str, run: str = "run") -> list[str]:
    return ["train", "--dataset", DS, *TINY, *BC8, "--out", D, "--name", run, "--resume", *args]


def cases() -> list[Case]:
    c: list[Case] = []
    add = c.append
    # fmt: off
    # CLI misuse
    for argv, expect in (
        ([], "usage"), (["frobnicate"], "usage"), (["train"], "error"),
        (["train", "--task", "toy/xor", "--bogus"], "usage"), (["collect"], "usage"),
        (["collect", "toy/xor"], "usage"), (["data", "info"], "usage"),
        (["data", "import", "madiff"], "usage"), (["eval"], "usage"), (["sweep"], "usage"),
    ):
        add(Case("cli", f"macflow {' '.join(argv)}".strip(), argv, expect))
    add(Case("cli", "unknown algorithm", ["train", "--task", "toy/xor", "--algo", "nope"], names="nope"))
    add(Case("cli", "unknown preset", ["train", "--task", "toy/xor", "--preset", "nope"], names="nope"))
    add(Case("cli", "unknown task", ["train", "--task", "toy/nope"], names="toy/nope"))
    add(Case("cli", "collect unknown task", ["collect", "toy/nope", "--out", f"{D}/x"], "usage"))
    add(Case("cli", "train --algo icq --help", ["train", "--algo", "icq", "--help"], "ok"))
    add(Case("cli", "train --dataset SRC --help converts nothing", ["train", "--dataset", f"{D}/madiff", "--help"], "ok",
             check=lambda d, p: "it converted the dataset" if "converting" in p.stderr else None))
    add(Case("cli", "train --help with a missing dataset", ["train", "--dataset", f"{D}/nowhere", "--help"], "ok"))
    add(Case("cli", "train icq on continuous data", ["train", "--dataset", CONT, "--algo", "icq"], names="icq"))
    add(Case("cli", "dataset of another task", ["train", "--dataset", DS, "--task", "toy/landmarks"], names="toy/landmarks"))
    for flag, value in (
        ("--steps", "0"), ("--steps", "-5"), ("--batch-size", "0"), ("--log-every", "0"),
        ("--eval-every", "7"), ("--eval-every", "-10"), ("--checkpoint-every", "15"),
        ("--eval-episodes", "0"), ("--final-eval-factor", "0"),
    ):
        add(Case("train options", f"{flag} {value}", ["train", "--dataset", DS, flag, value], names=flag))
    add(Case("train options", "--steps abc", ["train", "--dataset", DS, "--steps", "abc"], names="--steps"))
    add(Case("train options", "--seeds 0 0", ["train", "--dataset", DS, "--seeds", "0", "0"], names="--seeds"))
    for name in ("../x", "/tmp/abs", "a/b", ""):
        add(Case("train options", f"--name {name!r}", train("--name", name), names="--name",
                 check=absent("x") if name == "../x" else None))

    # agent options
    for algo, flag, value in (
        ("bc", "--agent.lr", "-1"), ("bc", "--agent.lr", "0"), ("bc", "--agent.lr", "nan"),
        ("macflow", "--agent.lr", "inf"), ("macflow", "--agent.discount", "1.5"),
        ("macflow", "--agent.discount", "-0.1"), ("macflow", "--agent.tau", "0"),
        ("macflow", "--agent.tau", "2"), ("macflow", "--agent.alpha", "-1"),
        ("macflow", "--agent.student-hidden", "0"), ("macflow", "--agent.critic-heads", "0"),
        ("macflow", "--agent.flow-steps", "0"), ("matd3bc", "--agent.policy-delay", "0"),
        ("omiga", "--agent.alpha", "0"), ("diffusion", "--agent.timesteps", "0"),
        ("diffusion", "--agent.ddim-steps", "500"), ("icq", "--agent.beta", "-1"),
        ("bc", "--agent.hidden", "-4"),
    ):
        argv = ["train", "--dataset", f"{D}/legal" if algo == "icq" else DS, "--algo", algo, flag, value]
        add(Case("agent options", f"{algo} {flag} {value}", argv, names=flag.split(".")[1]))

    # collect
    xor = ["collect", "toy/xor", "--out"]
    add(Case("collect", "--episodes 0", [*xor, f"{D}/x", "--episodes", "0"], names="--episodes", check=absent("x")))
    add(Case("collect", "--episodes -3", [*xor, f"{D}/x", "--episodes", "-3"], names="--episodes", check=absent("x")))
    add(Case("collect", "existing --out refused first", [*xor, DS, "--episodes", "100000000"], names="--overwrite"))
    add(Case("collect", "--out is a file", [*xor, f"{D}/ds/meta.json", "--episodes", "10"], names="meta.json"))
    add(Case("collect", "--out not a dataset", [*xor, f"{D}/madiff", "--episodes", "10"], names="madiff"))
    add(Case("collect", "unknown quality", ["collect", "mpe/spread", "--out", f"{D}/x", "--quality", "superb"], names="superb"))
    add(Case("collect", "--out unwritable", [*xor, f"{D}/ro/x", "--episodes", "10"], names="ro", setup=read_only("ro"), user=True))
    add(Case("collect", "disk full", [*xor, f"{D}/full/x", "--episodes", "20000"], names="full", disk=256, check=absent("full/x")))
    add(Case("collect", "two writers, one --out", [], check=loads("x"),
             run=two_writers(lambda d: [*xor, f"{d}/x", "--episodes", "100000"])))
    add(Case("collect", "killed while writing, then again", [], "ok", check=loads("x"),
             run=killed(lambda d: [*xor, f"{d}/x", "--episodes", "200000"], hidden_sibling("x"),
                        [*xor, f"{D}/x", "--episodes", "100", "--overwrite"])))

    # datasets: data info and train on damaged datasets
    damaged = [
        ("no meta.json", remove("ds/meta.json"), "ds"),
        ("meta.json not JSON", write_text("ds/meta.json", "{nope"), "meta.json"),
        ("meta.json a list", write_text("ds/meta.json", "[1, 2]"), "meta.json"),
        ("meta.json a number", write_text("ds/meta.json", "3"), "meta.json"),
        ("fields a string", edit_meta("ds", lambda m: m.update(fields="x")), "fields"),
        ("spec a number", edit_meta("ds", lambda m: m["env"].update(spec=3)), "spec"),
        ("spec missing", edit_meta("ds", lambda m: m["env"].pop("spec")), "spec"),
        ("num_agents a string", edit_meta("ds", lambda m: m["env"]["spec"].update(num_agents="two")), "num_agents"),
        ("num_agents negative", edit_meta("ds", lambda m: m["env"]["spec"].update(num_agents=-2)), "num_agents"),
        ("episode_limit 0", edit_meta("ds", lambda m: m["env"]["spec"].update(episode_limit=0)), "episode_limit"),
        ("a shape that is not a list", edit_meta("ds", lambda m: m["fields"]["rewards"].update(shape="big")), "rewards"),
        ("recorded shape differs", edit_meta("ds", lambda m: m["fields"]["rewards"].update(shape=[7])), "rewards"),
        ("recorded dtype differs", edit_meta("ds", lambda m: m["fields"]["rewards"].update(dtype="int8")), "rewards"),
        ("meta.json non-UTF-8", write_text("ds/meta.json", b"\xff\xfe{}"), "meta.json"),
        ("meta.json a directory", both(remove("ds/meta.json"), lambda d: (d / "ds" / "meta.json").mkdir()), "meta.json"),
        ("meta.json a symlink loop", symlink_loop("ds/meta.json"), "meta.json"),
        ("a field missing", remove("ds/rewards.npy"), "rewards"),
        ("a field truncated", truncate("ds/observations.npy"), "observations"),
        ("a field not .npy", write_text("ds/rewards.npy", "hello"), "rewards"),
        ("a field a directory", replace_with_dir("ds/rewards.npy"), "rewards"),
        ("a field a symlink loop", symlink_loop("ds/rewards.npy"), "rewards"),
        ("a field's checksum", npy("ds/rewards.npy", lambda a: a + 1), "rewards"),
        ("unknown env kwargs", edit_meta("ds", lambda m: m["env"].update(kwargs={"speed": 3})), "speed"),
        ("reference returns a string", edit_meta("ds", lambda m: m.update(reference_returns="x")), "reference"),
        ("recorded stats wrong", edit_meta("ds", lambda m: m["stats"].update(episodes=1)), "episodes"),
    ]
    for name, setup, names in damaged:
        add(Case("datasets", f"data info: {name}", ["data", "info", DS, "--no-plot"], names=names, setup=setup))
        add(Case("datasets", f"train: {name}", ["train", "--dataset", DS, *TINY, *BC8, "--out", f"{D}/runs"],
                 names=names, setup=setup, check=absent("runs")))
    values = [
        ("NaN reward", npy("ds/rewards.npy", lambda a: set_item(a, 3, float("nan"))), "rewards"),
        ("action index out of range", npy("ds/actions.npy", lambda a: set_item(a, (0, 0), 9)), "actions"),
        ("illegal action taken", npy("legal/legal_actions.npy", lambda a: set_item(a, slice(None), False)), "legal"),
        ("terminal and truncated at once", npy("ds/truncations.npy", lambda a: a | True), "truncations"),
        ("state is not the obs concat", edit_meta("legal", lambda m: m["env"]["spec"].update(state_is_obs_concat=True)), "state"),
    ]
    for name, setup, names in values:
        where = f"{D}/legal" if "legal" in name or "concat" in name else DS
        add(Case("datasets", f"data info --no-verify: {name}", ["data", "info", where, "--no-verify", "--no-plot"],
                 names=names, setup=setup))
    info = ["data", "info", DS, "--no-plot"]
    add(Case("datasets", "field unreadable (permission)", info, names="rewards", setup=chmod("ds/rewards.npy", 0), user=True))
    add(Case("datasets", "meta.json unreadable (permission)", info, names="meta.json", setup=chmod("ds/meta.json", 0), user=True))
    add(Case("datasets", "directory unreadable (permission)", info, names="ds", setup=chmod("ds", 0), user=True))
    add(Case("datasets", "data info --as-json: stdout is JSON", ["data", "info", DS, "--as-json", "--no-plot"], "ok",
             setup=lambda d: (d / ".ds.tmp-deadbeef").mkdir(), check=lambda d, p: _is_json(p.stdout)))
    add(Case("datasets", "data info: PNG on a full disk", ["data", "info", DS, "--plot", f"{D}/full/r.png"],
             names="r.png", disk=4, setup=lambda d: (d / "full" / "pad").write_bytes(b"0" * 3000)))
    add(Case("datasets", "data info of a file", ["data", "info", f"{D}/ds/meta.json"], names="meta.json"))
    add(Case("datasets", "train on an unrunnable task says why", [*train("--name", "u")], "ok",
             setup=edit_meta("ds", lambda m: (m["env"].update(id="elsewhere/task"), m["env"]["spec"].update(env_id="elsewhere/task")) and None),
             check=lambda d, p: None if "evaluat" in (p.stdout + p.stderr).lower() else "no word on why nothing is evaluated"))

    # importers
    md = ["data", "import", "madiff", f"{D}/madiff", "--out", f"{D}/x"]
    for flag, value in (("--block-rows", "-5"), ("--block-rows", "0"), ("--episode-limit", "0"), ("--episode-limit", "-1")):
        add(Case("import", f"madiff {flag} {value}", [*md, flag, value], names=flag, check=absent("x")))
    add(Case("import", "unknown format", ["data", "import", "nope", f"{D}/madiff", "--out", f"{D}/x"], "usage"))
    add(Case("import", "missing source", ["data", "import", "madiff", f"{D}/nowhere", "--out", f"{D}/x"], names="nowhere"))
    add(Case("import", "madiff without path_lengths", md, names="path_lengths", setup=remove("madiff/path_lengths.npy"), check=absent("x")))
    add(Case("import", "madiff legals.npy a directory", md, names="legals", setup=replace_with_dir("madiff/legals.npy"), check=absent("x")))
    add(Case("import", "madiff obs truncated", md, names="obs", setup=truncate("madiff/obs.npy"), check=absent("x")))
    add(Case("import", "madiff read as omar", ["data", "import", "omar", f"{D}/madiff", "--out", f"{D}/x"], names="madiff", check=absent("x")))
    add(Case("import", "existing --out without --overwrite", [*md[:-1], DS], names="--overwrite"))
    add(Case("import", "--out inside a file", [*md[:-1], f"{D}/ds/meta.json/x"], names="meta.json"))
    add(Case("import", "madiff --env-id of another task", [*md, "--env-id", "smax/3m"], names="smax/3m", check=absent("x")))
    om = ["data", "import", "omiga", f"{D}/omiga", "--out", f"{D}/x"]
    add(Case("import", "omiga directory, second file bad: nothing kept", om, names="b-expert", check=absent("x")))
    add(Case("import", "omiga directory without the bad file", om, "ok", setup=remove("omiga/b-expert.hdf5"), check=loads("x/a-expert")))
    add(Case("import", "omiga file not HDF5", ["data", "import", "omiga", f"{D}/madiff/obs.npy", "--out", f"{D}/x"], names="obs.npy", check=absent("x")))
    cf = ["data", "import", "cfcql", f"{D}/cfcql", "--out", f"{D}/x"]
    add(Case("import", "cfcql directory, second file bad: nothing kept", cf, names="b.h5", check=absent("x")))
    add(Case("import", "cfcql file truncated", ["data", "import", "cfcql", f"{D}/cfcql/a.h5", "--out", f"{D}/x"], names="a.h5",
             setup=truncate("cfcql/a.h5"), check=absent("x")))
    vl = ["data", "import", "og-marl", f"{D}/smac.vlt", "--out", f"{D}/x"]
    add(Case("import", "vault", vl, "ok", check=loads("x/Good")))
    add(Case("import", "vault metadata non-UTF-8", vl, names="metadata.json", setup=vault_meta(b"\xff\xfe\x00")))
    add(Case("import", "vault metadata a list", vl, names="metadata.json", setup=vault_meta(b"[1]")))
    add(Case("import", "vault metadata not JSON", vl, names="metadata.json", setup=vault_meta(b"{")))
    add(Case("import", "vault uid missing", ["data", "import", "og-marl", f"{D}/smac.vlt/Fair", "--out", f"{D}/x"], names="Fair"))
    add(Case("import", "import on a full disk", [*vl[:-1], f"{D}/full/x"], names="full", disk=16, check=absent("full/x")))
    add(Case("import", "two imports, one --out", [], check=loads("x/Good"),
             run=two_writers(lambda d: ["data", "import", "og-marl", f"{d}/smac.vlt", "--out", f"{d}/x"])))

    # runs: eval, resume
    other = lambda d: shutil.copy(d / "run16/checkpoints/latest.msgpack", d / "run/checkpoints/latest.msgpack")  # noqa: E731
    add(Case("runs", "eval of nothing", ["eval", f"{D}/nowhere"], names="nowhere"))
    add(Case("runs", "eval of a dataset", ["eval", DS], names="ds"))
    add(Case("runs", "eval --episodes 0", ["eval", RUN, "--episodes", "0"], names="--episodes"))
    add(Case("runs", "eval --episodes -3", ["eval", RUN, "--episodes", "-3"], names="--episodes"))
    add(Case("runs", "eval without a checkpoint", ["eval", RUN], names="latest.msgpack", setup=remove("run/checkpoints")))
    add(Case("runs", "eval, config.json not JSON", ["eval", RUN], names="config.json", setup=write_text("run/config.json", "{")))
    add(Case("runs", "eval, config.json a list", ["eval", RUN], names="config.json", setup=write_text("run/config.json", "[]")))
    add(Case("runs", "eval, checkpoint truncated", ["eval", RUN], names="latest.msgpack", setup=truncate("run/checkpoints/latest.msgpack")))
    add(Case("runs", "eval, checkpoint garbage", ["eval", RUN], names="latest.msgpack",
             setup=write_text("run/checkpoints/latest.msgpack", b"\x00" * 100)))
    add(Case("runs", "eval, checkpoint of other networks", ["eval", RUN], names="latest.msgpack", setup=other))
    add(Case("runs", "eval, unknown algorithm in config", ["eval", RUN], names="nope", setup=edit_run(lambda m: m.update(algo="nope"))))
    add(Case("runs", "resume a finished run: final rows once", resume(), "ok", check=final_rows_once("run")))
    add(Case("runs", "resume with --steps below the checkpoint", resume("--steps", "10"), names="--steps"))
    add(Case("runs", "resume, config.json missing", resume(), names="config.json", setup=remove("run/config.json")))
    add(Case("runs", "resume, config.json not JSON", resume(), names="config.json", setup=write_text("run/config.json", "{")))
    add(Case("runs", "resume, other networks", resume(run="run16"), names="agent"))
    add(Case("runs", "resume, checkpoint of other networks", resume(), names="latest.msgpack", setup=other))
    add(Case("runs", "resume, checkpoint truncated", resume(), names="latest.msgpack", setup=truncate("run/checkpoints/latest.msgpack")))
    add(Case("runs", "resume, torn last line of metrics.jsonl", resume("--steps", "30"), "ok", setup=lambda d: _tear(d / "run/metrics.jsonl")))
    add(Case("runs", "resume, torn last row of evals.csv", resume("--steps", "30"), "ok", setup=lambda d: _tear(d / "run/evals.csv")))
    add(Case("runs", "resume, garbage row in evals.csv", resume("--steps", "30"), names="evals.csv", setup=lambda d: _garble(d / "run/evals.csv")))
    add(Case("runs", "resume, other --seeds", resume("--seeds", "0", "1"), names="--seeds"))
    add(Case("runs", "resume of nothing", resume(run="nope"), names="nope"))
    add(Case("runs", "train into an existing run", train("--name", "r2"), names="r2",
             setup=lambda d: shutil.copytree(d / "run", d / "runs" / "r2")))
    add(Case("runs", "train, --out unwritable", ["train", "--dataset", DS, *TINY, *BC8, "--out", f"{D}/ro"], names="ro",
             setup=read_only("ro"), user=True))
    add(Case("runs", "train on a full disk", ["train", "--dataset", DS, *TINY, *BC8, "--out", f"{D}/full"], names="full", disk=24))
    add(Case("runs", "two trains, one run", [], run=two_writers(lambda d: fill(train("--name", "same"), d))))
    add(Case("runs", "two resumes of one run", [], check=final_rows_once("run"),
             run=two_writers(lambda d: fill(resume("--steps", "200"), d))))
    for when, name in ((grows("runs/k/checkpoints/latest.msgpack"), "after the first checkpoint"),
                       (grows("runs/k/evals.csv", 200), "after an evaluation")):
        add(Case("runs", f"killed {name}, resumed = uninterrupted", [], "ok",
                 run=killed(lambda d: fill(train("--name", "k", "--steps", "60"), d), when,
                            train("--name", "k", "--steps", "60", "--resume")),
                 setup=lambda d: _train_into(d, "whole"), check=same_as("runs/k", "runs/whole")))
    # fmt: on
    return c


def fill(argv: list[str], d: Path) -> list[str]:
    return [a.replace("{d}", str(d)) for a in argv]


def read_only(rel: str) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        (d / rel).mkdir()
        os.chmod(d / rel, 0o555)

    return setup


def vault_meta(data: bytes) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        for meta in (d / "smac.vlt").rglob("metadata.json"):
            meta.write_bytes(data)

    return setup


def edit_run(change):
    def setup(d: Path) -> None:
        path = d / "run" / "config.json"
        record = json.loads(path.read_text())
        change(record)
        path.write_text(json.dumps(record))

    return setup


def _train_into(d: Path, name: str) -> None:
    argv = fill(train("--name", name, "--steps", "60"), d)
    subprocess.run([*MACFLOW, *argv], check=True, capture_output=True, cwd=d)


def _is_json(text: str) -> str | None:
    try:
        json.loads(text)
    except ValueError:
        return "stdout is not JSON: " + text[:80]
    return None


def _tear(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data + data.splitlines(keepends=True)[-1][:7])


def _garble(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(2, "garbage,,,\n")
    path.write_text("".join(lines))


# -- running -------------------------------------------------------------------------------------


def classify(proc: subprocess.CompletedProcess) -> tuple[str, str]:
    """``(outcome, the line that says it)`` of a finished command."""
    err = proc.stderr or ""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if "Traceback (most recent call last)" in err:
        return "traceback", next((ln for ln in reversed(lines) if ln[:1].isalpha()), "")
    if proc.returncode == 0:
        return "ok", ""
    errors = [ln for ln in lines if ln.startswith("error:")]
    if proc.returncode == 2 and len(errors) == 1:
        return "error", errors[0]
    if proc.returncode == 2 and any(ln.startswith("╭") for ln in lines):
        return "usage", next((ln.strip("│ ") for ln in lines if "│" in ln), "")
    return f"exit {proc.returncode}", lines[-1] if lines else ""


def _mount(path: Path, kib: int) -> str | None:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(path)], capture_output=True
    )
    return None if r.returncode == 0 else "cannot mount a tmpfs here: " + r.stderr.decode().strip()


def run_case(case: Case, base: Path, root: Path, index: int, env: dict) -> dict:
    d = root / f"{index:03d}"
    shutil.copytree(base, d, symlinks=True)
    skip = None
    if case.user and (os.geteuid() != 0 or shutil.which("setpriv") is None):
        skip = "permission errors need root (to run the case as nobody with setpriv)"
    if case.disk:
        skip = skip or _mount(d / "full", case.disk)
    if skip:
        return {"verdict": "skipped", "outcome": "skipped", "line": skip}
    if case.user:
        for p in [d, *d.rglob("*")]:
            if not p.is_symlink():
                os.chmod(p, 0o777 if p.is_dir() else 0o666)
    try:
        t0 = time.perf_counter()
        try:
            if case.setup:
                case.setup(d)
            if case.run is not None:
                proc = case.run(d, env)
            else:
                argv = case.argv(d) if callable(case.argv) else case.argv
                proc = _run([a.replace("{d}", str(d)) for a in argv], env, d, case.user)
        except Exception as err:  # noqa: BLE001 (a broken case is reported, not fatal)
            return {"verdict": "FAIL", "outcome": "harness", "line": f"{type(err).__name__}: {err}"}
        seconds = time.perf_counter() - t0
        outcome, line = classify(proc)
        problem = None
        if outcome == case.expect and case.names and case.names not in line:
            problem = f"the message does not name {case.names!r}"
        if outcome == case.expect and problem is None and case.check is not None:
            problem = case.check(d, proc)
        if outcome == "ok" and case.expect != "ok":
            outcome = "silent"
        verdict = "pass" if outcome == case.expect and problem is None else "FAIL"
        if outcome == case.expect and problem:
            outcome = "wrong"
        return {
            "verdict": verdict, "outcome": outcome, "line": problem or line,
            "seconds": round(seconds, 1), "stderr": (proc.stderr or "")[-2000:],
        }  # fmt: skip
    finally:
        if case.disk:
            subprocess.run(["umount", "-l", str(d / "full")], capture_output=True)


def _command(case: Case) -> str:
    if case.run is not None:
        return "(see tests/bad_inputs.py)"
    argv = case.argv if not callable(case.argv) else ["..."]
    text = " ".join(a if a and " " not in a else repr(a) for a in argv).replace("{d}/", "")
    return f"`macflow {text}`" if len(text) < 90 else f"`macflow {text[:87]}...`"


def markdown(rows: list[tuple[int, Case, dict]]) -> str:
    out = [
        "| # | group | case | command | expected | outcome | message or problem |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, case, r in rows:
        line = re.sub(r"/\S*/macflow-bad-inputs-[^/]+/\d+/", "", r["line"])  # the case's directory
        line = line.replace("|", "\\|")[:160]
        outcome = r["outcome"] + ("" if r["verdict"] != "FAIL" else " (**FAIL**)")
        out.append(
            f"| {i} | {case.group} | {case.name} | {_command(case)} | {case.expect} | {outcome} | {line} |"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once")
    parser.add_argument("--only", help="only cases whose group or name contains this")
    parser.add_argument("--markdown", type=Path, help="write the table of outcomes here")
    parser.add_argument("--keep", action="store_true", help="keep the cases' directories")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    all_cases = list(enumerate(cases(), 1))
    chosen = [
        (i, c) for i, c in all_cases if not args.only or args.only in c.group or args.only in c.name
    ]
    root = Path(tempfile.mkdtemp(prefix="macflow-bad-inputs-"))
    os.chmod(root, 0o755)
    env = {**os.environ, "MACFLOW_CACHE": str(root / "cache"), "HOME": str(root / "home")}
    env["MACFLOW_JAX_CACHE"] = os.environ.get("MACFLOW_JAX_CACHE", str(root / "jax"))
    env.pop("MACFLOW_DEBUG", None)
    base = root / "base"
    print(f"building the inputs in {base}", flush=True)
    build_inputs(base, env)
    from rich.progress import track

    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [(i, c, pool.submit(run_case, c, base, root, i, env)) for i, c in chosen]
        rows = []
        for i, c, f in track(futures, description=f"{len(futures)} cases"):
            r = f.result()
            rows.append((i, c, r))
            if r["verdict"] == "FAIL":
                print(f"FAIL {i} [{c.group}] {c.name}: {r['outcome']}: {r['line']}", flush=True)
    counts: dict[str, int] = {}
    for *_, r in rows:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    fails = sum(r["verdict"] == "FAIL" for *_, r in rows)
    print(
        f"{len(rows)} cases: "
        + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        + f"; {fails} failed"
    )
    if args.markdown:
        from macflow.files import write_atomic

        write_atomic(args.markdown, markdown(rows))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
