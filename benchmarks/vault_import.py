"""Time and peak memory of importing a large OG-MARL vault (``macflow data import og-marl``).

Writes a SMAC-3m-shaped vault with the real flashbax (1M steps, 3 agents, 30-dim observations,
48-dim state, 9 actions, legal masks, episodes of 15-60 steps), then imports it in fresh
processes, each reporting its wall time and peak resident memory (VmHWM):

- the full vault with the default block of 65,536 rows and with 16,384 rows;
- the first quarter of the vault (250k steps) with the default block.

Bounded memory means the peak follows the block size, not the number of steps.

    python benchmarks/vault_import.py                        # 1M steps, ~2 GB of disk
    python benchmarks/vault_import.py --transitions 100000   # quick look
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
    """Steps in the vault (one batch row)."""
    agents: int = 3
    """Number of agents N."""
    obs: int = 30
    """Observation size O."""
    state: int = 48
    """State size S."""
    actions: int = 9
    """Number of discrete actions A."""
    workdir: Path | None = None
    """Where to write (default: a temporary directory, removed afterwards)."""
    json_out: Path | None = None
    """Also write the results as JSON here."""


def _peak() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _child(src: str, out: str, block_rows: int, steps: int) -> None:
    """Run in a fresh process: import and print wall time and peak memory as JSON."""
    from macflow.data.imports import ImportOptions, import_dataset

    if steps:  # a prefix of the vault: a copy of its uid with a smaller vault_index
        import tensorstore as ts

        spec = {
            "driver": "zarr",
            "kvstore": {"driver": "ocdbt", "base": f"file://{src}", "path": "vault_index"},
        }
        ts.open(spec).result().write(np.array([steps], np.int32)).result()
    base = _peak()["VmRSS"]
    start = time.perf_counter()
    (ds,) = import_dataset("og-marl", src, out, ImportOptions(block_rows=block_rows), quiet=True)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "block_rows": block_rows,
                "steps_in_vault": steps or None,
                "transitions": ds.num_transitions,
                "episodes": ds.num_episodes,
                "seconds": seconds,
                "rss_before_mb": base / 2**20,
                "peak_mb": _peak()["VmHWM"] / 2**20,
                "dataset_mb": ds.nbytes() / 2**20,
            }
        )
    )


def _write(args: Args, root: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from vaults import write_vault

    rng = np.random.default_rng(0)
    t, n, chunk = args.transitions, args.agents, 100_000
    ends = np.cumsum(rng.integers(15, 61, size=t // 15 + 1))
    ends = ends[ends < t] - 1
    flags = np.zeros(t, np.float32)
    flags[ends] = 1.0
    flags[-1] = 1.0
    won = rng.random(t) < 0.5
    start = time.perf_counter()
    path = None
    for lo in range(0, t, chunk):
        hi = min(t, lo + chunk)
        m = hi - lo
        legal = rng.random((1, m, n, args.actions)) < 0.6
        legal[..., 0] = True
        # A legal action per agent: the first legal one after a random offset.
        offset = rng.integers(0, args.actions, (1, m, n, 1))
        order = (np.arange(args.actions) + offset) % args.actions
        pick = np.take_along_axis(legal, order, -1).argmax(-1)
        act = np.take_along_axis(order, pick[..., None], -1)[..., 0].astype(np.int32)
        f = flags[lo:hi][None, :, None].repeat(n, 2)
        exp = {
            "observations": rng.normal(size=(1, m, n, args.obs)).astype(np.float32),
            "actions": act,
            "rewards": rng.normal(size=(1, m, n)).astype(np.float32),
            "terminals": f * won[lo:hi, None],
            "truncations": f * ~won[lo:hi, None],
            "infos": {
                "state": rng.normal(size=(1, m, args.state)).astype(np.float32),
                "legals": legal.astype(np.float32),
            },
        }
        if path is None:
            path = write_vault(root, "3m.vlt", "Good", exp)
        else:  # reopen and append, as a logger does: flashbax writes at the vault index
            _append(path, exp)
    print(f"wrote the vault in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return path


def _append(uid: Path, exp: dict) -> None:
    import jax.numpy as jnp
    from flashbax.buffers.trajectory_buffer import TrajectoryBufferState
    from flashbax.vault import Vault

    vault = Vault(uid.parent.name, rel_dir=str(uid.parent.parent), vault_uid=uid.name)
    m = exp["rewards"].shape[1]
    state = TrajectoryBufferState(
        experience={k: _tree(v, jnp) for k, v in exp.items()},
        current_index=jnp.int32(m),
        is_full=jnp.bool_(False),
    )
    vault.write(state, source_interval=(0, m))


def _tree(v, jnp):
    return {k: jnp.asarray(x) for k, x in v.items()} if isinstance(v, dict) else jnp.asarray(v)


def main(args: Args) -> None:
    root = Path(args.workdir or tempfile.mkdtemp(prefix="vault-import-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        uid = _write(args, root)
        disk = sum(p.stat().st_size for p in uid.rglob("*") if p.is_file()) / 2**20
        runs = []
        quarter = args.transitions // 4
        for block, steps in ((1 << 16, 0), (1 << 14, 0), (1 << 16, quarter)):
            src = uid
            if steps:
                src = root / "quarter" / "3m.vlt" / "Good"
                shutil.copytree(uid, src)
            out = root / f"out-{block}-{steps}"
            cmd = [sys.executable, __file__, "--child", str(src), str(out), str(block), str(steps)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
            shutil.rmtree(out)
        print(f"vault: {args.transitions} steps, {disk:.0f} MB on disk (gzip)")
        print("| steps imported | block rows | time (s) | steps/s | peak RSS (MB) | dataset (MB) |")
        print("|---|---|---|---|---|---|")
        for r in runs:
            print(
                f"| {r['transitions']:,} | {r['block_rows']:,} | {r['seconds']:.1f} | "
                f"{r['transitions'] / r['seconds']:,.0f} | {r['peak_mb']:.0f} | "
                f"{r['dataset_mb']:.0f} |"
            )
        print(f"RSS after imports, before reading: {runs[0]['rss_before_mb']:.0f} MB")
        if args.json_out:
            args.json_out.write_text(json.dumps({"vault_mb": disk, "runs": runs}, indent=2) + "\n")
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        main(tyro.cli(Args))
