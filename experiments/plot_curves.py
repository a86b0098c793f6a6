"""Success curves of a tree of runs (paper Fig. 3, 4 and 6).

  python experiments/plot_curves.py runs/table1 --out=curves.png
  python experiments/plot_curves.py runs/table1 --out=curves.pdf --per_task --profile

Runs are arranged as in experiments/tables.py (cells by saved config): a panel per
setting (benchmark and mode), a line per variant with the seed-mean success, a band of
one standard deviation across seeds and the IQM over seeds and tasks. With
--per_task, one more figure per setting with a panel per task (paper Fig. 6), named
after --out with the setting appended (curves_MT10-Fixed.png). With --profile, the
performance profiles (rliable): per setting, the fraction of (seed, task) success rates
above each threshold at the last common evaluation (curves_profile.png). Each training
run also keeps its own curves.png in its run directory.

Runs still young are drawn as they are: a variant with one evaluation so far as markers,
one without an evaluation yet named so in the legend. A figure with nothing to draw (no
variant evaluated yet) is not written: a "not written" line names it and says why (one
line in all when no run has an evaluation yet), and the command still succeeds. Every
figure written is named on a "wrote" line.
"""

import functools
import os
import re

from absl import app, flags, logging

from cmta_jax import cli

_OUT = flags.DEFINE_string("out", "curves.png", "Image file (.png, .svg or .pdf).")
_PER_TASK = flags.DEFINE_bool("per_task", False, "Also a figure per setting, a panel per task.")
_PROFILE = flags.DEFINE_bool(
  "profile",
  False,
  "Also the performance profiles at the last common evaluation (rliable), named after --out "
  "with _profile appended.",
)
_SKIP_BAD_RUNS = flags.DEFINE_bool(
  "skip_bad_runs", False, "Skip unreadable runs (named on stderr) instead of stopping."
)


def main(argv):
  paths = argv[1:]
  logging.set_verbosity(logging.WARNING)
  if not paths:
    cli.fail("usage: plot_curves.py RUN_DIR [RUN_DIR ...] | ROOT (see --helpfull)")
  cli.check_output_file(_OUT.value, cli.FIGURE_FORMATS)
  # Imported only now, so that bad input answers at once.
  from cmta_jax.reporting import figures, run_sets, tables

  runs = tables.load_runs(paths, _SKIP_BAD_RUNS.value)
  if not any(run.evals for run in runs):
    print(f"no figure written: no run has an evaluation yet ({', '.join(r.run_dir for r in runs)})")
    return
  cells = tables.arrange(run_sets.group_by_setting(runs))
  stem, extension = os.path.splitext(_OUT.value)
  # (path, draw(path)) of every figure asked for.
  drawings = [(_OUT.value, functools.partial(figures.setting_curves, cells))]
  if _PROFILE.value:
    profiles = functools.partial(figures.performance_profiles, cells, bootstrap_reps=2000)
    drawings.append((f"{stem}_profile{extension}", profiles))
  if _PER_TASK.value:
    for column in dict.fromkeys(c.column for c in cells):
      per_task = functools.partial(figures.per_task_curves, cells, column)
      # 'MT10-Mixed (Meta-World+)' -> 'MT10-Mixed_Meta-World+': no spaces in file names.
      name = re.sub(r"[^\w+-]+", "_", column).strip("_")
      drawings.append((f"{stem}_{name}{extension}", per_task))
  for path, draw in drawings:
    try:
      print(f"wrote {draw(path)}")
    except figures.NothingToDraw as nothing:
      print(f"not written: {path} (nothing to draw: {nothing})")


if __name__ == "__main__":
  app.run(cli.one_line_errors(main), flags_parser=cli.parse_flags)
