"""Shared set-up of the baseline tests: small real datasets and one short training run.

The real datasets are a few hundred uniformly random episodes of ``mpe/spread`` (continuous) and
``smax/3m`` (discrete, legal masks), collected by the real environments; the toy datasets are the
scripted one-step games.
"""

import json

import numpy as np
import pytest

from macflow.data import save
from macflow.data.collect import Uniform, collect
from macflow.envs import make_env
from macflow.envs.toys import CoordinationData, XorData
from macflow.train import TrainConfig, train


@pytest.fixture(scope="session")
def datasets(tmp_path_factory):
    """``name -> dataset dir`` for coord, xor (toys) and spread, 3m (real, random actions)."""
    root = tmp_path_factory.mktemp("baseline-data")
    made = {
        "coord": (make_env("toy/coordination"), CoordinationData(), 10_000),
        "xor": (make_env("toy/xor"), XorData(), 10_000),
        "spread": (make_env("mpe/spread"), Uniform(), 200),
        "3m": (make_env("smax/3m"), Uniform(), 100),
    }
    for name, (env, behaviour, episodes) in made.items():
        save(collect(env, behaviour, episodes, chunk=min(episodes, 1000)), root / name)
    return {name: root / name for name in made}


def fit(data_dir, out, name, algo, config, steps, seeds=(0, 1), episodes=32, **kw):
    """Train ``algo`` for ``steps`` updates (after its earlier stages) and evaluate it once."""
    options = dict(
        dataset=data_dir, algo=algo, steps=steps, batch_size=128, seeds=seeds,
        log_every=min(500, steps), eval_every=0, eval_episodes=episodes, final_eval_factor=1,
        checkpoint_every=0, out=out, name=name, progress=False,
    )  # fmt: skip
    return train(TrainConfig(**(options | kw)), config)


def episode_returns(run, algo: str) -> np.ndarray:
    """``[seeds, episodes]`` returns of the final evaluation (sampled mode)."""
    record = json.loads((run.path / "marl_eval.json").read_text())
    task = next(iter(record.values()))
    runs = next(iter(task.values()))[algo]
    return np.asarray([r["absolute_metrics"]["return"] for r in runs.values()], np.float64)


def assert_trains_and_evaluates(run, seeds=2):
    """The run wrote a finite final evaluation for every seed in both acting modes."""
    assert run.final is not None
    for mode in ("sample", "zero"):
        results = run.final["modes"][mode]
        assert len(results) == seeds
        for r in results:
            assert np.isfinite(r["return_mean"])
