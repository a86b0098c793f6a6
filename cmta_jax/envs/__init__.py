"""Environments: the run's environment config (config.py), Meta-World MT10/MT50 as one vector
environment (metaworld_env.py), the seeds' environments in worker processes (seed_envs.py),
what the loop needs from an environment family (source.py) and the reward normaliser."""
