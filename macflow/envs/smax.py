"""SMAX (JaxMARL's JAX re-implementation of the StarCraft Multi-Agent Challenge) behind macflow's
environment protocol.

Each task wraps JaxMARL's ``HeuristicEnemySMAX``: the allies are the learning team (N agents),
the enemies follow JaxMARL's built-in heuristic (attack the closest unit in range, otherwise
walk towards a visible enemy or across the map). One macflow step is one JaxMARL step (8 world
steps of 1/16 s).

- Observations ``[N, O]``: JaxMARL's per-agent ``unit_list`` observation (features of the other
  units within sight range, then the agent's own features); all zeros for a dead agent.
- State ``[S]``: JaxMARL's ``world_state`` (features, team and type of every unit, allies and
  enemies). It is not the concatenation of observations.
- Actions ``[N]`` int32, ``A = 5 + number of enemies``: 0-3 move north/east/south/west, 4 stop,
  ``5 + j`` attack enemy j. ``legal_actions`` is JaxMARL's ``get_avail_actions``: a dead agent
  may only stop, attacks are legal for enemies alive and within range.
- Reward (the allies' shared JaxMARL reward): the enemy health lost on the step as a fraction of
  each enemy's maximum, summed over enemies and divided by their number, plus 1 on the step the
  allies win (every enemy dead with at least one ally alive). Health never rises, so the return
  is at most 2 (a win); a loss or a draw (both teams dead) earns only the damage, at most 1.
- ``terminal``: the battle ended (all enemies or all allies dead). ``truncation``: the time limit
  ``episode_limit`` (JaxMARL's ``max_steps``, 100 by default as in JaxMARL) was reached without
  the battle ending. Both come from the unit counts and the step counter, not JaxMARL's
  ``done``, which mixes the two and flags the time limit one step late (it tests the step count
  before incrementing it). ``info["won"]``: the allies won on this step.

SMACv2-style tasks (``smax/terran_5_vs_5``, ``smax/zerg_5_vs_5``, ``smax/protoss_5_vs_5``,
``smax/terran_10_vs_10``) use JaxMARL's ``smacv2_5_units``/``smacv2_10_units`` scenarios: start
positions from JaxMARL's ``SurroundAndReflectPositionDistribution`` (with probability 1/2 one team
in the centre and the other in up to four groups between the centre and the corners, otherwise
allies uniform on the left half and enemies mirrored on the right). JaxMARL 0.2.0 draws unit types
uniformly over all six SMAX types regardless of race, so the race tasks replace that generator with
:class:`RaceUnitTypes`: allies draw i.i.d. from their race's SMAX units and the enemies mirror them,
as in SMACv2's ``weighted_teams``. SMACv2 draws terran as marine/marauder/medivac, zerg as
zergling/hydralisk/baneling and protoss as stalker/zealot/colossus with weights 0.45/0.45/0.1; SMAX
has no medivac, baneling or colossus, so the two remaining units get 1/2 each. As in JaxMARL, units
of the surrounding groups can spawn outside the map and die on the first step
(``walls_cause_death``): about 1 reset in 10 at 5 vs 5, 1 in 7 at 10 vs 10.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp

from macflow.envs._jaxmarl import jaxmarl
from macflow.envs.base import require
from macflow.envs.smax_maps import MAPS, SmaxMap
from macflow.spec import EnvSpec, TimeStep

require("jaxmarl")  # cheap; JaxMARL itself is imported on first use


def _smax():
    """JaxMARL's SMAX package, imported on first use: importing JaxMARL takes seconds, which
    every ``macflow`` command would pay if this module imported it."""
    return jaxmarl().environments.smax


RACES: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    "terran": (("marine", "marauder"), (0.5, 0.5)),
    "zerg": (("zergling", "hydralisk"), (0.5, 0.5)),
    "protoss": (("stalker", "zealot"), (0.5, 0.5)),
}
"""SMACv2 races in SMAX units: unit type names and their probabilities."""

NUM_MOVES = 5
"""Movement actions before the attack actions (4 directions and stop)."""


class RaceUnitTypes:
    """SMACv2-style unit types of one race: each ally draws a type i.i.d. from ``probs`` over
    ``type_ids`` and the enemies mirror the allies (extra enemies draw their own). It has the
    interface of JaxMARL's unit type distributions (SMAX only calls ``generate``)."""

    def __init__(self, n_allies: int, n_enemies: int, type_ids, probs):
        self.n_allies, self.n_enemies = n_allies, n_enemies
        self.type_ids = tuple(int(t) for t in type_ids)
        self.probs = tuple(float(p) for p in probs)

    def generate(self, key: jax.Array) -> jax.Array:
        k_ally, k_extra = jax.random.split(key)
        ids = jnp.asarray(self.type_ids, jnp.uint8)
        logits = jnp.log(jnp.asarray(self.probs, jnp.float32))
        extra = max(self.n_enemies - self.n_allies, 0)
        allies = ids[jax.random.categorical(k_ally, logits, shape=(self.n_allies,))]
        extras = ids[jax.random.categorical(k_extra, logits, shape=(extra,))]
        enemies = jnp.concatenate([allies, extras])[: self.n_enemies]
        return jnp.concatenate([allies, enemies])


def _strong(tree):
    """Drop weak types: JaxMARL's reset returns a weakly typed step counter and enemy-policy
    state, its step strongly typed ones, so a jitted step would compile twice (once for the reset
    state, once for its own output) and scan carries would change type."""
    return jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype), tree)


@dataclasses.dataclass(frozen=True)
class Smax:
    """A SMAX battle; the subclasses below fix the map (use them through the registry)."""

    host: ClassVar[bool] = False
    task: ClassVar[str] = ""
    """Registry id."""
    scenario: ClassVar[str] = ""
    """JaxMARL scenario name (``map_name_to_scenario``)."""
    race: ClassVar[str | None] = None
    """SMACv2 race of both teams (a key of :data:`RACES`), or None for the scenario's units.
    The tasks (``Smax3m``, ...) are made below from :data:`macflow.envs.smax_maps.MAPS`."""

    episode_limit: int = 100
    """Steps per episode; reaching it without the battle ending is a truncation."""
    attack_mode: str = "closest"
    """Target choice of the heuristic enemies: ``closest`` or ``random`` unit in range."""

    def __post_init__(self):
        if not self.scenario:
            raise TypeError("Smax is abstract; make a task, e.g. make_env('smax/3m')")
        if not isinstance(self.episode_limit, int) or self.episode_limit < 1:
            raise ValueError(f"{self.task}: episode_limit must be >= 1, got {self.episode_limit}")
        if self.attack_mode not in ("closest", "random"):
            raise ValueError(
                f"{self.task}: attack_mode must be 'closest' or 'random', got {self.attack_mode!r}"
            )

    @functools.cached_property
    def _env(self):
        # Built on first use (JaxMARL imports slowly) and outside any trace, so the JaxMARL
        # object never holds tracers even when first touched inside jit.
        smax = _smax()
        with jax.ensure_compile_time_eval():
            env = smax.HeuristicEnemySMAX(
                attack_mode=self.attack_mode,
                scenario=smax.map_name_to_scenario(self.scenario),
                max_steps=self.episode_limit,
            )
            if self.race is not None:
                names, probs = RACES[self.race]
                ids = [env.unit_type_names.index(name) for name in names]
                # SMAX draws its unit types from this attribute when the scenario asks for
                # SMACv2 unit generation; it is the only hook to restrict them to a race.
                env._env.unit_type_generator = RaceUnitTypes(
                    env.num_allies, env.num_enemies, ids, probs
                )
        return env

    def __reduce__(self):
        # Pickle the fields only; the JaxMARL object holds closures and is rebuilt from them.
        return type(self), tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    @property
    def jaxmarl(self):
        """The wrapped JaxMARL environment (unit tables, names), for inspection."""
        return self._env

    @property
    def spec(self) -> EnvSpec:
        env = self._env
        return EnvSpec(
            self.task,
            env.num_allies,
            env.obs_size,
            env.state_size,
            NUM_MOVES + env.num_enemies,
            discrete=True,
            episode_limit=self.episode_limit,
        )

    def _timestep(self, obs, state, reward, terminal, truncation, won) -> TimeStep:
        agents = self._env.agents
        legal = self._env.get_avail_actions(state)
        return TimeStep(
            observations=jnp.stack([obs[a] for a in agents]).astype(jnp.float32),
            state=obs["world_state"].astype(jnp.float32),
            legal_actions=jnp.stack([legal[a] for a in agents]).astype(bool),
            reward=jnp.asarray(reward, jnp.float32),
            terminal=jnp.asarray(terminal, bool),
            truncation=jnp.asarray(truncation, bool),
            info={"won": jnp.asarray(won, bool)},
        )

    def reset(self, key: jax.Array):
        obs, state = self._env.reset(key)
        state = _strong(state)
        return state, self._timestep(obs, state, 0.0, False, False, False)

    def step(self, key: jax.Array, state, actions: jax.Array):
        env = self._env
        acts = {a: actions[i].astype(jnp.int32) for i, a in enumerate(env.agents)}
        # step_env, not step: JaxMARL's step auto-resets and would hide the final observation.
        obs, state, rewards, _, _ = env.step_env(key, state, acts)
        state = _strong(state)
        alive = state.state.unit_alive
        allies_dead = ~jnp.any(alive[: env.num_allies])
        enemies_dead = ~jnp.any(alive[env.num_allies :])
        over = allies_dead | enemies_dead
        # Not JaxMARL's done: a time-limit cut is a truncation, and its limit fires a step late.
        truncation = (state.state.step >= self.episode_limit) & ~over
        won = enemies_dead & ~allies_dead
        reward = rewards[env.agents[0]]  # shared: every ally gets the team reward
        return state, self._timestep(obs, state, reward, over, truncation, won)


def _task(name: str, m: SmaxMap) -> type[Smax]:
    """The frozen dataclass of task ``smax/<name>`` (one per entry of ``MAPS``)."""
    attrs = {
        "__doc__": f"{m.summary}.",
        "__module__": __name__,
        "__qualname__": m.cls,
        "task": f"smax/{name}",
        "scenario": m.scenario,
        "race": m.race,
    }
    return dataclasses.dataclass(frozen=True)(type(m.cls, (Smax,), attrs))


for _name, _map in MAPS.items():
    globals()[_map.cls] = _task(_name, _map)
