"""Behaviour check for refactors: every agent's short fixed-seed run, before and after.

  # the code before, from a worktree, then the code now:
  git worktree add /tmp/before_code COMMIT
  PYTHONPATH=/tmp/before_code python scripts/behaviour_check.py run /tmp/behave/before
  PYTHONPATH=. python scripts/behaviour_check.py run /tmp/behave/after
  python scripts/behaviour_check.py compare /tmp/behave/before /tmp/behave/after

`run` trains each built-in agent for 60 steps on MT10-Fixed (20-step episodes, width 32,
batch 8 per task, seed 0) and saves the final training state's leaves (parameters,
optimiser states, targets, temperatures) as NPZ beside the run's metrics.jsonl. `compare`
prints, per agent, whether every leaf is bit-equal and the largest metric difference.
It uses only APIs that every version since the registry redesign has.
"""

import dataclasses
import json
import os
import sys

import numpy as np

AGENTS = ("cmta", "mtsac", "mtsac_te", "mtmhsac", "softmodu", "care", "single_sac")
STEPS = 60


def _short_config(agent: str):
  from cmta_jax import config as config_lib
  from cmta_jax.agents import registry

  run_config = registry.agent_defaults(config_lib.RunConfig(agent=agent), explicit=set())
  if hasattr(config_lib, "replace_fields"):  # after the config split per concern
    run_config = config_lib.replace_fields(run_config, hidden_width=32)
  else:
    network = dataclasses.replace(run_config.network, hidden_width=32)
    run_config = dataclasses.replace(run_config, network=network)
  return dataclasses.replace(
    run_config,
    env=dataclasses.replace(run_config.env, episode_length=20),
    train=dataclasses.replace(
      run_config.train,
      total_steps=STEPS,
      warmup_steps=20,
      batch_per_task=8,
      replay_capacity=10_000,
      eval_every=STEPS,
      log_every=20,
      checkpoint_every=STEPS,
    ),
  )


def run(out_dir: str) -> None:
  import jax
  import orbax.checkpoint as ocp

  try:  # the driver's entry point moved from training/loop.py to training/launch.py
    from cmta_jax.training import launch
  except ImportError:
    from cmta_jax.training import loop as launch

  for agent in AGENTS:
    run_dir = os.path.join(out_dir, agent)
    launch.train(_short_config(agent), run_dir, log=lambda line: None)
    manager = ocp.CheckpointManager(os.path.join(run_dir, "checkpoints"))
    restored = manager.restore(STEPS, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    leaves = jax.tree_util.tree_leaves_with_path(restored["state"]["train_state"])
    flat = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}
    np.savez(os.path.join(out_dir, f"{agent}.npz"), **flat)
    print(agent, "done", flush=True)


def _records(run_dir: str) -> list[dict]:
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]


def compare(before_dir: str, after_dir: str) -> None:
  for agent in AGENTS:
    before = np.load(os.path.join(before_dir, f"{agent}.npz"))
    after = np.load(os.path.join(after_dir, f"{agent}.npz"))
    common = sorted(set(before.files) & set(after.files))
    equal = all(np.array_equal(before[k], after[k]) for k in common)
    metric_keys, metric_diff = set(), 0.0
    records = list(
      zip(_records(os.path.join(before_dir, agent)), _records(os.path.join(after_dir, agent)))
    )
    for old, new in records:
      metric_keys |= set(old) ^ set(new)
      for key in set(old) & set(new):
        if isinstance(old[key], float) and isinstance(new[key], float):
          metric_diff = max(metric_diff, abs(old[key] - new[key]))
    print(
      f"{agent}: leaves only before {sorted(set(before.files) - set(after.files))}, only after "
      f"{sorted(set(after.files) - set(before.files))}; {len(common)} common leaves bit-equal: "
      f"{equal}; {len(records)} records, keys in one only {sorted(metric_keys)}, largest metric "
      f"difference {metric_diff:.3g}"
    )


if __name__ == "__main__":
  if len(sys.argv) == 3 and sys.argv[1] == "run":
    run(sys.argv[2])
  elif len(sys.argv) == 4 and sys.argv[1] == "compare":
    compare(sys.argv[2], sys.argv[3])
  else:
    sys.exit("usage: behaviour_check.py run OUT_DIR | compare BEFORE_DIR AFTER_DIR")
