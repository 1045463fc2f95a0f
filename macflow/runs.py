"""A run directory: resolved config, metrics (CSV + JSONL, optional TensorBoard), evaluations in
the marl-eval layout, and atomically written checkpoints.

    runs/<name>/
      config.json            everything needed to rebuild and resume the run
      metrics.csv            training metrics, one row per (log step, seed), averaged over the K
                             updates of the jitted call
      evals.csv              one row per (evaluation, seed, noise mode); ``train_seconds`` is
                             the training wall clock so far (evaluations excluded)
      metrics.jsonl          both kinds of rows as JSON lines
      marl_eval.json         env -> task -> algo -> run_<seed> -> step_<i> (marl-eval's layout;
                             i numbers the evaluations, step_count is the update)
      checkpoints/latest.msgpack   all seeds' agents and the update counter
      checkpoints/latest.json      the update and train_seconds at that checkpoint (kept apart so
                             that a resumed run's checkpoint equals an uninterrupted one's, byte
                             for byte)
      final.json             the final evaluation (10x episodes; marl-eval "absolute metrics")

The logs are appended to, so a kill can cut their last line short; :meth:`RunLog.resume` drops
such a torn last line with a warning. Any other damage (a file that does not parse, a checkpoint
of other networks) is a ``ValueError`` that names the file, and the line where there is one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from flax import serialization

from macflow.files import write_atomic

CHECKPOINT = Path("checkpoints") / "latest.msgpack"
CLOCK = Path("checkpoints") / "latest.json"
RECORD = "config.json"
_RECORD_KEYS = ("algo", "agent", "dataset", "spec", "train")


def read_record(run: Path) -> dict[str, Any]:
    """A run's ``config.json``, checked to be a run's record (a ValueError naming it if not)."""
    path = Path(run) / RECORD
    try:
        record = json.loads(path.read_bytes())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
        ) from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not text (not a run's config.json)") from None
    if not isinstance(record, dict) or any(k not in record for k in _RECORD_KEYS):
        raise ValueError(
            f"{path} is not a run's record (macflow train writes one with the keys "
            f"{', '.join(_RECORD_KEYS)})"
        )
    if not all(isinstance(record[k], dict) for k in _RECORD_KEYS[1:]):
        raise ValueError(f"{path} is not a run's record (agent, dataset, spec, train: objects)")
    return record


def save_checkpoint(run: Path, agents: Any, step: int, train_seconds: float = 0.0) -> Path:
    """Write the agents and the update counter, then the train seconds beside them."""
    path = run / CHECKPOINT
    state = {"step": step, "agents": serialization.to_state_dict(agents)}
    write_atomic(path, serialization.msgpack_serialize(state))
    write_atomic(run / CLOCK, json.dumps({"step": step, "train_seconds": train_seconds}))
    return path


def load_checkpoint(run: Path, template: Any) -> tuple[Any, int, float]:
    """Restore agents shaped like ``template``, the update counter and the train seconds so far;
    a missing, damaged or mismatched checkpoint is a ValueError naming the file."""
    path = run / CHECKPOINT
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path} is missing: the run has no checkpoint to load") from None
    try:
        raw = serialization.msgpack_restore(data)
    except Exception as err:  # msgpack raises several kinds for a damaged file
        raise ValueError(f"{path} is damaged, not a whole checkpoint ({err})") from None
    if not isinstance(raw, dict) or "agents" not in raw or "step" not in raw:
        raise ValueError(f"{path} is not a macflow checkpoint (no agents and update counter)")
    where = _mismatch(serialization.to_state_dict(template), raw["agents"], "agents")
    if where is not None:
        raise ValueError(
            f"{path} does not hold the networks of {run / RECORD}: {where} (a checkpoint of "
            "another run?)"
        )
    try:
        step = int(raw["step"])
    except (TypeError, ValueError):
        raise ValueError(f"{path}: its update counter is {raw['step']!r}, not a number") from None
    agents = serialization.from_state_dict(template, raw["agents"])
    return agents, step, _train_seconds(run, step)


def _mismatch(expected: Any, found: Any, key: str) -> str | None:
    """The first key (parameters first) where ``found`` differs from ``expected`` in structure
    or shape, said in words; None if they agree."""
    if isinstance(expected, dict):
        if not isinstance(found, dict):
            return f"{key} is not a group of arrays"
        for k in sorted(expected, key=lambda k: k != "params"):  # stable: else in their order
            if k not in found:
                return f"{key}/{k} is missing"
            where = _mismatch(expected[k], found[k], f"{key}/{k}")
            if where is not None:
                return where
        extra = [k for k in found if k not in expected]
        return f"{key}/{extra[0]} is not in the run's networks" if extra else None
    if isinstance(found, dict) or np.shape(found) != np.shape(expected):
        shape = "a group" if isinstance(found, dict) else f"shape {np.shape(found)}"
        return f"{key} has {shape}, the run's networks {np.shape(expected)}"
    return None


def _train_seconds(run: Path, step: int) -> float:
    """The train seconds recorded with the checkpoint at ``step``; 0 for a checkpoint written
    before they were recorded."""
    path = run / CLOCK
    try:
        clock = json.loads(path.read_bytes())
        seconds, at = float(clock["train_seconds"]), int(clock["step"])
    except FileNotFoundError:
        return 0.0
    except (OSError, ValueError, KeyError, TypeError):
        print(f"warning: {path} is unreadable; train_seconds restart at 0", file=sys.stderr)
        return 0.0
    # A kill between the two writes of save_checkpoint leaves the previous checkpoint's time:
    # too low by one interval, which is the best left to go by.
    return seconds if at <= step else 0.0


def remove_leftovers(run: Path) -> None:
    """Delete the temporary files of atomic writes that a killed writer left in ``run``
    (``.NAME.XXXXXXXX`` beside each file it writes). Only the run's writer (holding its lock)
    may: another writer's temporary file could be in use."""
    logs = ("metrics.csv", "evals.csv", "metrics.jsonl", "marl_eval.json", "final.json")
    for folder, names in (
        (run, (RECORD, *logs)),
        (run / "checkpoints", (CHECKPOINT.name, CLOCK.name)),
    ):
        for name in names:
            for path in folder.glob(f".{name}.*"):
                path.unlink(missing_ok=True)


def _lines(path: Path) -> list[str] | None:
    """The lines of a log (None if absent), less a torn last line: an append a kill cut short
    (every row ends with a newline), dropped with a warning."""
    try:
        text = path.read_bytes().decode()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not text (damaged)") from None
    *lines, torn = text.split("\n")
    if torn:
        print(
            f"warning: {path}: dropped its torn last line {torn[:40]!r} (a write cut short by "
            "a kill); it is recomputed",
            file=sys.stderr,
        )
    return [ln + "\n" for ln in lines]


def _bad_line(path: Path, n: int, line: str) -> ValueError:
    return ValueError(
        f"{path}, line {n}: not a row of the run's log ({line.strip()[:60]!r}); repair or delete "
        "the line, or start the run again"
    )


def _read_csv(path: Path) -> list[dict[str, str]] | None:
    """A CSV log's rows (None if absent); a malformed row is a ValueError."""
    lines = _lines(path)
    if lines is None:
        return None
    reader = csv.DictReader(lines)
    header = reader.fieldnames or []
    if lines and not {"step", "seed"} <= set(header):
        raise ValueError(f"{path}, line 1: not the header of a run's log ({lines[0].strip()!r})")
    rows = []
    for row in reader:
        try:
            if None in row or None in row.values():  # too many or too few fields
                raise ValueError
            int(row["step"]), int(row["seed"])
        except ValueError:
            raise _bad_line(path, reader.line_num, lines[reader.line_num - 1]) from None
        rows.append(row)
    return rows


def _read_jsonl(path: Path) -> tuple[list[str], list[dict[str, Any]]] | None:
    lines = _lines(path)
    if lines is None:
        return None
    rows = []
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError
        except ValueError:
            raise _bad_line(path, n, line) from None
        rows.append(row)
    return lines, rows


def _read_marl(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as err:  # also UnicodeDecodeError
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    try:
        for seed_run in _seed_runs(data):
            for k, v in seed_run.items():
                if k.startswith("step_"):
                    int(v["step_count"])
    except (AttributeError, KeyError, TypeError, ValueError):
        raise ValueError(f"{path} is not in marl-eval's layout (env/task/algo/run/step)") from None
    return data


def _seed_runs(data: dict) -> Iterator[dict]:
    """marl-eval's per-seed records: env -> task -> algo -> run_<seed>."""
    for env in data.values():
        for task in env.values():
            for algo in task.values():
                yield from algo.values()


@contextlib.contextmanager
def _appending(path: Path) -> Iterator[Any]:
    """``path`` opened to append to; an OSError without a file name (a full disk) gets it."""
    try:
        with open(path, "a", newline="") as f:
            yield f
    except OSError as err:
        if err.filename is None:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def _csv_text(columns: list[str], rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


class RunLog:
    """Appends metrics; on resume, drops rows written after the checkpoint being resumed and
    those of the final evaluation."""

    def __init__(self, run: Path, train_columns: list[str], tensorboard: bool = False):
        self.run = run
        self.train_columns = ["step", "seed", "stage", *train_columns]
        self.eval_columns = [
            "step",
            "seed",
            "mode",
            "episodes",
            "return_mean",
            "return_std",
            "return_min",
            "return_max",
            "normalised_score",
            "win_rate",
            "train_seconds",  # last: readers of the older columns keep working
        ]
        self.tb = None
        self._tb_class = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError as err:
                raise ImportError(
                    "--tensorboard needs tensorboardX: pip install -e '.[tensorboard]'"
                ) from err
            self._tb_class = SummaryWriter

    def _board(self):
        """The TensorBoard writer (None without ``tensorboard``), opened at the first scalar:
        the run directory need not exist when the log is made."""
        if self.tb is None and self._tb_class is not None:
            self.tb = self._tb_class(str(self.run / "tensorboard"))
        return self.tb

    def resume(self, step: int) -> None:
        """Forget everything logged after update ``step`` and everything the final evaluation
        wrote (``final-*`` rows, marl-eval's absolute metrics, ``final.json``): both are
        recomputed, identically. Reads and checks every log before changing any."""
        metrics = _read_csv(self.run / "metrics.csv")
        evals = _read_csv(self.run / "evals.csv")
        jsonl = _read_jsonl(self.run / "metrics.jsonl")
        marl = _read_marl(self.run / "marl_eval.json")

        def kept(row) -> bool:
            return row["step"] <= step and not str(row.get("mode", "")).startswith("final-")

        # final.json first: a run that has it counts as finished (e.g. for `macflow sweep`).
        (self.run / "final.json").unlink(missing_ok=True)
        for name, columns, rows in (
            ("metrics.csv", self.train_columns, metrics),
            ("evals.csv", self.eval_columns, evals),
        ):
            if rows is not None:
                rows = [r for r in rows if kept(r | {"step": int(r["step"])})]
                self._rewrite(name, _csv_text(columns, rows))
        if jsonl is not None:
            lines, rows = jsonl
            text = "".join(ln for ln, r in zip(lines, rows, strict=True) if kept(r))
            self._rewrite("metrics.jsonl", text)
        if marl is not None:
            data = marl
            for seed_run in _seed_runs(data):
                for k, v in list(seed_run.items()):
                    if k == "absolute_metrics" or (
                        k.startswith("step_") and v["step_count"] > step
                    ):
                        del seed_run[k]
            self._rewrite("marl_eval.json", json.dumps(data, indent=1))

    def _rewrite(self, name: str, text: str) -> None:
        """Replace a log with ``text`` if it differs (as bytes, so the CSV's line ends stay)."""
        if (self.run / name).read_bytes() != text.encode():
            write_atomic(self.run / name, text.encode())

    def _write_csv(self, name, columns, rows):
        path = self.run / name
        new = not path.exists()
        with _appending(path) as f:
            w = csv.DictWriter(f, columns, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerows(rows)

    def _jsonl(self, rows):
        with _appending(self.run / "metrics.jsonl") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")

    def train(self, step: int, stage: str, per_seed: list[dict[str, float]], seeds) -> None:
        rows = [
            {"step": step, "seed": s, "stage": stage, **m}
            for s, m in zip(seeds, per_seed, strict=True)
        ]
        self._write_csv("metrics.csv", self.train_columns, rows)
        self._jsonl([{"kind": "train", **r} for r in rows])
        board = self._board()
        if board is not None:
            for s, m in zip(seeds, per_seed, strict=True):
                for k, v in m.items():
                    board.add_scalar(f"seed_{s}/{k}", v, step)

    def evaluation(self, step: int, mode: str, results: list[dict], seeds) -> None:
        rows = []
        for s, r in zip(seeds, results, strict=True):
            summary = {k: v for k, v in r.items() if k != "returns"}
            rows.append(
                {"step": step, "seed": s, "mode": mode, "episodes": len(r["returns"]), **summary}
            )
        self._write_csv("evals.csv", self.eval_columns, rows)
        self._jsonl([{"kind": "eval", **r} for r in rows])
        board = self._board()
        if board is not None:
            for s, r in zip(seeds, results, strict=True):
                board.add_scalar(f"seed_{s}/eval_{mode}/return_mean", r["return_mean"], step)

    def marl_eval(
        self, env_id: str, algo: str, step: int, results: list[dict], seeds, absolute=False
    ):
        """Record per-episode returns in marl-eval's JSON layout (``sample`` noise mode)."""
        env_name, _, task = env_id.partition("/")
        path = self.run / "marl_eval.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        runs = data.setdefault(env_name, {}).setdefault(task, {}).setdefault(algo, {})
        for s, r in zip(seeds, results, strict=True):
            entry = {"step_count": step, "return": r["returns"]}
            if "win_rate" in r:
                entry["win_rate"] = [r["win_rate"]]
            run = runs.setdefault(f"run_{s}", {})
            index = sum(k.startswith("step_") for k in run)  # marl-eval numbers evaluations
            run["absolute_metrics" if absolute else f"step_{index}"] = entry
        write_atomic(path, json.dumps(data, indent=1))

    def close(self):
        if self.tb is not None:
            self.tb.close()
