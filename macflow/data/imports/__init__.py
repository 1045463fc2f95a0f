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

import hashlib
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Literal, get_args

from macflow.data.dataset import Dataset
from macflow.data.imports.common import ImportOptions, Source
from macflow.data.io import created_now
from macflow.data.schema import DatasetError
from macflow.data.stream import save_stream

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
    """
    from macflow.progress import progress_bar

    if sources is None:
        sources = open_sources(fmt, src, options)
    out = Path(out)
    if len(sources) > 1 and (out / "meta.json").exists():
        raise FileExistsError(
            f"{out} holds a dataset; the {len(sources)} datasets of {src} go to sub-directories "
            "of --out, which must not be a dataset itself"
        )
    done = []
    for name, source in sources:
        _check_env(source.spec)
        target = out / name if name else out
        provenance: dict[str, Any] = {
            "method": "import",
            "format": fmt,
            "source": str(Path(src).absolute()),
            **source.provenance,
            "options": {k: v for k, v in vars(options).items() if v is not None},
            "importer_version": VERSION,
            "created_at": created_now(),
        }
        if command:
            provenance["command"] = command
        with progress_bar(console=console, disable=quiet) as bar:
            label = f"import {Path(src).name}" + (f"/{name}" if name else "")
            task = bar.add_task(label, total=source.total)

            def advance(block, bar=bar, task=task):
                bar.update(task, advance=block.consumed)

            done.append(
                save_stream(
                    source.blocks(),
                    target,
                    source.spec,
                    quality=source.quality,
                    provenance=provenance,
                    where=source.where,
                    overwrite=overwrite,
                    on_block=advance,
                )
            )
    return done


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
    print(f"converting the {fmt} dataset {src} into {path} (once)", file=sys.stderr)
    import_dataset(fmt, src, path, options, overwrite=True, sources=sources, command=command)
    return path


def _size_mtime(file: Path) -> tuple[int, int]:
    st = file.stat()
    return st.st_size, st.st_mtime_ns


def source_key(fmt: str, src: Path) -> str:
    """A key that changes when the source's files, the format or the converter change."""
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    stats = [(str(p.relative_to(src.parent)), *_size_mtime(p)) for p in files]
    blob = json.dumps([fmt, VERSION, str(src.absolute()), stats])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
