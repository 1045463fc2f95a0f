"""macflow's public Python API: what ``docs/api.md`` documents and what stays stable.

    from macflow.api import TrainConfig, evaluate, load, load_run, make_env, train

Tasks (``make_env``, ``registered``), datasets (``load``, ``save``, ``collect`` from a scripted
behaviour, ``Dataset``, ``Sampler``),
training (``train`` with a ``TrainConfig``; ``load_run`` rebuilds a run's agents; the loop
without a run directory: ``create_agents``, ``fit``), offline-to-online fine-tuning
(``finetune`` with a ``FinetuneConfig``), evaluation
(``evaluate``), deployment without JAX (``export``: a run's students to ONNX and numpy, for
``macflow.deploy``), the algorithms (``AGENTS``, ``get_agent``, the act modes) and the command line
itself (``main(["train", ...])``). Every other module is internal.
"""

from macflow import __version__, cache_root
from macflow.agents import ACT_MODES, AGENTS, get_agent
from macflow.cli import main
from macflow.data import Dataset, DatasetError, Sampler, load, save
from macflow.data.collect import collect
from macflow.envs import make_env, registered
from macflow.evaluate import evaluate
from macflow.export import export
from macflow.finetune import FinetuneConfig, finetune
from macflow.loop import TrainingDiverged, create_agents, fit
from macflow.spec import EnvSpec
from macflow.train import LoadedRun, Run, TrainConfig, load_run, train

__all__ = [
    "ACT_MODES",
    "AGENTS",
    "Dataset",
    "DatasetError",
    "EnvSpec",
    "FinetuneConfig",
    "LoadedRun",
    "Run",
    "Sampler",
    "TrainConfig",
    "TrainingDiverged",
    "__version__",
    "cache_root",
    "collect",
    "create_agents",
    "evaluate",
    "export",
    "finetune",
    "fit",
    "get_agent",
    "load",
    "load_run",
    "main",
    "make_env",
    "registered",
    "save",
    "train",
]
