"""macflow: offline cooperative multi-agent RL with MAC-Flow (joint flow matching distilled into
decentralised one-step policies), its baselines, datasets and benchmarks."""

import os
from pathlib import Path

__version__ = "0.1.0"


def cache_root() -> Path:
    """Where macflow keeps compiled programs and default datasets (``MACFLOW_CACHE``)."""
    return Path(os.environ.get("MACFLOW_CACHE", Path.home() / ".cache" / "macflow"))
