"""macflow: offline cooperative multi-agent RL with MAC-Flow (joint flow matching distilled into
decentralised one-step policies), its baselines, datasets and benchmarks."""

__version__ = "0.1.0"
