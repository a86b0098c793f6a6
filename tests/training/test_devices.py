"""The loop on two devices (docs/seeds.md, "Devices"): seeds sharded over them give the
one-device results to float rounding; the data-parallel single run trains, checkpoints and
resumes, and matches the one-device run to float rounding; seeds or a batch that do not
split evenly over the devices are refused in one line before anything is written.

Two CPU devices exist only if XLA_FLAGS is set before jax is imported, so the runs happen in
a fresh Python subprocess, on the point tasks (no simulator). It raises on any mismatch."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

_CODE = textwrap.dedent("""
    import json, os, sys
    import jax
    import numpy as np
    import orbax.checkpoint as ocp
    from cmta_jax import config as config_lib
    from cmta_jax import testing
    from cmta_jax.training import launch, run_state, steps

    assert jax.local_device_count() == 2, jax.devices()
    root = sys.argv[1]
    envs = testing.point_tasks(goal_in_obs=False)
    config = testing.tiny_point_cmta(total_steps=45, eval_every=45, log_every=15,
                                     checkpoint_every=15, eval_episodes=1)
    quiet = lambda line: None

    def params(run_dir, step=45):
        manager = ocp.CheckpointManager(os.path.join(run_dir, "checkpoints"))
        try:
            state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
            return jax.device_get(state["state"]["train_state"]["params"])
        finally:
            manager.close()

    def max_gap(a, b):
        gaps = [np.max(np.abs(x - y) / (np.abs(y) + 1e-6))
                for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
        return float(max(gaps))

    first = jax.local_devices()[:1]
    # Seeds that do not split evenly over the devices, and a data-parallel batch that does not:
    # one-line errors before anything is written.
    try:
        launch.train_seeds(config, root + "/odd", (0, 1, 2), log=quiet, envs=envs)
        raise AssertionError("3 seeds on 2 devices were accepted")
    except ValueError as error:
        assert str(error).startswith("3 seed(s) cannot be split evenly over 2 devices"), error
    assert not os.path.exists(root + "/odd")
    try:
        launch.train(config_lib.replace_fields(config, batch_per_task=3), root + "/odd", log=quiet,
                   envs=envs, data_parallel=True)
        raise AssertionError("a batch of 3 per task split over 2 devices was accepted")
    except ValueError as error:
        assert "batch_per_task (3) must be a multiple of the 2 devices" in str(error), error
    assert not os.path.exists(root + "/odd")
    # The seed axis of the learner state is split over the two devices.
    from cmta_jax.training import devices
    configs = [config_lib.replace_fields(config, seed=s) for s in (0, 1)]
    run, state = launch.start_run(configs, [root + "/look/0", root + "/look/1"],
                                steps.build_networks(config, envs), envs, quiet,
                                placement=devices.choose(2, 4))
    leaf = jax.tree.leaves(state.learner.params)[0]
    assert leaf.sharding.spec == jax.sharding.PartitionSpec("seed"), leaf.sharding
    assert {s.device for s in leaf.addressable_shards} == set(jax.local_devices())
    run.close()
    two = launch.train_seeds(config, root + "/two", (0, 1), log=quiet, envs=envs)
    one = launch.train_seeds(config, root + "/one", (0, 1), log=quiet, envs=envs, devices=first)
    seed_gap = max(max_gap(params(f"{root}/two/seed{s}"), params(f"{root}/one/seed{s}"))
                   for s in (0, 1))
    assert seed_gap < 1e-3, seed_gap
    assert [two[s]["final"] for s in (0, 1)] == [one[s]["final"] for s in (0, 1)]
    # Resumed with one seed marked diverged, the one seed left runs on the first device.
    with open(root + "/two/seed1/" + run_state.DIVERGED_FILE, "w") as f:
        f.write("diverged (marked by the test)")
    left = launch.train_seeds(config_lib.replace_fields(config, total_steps=60), root + "/two",
                            (0, 1), log=quiet, envs=envs)
    assert left[1] is None and left[0]["steps"] == 60, left

    lines = []
    launch.train(config_lib.replace_fields(config, total_steps=30), root + "/dp", log=quiet,
               envs=envs, data_parallel=True)
    launch.train(config, root + "/dp", log=lines.append, envs=envs, data_parallel=True)
    assert any("from the checkpoint at step 30" in line for line in lines), lines
    data_gap = max_gap(params(root + "/dp"), params(root + "/one/seed0"))
    assert data_gap < 1e-3, data_gap
    print(json.dumps({"seed_gap": seed_gap, "data_parallel_gap": data_gap}))
""")


@pytest.mark.slow
def test_seeds_sharded_and_data_parallel_on_two_devices(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [sys.executable, "-c", _CODE, str(tmp_path)],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  gaps = json.loads(result.stdout.strip().splitlines()[-1])
  assert gaps["seed_gap"] < 1e-3 and gaps["data_parallel_gap"] < 1e-3
