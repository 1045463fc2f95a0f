"""macflow: offline cooperative multi-agent RL with MAC-Flow (joint flow matching distilled into
decentralised one-step policies), its baselines, datasets and benchmarks.

The public Python API is :mod:`macflow.api` (``docs/api.md``); other modules are internal and
may change between versions. ``import macflow`` itself is cheap (no JAX): the version, the
cache directory and the switch for JAX's persistent compile cache.
"""

from __future__ import annotations

import os
from pathlib import Path


def _version() -> str:
    """The installed distribution's version (pyproject.toml is its single source)."""
    from importlib import metadata

    try:
        return metadata.version("macflow")
    except metadata.PackageNotFoundError:  # run from a source tree without installing
        import tomllib

        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        try:
            return tomllib.loads(pyproject.read_text())["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "0+unknown"


__version__ = _version()


def cache_root() -> Path:
    """Where macflow keeps compiled programs and default datasets (``MACFLOW_CACHE``)."""
    return Path(os.environ.get("MACFLOW_CACHE", Path.home() / ".cache" / "macflow"))


def enable_compile_cache() -> None:
    """Reuse compiled XLA programs across processes (compile time dominates short runs).
    They live in ``MACFLOW_JAX_CACHE``, default ``<cache root>/jax``."""
    import jax

    cache = os.environ.get("MACFLOW_JAX_CACHE") or cache_root() / "jax"
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
