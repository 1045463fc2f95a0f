"""``macflow quickstart`` (what ``make run`` runs): the default task end to end.

An MAPPO behaviour policy is trained on mpe/spread (cached after the first run), a medium dataset
is collected with it, MAC-Flow (and optionally flow-BC) is trained on it with the algorithms'
``quickstart`` preset, and the decentralised students are printed against the data.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from macflow import __version__
from macflow.report import console as default_console
from macflow.report import print_comparison, print_dataset

if TYPE_CHECKING:
    from macflow.train import Run

TASK = "mpe/spread"
DATA = Path("data") / "mpe-spread-medium"
"""Where the medium dataset goes, under ``--out``."""


def collect_medium(
    out: Path, transitions: int, behaviour_steps: int, command: str | None, console: Console
):
    """The quickstart's medium dataset at ``out`` (replaced), from the cached behaviour."""
    from macflow.envs import make_env
    from macflow.trainers.ppo import PPO
    from macflow.trainers.qualities import QualityOptions, collect_quality

    trainer = PPO(env_steps=behaviour_steps)
    options = QualityOptions(make_env(TASK), trainer, out, "medium", transitions, overwrite=True)
    return collect_quality(options, command=command, console=console)


@dataclasses.dataclass(frozen=True)
class Quickstart:
    """The quickstart's options."""

    out: Path = Path("runs/quickstart")
    """Directory for the quickstart's outputs (replaced on every run)."""
    transitions: int = 100_000
    """Size of the medium dataset."""
    behaviour_steps: int = 1_000_000
    """Environment steps of the MAPPO behaviour training."""
    teacher_steps: int = 3000
    """Updates of the flow teacher (stage 1)."""
    steps: int = 3000
    """Updates of students and critic (stage 2)."""
    seeds: tuple[int, ...] = (0, 1)
    """Seeds trained side by side."""
    flow_bc: bool = False
    """Also train flow-BC (no Q term) for comparison."""

    def __post_init__(self):
        for name in ("transitions", "behaviour_steps", "teacher_steps", "steps"):
            if getattr(self, name) < 1:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be >= 1, got {getattr(self, name)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must be distinct and non-empty, got {self.seeds}")


def train_runs(
    options: Quickstart, ds, command: str | None, console: Console
) -> list[tuple[str, Run]]:
    """MAC-Flow (after flow-BC, with ``flow_bc``) at its ``quickstart`` preset on ``ds``."""
    from macflow.agents import get_agent
    from macflow.train import TrainConfig, train

    algos = [("flow-BC", "flow-bc")] if options.flow_bc else []
    algos.append(("MAC-Flow", "macflow"))
    runs = []
    for name, algo in algos:
        preset = get_agent(algo).presets["quickstart"](ds.spec)
        config = dataclasses.replace(preset, teacher_steps=options.teacher_steps)
        shutil.rmtree(options.out / "runs" / name, ignore_errors=True)
        cfg = TrainConfig(
            dataset=options.out / DATA,
            algo=algo,
            preset="quickstart",
            steps=options.steps,
            seeds=options.seeds,
            log_every=min(500, options.steps),
            eval_every=0,
            eval_episodes=32,
            checkpoint_every=0,
            out=options.out / "runs",
            name=name,
        )
        console.print(f"training {name} ({'no Q term' if config.q_weight == 0 else 'with Q'})")
        runs.append((name, train(cfg, config, console=console, command=command)))
    return runs


def run_quickstart(
    options: Quickstart = Quickstart(),
    command: str | None = None,
    console: Console | None = None,
) -> list[tuple[str, Run]]:
    """Collect, train, evaluate and print (see the module docstring); ``command`` is recorded
    in the dataset and the runs. Returns the runs by name."""
    console = console or default_console
    out = options.out
    console.print(f"[bold]macflow {__version__} quickstart[/]: {TASK}, medium quality")
    ds = collect_medium(out / DATA, options.transitions, options.behaviour_steps, command, console)
    print_dataset(ds, console)
    runs = train_runs(options, ds, command, console)
    title = f"{TASK} medium: decentralised students vs the behaviour data"
    print_comparison(title, ds, runs, console)
    ref = ds.reference_returns
    console.print(
        f"Means ± std over seeds {list(options.seeds)}, {runs[0][1].final['episodes']} episodes "
        f"each. Normalised: 100 (R - random) / (expert - random), random {ref['random']:.2f}, "
        f"expert {ref['expert']:.2f} (the behaviour training's best policy). Runs in "
        f"{out / 'runs'}; `macflow eval {out / 'runs' / 'MAC-Flow'}` re-evaluates."
    )
    return runs
