"""Importers of the field's offline MARL datasets: OG-MARL vaults, OMAR, OMIGA, CFCQL, MADiff.

``macflow data import FORMAT SRC --out DIR`` converts files a user already holds into the macflow
format (``docs/data_format.md``); ``docs/importers.md`` documents each format, what is kept and
every transformation. Each format lives in its own module exposing

    open_sources(src: Path, options: ImportOptions) -> list[tuple[str, Source]]
    looks_like(src: Path) -> bool

where the name of each source is empty when SRC holds one dataset, or the sub-directory it goes to
(e.g. a vault's uids).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Literal, get_args

from macflow.data.dataset import Dataset
from macflow.data.imports.common import ImportOptions, Source
from macflow.data.io import check_parents, check_target, created_now, load, replace_dir
from macflow.data.schema import DatasetError
from macflow.data.stream import save_stream
from macflow.files import Busy, hold

Format = Literal["og-marl", "omar", "omiga", "cfcql", "madiff"]
FORMATS = {
    "og-marl": "macflow.data.imports.vault",
    "omar": "macflow.data.imports.omar",
    "omiga": "macflow.data.imports.omiga",
    "cfcql": "macflow.data.imports.cfcql",
    "madiff": "macflow.data.imports.madiff",
}
assert set(get_args(Format)) == set(FORMATS)
EXTRAS = {"og-marl": ("tensorstore", "vault"), "omiga": ("h5py", "hdf5"), "cfcql": ("h5py", "hdf5")}
DEFAULT_OPTIONS = ImportOptions()
VERSION = 1  # bump when a conversion changes, so cached conversions are redone

__all__ = [
    "DEFAULT_OPTIONS",
    "FORMATS",
    "Format",
    "ImportOptions",
    "Source",
    "cached_import",
    "detect",
    "import_dataset",
    "open_sources",
]


def _module(fmt: str):
    if fmt not in FORMATS:
        raise ValueError(f"unknown import format {fmt!r}; formats: {', '.join(FORMATS)}")
    if fmt in EXTRAS:
        lib, extra = EXTRAS[fmt]
        try:
            importlib.import_module(lib)
        except ImportError as err:
            raise ValueError(
                f"importing {fmt} needs {lib}: pip install 'macflow[{extra}]'"
            ) from err
    return importlib.import_module(FORMATS[fmt])


def open_sources(fmt: str, src: str | Path, options: ImportOptions) -> list[tuple[str, Source]]:
    """The datasets inside ``src`` as streamable sources, with their sub-directory names."""
    src = Path(src)
    if not src.exists():
        raise DatasetError(src, None, "does not exist")
    return _module(fmt).open_sources(src, options)


def detect(src: str | Path) -> str | None:
    """The import format ``src`` looks like, or None (e.g. for a macflow dataset)."""
    src = Path(src)
    if not src.exists() or (src / "meta.json").exists():
        return None
    for fmt in FORMATS:
        try:
            if _module(fmt).looks_like(src):
                return fmt
        except ValueError:  # the format's library is not installed
            continue
    return None


def import_dataset(
    fmt: str,
    src: str | Path,
    out: str | Path,
    options: ImportOptions = DEFAULT_OPTIONS,
    overwrite: bool = False,
    console=None,
    quiet: bool = False,
    sources: list[tuple[str, Source]] | None = None,
    command: str | None = None,
) -> list[Dataset]:
    """Convert every dataset in ``src`` into ``out`` (or ``out/<name>`` when there are several).

    ``sources`` are those :func:`open_sources` returned, when the caller opened them already;
    ``command`` (the command line that asked for the import) goes into the provenance.
    ``out``'s write lock is held throughout, so a second import to the same ``out`` is refused.
    Several datasets are all converted into a hidden directory beside ``out`` first and moved
    into place only when every one succeeded: a failure (or Ctrl-C) leaves ``out`` as it was.
    """
    from macflow.progress import progress_bar

    out = Path(out).absolute()
    check_parents(out)  # --out inside a file: refused before the sources are read
    base: dict[str, Any] = {"method": "import", "format": fmt, "source": str(Path(src).absolute())}
    recorded = {k: v for k, v in vars(options).items() if v is not None}

    def convert(name: str, source: Source, target: Path, overwrite: bool) -> Dataset:
        provenance = {
            **base,
            **source.provenance,
            "options": recorded,
            "importer_version": VERSION,
            "created_at": created_now(),
        }
        if command:
            provenance["command"] = command
        with progress_bar(console=console, disable=quiet) as bar:
            label = f"import {Path(src).name}" + (f"/{name}" if name else "")
            task = bar.add_task(label, total=source.total)
            return save_stream(
                source.blocks(),
                target,
                source.spec,
                quality=source.quality,
                provenance=provenance,
                where=source.where,
                overwrite=overwrite,
                on_block=lambda block: bar.update(task, advance=block.consumed),
            )

    with hold(out, command):
        if sources is None:
            sources = open_sources(fmt, src, options)
        for _, source in sources:  # every part, before anything is converted
            _check_env(source.spec)
        names = [name for name, _ in sources]
        if names == [""]:
            return [convert("", sources[0][1], out, overwrite)]
        _check_names(names, src, out)
        if (out / "meta.json").exists() or (out.exists() and not out.is_dir()):
            raise FileExistsError(
                f"{out} holds a dataset; the {len(sources)} datasets of {src} go to "
                "sub-directories of --out, which must not be a dataset itself"
            )
        for name in names:  # refused before converting, and again before moving
            check_target(out / name, overwrite)
        stage = out.parent / f".{out.name}.stage-{uuid.uuid4().hex[:8]}"
        stage.mkdir(parents=True)
        try:
            for name, source in sources:
                convert(name, source, stage / name, False)
            _publish(stage, out, names, overwrite)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return [load(out / name, verify=False, check_values=False) for name in names]


def _check_names(names: list[str], src, out: Path) -> None:
    """Each dataset of a multi-dataset source goes to ``out/<name>``: a plain directory name,
    each its own (a file stem such as ``..`` of ``...h5`` would write outside ``out``)."""
    for name in names:
        plain = name and not name.startswith(".") and "/" not in name and "\0" not in name
        if not plain or (os.altsep and os.altsep in name):
            raise DatasetError(
                src,
                None,
                f"holds a dataset named {name!r}, which cannot be a directory inside {out} (a "
                "name must not be empty, start with '.' or hold '/'); rename its file or directory",
            )
        if names.count(name) > 1:
            raise DatasetError(
                src,
                None,
                f"holds {names.count(name)} datasets named {name!r} (e.g. a.h5 and a.hdf5), which "
                f"would all go to {out / name}; rename or remove all but one",
            )


def _publish(stage: Path, out: Path, names: list[str], overwrite: bool) -> None:
    """Move the converted ``stage/<name>`` datasets to ``out/<name>``, holding the write lock of
    every one and checking them all again before the first is moved."""
    with contextlib.ExitStack() as locks:
        for name in names:
            locks.enter_context(hold(out / name))
        for name in names:
            check_target(out / name, overwrite)
        for name in names:
            replace_dir(stage / name, out / name)


def _check_env(spec) -> None:
    """A macflow task id (``--env-id``) must describe data of that task's shapes."""
    from macflow.envs import make_env

    try:
        env = make_env(spec.env_id)
    except KeyError:
        return  # not a macflow task: trained without evaluation
    keys = ("num_agents", "obs_dim", "state_dim", "action_dim", "discrete")
    diff = [f"{k} {getattr(spec, k)} vs {getattr(env.spec, k)}" for k in keys]
    diff = [d for d, k in zip(diff, keys, strict=True) if getattr(spec, k) != getattr(env.spec, k)]
    if diff:
        raise ValueError(
            f"--env-id {spec.env_id}: the data do not match that task ({'; '.join(diff)}, data "
            "vs task); leave --env-id out to import them as a task macflow cannot run"
        )


def cached_import(src: str | Path, command: str | None = None) -> Path:
    """``src`` itself if it is not an importable dataset; else its conversion in the cache.

    The conversion is made once (``<cache>/imports``) and redone when the source's files change.
    ``src`` must hold one dataset (e.g. one uid of a vault).
    """
    from macflow import cache_root

    src = Path(src)
    fmt = detect(src)
    if fmt is None:
        return src
    path = cache_root() / "imports" / f"{fmt}-{src.name}-{source_key(fmt, src)}"
    if (path / "meta.json").exists():
        return path
    options = DEFAULT_OPTIONS
    sources = open_sources(fmt, src, options)
    if len(sources) > 1:
        names = ", ".join(name for name, _ in sources)
        raise ValueError(
            f"{src} holds {len(sources)} {fmt} datasets ({names}); pass one of them, e.g. "
            f"--dataset {src / sources[0][0]}, or convert them all with "
            f"`macflow data import {fmt} {src} --out DIR`"
        )
    sources = [("", source) for _, source in sources]  # a directory of one file: into path
    print(f"converting the {fmt} dataset {src} into {path} (once)", file=sys.stderr)
    waiting = False
    while True:
        try:
            with hold(path, command):
                if not (path / "meta.json").exists():  # else converted while we waited
                    import_dataset(
                        fmt, src, path, options, overwrite=True, sources=sources, command=command
                    )
                return path
        except Busy:  # another process (e.g. a sweep's job) converts it: wait and reuse it
            if not waiting:
                print(f"waiting for the other process converting {src}", file=sys.stderr)
                waiting = True
            time.sleep(0.5)


def _size_mtime(file: Path) -> tuple[int, int]:
    st = file.stat()
    return st.st_size, st.st_mtime_ns


def source_key(fmt: str, src: Path) -> str:
    """A key that changes when the source's files, the format or the converter change."""
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    stats = [(str(p.relative_to(src.parent)), *_size_mtime(p)) for p in files]
    blob = json.dumps([fmt, VERSION, str(src.absolute()), stats])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
