"""Aggregate the evaluation curves of several seeds of one setting (paper Table 1 metrics).

  python experiments/aggregate.py runs/table1/cmta_mt10_fixed/seed*

Prints, for the seed-averaged mean-success curve: max smoothed (factor 0.8),
max and final; and across seeds: the interquartile mean of each seed's final
success with a 95% bootstrap confidence interval. Only evaluation steps that
every seed reached are used.
"""

import json
import os
import sys

import numpy as np

from cmta_jax import analysis, cli
from cmta_jax.training.metrics_log import read_records


def main(run_dirs: list[str]) -> dict:
  if not run_dirs:
    cli.fail("usage: aggregate.py RUN_DIR [RUN_DIR ...]")
  curves = {}
  for run_dir in run_dirs:
    if not os.path.isdir(run_dir):
      raise ValueError(f"{run_dir} is not a directory (give run directories)")
    evals = [r for r in read_records(run_dir) if r["kind"] == "eval"]
    if not evals:
      raise ValueError(f"{run_dir} has no evaluation records (is it a run directory?)")
    curves[run_dir] = {r["step"]: r["mean_success"] for r in evals}
  steps = sorted(set.intersection(*(set(c) for c in curves.values())))
  per_seed = np.array([[curves[d][s] for s in steps] for d in run_dirs])
  mean_curve = per_seed.mean(axis=0)
  finals = per_seed[:, -1]
  low, high = analysis.bootstrap_ci(finals)
  result = {
    "seeds": len(run_dirs),
    "steps": steps[-1],
    **analysis.summarize_curve(mean_curve),
    "final_iqm": analysis.interquartile_mean(finals),
    "final_iqm_ci95": [low, high],
  }
  print(f"{len(run_dirs)} seeds, {len(steps)} common evaluation steps up to {steps[-1]}")
  print(
    f"max smoothed {result['max_smoothed']:.4f} | max {result['max']:.4f} | final {result['final']:.4f}"
    f" | final IQM {result['final_iqm']:.4f} [{low:.4f}, {high:.4f}]"
  )
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  cli.one_line_errors(lambda argv: main(argv[1:]))(sys.argv)
