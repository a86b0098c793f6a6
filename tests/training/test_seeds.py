"""Several seeds in one process (docs/seeds.md), on the injected point tasks (no simulator):
a seed in a batch reproduces its solo run, per-seed run directories, exact resume of a
batch (also one killed between its seeds' saves), and a diverging seed stopped alone."""

import glob
import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cmta_jax import config as config_lib
from cmta_jax import testing
from cmta_jax.envs.seed_envs import EnvWorkerFailed
from cmta_jax.replay import device as device_replay
from cmta_jax.reporting import figures
from cmta_jax.training import launch, loop, metrics_log, run_state, steps

WARMUP = 30  # two point-task episodes
UPDATES = 5
NUM_TASKS = len(testing.GOALS)
# Vmapping turns each matmul into a batched one, whose XLA kernel may sum in another
# order than the unbatched one: a batched seed matches its solo run to float32 rounding,
# not bit for bit. After 5 Adam updates the largest gap seen was ~1e-7 (relative).
RTOL, ATOL = 1e-4, 1e-6


def _config(**fields):
  return testing.tiny_point_cmta(**{"eval_episodes": 1, "keep_checkpoints": 1, **fields})


ENVS = testing.point_tasks(goal_in_obs=False)


def _start(directory, seeds):
  configs = [config_lib.replace_fields(_config(), seed=seed) for seed in seeds]
  networks = steps.build_networks(configs[0], ENVS)
  dirs = [os.path.join(directory, f"seed{seed}") for seed in seeds]
  return launch.start_run(configs, dirs, networks, ENVS, log=lambda line: None)


def _replay(state, index: int) -> dict:
  return device_replay.to_state_dict(state.replay, index)


@pytest.mark.slow
def test_a_seed_in_a_batch_of_three_reproduces_its_solo_run(tmp_path):
  solo, solo_state = _start(str(tmp_path / "solo"), [1])
  batch, batch_state = _start(str(tmp_path / "batch"), [0, 1, 2])
  try:
    for _ in range(WARMUP):
      solo_state = loop.collect_and_update(solo, solo_state)
      batch_state = loop.collect_and_update(batch, batch_state)
    # Warm-up: the same transitions and actions, bit for bit (uniform actions from the same
    # keys, the same episodes); the carries the LSTM computed, to rounding.
    alone, batched = _replay(solo_state, 0), _replay(batch_state, 1)
    for name in ("obs", "action", "reward", "next_obs", "terminated", "episode_step"):
      np.testing.assert_array_equal(batched[name], alone[name], err_msg=name)
    for name in ("h_out", "c_out"):
      np.testing.assert_allclose(batched[name], alone[name], rtol=RTOL, atol=ATOL)
    assert not np.array_equal(_replay(batch_state, 0)["action"], alone["action"])  # seeds differ
    for _ in range(UPDATES):
      solo_state = loop.collect_and_update(solo, solo_state)
      batch_state = loop.collect_and_update(batch, batch_state)
    solo_params = jax.device_get(steps.seed_slice(solo_state.learner.params, 0))
    batch_params = jax.device_get(steps.seed_slice(batch_state.learner.params, 1))
    moved = 0
    for a, b, before in zip(
      jax.tree.leaves(batch_params),
      jax.tree.leaves(solo_params),
      jax.tree.leaves(jax.device_get(steps.seed_slice(steps.stack_seeds(_initial(solo)), 0))),
    ):
      np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
      moved += not np.array_equal(b, before)
    assert moved > 0  # the updates did change the parameters
  finally:
    solo.close()
    batch.close()


def _initial(run):
  """The solo run's initial parameters (init is a pure function of the seed)."""
  from cmta_jax.agents import sac
  from cmta_jax.training import keys

  key = keys.stream_key(keys.run_key(run.seeds[0].seed), keys.Stream.INIT)
  return [sac.init_training_state(key, run.networks, run.config.sac).params]


def _train(run_dir, seeds=(0, 1), envs=ENVS, env_workers=0, **fields):
  log = []
  summaries = launch.train_seeds(
    _config(**fields),
    run_dir,
    seeds,
    log=log.append,
    envs=envs,
    env_workers=env_workers,
    draw_curves=figures.run_curves,
  )
  return summaries, "\n".join(log)


def _final_params(seed_dir: str, step: int):
  manager = ocp.CheckpointManager(os.path.join(os.path.abspath(seed_dir), "checkpoints"))
  try:
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return jax.device_get(state["state"]["train_state"]["params"])
  finally:
    manager.close()


def _records(seed_dir: str) -> list[dict]:
  return [
    {k: v for k, v in r.items() if not k.startswith("time/")}
    for r in metrics_log.read_records(seed_dir)
  ]


@pytest.mark.slow
def test_a_batch_writes_a_run_directory_per_seed_and_resumes_exactly(tmp_path):
  whole = str(tmp_path / "whole")
  summaries, log = _train(whole)
  assert sorted(summaries) == [0, 1] and all(s["steps"] == 60 for s in summaries.values())
  for seed in (0, 1):
    seed_dir = os.path.join(whole, f"seed{seed}")
    for name in ("config.json", "metrics.jsonl", "summary.json", "curves.png"):
      assert os.path.exists(os.path.join(seed_dir, name)), name
    assert glob.glob(os.path.join(seed_dir, "tensorboard", "events.*"))
    with open(os.path.join(seed_dir, "config.json")) as f:
      assert json.load(f)["train.seed"] == seed
    # One extra checkpoint per seed in a batch (keep_checkpoints=1 here): see below.
    assert sorted(os.listdir(os.path.join(seed_dir, "checkpoints"))) == ["30", "60"]
  # Stopped after step 30, then resumed by the same call with the longer schedule.
  halves = str(tmp_path / "halves")
  _train(halves, total_steps=30)
  _, log = _train(halves)
  assert "from the checkpoint at step 30" in log
  # Killed between its seeds' saves: seed 1 never wrote step 60; the batch resumes at 30.
  killed = str(tmp_path / "killed")
  shutil.copytree(whole, killed)
  shutil.rmtree(os.path.join(killed, "seed1", "checkpoints", "60"))
  _, log = _train(killed)
  assert "from the checkpoint at step 30" in log
  # Killed in its first round of saves (seed 1 wrote none): the batch starts again.
  first = str(tmp_path / "first")
  _train(first, total_steps=30)
  shutil.rmtree(os.path.join(first, "seed1", "checkpoints"))
  _, log = _train(first)
  assert "none: the batch starts again" in log
  for seed in (0, 1):
    expected = _final_params(os.path.join(whole, f"seed{seed}"), 60)
    expected_records = _records(os.path.join(whole, f"seed{seed}"))
    for other in (halves, killed, first):
      seed_dir = os.path.join(other, f"seed{seed}")
      for a, b in zip(jax.tree.leaves(_final_params(seed_dir, 60)), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(a, b)
      assert _records(seed_dir) == expected_records
  # A seed added to a batch that has trained on, and a solo run on a batch's directory: one
  # line each, before anything of the batch's seeds is changed.
  with pytest.raises(ValueError, match=r"seed2 hold\(s\) no checkpoint while the batch's other"):
    _train(whole, seeds=(0, 1, 2), total_steps=90)
  with pytest.raises(ValueError, match="holds a batch of seeds"):
    launch.train(_config(), whole, envs=ENVS, log=lambda line: None)
  assert _records(os.path.join(whole, "seed0")) == _records(os.path.join(halves, "seed0"))
  # A seed's checkpoint is a solo run's: the seed goes on alone from the batch's step 60.
  log = []
  summary = launch.train(
    config_lib.replace_fields(_config(), seed=1, total_steps=90),
    os.path.join(whole, "seed1"),
    log=log.append,
    envs=ENVS,
  )
  assert summary["steps"] == 90 and "from the checkpoint at step 60" in "\n".join(log)


class _Exploding:
  """Point tasks whose rewards are huge for one seed, so that its critic loss explodes."""

  def __init__(self, diverging_seed: int):
    self.diverging_seed = diverging_seed

  def __call__(self, config, seed: int):
    train_env, eval_env = ENVS.make_envs(config, seed)
    if seed == self.diverging_seed:
      step = train_env.step
      train_env.step = lambda actions: step(actions)._replace(reward=np.full(NUM_TASKS, 1e30))
    return train_env, eval_env


@pytest.mark.slow
def test_a_diverging_seed_stops_alone_with_a_clear_message(tmp_path):
  envs = ENVS._replace(make_envs=_Exploding(diverging_seed=1))
  run_dir = str(tmp_path / "batch")
  summaries, log = _train(run_dir, envs=envs)
  assert summaries[1] is None and summaries[0]["steps"] == 60
  marker = os.path.join(run_dir, "seed1", run_state.DIVERGED_FILE)
  with open(marker) as f:
    message = f.read().strip()
  assert message.startswith("training diverged before step")
  assert f"seed 1: {message}; 1 other seed(s) go on" in log
  assert not os.path.exists(os.path.join(run_dir, "seed1", "summary.json"))
  # Resuming the batch leaves the diverged seed out and says so.
  summaries, log = _train(run_dir, envs=envs, total_steps=90)
  assert summaries[1] is None and summaries[0]["steps"] == 90
  assert f"seed 1 diverged earlier ({marker}); left out of this batch" in log
  # A batch of that seed alone: stopped, and marked the same way.
  alone = str(tmp_path / "alone")
  with pytest.raises(run_state.TrainingDiverged, match="every seed of the batch diverged"):
    _train(alone, seeds=(1,), envs=envs)
  assert os.path.exists(os.path.join(alone, "seed1", run_state.DIVERGED_FILE))


@pytest.mark.slow
def test_an_environment_worker_that_fails_is_named_in_one_line(tmp_path):
  def make_envs(config, seed):
    if seed == 1:
      raise RuntimeError("no simulator for seed 1")
    return ENVS.make_envs(config, seed)

  with pytest.raises(EnvWorkerFailed) as info:
    _train(str(tmp_path / "batch"), envs=ENVS._replace(make_envs=make_envs), env_workers=2)
  message = str(info.value)
  assert message.startswith("environment worker of seeds [1]: RuntimeError: no simulator")
  assert "\n" not in message
