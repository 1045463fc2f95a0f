"""``macflow export``: a run's decentralised policy, one seed, as files that run without JAX.

    OUT/spec.json     task, agents, observation size, action space and bounds, every input of
                      the policy with its shape and how to draw it, the head's formula, the
                      macflow version, the run's dataset checksum and the other files' sha256
    OUT/policy.npz    the network's weights (``kernel_i``, ``bias_i``[, ``ln_scale_i``,
                      ``ln_bias_i``]), for :mod:`macflow.deploy`'s numpy forward
    OUT/policy.onnx   one ONNX graph (observation, agent id, noise[, action noise][, gumbel,
                      legal mask]) -> action, the same function as the numpy forward

An agent class is exportable when it has ``export_policy()`` (``macflow.agents.base.
policy_card``): the weights of its per-agent network and its head. A centralised policy, or one
without that method, is refused. The ONNX graph is built node by node with the ``onnx``
package from those weights (docs/performance.md says why not through a tracing exporter) and
checked with onnxruntime against the numpy forward before anything is written; every file is
written atomically, ``spec.json`` last.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from macflow import __version__, deploy
from macflow.files import hold, write_atomic
from macflow.runs import RECORD, read_record

FORMATS = ("onnx", "npz")
OPSET = 20
"""ONNX opset of the graphs (20: the first with ``Gelu``; onnxruntime >= 1.17 runs it)."""
f32 = np.float32


def exported(card: dict, spec, meta: dict | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """``(spec.json's content, the weights)`` of an agent's ``export_policy()`` card for a task
    ``spec`` (an :class:`~macflow.spec.EnvSpec`); ``meta`` adds provenance."""
    from macflow.agents.actions import action_space

    n, layers = spec.num_agents, card["layers"]
    action = action_space(spec).describe()
    weights = {}
    for i, layer in enumerate(layers):
        for k, v in layer.items():
            weights[f"{k}_{i}"] = np.asarray(v, f32)
    discrete = card["head"]["kind"] == "categorical"
    inputs = [
        _input("observation", spec.obs_dim, "float32", "the agent's own observation"),
        {"name": "agent_id", "shape": ["batch"], "dtype": "int64", "what": f"in [0, {n})"},
    ]
    if card["noise"]:
        size = card["noise"] * (n if card["joint"] else 1)
        what = (
            f"the whole team's joint noise [N * D] = [{n} * {card['noise']}], drawn alike by "
            "every agent from the team's shared seed (the agent reads its own row too)"
            if card["joint"]
            else "the agent's own noise"
        )
        inputs.append(_input("noise", size, "float32", what, "normal"))
    head = card["head"]
    if not discrete and head["std"] != 0:
        inputs.append(_input("action_noise", action["dim"], "float32", "exploration", "normal"))
    if discrete:
        what = "the categorical draw: argmax(masked logits + gumbel); zeros give the greedy action"
        inputs.append(_input("gumbel", action["n"], "float32", what, "gumbel"))
        what = "legal actions (all true where the task has no masks)"
        inputs.append(_input("legal", action["n"], "bool", what))
    out = [action["dim"]] if not discrete else []
    description = {
        "format": "macflow-policy",
        "format_version": 1,
        "macflow_version": __version__,
        **(meta or {}),
        "task": spec.env_id,
        "num_agents": n,
        "obs_dim": spec.obs_dim,
        "action": action,
        "network": {
            "input": card["input"],
            "joint": card["joint"],
            "hidden": [int(layer["kernel"].shape[1]) for layer in layers[:-1]],
            "activation": "gelu, tanh approximation",
            "layer_norm": card["layer_norm"],
        },
        "head": head,
        "inputs": inputs,
        "output": {
            "name": "action",
            "shape": ["batch", *out],
            "dtype": "int64" if discrete else "float32",
            "what": "action indices" if discrete else "actions within the env's bounds",
        },
    }
    return description, weights


def _input(name: str, size: int, dtype: str, what: str, draw: str | None = None) -> dict:
    entry = {"name": name, "shape": ["batch", size], "dtype": dtype, "what": what}
    if draw:  # sampled in the `sample` mode, zeros in the `zero` mode
        law = "standard normal" if draw == "normal" else "standard Gumbel"
        entry["draw"] = {"sample": law, "zero": "zeros"}
    return entry


class Graph:
    """A small ONNX graph builder: constants become initializers, every op one node."""

    def __init__(self):
        self.nodes, self.inits = [], []

    def const(self, value, dtype=f32) -> str:
        from onnx import numpy_helper

        name = f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, kind: str, *inputs: str, name: str | None = None, **attrs) -> str:
        from onnx import helper

        out = name or f"{kind.lower()}{len(self.nodes)}"
        self.nodes.append(helper.make_node(kind, list(inputs), [out], **attrs))
        return out

    def model(self, inputs: list, outputs: list) -> bytes:
        from onnx import checker, helper

        graph = helper.make_graph(self.nodes, "macflow", inputs, outputs, self.inits)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="macflow"
        )
        model.ir_version = 9  # what onnxruntime >= 1.17 reads
        checker.check_model(model)
        return model.SerializeToString()


def mlp(g: Graph, x: str, weights: dict, layers: int, layer_norm: bool = False) -> str:
    """Dense -> GELU (tanh form) [-> LayerNorm] per hidden layer, then a linear output."""
    for i in range(layers):
        x = g.op("Gemm", x, g.const(weights[f"kernel_{i}"]), g.const(weights[f"bias_{i}"]))
        if i < layers - 1:
            x = g.op("Gelu", x, approximate="tanh")
            if layer_norm:
                scale, bias = g.const(weights[f"ln_scale_{i}"]), g.const(weights[f"ln_bias_{i}"])
                x = g.op("LayerNormalization", x, scale, bias, epsilon=1e-6)
    return x


def value_info(name: str, dtype: str, shape: list):
    from onnx import TensorProto, helper

    kind = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64, "bool": TensorProto.BOOL}
    return helper.make_tensor_value_info(name, kind[dtype], shape)


def onnx_policy(spec: dict, weights: dict) -> bytes:
    """The ONNX graph of :func:`macflow.deploy.forward` for an exported policy."""
    g = Graph()
    net, head, n = spec["network"], spec["head"], spec["num_agents"]
    sizes = {i["name"]: i["shape"][1:] for i in spec["inputs"]}
    ids = g.op("Gather", g.const(np.eye(n)), "agent_id", axis=0)
    parts = {"observation": "observation", "agent_id": ids, "noise": "noise"}
    if net["joint"]:  # the agent's own noise: its row of the joint noise, an exact one-hot sum
        team = g.op("Reshape", "noise", g.const([-1, n, sizes["noise"][0] // n], np.int64))
        mine = g.op("Mul", team, g.op("Unsqueeze", ids, g.const([2], np.int64)))
        parts |= {"noise": g.op("ReduceSum", mine, g.const([1], np.int64), keepdims=0)}
        parts["joint_noise"] = "noise"
    x = g.op("Concat", *[parts[k] for k in net["input"]], axis=1)
    x = mlp(g, x, weights, len(net["hidden"]) + 1, net["layer_norm"])
    if head["kind"] == "categorical":
        logits = g.op("Where", "legal", x, g.const(-1e9))
        g.op("ArgMax", g.op("Add", logits, "gumbel"), axis=1, keepdims=0, name="action")
    else:
        box = spec["action"]
        d = box["dim"]
        cut = lambda a, b: g.op("Slice", x, *(g.const([v], np.int64) for v in (a, b, 1)))  # noqa: E731
        mean = cut(0, d)
        mean = g.op("Tanh", mean) if head["mean"] == "tanh" else mean
        if "action_noise" in sizes:
            std = head["std"]
            if isinstance(std, list):
                clipped = g.op("Clip", cut(d, 2 * d), g.const(std[0]), g.const(std[1]))
                scale = g.op("Exp", clipped)
            else:
                scale = g.const(std)
            mean = g.op("Add", mean, g.op("Mul", scale, "action_noise"))
        one = g.const(1.0)
        if head["squash"] == "tanh":
            unit = g.op("Tanh", mean)
        else:
            unit = g.op("Clip", mean, g.const(-1.0), one)
        low, high = np.asarray(box["low"], f32), np.asarray(box["high"], f32)
        span = g.op("Div", g.op("Mul", g.op("Add", unit, one), g.const(high - low)), g.const(2.0))
        env = g.op("Max", g.op("Add", g.const(low), span), g.const(low))
        g.op("Min", env, g.const(high), name="action")
    inputs = [value_info(i["name"], i["dtype"], i["shape"]) for i in spec["inputs"]]
    out = spec["output"]
    return g.model(inputs, [value_info("action", out["dtype"], out["shape"])])


def random_inputs(spec: dict, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of an exported policy with every draw sampled (and random legal masks, at least
    one legal action per row)."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in spec["inputs"]:
        shape = (batch, *i["shape"][1:])
        if i["name"] == "agent_id":
            out[i["name"]] = rng.integers(0, spec["num_agents"], batch)
        elif i["name"] == "legal":
            legal = rng.random(shape) < 0.6
            legal[np.arange(batch), rng.integers(0, shape[1], batch)] = True
            out[i["name"]] = legal
        elif i.get("draw", {}).get("sample") == "standard Gumbel":
            out[i["name"]] = rng.gumbel(size=shape).astype(f32)
        else:
            out[i["name"]] = rng.standard_normal(shape).astype(f32)
    return out


def check_onnx(model: bytes, spec: dict, weights: dict, batch: int = 64) -> float:
    """Run the graph in onnxruntime on random inputs against the numpy forward: the largest
    absolute difference (continuous; at most 1e-5) or 0 (discrete: the same indices), else a
    ValueError."""
    import onnxruntime

    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    inputs = random_inputs(spec, batch)
    got = session.run(None, inputs)[0]
    want = deploy.forward(spec, weights, **inputs)
    if got.dtype != want.dtype or got.shape != want.shape:
        raise ValueError(f"policy.onnx gives {got.dtype} {got.shape}, numpy {want.dtype}")
    if spec["head"]["kind"] == "categorical":
        if (got != want).any():
            raise ValueError(f"policy.onnx picks other actions than numpy in {(got != want).sum()}")
        return 0.0
    diff = float(np.abs(got - want).max())
    if not diff <= 1e-5:
        raise ValueError(f"policy.onnx differs from the numpy forward by {diff:.3g} (> 1e-5)")
    return diff


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` (what ``numpy.load`` reads) that is the same bytes for the same arrays (no
    time stamps), so an export repeated is identical."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, a in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(a), allow_pickle=False)
            z.writestr(zipfile.ZipInfo(f"{name}.npy", (1980, 1, 1, 0, 0, 0)), member.getvalue())
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_formats(text: str | tuple[str, ...]) -> tuple[str, ...]:
    """``"onnx,npz"`` -> ``("onnx", "npz")``; an unknown or empty one is a ValueError."""
    items = text.split(",") if isinstance(text, str) else list(text)
    items = [f.strip() for f in items if f.strip()]
    for f in items:
        if f not in FORMATS:
            raise ValueError(f"--format: unknown format {f!r} (formats: {', '.join(FORMATS)})")
    if not items:
        raise ValueError(f"--format: give at least one of {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(items))


def refusal(agent_cls) -> str | None:
    """Why an agent class's policy cannot be exported (None: it can)."""
    if agent_cls.centralised:
        return "its policy is centralised (it acts on the global state), not one network per agent"
    if not hasattr(agent_cls, "export_policy"):
        return "it has no export_policy() (its policy is not one network per agent)"
    return None


def export(
    run: Path,
    out: Path,
    seed: int | None = None,
    formats: str | tuple[str, ...] = FORMATS,
    command: str | None = None,
) -> dict[str, Path]:
    """Export seed ``seed`` (default: the run's first) of a run's latest checkpoint into
    ``out``: ``spec.json`` always, ``policy.onnx`` and ``policy.npz`` as ``formats`` asks.
    Returns the files written, by name. Bad input is a ValueError naming the file or flag."""
    import jax

    from macflow.agents import get_agent
    from macflow.train import load_run

    run, out = Path(run), Path(out)
    formats = parse_formats(formats)
    if (run / RECORD).is_file():  # refuse before loading a checkpoint it cannot use
        record = read_record(run)
        agent_cls = get_agent(str(record["algo"]))
        why = refusal(agent_cls)
        if why is not None:
            raise ValueError(f"{run / RECORD}: {record['algo']} cannot be exported: {why}")
    loaded = load_run(run)
    seeds = loaded.seeds
    seed = seeds[0] if seed is None else seed
    if seed not in seeds:
        raise ValueError(f"--seed {seed}: not a seed of {run} (its seeds: {seeds})")
    agent = jax.tree.map(lambda x: x[seeds.index(seed)], loaded.agents)
    meta = {
        "algo": loaded.record["algo"],
        "run": str(run.resolve()),
        "seed": seed,
        "step": loaded.step,
        "dataset_checksum": loaded.record["dataset"].get("checksum"),
        "env_kwargs": loaded.record["dataset"].get("env_kwargs", {}),
        "command": command,
    }
    spec, weights = exported(agent.export_policy(), loaded.spec, meta)
    files = {}
    if "npz" in formats:
        files["policy.npz"] = npz_bytes(weights)
    if "onnx" in formats:
        files["policy.onnx"] = onnx_policy(spec, weights)
        diff = check_onnx(files["policy.onnx"], spec, weights)
        spec["onnx"] = {"opset": OPSET, "max_abs_diff_vs_numpy": diff}
    spec["files"] = {name: sha256(data) for name, data in files.items()}
    files["spec.json"] = (json.dumps(spec, indent=2) + "\n").encode()
    written = {}
    with hold(out, command):
        for name, data in files.items():  # spec.json last: it names the others' checksums
            write_atomic(out / name, data)
            written[name] = out / name
    return written
