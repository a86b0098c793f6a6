"""Aggregate the evaluation curves of several seeds of one setting (paper Table 1 metrics).

  python experiments/aggregate.py runs/table1/cmta_mt10_fixed/seed*
  python experiments/aggregate.py runs/table1/cmta_mt10_fixed     # a root: its run dirs

Prints, for the seed-averaged mean-success curve: max smoothed (factor 0.8),
max and final; and across seeds: the interquartile mean of each seed's final
success with a 95% bootstrap confidence interval. Only evaluation steps that
every seed reached are used. The runs must be seeds of one setting (the same
saved config but for the seed and bookkeeping fields, `cmta_jax/run_set.py`):
runs of different settings, a directory given twice, two runs with one seed or
an unreadable run stop it with a one-line error naming the run.
"""

import json
import sys

import numpy as np

from cmta_jax import analysis, cli, run_set


def main(paths: list[str]) -> dict:
  if not paths:
    cli.fail("usage: aggregate.py RUN_DIR [RUN_DIR ...] | ROOT")
  runs = [run_set.load_run(d) for d in run_set.find_run_dirs(paths)]
  groups = run_set.group_by_setting(runs)
  if len(groups) > 1:
    first, other = groups[0][0], groups[1][0]
    raise ValueError(
      f"{other.run_dir} is not a seed of the setting of {first.run_dir} "
      f"({'; '.join(run_set.setting_differences(first.config, other.config))}); "
      "aggregate one setting at a time"
    )
  curves = [run.curve for run in runs]
  steps = sorted(set.intersection(*(set(c) for c in curves)))
  if not steps:
    raise ValueError("the runs share no evaluation step")
  per_seed = np.array([[curve[s] for s in steps] for curve in curves])
  mean_curve = per_seed.mean(axis=0)
  finals = per_seed[:, -1]
  low, high = analysis.bootstrap_ci(finals)
  result = {
    "seeds": len(runs),
    "steps": steps[-1],
    **analysis.summarize_curve(mean_curve),
    "final_iqm": analysis.interquartile_mean(finals),
    "final_iqm_ci95": [low, high],
  }
  seeds = ", ".join(str(run.seed) for run in runs)
  print(f"{len(runs)} seeds ({seeds}), {len(steps)} common evaluation steps up to {steps[-1]}")
  print(
    f"max smoothed {result['max_smoothed']:.4f} | max {result['max']:.4f} | final {result['final']:.4f}"
    f" | final IQM {result['final_iqm']:.4f} [{low:.4f}, {high:.4f}]"
  )
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  cli.one_line_errors(lambda argv: main(argv[1:]))(sys.argv)
