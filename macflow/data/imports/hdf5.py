"""What the HDF5 importers (OMIGA, CFCQL) share: sniffing a file and opening it once to scan."""

from __future__ import annotations

from pathlib import Path

import h5py

from macflow.data.imports.common import ImportOptions
from macflow.data.schema import DatasetError

SUFFIXES = (".hdf5", ".h5")


def holds(src: Path, keys: tuple[str, ...]) -> bool:
    """``src`` (an HDF5 file, or a directory with one) has every dataset of ``keys`` at its root."""
    if src.is_dir():
        return any(holds(p, keys) for p in sorted(src.iterdir()) if p.is_file())
    if src.suffix not in SUFFIXES or not src.is_file():
        return False
    try:
        with h5py.File(src, "r") as f:
            return all(isinstance(f.get(k), h5py.Dataset) for k in keys)
    except OSError:
        return False


class HdfSource:
    """A source read from one HDF5 file, opened once to check its shapes (``_shapes``), find its
    episodes (``_scan``) and describe it (``_describe``: spec, provenance, ``where``)."""

    def __init__(self, file: Path, options: ImportOptions):
        self.file, self.options = file.absolute(), options
        self.name = str(self.file)
        self.notes: list[str] = []
        try:
            with h5py.File(self.file, "r") as f:
                self._shapes(f)
                self._scan(f)
                self._describe(f)
        except OSError as err:
            raise DatasetError(self.file, None, f"cannot read it as HDF5 ({err})") from err

    def _shapes(self, f: h5py.File) -> None:
        raise NotImplementedError

    def _scan(self, f: h5py.File) -> None:
        raise NotImplementedError

    def _describe(self, f: h5py.File) -> None:
        raise NotImplementedError
