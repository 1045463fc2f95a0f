"""Reading and writing datasets: a directory of ``.npy`` arrays plus ``meta.json``.

Writes are atomic: everything goes to a hidden sibling directory, is flushed to disk, and only then
renamed into place (an existing dataset is swapped out with ``renameat2(RENAME_EXCHANGE)`` where
Linux offers it). An interrupted write therefore leaves the old dataset, or none, never a mix.
Every write goes through :func:`writing`, which holds the target's write lock
(:func:`macflow.files.hold`) from the overwrite check to the final swap, so a second writer of the
same directory is refused instead of silently replacing the first one's dataset.
Loads check the format, the schema version, the type of every metadata entry, the checksum of
every array file, that the files match what ``meta.json`` records, and then every value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from macflow import __version__
from macflow.data.dataset import Dataset
from macflow.data.schema import FORMAT, META_FILE, SCHEMA_VERSION, DatasetError, fields_for
from macflow.files import exchange, fsync_dir, hold
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
    if not isinstance(ds.quality, str):
        raise DatasetError(path / META_FILE, "quality", f"must be a string, got {ds.quality!r}")
    _check_reference(ds.reference_returns, path / META_FILE)
    check_env_kwargs(ds.spec.env_id, ds.env_kwargs, path / META_FILE)
    with writing(path, overwrite) as tmp:
        fields = {}
        for name in fields_for(ds.spec):
            arr = ds.arrays[name]
            with naming(path / f"{name}.npy"), open(tmp / f"{name}.npy", "wb") as f:
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
    return dataclasses.replace(ds, path=path, checksum=meta["checksum"])


@contextlib.contextmanager
def naming(file: Path) -> Iterator[None]:
    """Name ``file`` in an OSError that names none (``ENOSPC`` from ``write()``), so that the
    message says which output could not be written."""
    try:
        yield
    except OSError as err:
        if err.filename is None:
            raise OSError(err.errno, err.strerror, str(file)) from err
        raise


def check_parents(path: Path) -> None:
    """Raise ``FileExistsError`` if a file stands where a parent directory of ``path`` must be."""
    for parent in Path(path).absolute().parents:  # the first that exists must be a directory
        if parent.exists():
            if not parent.is_dir():
                raise FileExistsError(f"{parent} is a file, so {path} cannot be made")
            return


def check_target(path: Path, overwrite: bool) -> None:
    """Raise ``FileExistsError`` unless a dataset may be written at ``path``: nothing there, an
    empty directory, or (with ``overwrite``) a dataset; never a file or any other directory."""
    check_parents(path)
    if path.exists() or path.is_symlink():
        is_dataset = (path / META_FILE).is_file()
        is_empty = path.is_dir() and not any(path.iterdir())
        if not (is_dataset or is_empty):
            raise FileExistsError(f"{path} exists and is not a macflow dataset; not touching it")
        if is_dataset and not overwrite:
            raise FileExistsError(
                f"{path} already holds a dataset; pass --overwrite (overwrite=True from Python) "
                "to replace it"
            )


@contextlib.contextmanager
def writing(path: Path, overwrite: bool, command: str | None = None) -> Iterator[Path]:
    """Hold ``path``'s write lock, check that it may be written and yield a new hidden sibling
    directory to write into; the body ends with :func:`finish_write`.

    Every writer of a dataset passes through here: a second process writing the same ``path``
    is refused (:class:`macflow.files.Busy`) for as long as the first holds the lock, and the
    overwrite rules are checked while holding it. On any failure (also Ctrl-C) the sibling is
    removed and ``path`` is left as it was.
    """
    path = Path(path).absolute()
    check_target(path, overwrite)  # before the lock file is made: a clean refusal
    with hold(path, command):
        check_target(path, overwrite)  # again, now that no other process can write it
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone after a commit; the old data after a swap


def finish_write(tmp: Path, path: Path, ds: Dataset, fields: dict[str, dict]) -> dict[str, Any]:
    """Write ``meta.json`` into ``tmp`` (whose array files are written) and move it to ``path``.

    Call it inside :func:`writing`, which made ``tmp``. ``ds`` supplies the description and the
    arrays the episode statistics need (rewards, terminals, truncations). Returns the metadata
    written.
    """
    meta = _meta_json(ds, fields)
    with naming(path / META_FILE), open(tmp / META_FILE, "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)
    replace_dir(tmp, path)
    return meta


def replace_dir(tmp: Path, path: Path) -> None:
    """Move the directory ``tmp`` to ``path``, atomically swapping out what is there (if any);
    ``tmp`` then holds the old contents (or is gone) and is removed."""
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


def leftovers(path: Path) -> list[Path]:
    """Hidden siblings that an interrupted (killed) write of ``path`` left behind."""
    if not path.parent.exists():
        return []
    return sorted(path.parent.glob(f".{path.name}.*-*"))


def _check_reference(ref, meta_file: Path) -> None:
    if ref is None:
        return
    if not isinstance(ref, Mapping):
        raise DatasetError(
            meta_file,
            "reference_returns",
            f"must be null or an object with the keys random and expert, got {ref!r}",
        )
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


def _kind(value: Any) -> str:
    """The JSON name of ``value``'s type, for messages."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    names |= {int: "an integer", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


SPEC_INTS = ("num_agents", "obs_dim", "state_dim", "action_dim", "episode_limit")


def _check_spec(spec: Any, meta_file: Path) -> EnvSpec:
    """``env.spec`` as an :class:`EnvSpec`, each entry of the right JSON type."""
    if not isinstance(spec, dict):
        raise DatasetError(meta_file, "env.spec", f"must be an object, got {_kind(spec)}")

    def bad(key: str, want: str) -> DatasetError:
        value = spec[key]
        return DatasetError(
            meta_file, f"env.spec.{key}", f"must be {want}, got {_kind(value)} {value!r}"
        )

    if "env_id" in spec and not isinstance(spec["env_id"], str):
        raise bad("env_id", "a string")
    for key in SPEC_INTS:
        if key in spec and not (_is_int(spec[key]) and spec[key] >= 1):
            raise bad(key, "an integer >= 1")
    for key in ("discrete", "state_is_obs_concat"):
        if key in spec and not isinstance(spec[key], bool):
            raise bad(key, "true or false")
    for key in ("action_low", "action_high"):
        value = spec.get(key)
        numbers = isinstance(value, list) and all(
            isinstance(x, int | float) and not isinstance(x, bool) and not math.isnan(x)
            for x in value
        )
        if value is not None and not numbers:
            raise bad(key, "null or a list of numbers")
    try:
        return EnvSpec.from_dict(spec)
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(meta_file, "env.spec", f"invalid ({err})") from err


def _check_field_entries(fields: Any, meta_file: Path, spec: EnvSpec) -> None:
    """``fields``: an object of objects, those of the spec's fields ``{"shape": [int, ...],
    "dtype": str, "sha256": str}`` (others are refused by :func:`load`, naming the file)."""
    if not isinstance(fields, dict):
        raise DatasetError(meta_file, "fields", f"must be an object, got {_kind(fields)}")
    for name, entry in fields.items():
        if not isinstance(entry, dict):
            raise DatasetError(
                meta_file, f"fields.{name}", f"must be an object, got {_kind(entry)}"
            )
        if name not in fields_for(spec):
            continue
        for key in ("shape", "dtype", "sha256"):
            if key not in entry:
                raise DatasetError(meta_file, f"fields.{name}.{key}", "missing")
        shape = entry["shape"]
        if not (isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape)):
            raise DatasetError(
                meta_file,
                f"fields.{name}.shape",
                f"must be a list of integers >= 0, got {_kind(shape)} {shape!r}",
            )
        for key in ("dtype", "sha256"):
            if not isinstance(entry[key], str):
                raise DatasetError(
                    meta_file,
                    f"fields.{name}.{key}",
                    f"must be a string, got {_kind(entry[key])} {entry[key]!r}",
                )


def check_env_kwargs(env_id: str, kwargs: Mapping[str, Any], meta_file: Path) -> None:
    """Refuse ``env.kwargs`` that the environment class of the task ``env_id`` does not accept
    (``make_env`` would fail in training). A task macflow does not know (an imported dataset)
    or cannot import (its extra is missing) is not checked here."""
    from macflow.envs import entry

    try:
        cls = entry(env_id).env_cls()
    except (KeyError, ImportError):
        return
    if not dataclasses.is_dataclass(cls):
        return
    accepted = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise DatasetError(
            meta_file,
            "env.kwargs",
            f"{unknown} are not parameters of {env_id}, which accepts "
            f"{accepted or 'no parameters'} (the dataset was made by another version of the "
            "task, or edited); fix env.kwargs",
        )


def _read_text(file: Path) -> str:
    """The text of ``file``: a DatasetError naming it for anything but readable UTF-8."""
    try:
        return file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise DatasetError(file, None, f"is not UTF-8 text ({err})") from err
    except OSError as err:
        raise DatasetError(file, None, f"cannot be read ({err.strerror or err})") from err


def _check_meta_file(path: Path, meta_file: Path) -> None:
    """``path`` is a directory holding the file ``meta.json``."""
    if not path.exists():
        hint = ""
        if leftovers(path):
            names = ", ".join(p.name for p in leftovers(path))
            hint = f" (an interrupted write left {names} beside it; check it, then delete it)"
        raise DatasetError(path, None, f"no dataset here{hint}")
    if not path.is_dir():
        raise DatasetError(path, None, "is a file; a dataset is a directory holding meta.json")
    if not meta_file.exists():
        why = "a broken symbolic link or a link loop" if meta_file.is_symlink() else "missing"
        raise DatasetError(meta_file, None, f"{why}: this directory is not a macflow dataset")
    if meta_file.is_dir():
        raise DatasetError(meta_file, None, "is a directory, not the dataset's JSON file")


def read_meta(path: str | Path) -> dict[str, Any]:
    """Parse and check ``path/meta.json`` (format, schema version, keys and the type of every
    entry); returns the dict, with ``spec`` added (the :class:`EnvSpec`)."""
    path = Path(path)
    meta_file = path / META_FILE
    try:
        _check_meta_file(path, meta_file)
    except PermissionError as err:  # e.g. a directory without read or search permission
        raise DatasetError(path, None, f"cannot be read ({err.strerror})") from err
    try:
        meta = json.loads(_read_text(meta_file))
    except json.JSONDecodeError as err:
        raise DatasetError(meta_file, None, f"is not valid JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DatasetError(meta_file, "format", f"is {found!r}, expected {FORMAT!r}")
    version = meta.get("schema_version")
    if not _is_int(version) or version < 1:
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
    env = meta["env"]
    if not isinstance(env, dict):
        raise DatasetError(meta_file, "env", f"must be an object, got {_kind(env)}")
    if "spec" not in env:
        raise DatasetError(meta_file, "env.spec", "missing")
    meta["spec"] = _check_spec(env["spec"], meta_file)
    if env.get("id") != meta["spec"].env_id or not isinstance(env.get("kwargs"), dict):
        raise DatasetError(meta_file, "env", "needs 'id' equal to spec.env_id and a 'kwargs' dict")
    if not isinstance(meta["provenance"], dict) or not meta["provenance"].get("method"):
        raise DatasetError(meta_file, "provenance.method", "must say how the data were made")
    for key in ("quality", "checksum"):
        if not isinstance(meta[key], str):
            raise DatasetError(
                meta_file, key, f"must be a string, got {_kind(meta[key])} {meta[key]!r}"
            )
    if not isinstance(meta["stats"], dict):
        raise DatasetError(meta_file, "stats", f"must be an object, got {_kind(meta['stats'])}")
    _check_field_entries(meta["fields"], meta_file, meta["spec"])
    _check_reference(meta["reference_returns"], meta_file)
    check_env_kwargs(meta["spec"].env_id, env["kwargs"], meta_file)
    return meta


def _sha256(file: Path, name: str) -> str:
    try:
        with open(file, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as err:
        raise DatasetError(file, name, f"cannot be read ({err.strerror or err})") from err


def load(path: str | Path, verify: bool = True, check_values: bool = True) -> Dataset:
    """Open the dataset directory ``path``: arrays memory-mapped, everything checked.

    ``verify=False`` skips hashing the array files (faster on very large datasets).
    ``check_values=False`` skips the schema and value checks of the arrays, for a writer that
    checked them as it wrote them: reading every page of a memory-mapped array keeps it
    resident while the dataset is open. The shape and dtype of every file are compared with
    those ``meta.json`` records either way.
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
            got = _sha256(present[name], name)
            if got != listed[name]["sha256"]:
                raise DatasetError(
                    present[name],
                    name,
                    f"checksum mismatch: the file hashes to sha256 {got[:16]}..., meta.json "
                    f"records {listed[name]['sha256'][:16]}...; the file changed or is corrupt",
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
        except (ValueError, OSError, EOFError) as err:
            raise DatasetError(present[name], name, f"cannot be read as .npy ({err})") from err
    ds = Dataset(
        arrays=arrays,
        spec=spec,
        quality=meta["quality"],
        provenance=meta["provenance"],
        env_kwargs=meta["env"]["kwargs"],
        reference_returns=meta["reference_returns"],
        path=path,
        checksum=meta["checksum"],
    )
    if check_values:
        ds.validate(path)  # first: its messages say what is wrong with a file, and how to fix it
    for name in expected:
        _check_recorded(arrays[name], listed[name], present[name], name)
    _check_stats(ds, meta["stats"], meta_file)
    return ds


def _check_recorded(arr: np.ndarray, entry: dict[str, Any], file: Path, name: str) -> None:
    """A field's file must hold the shape and dtype that ``meta.json`` records for it."""
    for what, got, want in (
        ("shape", list(arr.shape), entry["shape"]),
        ("dtype", arr.dtype.name, entry["dtype"]),
    ):
        if got != want:
            raise DatasetError(
                file,
                name,
                f"the file holds {what} {got}, but meta.json records fields.{name}.{what} "
                f"{want}; the file or meta.json was changed by hand",
            )


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
