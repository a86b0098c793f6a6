"""Time the rollout loop's three parts separately, for comparison with a run's steps/s.

  python experiments/loop_components.py --hidden_width=256 --batch_per_task=64

Prints the jitted train step (update + metric accumulation), action selection
(incl. the device->host copy of actions and carries) and one env step (mean
over whole episodes, so resets are included), and 1 / their sum.
"""

import time

from absl import app, flags

from cmta_jax import cli

_BENCHMARK = flags.DEFINE_enum("benchmark", "MT10", ["MT10", "MT50"], "Benchmark.")
_WIDTH = flags.DEFINE_integer("hidden_width", 256, "Actor/critic width.")
_BATCH = flags.DEFINE_integer("batch_per_task", 64, "Batch per task.")
_AGENT = flags.DEFINE_string("agent", "cmta", "Agent.")
_CARRY_MODE = flags.DEFINE_string("carry_mode", "burn_in", "CMTA carry mode.")
_BURN_IN = flags.DEFINE_integer("burn_in_steps", 20, "Burn-in window (carry mode burn_in).")


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np

  from cmta_jax import config as config_lib
  from cmta_jax.agents import registry, sac
  from cmta_jax.config import SACConfig
  from cmta_jax.envs.config import EnvConfig
  from cmta_jax.envs.metaworld_env import MultiTaskEnv, task_names
  from cmta_jax.training.steps import (
    ReplayDraw,
    batch_spec,
    burn_in_steps,
    empty_totals,
    make_act,
    make_train_step,
    stack_seeds,
  )

  names = task_names(_BENCHMARK.value)
  t, b = len(names), _BATCH.value
  run_config = registry.agent_defaults(
    config_lib.replace_fields(
      config_lib.RunConfig(agent=_AGENT.value),
      hidden_width=_WIDTH.value,
      carry_mode=_CARRY_MODE.value,
      burn_in_steps=_BURN_IN.value,
    ),
    explicit=set(),
  )
  networks = registry.make_agent_networks(
    run_config, names, MultiTaskEnv.obs_dim, MultiTaskEnv.action_dim
  )
  sac_config: SACConfig = run_config.sac
  state = sac.init_training_state(jax.random.PRNGKey(0), networks, sac_config)
  rng = np.random.default_rng(0)
  spec = batch_spec(t, b, networks, burn_in_steps(run_config, networks))
  batch = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), spec)
  window = burn_in_steps(run_config, networks)
  train_step = make_train_step(networks, sac_config, ReplayDraw(b, window), sample_inside=False)
  totals = empty_totals(networks, sac_config, state, spec)
  # One seed: the loop's functions take a leading seed axis (docs/seeds.md).
  state, totals, batch = (stack_seeds([x]) for x in (state, totals, batch))
  batch = jax.tree.map(lambda x: x[:, None], batch)  # [S, K=1, ...]: one update per call
  key = stack_seeds([jax.random.PRNGKey(0)])

  def median_ms(fn, calls):
    times = []
    for i in range(calls):
      start = time.perf_counter()
      fn(i)
      times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))

  holder = {"state": state, "totals": totals}

  def one_update(i):
    holder["state"], holder["totals"] = train_step(holder["state"], holder["totals"], batch, key, i)
    jax.block_until_ready(holder["state"])

  for i in range(3):
    one_update(i)
  update_ms = median_ms(one_update, 50)

  act = make_act(networks)
  obs = rng.normal(size=(1, t, 39)).astype(np.float32)
  carry, task_ids = sac.initial_carry(networks, (1, t)), jnp.arange(t, dtype=jnp.int32)

  def one_act(i):
    actions, carry_out = act(
      sac.policy_params(holder["state"]), obs, task_ids, carry, key, i, mode="explore"
    )
    np.asarray(actions)
    jax.device_get(carry_out)

  for i in range(3):
    one_act(i)
  act_ms = median_ms(one_act, 100)

  env = MultiTaskEnv(EnvConfig(benchmark=_BENCHMARK.value), 0)
  env.reset()
  steps = 3 * env.config.episode_length
  start = time.perf_counter()
  for _ in range(steps):
    env.step(rng.uniform(-1, 1, (t, 4)))
  env_ms = 1e3 * (time.perf_counter() - start) / steps
  env.close()
  total = update_ms + act_ms + env_ms
  print(
    f"{_AGENT.value} ({run_config.recurrence.carry_mode}) {_BENCHMARK.value} width {_WIDTH.value} B_task {b}: train step "
    f"{update_ms:.1f} ms | action selection {act_ms:.2f} ms | env step {env_ms:.1f} ms | "
    f"1/sum = {1e3 / total:.1f} vector steps/s"
  )


if __name__ == "__main__":
  app.run(cli.one_line_errors(main), flags_parser=cli.parse_flags)
