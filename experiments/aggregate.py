"""Aggregate the evaluation curves of several seeds of one setting (paper Table 1 metrics).

  python experiments/aggregate.py runs/table1/cmta_mt10_fixed/seed*
  python experiments/aggregate.py runs/table1/cmta_mt10_fixed     # a root: its run dirs

Prints, for the seed-averaged mean-success curve: max smoothed (factor 0.8),
max and final; and across seeds and tasks at the last common step: the
interquartile mean of success with a 95% stratified bootstrap confidence interval
(rliable). Only evaluation steps that
every seed reached are used; while a seed has no evaluation yet there is none, and
it says so ("no evaluation yet", or which seeds have none) with a JSON line of seeds
and evaluations (0). The runs must be seeds of one setting (the same
saved config but for the seed and bookkeeping fields, `cmta_jax/run_sets.py`):
runs of different settings, a directory given twice, two runs with one seed or
an unreadable run stop it with a one-line error naming the run.
"""

import json
import sys

from cmta_jax import cli
from cmta_jax.reporting import run_sets


def main(paths: list[str]) -> dict:
  if not paths:
    cli.fail("usage: aggregate.py RUN_DIR [RUN_DIR ...] | ROOT")
  runs = [run_sets.load_run(d) for d in run_sets.find_run_dirs(paths)]
  groups = run_sets.group_by_setting(runs)
  if len(groups) > 1:
    first, other = groups[0][0], groups[1][0]
    raise ValueError(
      f"{other.run_dir} is not a seed of the setting of {first.run_dir} "
      f"({'; '.join(run_sets.setting_differences(first.config, other.config))}); "
      "aggregate one setting at a time"
    )
  result = run_sets.summarize_setting(runs)
  seeds = f"{len(runs)} seed{'s' if len(runs) > 1 else ''} ({', '.join(str(r.seed) for r in runs)})"
  count = result["evaluations"]
  if not count:
    print(f"{seeds}: {result['not_evaluated']}")
  else:
    if count == 1:
      print(f"{seeds}, one common evaluation so far, at step {result['steps']}")
    else:
      print(f"{seeds}, {count} common evaluation steps up to {result['steps']}")
    low, high = result["final_iqm_ci95"]
    print(
      f"max smoothed {result['max_smoothed']:.4f} | max {result['max']:.4f} | "
      f"final {result['final']:.4f} | final IQM {result['final_iqm']:.4f} [{low:.4f}, {high:.4f}]"
    )
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  cli.one_line_errors(lambda argv: main(argv[1:]))(sys.argv)
