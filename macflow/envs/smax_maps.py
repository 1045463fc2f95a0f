"""The SMAX maps macflow registers, declared once (no JaxMARL import: the registry reads it).

Each map names the ``macflow.envs.smax`` class that :mod:`macflow.envs.smax` builds for it, the
JaxMARL scenario (``map_name_to_scenario``), the SMACv2 race of both teams (a key of
``smax.RACES``) or None for the scenario's own units, and the one-line summary ``macflow envs``
prints.
"""

from __future__ import annotations

from typing import NamedTuple


class SmaxMap(NamedTuple):
    cls: str
    scenario: str
    race: str | None
    summary: str


MAPS: dict[str, SmaxMap] = {
    "3m": SmaxMap("Smax3m", "3m", None, "3 marines vs 3 marines"),
    "8m": SmaxMap("Smax8m", "8m", None, "8 marines vs 8 marines"),
    "2s3z": SmaxMap("Smax2s3z", "2s3z", None, "2 stalkers + 3 zealots vs 2 stalkers + 3 zealots"),
    "5m_vs_6m": SmaxMap("Smax5mVs6m", "5m_vs_6m", None, "5 marines vs 6 marines"),
    "3s5z_vs_3s6z": SmaxMap(
        "Smax3s5zVs3s6z",
        "3s5z_vs_3s6z",
        None,
        "3 stalkers + 5 zealots vs 3 stalkers + 6 zealots",
    ),
    "terran_5_vs_5": SmaxMap(
        "SmaxTerran5v5",
        "smacv2_5_units",
        "terran",
        "5 vs 5 random marines/marauders, SMACv2 starts",
    ),
    "zerg_5_vs_5": SmaxMap(
        "SmaxZerg5v5",
        "smacv2_5_units",
        "zerg",
        "5 vs 5 random zerglings/hydralisks, SMACv2 starts",
    ),
    "protoss_5_vs_5": SmaxMap(
        "SmaxProtoss5v5",
        "smacv2_5_units",
        "protoss",
        "5 vs 5 random stalkers/zealots, SMACv2 starts",
    ),
    "terran_10_vs_10": SmaxMap(
        "SmaxTerran10v10",
        "smacv2_10_units",
        "terran",
        "10 vs 10 random marines/marauders, SMACv2 starts",
    ),
}
"""SMAX task ``smax/<key>`` -> its map."""
