"""Online trainers for real tasks, whose snapshots are the behaviour policies of their datasets,
and the field's dataset quality levels.

(The env-side protocol of scripted data generators is :class:`macflow.envs.base.Behaviour`; this
package was ``macflow.behaviour`` before 0.2.)

A task's registry entry names a trainer (a frozen config, e.g. IPPO/MAPPO for the JAX suites,
TD3 for MuJoCo). :func:`macflow.trainers.qualities.make_dataset` trains it once (cached under
``~/.cache/macflow/behaviour``, resumable), then collects any quality level from its snapshots.
"""
