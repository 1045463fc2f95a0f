"""Agent registry: ``--algo NAME`` -> the agent class (loaded on first use)."""

from __future__ import annotations

import difflib
import importlib

from macflow.agents.base import ACT_MODES, Agent, Stage

AGENTS: dict[str, str] = {
    "macflow": "macflow.agents.macflow:MACFlow",
    "flow-bc": "macflow.agents.flow_bc:FlowBC",
    "bc": "macflow.agents.bc:BC",
    "matd3bc": "macflow.agents.matd3bc:MATD3BC",
    "omiga": "macflow.agents.omiga:OMIGA",
    "icq": "macflow.agents.icq:ICQ",
    "diffusion": "macflow.agents.diffusion:Diffusion",
}


def get_agent(name: str) -> type[Agent]:
    """The agent class registered as ``name``."""
    if name not in AGENTS:
        close = difflib.get_close_matches(name, list(AGENTS), n=2)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown algorithm {name!r}.{hint} Available: {', '.join(AGENTS)}")
    module, cls = AGENTS[name].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["ACT_MODES", "AGENTS", "Agent", "Stage", "get_agent"]
