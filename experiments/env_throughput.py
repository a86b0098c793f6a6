"""Meta-World env throughput: construction time and env steps/s with random actions.

Stepping includes the resets at episode ends (as in training), so the figures
depend on --episode_length. Prints a table and one JSON line.

  python experiments/env_throughput.py --benchmarks=MT10,MT50 --strategies=sync,async
"""

import json
import os
import sys
import time
from typing import Any

import numpy as np
from absl import app, flags

from cmta_jax import cli

# Run as a script from the repo root without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cmta_jax.envs import config as env_config  # noqa: E402
from cmta_jax.envs import metaworld_env  # noqa: E402

_BENCHMARKS = flags.DEFINE_list("benchmarks", ["MT10", "MT50"], "Benchmarks to measure.")
_STRATEGIES = flags.DEFINE_list("strategies", ["sync", "async"], "Vector strategies to measure.")
_STEPS = flags.DEFINE_integer(
  "steps", 600, "Vector steps timed per combination (after one warm-up episode)."
)
_EPISODE_LENGTH = flags.DEFINE_integer(
  "episode_length", 150, "Episode length (resets are part of stepping)."
)
_MODE = flags.DEFINE_enum("mode", "fixed", list(env_config.MODES), "Variation mode.")
_SEED = flags.DEFINE_integer("seed", 0, "Run seed.")


def _measure(
  benchmark: str, strategy: str, variations: metaworld_env.Variations, num_steps: int
) -> dict[str, Any]:
  config = env_config.EnvConfig(
    benchmark=benchmark,
    mode=_MODE.value,
    episode_length=_EPISODE_LENGTH.value,
    vector_strategy=strategy,
  )
  start = time.perf_counter()
  env = metaworld_env.MultiTaskEnv(config, _SEED.value, variations=variations)
  build_s = time.perf_counter() - start
  try:
    rng = np.random.default_rng(_SEED.value)
    num_tasks = env.num_tasks
    start = time.perf_counter()
    env.reset()
    reset_s = time.perf_counter() - start
    for _ in range(_EPISODE_LENGTH.value):  # Warm-up episode (workers, caches).
      env.step(rng.uniform(-1.0, 1.0, (num_tasks, 4)))
    actions = rng.uniform(-1.0, 1.0, (num_steps, num_tasks, 4)).astype(np.float32)
    start, start_cpu = time.perf_counter(), time.process_time()
    for action in actions:
      env.step(action)
    step_s = time.perf_counter() - start
    # CPU time of this process only: for "sync" it is all the stepping work, so
    # its rate is a load-independent figure on a shared machine.
    step_cpu_s = time.process_time() - start_cpu
  finally:
    env.close()
  return {
    "benchmark": benchmark,
    "strategy": strategy,
    "num_tasks": num_tasks,
    "build_s": round(build_s, 2),
    "reset_s": round(reset_s, 3),
    "vector_steps_per_s": round(num_steps / step_s, 1),
    "transitions_per_s": round(num_steps * num_tasks / step_s, 1),
    "transitions_per_main_cpu_s": round(num_steps * num_tasks / step_cpu_s, 1),
  }


def main(argv: list[str]) -> None:
  del argv
  for benchmark in _BENCHMARKS.value:
    env_config.EnvConfig(benchmark=benchmark).validate()
  for strategy in _STRATEGIES.value:
    env_config.EnvConfig(vector_strategy=strategy).validate()
  rows = []
  variation_seconds = {}
  for benchmark in _BENCHMARKS.value:
    start = time.perf_counter()
    variations = metaworld_env.make_variations(benchmark, _SEED.value)
    variation_seconds[benchmark] = round(time.perf_counter() - start, 2)
    for strategy in _STRATEGIES.value:
      row = _measure(benchmark, strategy, variations, _STEPS.value)
      row["variations_s"] = variation_seconds[benchmark]
      row["construction_s"] = round(row["variations_s"] + row["build_s"], 2)
      rows.append(row)
      print(f"done {benchmark}/{strategy}", flush=True)

  header = (
    f"{'bench':6} {'strategy':8} {'T':>3} {'variations_s':>12} {'build_s':>8} "
    f"{'reset_s':>8} {'vec_steps/s':>11} {'transitions/s':>13} {'trans/main_cpu_s':>16}"
  )
  print(header)
  for r in rows:
    print(
      f"{r['benchmark']:6} {r['strategy']:8} {r['num_tasks']:>3} {r['variations_s']:>12.2f} "
      f"{r['build_s']:>8.2f} {r['reset_s']:>8.3f} {r['vector_steps_per_s']:>11.1f} "
      f"{r['transitions_per_s']:>13.1f} {r['transitions_per_main_cpu_s']:>16.1f}"
    )
  summary = {
    "episode_length": _EPISODE_LENGTH.value,
    "steps": _STEPS.value,
    "mode": _MODE.value,
    "cpu_count": os.cpu_count(),
    "load_average_1min_at_end": round(os.getloadavg()[0], 2),  # Other jobs skew the figures.
    "results": rows,
  }
  print(json.dumps(summary))


if __name__ == "__main__":
  app.run(cli.one_line_errors(main), flags_parser=cli.parse_flags)
