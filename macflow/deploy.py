"""A decentralised policy exported by ``macflow export``, run with numpy alone (no JAX).

This file imports only numpy and the standard library: copy it beside ``spec.json`` and
``policy.npz`` and any Python with numpy runs the policy. ``forward`` is the reference the ONNX
graph ``policy.onnx`` computes, input for input (``spec.json`` lists the inputs):

- ``observation [B, O]``, ``agent_id [B]`` (each row's agent, in ``[0, N)``);
- ``noise [B, k]`` if the network reads noise (MAC-Flow's students): standard normal when
  sampling, zeros in the ``zero`` mode; with shared noise it is the whole team's joint noise
  ``[B, N * D]`` (every agent draws it from the team's shared seed; the agent's own part is
  row ``agent_id`` of its ``[N, D]`` reshape);
- ``action_noise [B, D]`` (continuous heads with a std): standard normal, or zeros;
- ``gumbel [B, A]`` and ``legal [B, A]`` (discrete): standard Gumbel draws (zeros: the
  greedy action) and the legal-action mask (all true where the task has none).

The network is an MLP on the concatenation ``spec["network"]["input"]`` (the agent id as a
one-hot), Dense -> GELU (tanh form) [-> LayerNorm] per hidden layer, then a linear output.
Heads: ``categorical``: ``argmax(where(legal, logits, -1e9) + gumbel)``; ``box``: mean ``m``
(``tanh`` of the output's first D, or those as they are), std ``s`` (a constant, or
``exp(clip(output[D:], lo, hi))``), ``u = m + s * action_noise``, then ``tanh(u)`` or
``clip(u, -1, 1)``, mapped from ``[-1, 1]`` onto the env's bounds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

_GELU = np.float32(np.sqrt(2 / np.pi))


def _gelu(x):
    return x * (0.5 * (1.0 + np.tanh(_GELU * (x + np.float32(0.044715) * x**3))))


def _layer_norm(x, scale, bias, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = np.maximum((x * x).mean(-1, keepdims=True) - mean * mean, 0)
    return (x - mean) / np.sqrt(var + np.float32(eps)) * scale + bias


def forward(spec: dict, weights, observation, agent_id, noise=None, action_noise=None,
            gumbel=None, legal=None):  # fmt: skip
    """Actions ``[B, D]`` (float32, in the env's bounds) or ``[B]`` (int64 indices)."""
    f32 = np.float32
    net, head, n = spec["network"], spec["head"], spec["num_agents"]
    obs = np.asarray(observation, f32)
    ids = np.asarray(agent_id, np.int64)
    parts = {"observation": obs, "agent_id": np.eye(n, dtype=f32)[ids]}
    if noise is not None:
        noise = np.asarray(noise, f32)
        own = noise.reshape(len(obs), n, -1)[np.arange(len(obs)), ids] if net["joint"] else noise
        parts |= {"noise": own, "joint_noise": noise}
    x = np.concatenate([parts[k] for k in net["input"]], axis=-1)
    layers = len(net["hidden"]) + 1
    for i in range(layers):
        x = x @ weights[f"kernel_{i}"] + weights[f"bias_{i}"]
        if i < layers - 1:
            x = _gelu(x)
            if net["layer_norm"]:
                x = _layer_norm(x, weights[f"ln_scale_{i}"], weights[f"ln_bias_{i}"])
    if head["kind"] == "categorical":
        logits = np.where(np.asarray(legal, bool), x, f32(-1e9))
        return np.argmax(logits + np.asarray(gumbel, f32), axis=-1).astype(np.int64)
    d = spec["action"]["dim"]
    mean = np.tanh(x[:, :d]) if head["mean"] == "tanh" else x[:, :d]
    if head["std"] != 0:
        std = head["std"]
        if isinstance(std, list):  # learned: bounds of the log-std
            std = np.exp(np.clip(x[:, d:], f32(std[0]), f32(std[1])))
        mean = mean + f32(std) * np.asarray(action_noise, f32)
    unit = np.tanh(mean) if head["squash"] == "tanh" else np.clip(mean, f32(-1), f32(1))
    low, high = (np.asarray(spec["action"][k], f32) for k in ("low", "high"))
    return np.clip(low + (unit + 1) * (high - low) / 2, low, high)


class Policy:
    """An exported policy directory (``spec.json`` + ``policy.npz``), checked against the
    checksum ``spec.json`` records."""

    def __init__(self, path):
        path = Path(path)
        self.spec = json.loads((path / "spec.json").read_text())
        data = (path / "policy.npz").read_bytes()
        if "sha256:" + hashlib.sha256(data).hexdigest() != self.spec["files"]["policy.npz"]:
            raise ValueError(f"{path / 'policy.npz'} does not match {path / 'spec.json'}")
        with np.load(path / "policy.npz") as npz:
            self.weights = {k: npz[k] for k in npz.files}
        self.inputs = {i["name"]: i for i in self.spec["inputs"]}

    def act(self, observation, agent, rng=None, legal=None):
        """One decision per row of ``observation [B, O]`` (or ``[O]``) for agent(s) ``agent``.

        ``rng`` (a ``numpy.random.Generator``) draws the noise: the ``sample`` mode; None: the
        ``zero`` mode. With shared noise every agent's ``rng`` must be seeded alike (the team's
        shared seed), since each draws the whole team's noise."""
        obs = np.asarray(observation, np.float32)
        one = obs.ndim == 1
        obs = obs.reshape(-1, obs.shape[-1])
        b = len(obs)
        draws = {}
        for name, draw in (("noise", "normal"), ("action_noise", "normal"), ("gumbel", "gumbel")):
            if name in self.inputs:
                shape = (b, self.inputs[name]["shape"][1])
                draws[name] = np.zeros(shape) if rng is None else getattr(rng, draw)(size=shape)
        if "legal" in self.inputs:
            n = self.spec["action"]["n"]
            draws["legal"] = np.ones((b, n), bool) if legal is None else np.reshape(legal, (b, n))
        ids = np.broadcast_to(np.asarray(agent, np.int64), (b,))
        out = forward(self.spec, self.weights, obs, ids, **draws)
        return out[0] if one else out
