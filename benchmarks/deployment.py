"""Deployment runtimes of `benchmarks/inference.py --deploy`: one agent's exported student in
JAX (jit, ahead-of-time compiled), numpy (macflow/deploy.py) and onnxruntime, each beside that
runtime's floor and beside DDPM / DDIM run in the same runtime.

- floor: a bare forward of an identical MLP (the student's own weights, same input size) in the
  same runtime, nothing else: ``jax.jit(MLP.apply)``, four numpy matmuls + GELU, or a graph of
  Gemm + Gelu nodes only;
- one agent: JAX ``MACFlow.act_agent`` (noise drawn inside from the key); numpy
  ``deploy.forward`` and onnxruntime ``policy.onnx`` with the noise given as an input (drawn
  by the caller, not timed), the whole exported function (agent-id one-hot, concat, tanh, bounds);
- DDPM-T / DDIM-K: the centralised diffusion policy's network (its EMA weights) run T / K times
  with its sampler's arithmetic (ancestral / deterministic DDIM) on the joint action: JAX
  ``Diffusion.act``; numpy a Python loop; onnxruntime one graph with the T (K) steps unrolled,
  so a decision is one ``session.run`` (the per-call cost is paid once, as in the JAX scan).

At batch B every runtime decides for B environments at once (one agent each, the same agent).
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime
from flax import serialization

from macflow import deploy
from macflow.agents.base import mlp_weights
from macflow.agents.diffusion import Diffusion, DiffusionConfig, ddim_indices, schedule
from macflow.agents.macflow import MACFlow, MACFlowConfig
from macflow.envs import make_env
from macflow.export import Graph, exported, mlp, npz_bytes, onnx_policy, value_info
from macflow.nn import MLP, time_features

f32 = np.float32


def per_call(fn, min_time: float, repeats: int = 7) -> float:
    """Median seconds per call of ``fn()`` over ``repeats`` timed rounds, after a warm-up."""
    fn()
    rounds = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time / repeats:
                break
        rounds.append(elapsed / calls)
    return statistics.median(rounds)


def session(model: bytes):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # batch 1: threads only add synchronisation
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def numpy_mlp(weights: dict, layers: int):
    ws = [(weights[f"kernel_{i}"], weights[f"bias_{i}"]) for i in range(layers)]

    def forward(x):
        for i, (w, b) in enumerate(ws):
            x = x @ w + b
            if i < layers - 1:
                x = deploy._gelu(x)
        return x

    return forward


def onnx_mlp(weights: dict, layers: int, size: int, out: int) -> bytes:
    g = Graph()
    g.op("Identity", mlp(g, "x", weights, layers), name="y")
    return g.model(
        [value_info("x", "float32", ["batch", size])], [value_info("y", "float32", ["batch", out])]
    )


def sampler(a, method: str, steps: int):
    """Per step ``(time features [7], coefficients)`` of the diffusion sampler: ancestral
    ``(c1, c2, sqrt var)`` or DDIM ``(sqrt abar, sqrt(1 - abar), sqrt abar_prev,
    sqrt(1 - abar_prev))``; the step index runs from the noisiest."""
    sch = schedule("cosine", a.ddpm_steps)
    ab, abp, betas, alphas = sch["abar"], sch["abar_prev"], sch["betas"], sch["alphas"]
    if method == "ddpm":
        idx = np.arange(a.ddpm_steps - 1, -1, -1)
        c1 = np.sqrt(abp) * betas / (1 - ab)
        c2 = np.sqrt(alphas) * (1 - abp) / (1 - ab)
        var = betas * (1 - abp) / (1 - ab)
        coef = [(c1[i], c2[i], np.sqrt(var[i])) for i in idx]
    else:
        idx = ddim_indices(a.ddpm_steps, steps)
        prev = np.concatenate([ab[idx[1:]], [1.0]])
        coef = [
            (np.sqrt(ab[i]), np.sqrt(1 - ab[i]), np.sqrt(p), np.sqrt(1 - p))
            for i, p in zip(idx, prev, strict=True)
        ]
    feats = np.asarray(time_features(jnp.asarray((idx + 1) / a.ddpm_steps, f32)))
    ab_i = [(np.sqrt(ab[i]), np.sqrt(1 - ab[i])) for i in idx]
    return feats.astype(f32), [tuple(map(f32, c)) for c in coef], [tuple(map(f32, c)) for c in ab_i]


def numpy_diffusion(weights, layers, feats, coef, roots, method):
    net = numpy_mlp(weights, layers)

    def run(x, state, z):
        b = len(x)
        for k in range(len(feats)):
            inp = np.concatenate([x, np.broadcast_to(feats[k], (b, feats.shape[1])), state], -1)
            eps = net(inp)
            sa, s1 = roots[k]
            x0 = np.clip((x - s1 * eps) / sa, f32(-1), f32(1))
            if method == "ddpm":
                c1, c2, sd = coef[k]
                x = c1 * x0 + c2 * x + sd * z[k]
            else:
                _, _, sp, s1p = coef[k]
                x = sp * x0 + s1p * ((x - sa * x0) / s1)
        return np.clip(x, f32(-1), f32(1))

    return run


def onnx_diffusion(weights, layers, feats, coef, roots, method, size, state_dim) -> bytes:
    g = Graph()
    one, minus = g.const(1.0), g.const(-1.0)
    x = "x"
    shape = g.op("Shape", "x")
    rows = g.op("Slice", shape, g.const([0], np.int64), g.const([1], np.int64))
    for k in range(len(feats)):
        tile = g.op(
            "Expand",
            g.const(feats[k][None]),
            g.op("Concat", rows, g.const([feats.shape[1]], np.int64), axis=0),
        )
        eps = mlp(g, g.op("Concat", x, tile, "state", axis=1), weights, layers)
        sa, s1 = roots[k]
        x0 = g.op(
            "Clip",
            g.op("Div", g.op("Sub", x, g.op("Mul", g.const(s1), eps)), g.const(sa)),
            minus,
            one,
        )
        if method == "ddpm":
            c1, c2, sd = coef[k]
            z = g.op("Gather", "z", g.const(k, np.int64), axis=0)
            mean = g.op("Add", g.op("Mul", g.const(c1), x0), g.op("Mul", g.const(c2), x))
            x = g.op("Add", mean, g.op("Mul", g.const(sd), z))
        else:
            _, _, sp, s1p = coef[k]
            direction = g.op("Div", g.op("Sub", x, g.op("Mul", g.const(sa), x0)), g.const(s1))
            x = g.op("Add", g.op("Mul", g.const(sp), x0), g.op("Mul", g.const(s1p), direction))
    g.op("Clip", x, minus, one, name="y")
    inputs = [
        value_info("x", "float32", ["batch", size]),
        value_info("state", "float32", ["batch", state_dim]),
    ]
    if method == "ddpm":
        inputs.append(value_info("z", "float32", [len(feats), "batch", size]))
    return g.model(inputs, [value_info("y", "float32", ["batch", size])])


def measure(a, n: int, batch: int) -> dict[str, float]:
    """Seconds per decision of every runtime for N agents, ``batch`` environments."""
    hidden = (a.width,) * a.depth
    spec = make_env("toy/landmarks", num_agents=n).spec
    rng = np.random.default_rng(0)
    d, o = spec.action_dim, spec.obs_dim
    time_ = lambda fn: per_call(fn, a.min_time)  # noqa: E731
    out = {}

    config = MACFlowConfig(teacher_hidden=(8,), student_hidden=hidden, critic_hidden=(8,))
    full = jax.jit(MACFlow.create, static_argnums=(1, 2))(jax.random.PRNGKey(0), spec, config)
    agent = full.replace(params={"student": full.params["student"]}, target={}, opt={})
    s, w = exported(agent.export_policy(), spec)
    layers = a.depth + 1
    size = o + n + d

    # JAX: act_agent (batch: vmapped over environments' keys and observations) and the floor.
    obs = jnp.asarray(rng.standard_normal((batch, o)), jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(2), batch)
    if batch == 1:
        act = jax.jit(lambda ag, k, x: ag.act_agent(k, 0, x, None, "sample"))
        args = (agent, keys[0], obs[0])
    else:
        act = jax.jit(
            lambda ag, k, x: jax.vmap(lambda kk, xx: ag.act_agent(kk, 0, xx, None, "sample"))(k, x)
        )
        args = (agent, keys, obs)
    out["jax jit"] = time_(lambda: jax.block_until_ready(act(*args)))
    aot = act.lower(*args).compile()
    out["jax aot"] = time_(lambda: jax.block_until_ready(aot(*args)))
    net = MLP(hidden, d)
    params = {
        "params": {
            f"Dense_{i}": {"kernel": w[f"kernel_{i}"], "bias": w[f"bias_{i}"]}
            for i in range(layers)
        }
    }
    params = jax.tree.map(jnp.asarray, params)
    x = jnp.asarray(rng.standard_normal((batch, size)), jnp.float32)
    bare = jax.jit(net.apply)
    out["jax floor"] = time_(lambda: jax.block_until_ready(bare(params, x)))
    bare_aot = bare.lower(params, x).compile()
    out["jax aot floor"] = time_(lambda: jax.block_until_ready(bare_aot(params, x)))

    # numpy and onnxruntime: the exported function, its noise an input.
    feed = {
        "observation": np.asarray(obs),
        "agent_id": np.zeros(batch, np.int64),
        "noise": rng.standard_normal((batch, d)).astype(f32),
    }
    out["numpy"] = time_(lambda: deploy.forward(s, w, **feed))
    bare_np, xn = numpy_mlp(w, layers), np.asarray(x)
    out["numpy floor"] = time_(lambda: bare_np(xn))
    policy = session(onnx_policy(s, w))
    out["onnxruntime"] = time_(lambda: policy.run(None, feed))
    floor = session(onnx_mlp(w, layers, size, d))
    out["onnxruntime floor"] = time_(lambda: floor.run(None, {"x": xn}))

    # Diffusion in each runtime: the centralised policy's EMA network, T / K evaluations.
    states = rng.standard_normal((batch, spec.state_dim)).astype(f32)
    team_obs = rng.standard_normal((batch, n, o)).astype(f32)
    j = n * d
    for method, steps in (("ddpm", a.ddpm_steps), ("ddim", a.ddim_steps)):
        name = f"DDPM-{steps}" if method == "ddpm" else f"DDIM-{steps}"
        dconfig = DiffusionConfig(
            hidden=hidden, timesteps=a.ddpm_steps, sampler=method, ddim_steps=a.ddim_steps
        )
        diff = jax.jit(Diffusion.create, static_argnums=(1, 2))(
            jax.random.PRNGKey(0), spec, dconfig
        )
        diff = diff.replace(params={}, target={"policy": diff.target["policy"]}, opt={})
        central = jax.jit(lambda ag, o, st, k: ag.act(k, o, None, "sample", st))
        out[f"jax {name}"] = time_(
            lambda c=central, d=diff: jax.block_until_ready(c(d, team_obs, states, keys[0]))
        )
        dw = {}
        for i, layer in enumerate(mlp_weights(diff.target["policy"])):
            dw |= {f"kernel_{i}": layer["kernel"], f"bias_{i}": layer["bias"]}
        feats, coef, roots = sampler(a, method, steps)
        x0 = rng.standard_normal((batch, j)).astype(f32)
        z = rng.standard_normal((len(feats), batch, j)).astype(f32)
        run = numpy_diffusion(dw, layers, feats, coef, roots, method)
        out[f"numpy {name}"] = time_(lambda r=run, x=x0, z=z: r(x, states, z))
        graph = session(onnx_diffusion(dw, layers, feats, coef, roots, method, j, spec.state_dim))
        dfeed = {"x": x0, "state": states} | ({"z": z} if method == "ddpm" else {})
        # The same function in both runtimes: check before timing it.
        np.testing.assert_allclose(graph.run(None, dfeed)[0], run(x0, states, z), atol=1e-4)
        out[f"onnxruntime {name}"] = time_(lambda g=graph, f=dfeed: g.run(None, f))
    return out


def sizes() -> dict[str, int]:
    """Bytes of the paper preset's exported student (mpe/spread, 4x512) against one seed's
    full checkpoint of the same agent (teacher, critics, targets, optimiser states)."""
    spec = make_env("toy/landmarks", num_agents=3).spec
    try:
        spec = make_env("mpe/spread").spec
    except ImportError:  # the jaxmarl extra: landmarks has the same sizes at N = 3
        pass
    cls = MACFlow
    config = cls.presets["paper"](spec)
    agent = jax.jit(cls.create, static_argnums=(1, 2))(jax.random.PRNGKey(0), spec, config)
    stacked = jax.tree.map(lambda x: x[None], agent)  # as a run stores its seeds
    state = {"step": 0, "agents": serialization.to_state_dict(stacked)}
    s, w = exported(agent.export_policy(), spec)
    return {
        "task": spec.env_id,
        "checkpoint": len(serialization.msgpack_serialize(state)),
        "policy.onnx": len(onnx_policy(s, w)),
        "policy.npz": len(npz_bytes(w)),
    }
