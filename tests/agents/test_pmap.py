"""Data parallelism: the pmapped update on two half-batches equals the
single-device update on the whole batch.

Two CPU devices only exist if XLA_FLAGS is set before jax is imported, so the
comparison runs in a fresh Python subprocess (started early, see conftest). It
raises on any mismatch and otherwise prints a JSON summary.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFTEST = pathlib.Path(__file__).resolve().parent / "conftest.py"

_SUBPROCESS_CODE = textwrap.dedent("""
    import importlib.util
    import json
    import sys

    import jax
    import jax.numpy as jnp
    import numpy as np

    from cmta_jax.agents import sac

    spec = importlib.util.spec_from_file_location("agent_test_helpers", sys.argv[1])
    helpers = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = helpers
    spec.loader.exec_module(helpers)
    assert jax.local_device_count() == 2, jax.devices()

    setup = helpers.learner_setup()  # T = 10 tasks, 8 transitions each
    single_state, single_metrics = setup.update(setup.state, setup.batch, setup.key)

    def replicate(tree):
      return jax.tree.map(lambda x: jnp.stack([x, x]), tree)

    # Split along the per-task batch axis B: device d sees [T, B/2, ...].
    halves = jax.tree.map(lambda x: jnp.stack(jnp.split(x, 2, axis=1)), setup.batch)
    pmapped = jax.pmap(sac.make_update_fn(setup.networks, setup.sac_config, axis_name="devices"),
                       axis_name="devices")
    # The same key on both devices: each draws the whole batch's noise and keeps its slice.
    parallel_state, parallel_metrics = pmapped(replicate(setup.state), halves,
                                               replicate(setup.key))

    device = lambda tree, d: jax.tree.map(lambda x: x[d], tree)
    # Parameters stay replicated: both devices hold bit-identical copies.
    helpers.assert_trees_equal(device(parallel_state, 0), device(parallel_state, 1))
    helpers.assert_trees_equal(device(parallel_metrics, 0), device(parallel_metrics, 1))
    parallel_state, parallel_metrics = device(parallel_state, 0), device(parallel_metrics, 0)

    helpers.assert_trees_allclose(parallel_state.params, single_state.params, rtol=1e-5, atol=1e-6)
    helpers.assert_trees_allclose(parallel_state.target_params, single_state.target_params,
                                  rtol=1e-5, atol=1e-6)
    helpers.assert_trees_allclose(parallel_metrics, single_metrics, rtol=1e-5, atol=1e-6)
    # The pmean-ed gradient itself (Adam's first moment with b1 = 0).
    helpers.assert_trees_allclose(helpers.applied_gradients(parallel_state.opt_state),
                                  helpers.applied_gradients(single_state.opt_state),
                                  rtol=1e-5, atol=1e-6, leaf_scale_atol=1e-6)

    def max_abs_diff(a, b):
      return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                 for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    print(json.dumps({
        "devices": jax.local_device_count(),
        "max_param_diff": max_abs_diff(parallel_state.params, single_state.params),
        "max_metric_diff": max_abs_diff(parallel_metrics, single_metrics),
        "critic_loss": np.asarray(single_metrics["critic_loss"]).tolist(),
    }))
""")


_process = None
_output = None


def start_in_background() -> subprocess.Popen:
  """Starts the check once. conftest calls this at session start, so the subprocess's
  compiles run on the second core while the other tests run."""
  global _process, _output
  if _process is None:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    env["XLA_FLAGS"] = flags.strip()
    env["JAX_PLATFORMS"] = "cpu"
    paths = [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    # Files, not pipes: nobody reads until the end, and a full pipe would block the child.
    _output = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    _process = subprocess.Popen(
      [sys.executable, "-c", _SUBPROCESS_CODE, str(CONFTEST)],
      env=env,
      cwd=REPO_ROOT,
      stdout=_output[0],
      stderr=_output[1],
      text=True,
    )
  return _process


def test_pmapped_update_on_half_batches_equals_single_device_update():
  returncode = start_in_background().wait(timeout=600)
  stdout, stderr = (f.seek(0) or f.read() for f in _output)
  assert returncode == 0, stderr[-5000:]
  result = json.loads(stdout.strip().splitlines()[-1])
  print(result)
  assert result["devices"] == 2
  assert result["max_param_diff"] < 1e-5 and result["max_metric_diff"] < 1e-4, result
