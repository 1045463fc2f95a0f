"""Per-decision latency of MAC-Flow's one-step students against the policies they replace.

Every figure is one jitted call, timed after a warm-up (compilation) call as the median wall time
of many calls (``common.seconds_per_call``), all in the same run, for ``toy/landmarks`` with N
agents (observation and state 4N, 2-D continuous actions) and every network ``depth x width``
(4x512 by default, MAC-Flow's size):

- ``one agent``: what a deployed MAC-Flow agent computes per decision, its student on its own
  observation (``MACFlow.act_agent``; batch 1 only). Agents decide in parallel on their own
  hardware, so this is the decentralised team's latency.
- ``team``: every agent's student for a batch of environments (1 or 1024) in one call
  (``MACFlow.act``).
- ``teacher K``: MAC-Flow's joint flow teacher (centralised: it needs the state) with K Euler
  steps (``MACFlow.act_teacher``), K = 1, 4, 10, 20 (``--steps``).
- ``DDPM-T`` / ``DDIM-K``: the centralised diffusion policy baseline (``Diffusion.act``: the
  joint action denoised from the state, one network evaluation per step), ancestral sampling with
  all T = 200 steps (``--ddpm-steps``) and DDIM with K = 15 of those T steps
  (``--ddim-steps``), acting with its EMA weights; same widths as MAC-Flow's networks.
- ``BC team``: Gaussian behaviour cloning (``BC.act``), the whole team in one call, same widths.

Deployed policies carry only the weights they act with (students; teacher; the diffusion EMA
network ``target["policy"]``; BC's ``params["policy"]``): no optimiser states or critics.
Ratios printed (and the targets they are checked against), per (N, batch):

- ``DDPM-200 / team`` (students >= 100x faster) and ``DDIM-15 / team`` (>= 10x faster): both
  sides give one joint decision per environment;
- ``team / BC team`` (the students within 1.5x of Gaussian BC's time);
- at batch 1 the same against ``one agent``, and ``teacher K / one agent`` (at batch 1024
  ``teacher K / team``).

Run (the full default takes several minutes of an otherwise idle CPU)::

    python benchmarks/inference.py --json docs/inference.json
    python benchmarks/inference.py --agents 3 --batches 1
    python benchmarks/inference.py --agents 3 --batches 1 --width 64 --depth 2 --ddpm-steps 20

``--json PATH`` writes every figure (ms per call, ratios) with the machine (jax version, device,
CPU count) and the arguments, after each (N, batch) setting, so docs can cite them.
``--min-time`` sets the seconds of timed calls per figure (default 2).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import sys

import jax
import jaxlib
import tyro
from common import seconds_per_call

from macflow.agents.bc import BC, BCConfig
from macflow.agents.diffusion import Diffusion, DiffusionConfig
from macflow.agents.macflow import MACFlow, MACFlowConfig
from macflow.envs import make_env

# ratio -> (target, "min": the ratio must be at least the target, "max": at most)
TARGETS = {"ddpm": (100.0, "min"), "ddim": (10.0, "min"), "bc": (1.5, "max")}


@dataclasses.dataclass(frozen=True)
class Args:
    agents: tuple[int, ...] = (3, 10, 40)
    batches: tuple[int, ...] = (1, 1024)
    """Environments per call (batch 1 also times one agent alone)."""
    steps: tuple[int, ...] = (1, 4, 10, 20)
    """Euler steps K of the teacher."""
    width: int = 512
    depth: int = 4
    ddpm_steps: int = 200
    """Diffusion steps T (ancestral sampling uses all of them)."""
    ddim_steps: int = 15
    """DDIM steps K (out of the T of ``--ddpm-steps``)."""
    min_time: float = 2.0
    """Seconds of timed calls per figure (after the warm-up call)."""
    json: str | None = None
    """Write every figure, ratio and the machine info to this JSON file."""
    deploy: bool = False
    """Time the deployment runtimes instead (benchmarks/deployment.py): one agent's exported
    student in JAX jit / AOT, numpy and onnxruntime, each beside its runtime's floor and
    DDPM / DDIM in the same runtime; and the exported files' bytes for the paper preset."""


def machine() -> dict:
    device = jax.devices()[0]
    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "device": str(device),
        "device_kind": device.device_kind,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def times(x: float) -> str:
    """A ratio with 3 significant digits at most: ``123x``, ``12.3x``, ``1.23x``."""
    return f"{x:.0f}x" if x >= 100 else f"{x:.1f}x" if x >= 10 else f"{x:.2f}x"


def check(name: str, value: float) -> str:
    target, kind = TARGETS[name]
    met = value >= target if kind == "min" else value <= target
    sign = ">=" if kind == "min" else "<="
    return f"target {sign} {target:g}x: {'met' if met else 'NOT met'}"


def measure(a: Args, n: int, batch: int) -> dict[str, float]:
    """Seconds per call of every policy for N agents and ``batch`` environments."""
    hidden = (a.width,) * a.depth
    spec = make_env("toy/landmarks", num_agents=n).spec
    obs = jax.random.normal(jax.random.PRNGKey(0), (batch, n, spec.obs_dim))
    states = jax.random.normal(jax.random.PRNGKey(1), (batch, spec.state_dim))
    key = jax.random.PRNGKey(2)
    time = lambda fn, *args: seconds_per_call(fn, *args, min_time=a.min_time)  # noqa: E731
    out = {}

    # MAC-Flow: deployed policies carry only their own weights (fewer arguments to dispatch).
    config = MACFlowConfig(teacher_hidden=hidden, student_hidden=hidden, critic_hidden=(8,))
    full = MACFlow.create(jax.random.PRNGKey(0), spec, config)
    agent = full.replace(params={"student": full.params["student"]}, target={}, opt={})
    teacher = full.replace(params={"teacher": full.params["teacher"]}, target={}, opt={})
    if batch == 1:
        alone = jax.jit(lambda ag, o, k: ag.act_agent(k, 0, o, None, "sample"))
        out["one agent"] = time(alone, agent, obs[0, 0], key)
    act = jax.jit(lambda ag, o, k: ag.act(k, o, None, "sample"))
    out["team"] = time(act, agent, obs, key)
    teach = jax.jit(lambda ag, o, s, k: ag.act_teacher(k, o, s, None, "sample"))
    for k in a.steps:
        teacher_k = teacher.replace(config=dataclasses.replace(config, flow_steps=k))
        out[f"teacher K={k}"] = time(teach, teacher_k, obs, states, key)

    # Gaussian BC: the shared per-agent network, the whole team in one call.
    bc = BC.create(jax.random.PRNGKey(0), spec, BCConfig(hidden=hidden))
    bc = bc.replace(params={"policy": bc.params["policy"]}, target={}, opt={})
    out["BC team"] = time(act, bc, obs, key)

    # Diffusion: act denoises with the EMA network target["policy"] only (params unused).
    centralised = jax.jit(lambda ag, o, s, k: ag.act(k, o, None, "sample", s))
    for name, sampler in ((f"DDPM-{a.ddpm_steps}", "ddpm"), (f"DDIM-{a.ddim_steps}", "ddim")):
        dconfig = DiffusionConfig(
            hidden=hidden, timesteps=a.ddpm_steps, sampler=sampler, ddim_steps=a.ddim_steps
        )
        diff = Diffusion.create(jax.random.PRNGKey(0), spec, dconfig)
        diff = diff.replace(params={}, target={"policy": diff.target["policy"]}, opt={})
        out[name] = time(centralised, diff, obs, states, key)
    return out


def ratios(a: Args, s: dict[str, float]) -> dict[str, float]:
    ddpm, ddim = s[f"DDPM-{a.ddpm_steps}"], s[f"DDIM-{a.ddim_steps}"]
    r = {
        f"DDPM-{a.ddpm_steps} / team": ddpm / s["team"],
        f"DDIM-{a.ddim_steps} / team": ddim / s["team"],
        "team / BC team": s["team"] / s["BC team"],
    }
    base = "one agent" if "one agent" in s else "team"
    if base == "one agent":
        r[f"DDPM-{a.ddpm_steps} / one agent"] = ddpm / s["one agent"]
        r[f"DDIM-{a.ddim_steps} / one agent"] = ddim / s["one agent"]
    for k in a.steps:
        r[f"teacher K={k} / {base}"] = s[f"teacher K={k}"] / s[base]
    return r


def main(a: Args) -> None:
    if not 1 <= a.ddim_steps <= a.ddpm_steps:
        raise SystemExit(f"need 1 <= --ddim-steps <= --ddpm-steps, got {a.ddim_steps}")
    if a.deploy:
        deploy_main(a)
        return
    info = machine()
    ddpm, ddim = f"DDPM-{a.ddpm_steps}", f"DDIM-{a.ddim_steps}"
    print(
        f"per-decision latency, ms per call (median after jit warm-up), {a.depth}x{a.width} "
        f"networks, toy/landmarks; jax {info['jax']}, {info['device']} ({info['backend']}), "
        f"{info['cpu_count']} CPUs\n"
        f"  one agent = MAC-Flow act_agent (batch 1), team = all students, BC team = Gaussian BC, "
        f"teacher K = joint flow teacher, {ddpm} / {ddim} = centralised diffusion policy; "
        "all ratios from this run"
    )
    record = {
        "benchmark": "benchmarks/inference.py",
        "command": " ".join(["python", "benchmarks/inference.py", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "args": dataclasses.asdict(a),
        "machine": info,
        "env": "toy/landmarks",
        "targets": {
            f"{ddpm} / team": ">= 100",
            f"{ddim} / team": ">= 10",
            "team / BC team": "<= 1.5",
        },
        "results": [],
    }
    for n in a.agents:
        for batch in a.batches:
            s = measure(a, n, batch)
            r = ratios(a, s)
            ms = {name: t * 1e3 for name, t in s.items()}
            teachers = " ".join(f"K={k} {ms[f'teacher K={k}']:.3f}" for k in a.steps)
            alone = f"one agent {ms['one agent']:.3f} | " if "one agent" in ms else ""
            print(
                f"N={n:<3} batch {batch:<5} {alone}team {ms['team']:.3f} | "
                f"BC team {ms['BC team']:.3f} | {ddpm} {ms[ddpm]:.3f} | {ddim} {ms[ddim]:.3f} | "
                f"teacher {teachers}"
            )
            print(
                f"    {ddpm} / team = {times(r[f'{ddpm} / team'])} "
                f"({check('ddpm', r[f'{ddpm} / team'])}) | "
                f"{ddim} / team = {times(r[f'{ddim} / team'])} "
                f"({check('ddim', r[f'{ddim} / team'])}) | "
                f"team / BC team = {times(r['team / BC team'])} "
                f"({check('bc', r['team / BC team'])})"
            )
            base = "one agent" if "one agent" in ms else "team"
            extra = [f"{ddpm} / one agent", f"{ddim} / one agent"] if base == "one agent" else []
            extra += [f"teacher K={k} / {base}" for k in a.steps]
            print("    " + " | ".join(f"{name} = {times(r[name])}" for name in extra))
            record["results"].append({"agents": n, "batch": batch, "ms": ms, "ratios": r})
            if a.json:
                with open(a.json, "w") as f:
                    json.dump(record, f, indent=2)
                    f.write("\n")
    if a.json:
        print(f"wrote {a.json}")


RUNTIMES = ("jax jit", "jax aot", "numpy", "onnxruntime")


def deploy_main(a: Args) -> None:
    """``--deploy``: every runtime's one-agent decision beside its floor and its diffusion."""
    import onnxruntime
    from deployment import measure, sizes

    info = machine() | {"onnxruntime": onnxruntime.__version__, "load": os.getloadavg()}
    ddpm, ddim = f"DDPM-{a.ddpm_steps}", f"DDIM-{a.ddim_steps}"
    print(
        f"deployment runtimes, ms per decision (median of 7 rounds), {a.depth}x{a.width}, "
        f"toy/landmarks; jax {info['jax']} on {info['device']}, onnxruntime "
        f"{info['onnxruntime']}, {info['cpu_count']} CPUs, load {info['load'][0]:.1f}"
    )
    record = {
        "benchmark": "benchmarks/inference.py --deploy",
        "command": " ".join(["python", "benchmarks/inference.py", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "args": dataclasses.asdict(a),
        "machine": info,
        "results": [],
    }
    for n in a.agents:
        for batch in a.batches:
            s = measure(a, n, batch)
            ms = {k: v * 1e3 for k, v in s.items()}
            r = {}
            for rt in RUNTIMES:
                base = rt.split()[0]  # jax, numpy, onnxruntime; the AOT path has an AOT floor
                floor = ms["jax aot floor"] if rt == "jax aot" else ms[f"{base} floor"]
                r[f"{rt} / floor"] = ms[rt] / floor
                r[f"{ddpm} / {rt}"] = ms[f"{base} {ddpm}"] / ms[rt]
                r[f"{ddim} / {rt}"] = ms[f"{base} {ddim}"] / ms[rt]
            print(f"N={n:<3} batch {batch}")
            for rt in RUNTIMES:
                base = rt.split()[0]
                fl = "jax aot floor" if rt == "jax aot" else f"{base} floor"
                print(
                    f"    {rt:<12} {ms[rt]:9.4f} | floor {ms[fl]:9.4f} "
                    f"({times(r[f'{rt} / floor'])}) | {ddpm} {ms[f'{base} {ddpm}']:9.3f} "
                    f"({times(r[f'{ddpm} / {rt}'])}) | {ddim} {ms[f'{base} {ddim}']:8.3f} "
                    f"({times(r[f'{ddim} / {rt}'])})"
                )
            record["results"].append({"agents": n, "batch": batch, "ms": ms, "ratios": r})
            if a.json:
                with open(a.json, "w") as f:
                    json.dump(record, f, indent=2)
                    f.write("\n")
    record["sizes"] = sizes()
    print("bytes, paper preset:", record["sizes"])
    if a.json:
        with open(a.json, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main(tyro.cli(Args))
