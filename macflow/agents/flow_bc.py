"""Flow BC: MAC-Flow without its Q term (the paper's "without IGM / Q" ablation).

The joint flow teacher (equation 1 of arXiv 2511.05005) is trained on the dataset's joint actions
and distilled into the decentralised one-step students under the noise coupling (equation 2);
equation 4's Q term is dropped (``q_weight = 0``), so no critic is trained. It is pure imitation
of the behaviour data's joint distribution, projected onto product policies, and the reference
point that tells how much of MAC-Flow's return comes from the critic.

Everything else (networks, noise coupling, two-stage schedule, teacher cache, ``shared_noise``)
is MAC-Flow's: ``macflow train --algo flow-bc`` takes the same ``--agent.*`` options, and
``--agent.q-weight`` must stay 0 (the critic's options are accepted and unused).
"""

from __future__ import annotations

import dataclasses

from macflow.agents.base import small
from macflow.agents.macflow import MACFlow, MACFlowConfig, _paper, _quickstart, _reference
from macflow.envs.base import EnvSpec


@dataclasses.dataclass(frozen=True)
class FlowBCConfig(MACFlowConfig):
    """MAC-Flow's options with the Q term off (critic options are unused)."""

    q_weight: float = 0.0
    """Must be 0: flow BC has no Q term (use ``--algo macflow`` for one)."""

    def __post_init__(self):
        super().__post_init__()
        if self.q_weight != 0:
            raise ValueError(
                f"flow-bc has no Q term: --agent.q-weight must be 0, got {self.q_weight} "
                "(use --algo macflow to train with the critic)"
            )


def _without_q(preset):
    def make(spec: EnvSpec) -> FlowBCConfig:
        fields = dataclasses.asdict(preset(spec)) | {"q_weight": 0.0}
        return FlowBCConfig(**fields)

    return make


class FlowBC(MACFlow):
    """MAC-Flow's teacher and students, trained without the critic."""

    Config = FlowBCConfig
    presets = {
        "paper": _without_q(_paper),
        "reference": _without_q(_reference),
        "small": small(_without_q(_paper)),
        "quickstart": _without_q(_quickstart),
    }
