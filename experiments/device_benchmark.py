"""Seeds on one accelerator, in a few minutes: seed-steps per second for S = 1, 8 and 32.

  python experiments/device_benchmark.py                 # S = 1, 8, 32 at the paper's sizes
  python experiments/device_benchmark.py --seed_counts=1,8 --loop_episode_length=25
  python experiments/device_benchmark.py --allow_cpu --seed_counts=1,2 --loop_episode_length=10

For each S: THE update vmapped over S seeds (CMTA, MT10, widths 3 x 512, batch 128 per task,
burn-in L = 20) in ms per call and seed-updates per second; then the training loop on
Meta-World MT10 (one warm-up episode, three episodes of updates; the rate over the last
two), in seed-steps per second. Prints the device and one JSON line (docs/seeds.md; the
figures go to BUILD_NOTES.md). It stops with a one-line error if jax sees no accelerator,
unless --allow_cpu.
"""

import json
import os
import platform
import time

import benchmark  # experiments/benchmark.py, beside this script
from absl import app, flags, logging

from cmta_jax import cli

# benchmark.py's flags, with this script's defaults (--seed_counts, --calls, --env_workers,
# --loop_episode_length are shared).
flags.FLAGS.set_default("seed_counts", ["1", "8", "32"])
flags.FLAGS.set_default("calls", 20)
_ALLOW_CPU = flags.DEFINE_bool("allow_cpu", False, "Run even if jax sees only the CPU.")


def main(argv):
  del argv
  import jax

  # Orbax reports every file the loop runs write at INFO; keep the console for the figures.
  logging.set_verbosity(logging.WARNING)

  counts = benchmark._counts(flags.FLAGS.seed_counts, "seed_counts")
  device = jax.devices()[0]
  if device.platform == "cpu" and not _ALLOW_CPU.value:
    cli.fail("jax sees no accelerator (install the matching jax build; or give --allow_cpu)")
  print(
    f"device: {jax.device_count()} x {device.device_kind} ({device.platform}), host "
    f"{platform.processor() or platform.machine()} with {os.cpu_count()} cores, "
    f"jax {jax.__version__}",
    flush=True,
  )
  start = time.perf_counter()
  rows = benchmark.seeds_axis(
    counts,
    counts,
    width=512,
    batch_per_task=128,
    calls=flags.FLAGS.calls,
    episode_length=benchmark._LOOP_EPISODE.value,
    workers=benchmark._ENV_WORKERS.value,
  )
  print(f"total {time.perf_counter() - start:.0f} s")
  print(json.dumps({"device": device.device_kind, "seeds_axis": rows}))


if __name__ == "__main__":
  app.run(cli.one_line_errors(main), flags_parser=cli.parse_flags)
