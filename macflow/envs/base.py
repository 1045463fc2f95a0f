"""The environment protocol: multi-agent environments on stacked arrays, agent axis explicit.

Every macflow environment exposes a static :class:`~macflow.spec.EnvSpec` and two pure functions,

    reset(key)                  -> (env_state, TimeStep)
    step(key, env_state, acts)  -> (env_state, TimeStep)

where ``acts`` is ``[N, A]`` float32 (continuous) or ``[N]`` int32 (discrete). JAX environments
are pure and jittable (``jax.jit``/``vmap``/``lax.scan`` work on them); host-side environments
(MuJoCo) implement the same signatures with numpy and set ``host = True``.

There is no auto-reset: after a step whose ``terminal`` or ``truncation`` is set, the episode is
over and the caller resets. Environments enforce their own time limit: the step that reaches
``spec.episode_limit`` sets ``truncation`` unless the episode terminated on that step.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import jax

from macflow.spec import EnvSpec, TimeStep

Array = jax.Array


class Env(Protocol):
    """Structural type every environment satisfies; see the module docstring."""

    host: ClassVar[bool]

    @property
    def spec(self) -> EnvSpec: ...

    def reset(self, key: Array) -> tuple[Any, TimeStep]: ...

    def step(self, key: Array, state: Any, actions: Array) -> tuple[Any, TimeStep]: ...


class Behaviour(Protocol):
    """A data-generating policy. It may see the whole environment state (scripted, centralised
    behaviour is what makes offline data jointly correlated); learnt policies will not."""

    name: ClassVar[str]

    def init(self, env: Env, key: Array, env_state: Any, ts: TimeStep) -> Any:
        """Per-episode policy state (e.g. a landmark assignment); may be ``()``."""
        ...

    def act(self, env: Env, key: Array, pstate: Any, env_state: Any, ts: TimeStep) -> Array:
        """A joint action of shape ``spec.action_shape``."""
        ...


def require(*modules: str) -> None:
    """Raise ``ImportError`` if a module is not installed, without importing it: suites import
    their heavy dependencies on first use, yet a missing extra must fail when the task's module
    loads, where the registry turns it into a one-line `pip install` hint."""
    import importlib.util
    import sys

    for name in modules:
        if name in sys.modules:
            if sys.modules[name] is None:
                raise ImportError(f"No module named {name!r}")
        elif importlib.util.find_spec(name) is None:
            raise ImportError(f"No module named {name!r}")


def concat_state(observations: Array) -> Array:
    """The documented fallback global state: all observations concatenated, ``[N*O]``."""
    return observations.reshape(-1)
