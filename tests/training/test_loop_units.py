"""The training loop's units called one by one, on the injected point tasks (no simulator)."""

import os

import jax
import numpy as np
import pytest

from cmta_jax import config as config_lib
from cmta_jax import testing
from cmta_jax.replay import device as device_replay
from cmta_jax.training import keys, launch, loop, metrics_log, steps

WARMUP = 30  # two point-task episodes
NUM_TASKS = len(testing.GOALS)


def _config(carry_mode: str = "frozen_memory") -> config_lib.RunConfig:
  return testing.tiny_point_cmta(carry_mode=carry_mode, eval_every=60)


def _start(tmp_path, carry_mode: str = "frozen_memory"):
  run_config = _config(carry_mode)
  envs = testing.point_tasks(goal_in_obs=False)
  networks = steps.build_networks(run_config, envs)
  return launch.start_run([run_config], [str(tmp_path)], networks, envs, log=lambda line: None)


@pytest.mark.slow
def test_collect_and_update_stores_transitions_and_resets_carries_at_episode_ends(tmp_path):
  run, state = _start(tmp_path)
  try:
    assert (state.step, state.episode_step, state.replay.size.tolist()) == (0, 0, [0])
    for expected_step in range(1, WARMUP + 1):
      state = loop.collect_and_update(run, state)
      assert state.step == expected_step
      assert state.episode_step == expected_step % testing.EPISODE_LENGTH
      assert state.replay.size.tolist() == [expected_step]  # one transition per task
      # The replay holds the step's transition with the carry the policy produced...
      stored = device_replay.to_state_dict(state.replay, 0)
      assert (
        stored["episode_step"][:, -1].tolist()
        == [(expected_step - 1) % testing.EPISODE_LENGTH] * NUM_TASKS
      )
      if state.episode_step:
        np.testing.assert_array_equal(stored["h_out"][:, -1], np.asarray(state.carry.h[0]))
      # ... and the carry fed to the next action is zero exactly at episode starts.
      carry_is_zero = all(not np.any(x) for x in jax.tree.leaves(state.carry))
      assert carry_is_zero == (state.episode_step == 0)  # the LSTM moves the carry in-episode
    assert state.totals["count"].tolist() == [0]  # warm-up: no updates
    state = loop.collect_and_update(run, state)
    assert state.totals["count"].tolist() == [1]
  finally:
    run.close()


@pytest.mark.slow
def test_write_train_log_records_every_update_metric_and_resets_the_sums(tmp_path):
  run, state = _start(tmp_path, carry_mode="burn_in")
  try:
    for _ in range(WARMUP + 3):
      state = loop.collect_and_update(run, state)
    metric_names = set(state.totals["sums"])
    state = loop.write_train_log(run, state)
    record = metrics_log.read_records(str(tmp_path))[-1]
    assert record["kind"] == "train" and record["step"] == WARMUP + 3 and record["updates"] == 3
    assert metric_names <= set(record)  # every metric the update returns, e.g. td_target_mean
    assert {"td_target_mean", "attention_staleness", "attention_entropy_fresh"} <= set(record)
    assert state.totals["count"].tolist() == [0]
    assert all(not np.any(x) for x in jax.tree.leaves(state.totals["sums"]))
  finally:
    run.close()


@pytest.mark.slow
def test_evaluate_then_checkpoint_then_restart_resumes_the_loop_state(tmp_path):
  run, state = _start(tmp_path)
  try:
    state = loop.evaluate_now(run, state)
    assert [r["step"] for r in state.eval_history[0]] == [0]
    for _ in range(WARMUP):  # two whole episodes: the checkpoint is at an episode start
      state = loop.collect_and_update(run, state)
    loop.save_checkpoint(run, state)
    assert run.seeds[0].checkpointer.steps() == [WARMUP]
    saved_obs, saved_replay = state.obs, device_replay.to_state_dict(state.replay, 0)
  finally:
    run.close()
  run, resumed = _start(tmp_path)
  try:
    assert (resumed.step, resumed.episode_step) == (WARMUP, 0)
    np.testing.assert_array_equal(resumed.obs, saved_obs)
    restored_replay = device_replay.to_state_dict(resumed.replay, 0)
    assert restored_replay.keys() == saved_replay.keys()
    for name, value in restored_replay.items():
      np.testing.assert_array_equal(value, saved_replay[name])
    assert [r["step"] for r in resumed.eval_history[0]] == [0]
    for a, b in zip(jax.tree.leaves(resumed.learner), jax.tree.leaves(state.learner)):
      np.testing.assert_array_equal(a, b)
  finally:
    run.close()
  assert os.path.exists(os.path.join(tmp_path, "config.json"))


def test_key_streams_keep_their_numbers():
  # The stream numbers are part of every run's identity: a resumed or re-run seed must
  # draw what it drew before this module existed (fold_in(fold_in(key, stream), step)).
  base = keys.run_key(3)
  assert [int(s) for s in keys.Stream] == [0, 1, 2, 3, 4]
  for stream in keys.Stream:
    expected = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(3), int(stream)), 7)
    np.testing.assert_array_equal(keys.step_key(base, stream, 7), expected)
  assert len({tuple(np.asarray(keys.step_key(base, s, 7))) for s in keys.Stream}) == 5


@pytest.mark.slow
def test_replay_in_host_memory_draws_and_trains_as_on_the_device(tmp_path):
  # The same keyed draws wherever the replay lives: on the device (drawn inside the update
  # call) or in host memory (drawn there, the batches sent over); and K updates per step.
  finals = {}
  for name, fields in (
    ("device", {}),
    ("host", {"replay_placement": "host"}),
    ("two_updates", {"updates_per_step": 2}),
  ):
    run_config = config_lib.replace_fields(_config("burn_in"), **fields)
    envs = testing.point_tasks(goal_in_obs=False)
    networks = steps.build_networks(run_config, envs)
    directory = str(tmp_path / name)
    run, state = launch.start_run([run_config], [directory], networks, envs, log=lambda line: None)
    try:
      assert (run.sample is None) == (name != "host")
      for _ in range(WARMUP + 5):
        state = loop.collect_and_update(run, state)
      finals[name] = (jax.device_get(state.learner.params), int(state.totals["count"][0]))
      state = loop.write_train_log(run, state)  # the diagnostics draw where the replay lives
      assert "attention_staleness" in metrics_log.read_records(directory)[-1]
    finally:
      run.close()
  assert finals["device"][1] == finals["host"][1] == 5 and finals["two_updates"][1] == 10
  for a, b in zip(jax.tree.leaves(finals["host"][0]), jax.tree.leaves(finals["device"][0])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  moved = [
    not np.allclose(a, b)
    for a, b in zip(jax.tree.leaves(finals["two_updates"][0]), jax.tree.leaves(finals["device"][0]))
  ]
  assert any(moved)  # twice the updates: other parameters
