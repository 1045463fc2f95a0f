"""Writing a dataset block by block, in memory bounded by the block size.

Importers of large files cannot hold a whole dataset in memory. :func:`save_stream` takes blocks
of complete episodes (each block a small dataset of the schema on its own), validates each block
as it arrives, appends its arrays to the ``.npy`` files and commits the directory atomically at
the end, holding the target's write lock throughout, exactly as :func:`macflow.data.save` does.
Only the rewards and episode-end flags of all steps (9 bytes per step) are kept for the
statistics.

Each ``.npy`` file starts with a header of fixed size (:data:`HEADER_BYTES`) that is written last,
when the number of rows is known; numpy reads such a file like any other (format version 1.0).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from macflow.data.dataset import Dataset
from macflow.data.io import check_env_kwargs, finish_write, naming, writing
from macflow.data.schema import META_FILE, DatasetError, fields_for
from macflow.spec import EnvSpec

HEADER_BYTES = 256  # a multiple of 64, so the array data stay aligned for memory-mapping
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _release_large_buffers() -> None:
    """Make glibc return each freed block buffer to the system at once.

    glibc raises its mmap threshold when a large buffer is freed, after which buffers of the
    same size come from the heap, which fragments and keeps growing over many blocks (measured:
    320 -> 576 MB over a 1M-step import; flat at 280 MB with the threshold fixed).
    """
    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):  # not glibc
        pass


@dataclasses.dataclass
class Block:
    """Complete episodes in the schema's arrays, and where each row came from.

    ``origin[t]`` is the index in the source of output row t (e.g. ``(batch, step)``), and
    ``final_origin[e]`` the source index of episode e's last row; validation errors are reported
    at these indices of the source. ``consumed`` is how many source rows the block covers
    (progress).
    """

    arrays: dict[str, np.ndarray]
    origin: np.ndarray
    final_origin: np.ndarray
    consumed: int


@dataclasses.dataclass(frozen=True)
class Located:
    """Where an output field lives in the source: a file (or directory) and a field name in it."""

    file: str
    field: str


class _NpyAppender:
    """A ``.npy`` file written row block by row block; the header is filled in by ``close``."""

    def __init__(self, file: Path, dtype: np.dtype, tail: tuple[int, ...]):
        self.file, self.dtype, self.tail, self.rows = file, np.dtype(dtype), tail, 0
        self.f = open(file, "wb")  # noqa: SIM115 (closed in close)
        self.f.write(b"\0" * HEADER_BYTES)

    def append(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        assert arr.shape[1:] == self.tail, (self.file, arr.shape, self.tail)
        self.f.write(arr.data)  # no copy: the block's own buffer
        self.rows += arr.shape[0]

    def close(self) -> dict[str, Any]:
        """Write the header, flush to disk and return the field's ``meta.json`` entry."""
        shape = (self.rows, *self.tail)
        descr = np.lib.format.dtype_to_descr(self.dtype)
        text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
        body = text.ljust(HEADER_BYTES - 10 - 1) + "\n"
        header = b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")
        assert len(header) == HEADER_BYTES, "header too long for HEADER_BYTES"
        self.f.seek(0)
        self.f.write(header)
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        with open(self.file, "rb") as f:
            sha = hashlib.file_digest(f, "sha256").hexdigest()
        return {"shape": list(shape), "dtype": self.dtype.name, "sha256": sha}


def _relocate(err: DatasetError, block: Block, spec: EnvSpec, where: Mapping[str, Located]):
    """A block's validation error, moved to the source's file, field and index."""
    field = err.field or ""
    spec_fields = fields_for(spec)
    index = err.index
    if index and field in spec_fields and spec_fields[field].dims[0] in ("T", "E"):
        origin = block.origin if spec_fields[field].dims[0] == "T" else block.final_origin
        index = (*np.atleast_1d(origin[index[0]]).tolist(), *index[1:])
    loc = where.get(field, Located(err.file, field))
    return DatasetError(loc.file, loc.field, f"{err.message} (as '{field}')", index=index)


def save_stream(
    blocks: Iterable[Block],
    path: str | Path,
    spec: EnvSpec,
    *,
    quality: str,
    provenance: Mapping[str, Any],
    env_kwargs: Mapping[str, Any] | None = None,
    where: Mapping[str, Located] | None = None,
    overwrite: bool = False,
    on_block: Callable[[Block], None] | None = None,
) -> Dataset:
    """Validate and write ``blocks`` (complete episodes, in order) as one dataset at ``path``.

    ``where`` maps an output field to its place in the source, so that a bad value is reported
    there. ``on_block`` is called after each block is written (progress). Returns the dataset as
    loaded back from disk, without checking it again (the arrays were checked block by block).
    """
    from macflow.data.io import load

    path = Path(path).absolute()
    if not provenance.get("method"):
        raise ValueError("provenance needs a 'method'")
    check_env_kwargs(spec.env_id, env_kwargs or {}, path / META_FILE)
    fields = fields_for(spec)
    _release_large_buffers()
    files: dict[str, _NpyAppender] = {}
    with writing(path, overwrite) as tmp:
        try:
            rewards, terminals, truncations = [], [], []
            for block in blocks:
                try:
                    Dataset(block.arrays, spec).validate(path)
                except DatasetError as err:
                    raise _relocate(err, block, spec, where or {}) from None
                for name, fld in fields.items():
                    with naming(path / f"{name}.npy"):
                        if name not in files:
                            tail = block.arrays[name].shape[1:]
                            files[name] = _NpyAppender(tmp / f"{name}.npy", fld.dtype, tail)
                        files[name].append(block.arrays[name])
                rewards.append(block.arrays["rewards"])
                terminals.append(block.arrays["terminals"])
                truncations.append(block.arrays["truncations"])
                if on_block is not None:
                    on_block(block)
            if not files:
                raise ValueError(
                    f"nothing to write to {path}: the source holds no complete episode"
                )
            meta_fields = {}
            for name in fields:
                with naming(path / f"{name}.npy"):
                    meta_fields[name] = files.pop(name).close()
        finally:
            for f in files.values():  # those not closed: the write failed
                with contextlib.suppress(OSError):  # e.g. a full disk: keep the first error
                    f.f.close()
            if hasattr(blocks, "close"):  # a generator stopped early: let it close its files
                blocks.close()
        small = {
            "rewards": np.concatenate(rewards),
            "terminals": np.concatenate(terminals),
            "truncations": np.concatenate(truncations),
        }
        desc = Dataset(
            small,
            spec,
            quality=quality,
            provenance=dict(provenance),
            env_kwargs=dict(env_kwargs or {}),
        )
        finish_write(tmp, path, desc, meta_fields)
    return load(path, verify=False, check_values=False)
