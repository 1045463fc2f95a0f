"""Shared test set-up: the persistent JAX compile cache and small hand-built datasets."""

import pytest

from macflow import enable_compile_cache

enable_compile_cache()


@pytest.fixture
def tmp_ds(tmp_path):
    """A path for a dataset directory inside the test's temporary folder."""
    return tmp_path / "ds"


from baselines import datasets  # noqa: E402, F401  (session fixture of the baseline tests)
