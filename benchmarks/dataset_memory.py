"""Memory and time of a large dataset: write, verify+load, move to the device, sample.

Default size: the field's largest task, 1M transitions of 10 agents with 260-dim observations,
a 240-dim state and 16 discrete actions (SMACv2 terran_10_vs_10-like), 60-step episodes.
The loading half runs in a fresh process so its peak memory (VmHWM) is its own.

    python benchmarks/dataset_memory.py                       # full size, ~12 GB of disk
    python benchmarks/dataset_memory.py --transitions 100000  # quick look
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tyro


@dataclasses.dataclass(frozen=True)
class Args:
    transitions: int = 1_000_000
    """Number of transitions T."""
    agents: int = 10
    """Number of agents N."""
    obs: int = 260
    """Observation size O."""
    state: int = 240
    """State size S."""
    actions: int = 16
    """Number of discrete actions A."""
    episode_length: int = 60
    """Steps per episode (every episode ends in a terminal)."""
    workdir: Path | None = None
    """Where to write (default: a temporary directory, removed afterwards)."""
    batch: int = 256
    """Batch size of the timed sampling calls."""


def _status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return -1


def write(args: Args, path: Path) -> dict:
    from macflow.data import Dataset, save
    from macflow.data.schema import fields_for
    from macflow.spec import EnvSpec

    T, N, L = args.transitions, args.agents, args.episode_length
    E = -(-T // L)
    spec = EnvSpec("bench/large", N, args.obs, args.state, args.actions, True, episode_limit=L)
    scratch = path.parent / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    fields = fields_for(spec)
    rows = {"T": T, "E": E, "N": N, "O": args.obs, "S": args.state, "A": args.actions}
    arrays = {
        name: np.lib.format.open_memmap(
            scratch / f"{name}.npy", "w+", f.dtype, tuple(rows[d] for d in f.dims)
        )
        for name, f in fields.items()
    }
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    chunk = 50_000
    for lo in range(0, T, chunk):
        hi = min(T, lo + chunk)
        n = hi - lo
        arrays["observations"][lo:hi] = rng.standard_normal((n, N, args.obs), np.float32)
        arrays["states"][lo:hi] = rng.standard_normal((n, args.state), np.float32)
        legal = rng.random((n, N, args.actions)) < 0.5
        legal[..., 0] = True
        arrays["legal_actions"][lo:hi] = legal
        arrays["actions"][lo:hi] = np.argmax(legal * rng.random(legal.shape), axis=-1)
        arrays["rewards"][lo:hi] = rng.random(n, np.float32)
    ends = np.zeros(T, bool)
    ends[L - 1 :: L] = True
    ends[-1] = True
    arrays["terminals"][:] = ends
    arrays["truncations"][:] = False
    arrays["final_observations"][:] = rng.standard_normal((E, N, args.obs), np.float32)
    arrays["final_states"][:] = rng.standard_normal((E, args.state), np.float32)
    arrays["final_legal_actions"][:] = True
    for a in arrays.values():
        a.flush()
    generate = time.perf_counter() - t0
    t0 = time.perf_counter()
    ds = save(Dataset(arrays=arrays, spec=spec, provenance={"method": "benchmark"}), path)
    saved = time.perf_counter() - t0
    shutil.rmtree(scratch)
    return {
        "generate_s": generate,
        "validate_and_save_s": saved,
        "bytes": ds.nbytes(),
        "bytes_per_transition": ds.nbytes() / T,
        "episodes": E,
    }


def load(path: Path, batch: int) -> dict:
    """Runs in its own process: peak memory of load + device transfer + sampling."""
    import jax

    from macflow.data import Sampler
    from macflow.data import load as load_dataset

    out = {"available_before": _available()}
    t0 = time.perf_counter()
    ds = load_dataset(path, verify=True)
    out["verify_and_load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sampler = Sampler.from_dataset(ds)
    jax.block_until_ready(sampler)
    out["to_device_s"] = time.perf_counter() - t0
    out["device_bytes"] = sampler.nbytes()
    key = jax.random.PRNGKey(0)
    jax.block_until_ready(sampler.sample(key, batch))
    jax.block_until_ready(sampler.sample_windows(key, batch // 16, 16))
    t0 = time.perf_counter()
    for i in range(100):
        b = sampler.sample(jax.random.fold_in(key, i), batch)
    jax.block_until_ready(b)
    out["sample_ms"] = (time.perf_counter() - t0) * 10
    t0 = time.perf_counter()
    for i in range(100):
        w = sampler.sample_windows(jax.random.fold_in(key, i), batch // 16, 16)
    jax.block_until_ready(w)
    out["windows_ms"] = (time.perf_counter() - t0) * 10
    out.update(_status())
    out["available_after"] = _available()
    return out


def main(args: Args) -> None:
    tmp = None
    if args.workdir is None:
        tmp = tempfile.mkdtemp(prefix="macflow-bench-")
        root = Path(tmp)
    else:
        root = args.workdir
    path = root / "dataset"
    try:
        written = write(args, path)
        child = subprocess.run(
            [sys.executable, __file__, "--child", str(path), str(args.batch)],
            capture_output=True,
            text=True,
            check=True,
        )
        loaded = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    gib = 2**30
    print(
        f"dataset: T={args.transitions:,} N={args.agents} O={args.obs} S={args.state} "
        f"A={args.actions} (discrete), {written['episodes']:,} episodes"
    )
    print(f"  bytes per transition (finals included) : {written['bytes_per_transition']:.0f}")
    print(f"  dataset size                           : {written['bytes'] / gib:.2f} GiB")
    print(f"  validate + write (sha256, fsync)       : {written['validate_and_save_s']:.1f} s")
    print(f"  verify checksums + validate + open     : {loaded['verify_and_load_s']:.1f} s")
    print(f"  copy to device                         : {loaded['to_device_s']:.1f} s")
    print(f"  device bytes held by the sampler       : {loaded['device_bytes'] / gib:.2f} GiB")
    print(f"  peak resident memory of the process    : {loaded['VmHWM'] / gib:.2f} GiB")
    print(
        f"  resident after load: anon {loaded['RssAnon'] / gib:.2f} GiB, "
        f"file-backed {loaded['RssFile'] / gib:.2f} GiB"
    )
    print(
        f"  memory available: {loaded['available_before'] / gib:.1f} GiB before, "
        f"{loaded['available_after'] / gib:.1f} GiB after loading"
    )
    print(f"  sample({args.batch})                          : {loaded['sample_ms']:.2f} ms")
    print(f"  sample_windows({args.batch // 16}, 16)              : {loaded['windows_ms']:.2f} ms")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(load(Path(sys.argv[2]), int(sys.argv[3]))))
    else:
        main(tyro.cli(Args))
