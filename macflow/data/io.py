"""Reading and writing datasets: a directory of ``.npy`` arrays plus ``meta.json``.

Writes are atomic: everything goes to a hidden sibling directory, is flushed to disk, and only then
renamed into place (an existing dataset is swapped out with ``renameat2(RENAME_EXCHANGE)`` where
Linux offers it). An interrupted write therefore leaves the old dataset, or none, never a mix.
Loads check the format, the schema version, the checksum of every array file and then every value.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from macflow import __version__
from macflow.data.dataset import Dataset
from macflow.data.schema import FORMAT, META_FILE, SCHEMA_VERSION, DatasetError, fields_for
from macflow.files import exchange, fsync_dir
from macflow.spec import EnvSpec

META_KEYS = {
    "format",
    "schema_version",
    "env",
    "quality",
    "provenance",
    "stats",
    "reference_returns",
    "fields",
    "checksum",
}


class _HashingWriter:
    """File wrapper that hashes what passes through (numpy then writes in bounded chunks)."""

    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        return self.f.write(data)


def combined_checksum(field_sums: dict[str, str]) -> str:
    """The dataset's content checksum: sha256 over its fields' sha256 lines, sorted by name."""
    lines = "".join(f"{name} {field_sums[name]}\n" for name in sorted(field_sums))
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


def _meta_json(ds: Dataset, fields: dict[str, dict]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "env": {"id": ds.spec.env_id, "kwargs": dict(ds.env_kwargs), "spec": ds.spec.to_dict()},
        "quality": ds.quality,
        "provenance": dict(ds.provenance),
        "stats": ds.stats(),
        "reference_returns": None if ds.reference_returns is None else dict(ds.reference_returns),
        "fields": fields,
        "checksum": combined_checksum({k: v["sha256"] for k, v in fields.items()}),
    }


def save(
    ds: Dataset,
    path: str | Path,
    overwrite: bool = False,
    on_field: Callable[[str], None] | None = None,
) -> Dataset:
    """Validate ``ds`` and write it to the directory ``path`` atomically.

    ``overwrite`` allows replacing an existing dataset (never a directory that is not one).
    ``on_field(name)`` is called after each array is written (progress reporting).
    Returns the dataset as it now stands on disk (with ``path`` and ``checksum``).
    """
    path = Path(path).absolute()
    ds.validate(path)
    if not ds.provenance.get("method"):
        raise DatasetError(path / META_FILE, "provenance.method", "must say how the data were made")
    _check_reference(ds.reference_returns, path / META_FILE)
    tmp = begin_write(path, overwrite)
    try:
        fields = {}
        for name in fields_for(ds.spec):
            arr = ds.arrays[name]
            with open(tmp / f"{name}.npy", "wb") as f:
                writer = _HashingWriter(f)
                np.lib.format.write_array(writer, np.asanyarray(arr), allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            fields[name] = {
                "shape": list(arr.shape),
                "dtype": arr.dtype.name,
                "sha256": writer.sha.hexdigest(),
            }
            if on_field is not None:
                on_field(name)
        meta = finish_write(tmp, path, ds, fields)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dataclasses.replace(ds, path=path, checksum=meta["checksum"])


def begin_write(path: Path, overwrite: bool) -> Path:
    """Check that ``path`` may be written and make the hidden sibling directory to write into."""
    if path.exists():
        is_dataset = (path / META_FILE).exists()
        is_empty = path.is_dir() and not any(path.iterdir())
        if not (is_dataset or is_empty):
            raise FileExistsError(f"{path} exists and is not a macflow dataset; not touching it")
        if is_dataset and not overwrite:
            raise FileExistsError(
                f"{path} already holds a dataset; pass overwrite=True to replace it"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def finish_write(tmp: Path, path: Path, ds: Dataset, fields: dict[str, dict]) -> dict[str, Any]:
    """Write ``meta.json`` into ``tmp`` (whose array files are written) and move it to ``path``.

    ``ds`` supplies the description and the arrays the episode statistics need (rewards,
    terminals, truncations). Returns the metadata written.
    """
    meta = _meta_json(ds, fields)
    with open(tmp / META_FILE, "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)
    if path.exists():
        if exchange(tmp, path):  # tmp now holds the old dataset
            fsync_dir(path.parent)
            shutil.rmtree(tmp)
        else:  # two renames: an interruption between them leaves no dataset, not a mix
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(path, old)
            os.rename(tmp, path)
            fsync_dir(path.parent)
            shutil.rmtree(old)
    else:
        os.rename(tmp, path)
        fsync_dir(path.parent)
    return meta


def leftovers(path: Path) -> list[Path]:
    """Hidden siblings that an interrupted (killed) write of ``path`` left behind."""
    if not path.parent.exists():
        return []
    return sorted(path.parent.glob(f".{path.name}.*-*"))


def _check_reference(ref, meta_file: Path) -> None:
    if ref is None:
        return
    if set(ref) != {"random", "expert"}:
        raise DatasetError(
            meta_file,
            "reference_returns",
            f"needs exactly the keys random and expert, got {sorted(ref)}",
        )
    for k, v in ref.items():
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
            raise DatasetError(
                meta_file, f"reference_returns.{k}", f"must be a finite number, got {v!r}"
            )
    if ref["random"] == ref["expert"]:
        raise DatasetError(meta_file, "reference_returns", "random and expert returns are equal")


def read_meta(path: str | Path) -> dict[str, Any]:
    """Parse and check ``path/meta.json`` (format, schema version, keys); returns the dict."""
    path = Path(path)
    meta_file = path / META_FILE
    if not path.exists():
        hint = ""
        if leftovers(path):
            names = ", ".join(p.name for p in leftovers(path))
            hint = f" (an interrupted write left {names} beside it; check it, then delete it)"
        raise DatasetError(path, None, f"no dataset here{hint}")
    if not meta_file.exists():
        raise DatasetError(meta_file, None, "missing: this directory is not a macflow dataset")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(meta_file, None, f"is not valid JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DatasetError(meta_file, "format", f"is {found!r}, expected {FORMAT!r}")
    version = meta.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DatasetError(meta_file, "schema_version", f"must be an int >= 1, got {version!r}")
    if version > SCHEMA_VERSION:
        raise DatasetError(
            meta_file,
            "schema_version",
            f"is {version}, newer than this macflow ({__version__}) "
            f"reads (up to {SCHEMA_VERSION}); upgrade macflow to load it",
        )
    for key in sorted(META_KEYS - set(meta)):
        raise DatasetError(meta_file, key, "missing")
    for key in sorted(set(meta) - META_KEYS):
        raise DatasetError(meta_file, key, f"unexpected key; meta.json holds {sorted(META_KEYS)}")
    try:
        env = meta["env"]
        meta["spec"] = EnvSpec.from_dict(env["spec"])
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(meta_file, "env.spec", f"invalid ({err})") from err
    if env.get("id") != meta["spec"].env_id or not isinstance(env.get("kwargs"), dict):
        raise DatasetError(meta_file, "env", "needs 'id' equal to spec.env_id and a 'kwargs' dict")
    if not isinstance(meta["provenance"], dict) or not meta["provenance"].get("method"):
        raise DatasetError(meta_file, "provenance.method", "must say how the data were made")
    _check_reference(meta["reference_returns"], meta_file)
    return meta


def _sha256(file: Path) -> str:
    with open(file, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load(path: str | Path, verify: bool = True, check_values: bool = True) -> Dataset:
    """Open the dataset directory ``path``: arrays memory-mapped, everything checked.

    ``verify=False`` skips hashing the array files (faster on very large datasets).
    ``check_values=False`` skips the schema and value checks of the arrays, for a writer that
    checked them as it wrote them: reading every page of a memory-mapped array keeps it
    resident while the dataset is open.
    """
    path = Path(path).absolute()
    meta = read_meta(path)
    meta_file = path / META_FILE
    spec: EnvSpec = meta["spec"]
    expected = fields_for(spec)
    listed = meta["fields"]
    present = {p.stem: p for p in path.glob("*.npy")}
    for name in expected:
        if name not in present:
            raise DatasetError(
                path / f"{name}.npy", name, "missing (required for this task's spec)"
            )
        if name not in listed:
            raise DatasetError(meta_file, f"fields.{name}", "missing")
    for name in sorted(set(present) - set(expected)):
        raise DatasetError(
            present[name],
            name,
            f"unexpected field; this task's dataset holds exactly {sorted(expected)}",
        )
    for name in sorted(set(listed) - set(expected)):
        raise DatasetError(meta_file, f"fields.{name}", "lists a field this task does not have")
    if verify:
        for name in expected:
            got = _sha256(present[name])
            if got != listed[name].get("sha256"):
                raise DatasetError(
                    present[name],
                    name,
                    f"checksum mismatch: the file hashes to sha256 {got[:16]}..., meta.json "
                    f"records {str(listed[name].get('sha256'))[:16]}...; the file changed or is "
                    "corrupt",
                )
        want = combined_checksum({k: listed[k]["sha256"] for k in expected})
        if meta["checksum"] != want:
            raise DatasetError(
                meta_file, "checksum", f"is {meta['checksum']}, the fields give {want}"
            )

    arrays = {}
    for name in expected:
        try:
            arrays[name] = np.load(present[name], mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as err:
            raise DatasetError(present[name], name, f"cannot be read as .npy ({err})") from err
    ds = Dataset(
        arrays=arrays,
        spec=spec,
        quality=str(meta["quality"]),
        provenance=meta["provenance"],
        env_kwargs=meta["env"]["kwargs"],
        reference_returns=meta["reference_returns"],
        path=path,
        checksum=meta["checksum"],
    )
    if check_values:
        ds.validate(path)
    _check_stats(ds, meta["stats"], meta_file)
    return ds


def _check_stats(ds: Dataset, recorded: Any, meta_file: Path) -> None:
    actual = ds.stats()
    if not isinstance(recorded, dict):
        raise DatasetError(meta_file, "stats", "must be an object")
    for key, value in actual.items():
        got = recorded.get(key)
        ok = isinstance(got, int | float) and math.isclose(got, value, rel_tol=1e-6, abs_tol=1e-6)
        if not ok:
            raise DatasetError(
                meta_file, f"stats.{key}", f"records {got!r} but the arrays give {value!r}"
            )


def created_now() -> str:
    """UTC timestamp for provenance records."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
