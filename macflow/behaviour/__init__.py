"""Behaviour policies for real tasks: online trainers and the field's dataset quality levels.

A task's registry entry names a trainer (a frozen config, e.g. IPPO/MAPPO for the JAX suites,
TD3 for MuJoCo). :func:`macflow.behaviour.qualities.make_dataset` trains it once (cached under
``~/.cache/macflow/behaviour``, resumable), then collects any quality level from its snapshots.
"""
