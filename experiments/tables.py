"""The paper's results tables (Table 1, 2, 8) from a tree of run directories.

  python experiments/tables.py runs/table1                     # Markdown on stdout
  python experiments/tables.py runs/table2 --format=latex --out=table2.tex
  python experiments/tables.py runs/a runs/b --skip_bad_runs

Runs are grouped into cells by their saved config (cmta_jax/run_sets.py), never by
directory name: a column per benchmark and mode (MT10-Fixed, ...), a row per
variant. A row is an agent plus the config fields that tell variants apart within a
column (e.g. `mixture.num_experts` for Table 8, `sac.auxiliary_weight` for the
contrastive ablation of Table 2). Each cell: the paper's max smoothed and max of the
seed-mean success curve, its final value, the IQM across seeds and tasks at the last
evaluation every seed reached with a 95% stratified bootstrap interval, and the
number of seeds (docs/results.md). Which runs make which paper table is a matter of
which runs the tree holds; docs/results.md lists the launch commands.

A directory given twice, two runs of one setting with one seed, or an unreadable run
stops it with a one-line error naming the run; with --skip_bad_runs an unreadable run
is skipped and named on stderr instead. A run not evaluated yet is no error: its
setting's cell reads "no evaluation yet" (or which seeds have none).
"""

from absl import app, flags, logging

from cmta_jax import cli

_FORMAT = flags.DEFINE_enum("format", "markdown", ["markdown", "latex"], "Output format.")
_OUT = flags.DEFINE_string("out", None, "Write the table to this file instead of stdout.")
_SKIP_BAD_RUNS = flags.DEFINE_bool(
  "skip_bad_runs", False, "Skip unreadable runs (named on stderr) instead of stopping."
)
_BOOTSTRAP_REPS = flags.DEFINE_integer(
  "bootstrap_reps", 2000, "Bootstrap resamples per IQM interval (as statistics.py's default)."
)


def main(argv):
  paths = argv[1:]
  logging.set_verbosity(logging.WARNING)  # rliable logs every interval it computes at INFO
  if not paths:
    cli.fail("usage: tables.py RUN_DIR [RUN_DIR ...] | ROOT (see --helpfull)")
  if _BOOTSTRAP_REPS.value < 1:
    cli.fail(f"--bootstrap_reps must be positive, got {_BOOTSTRAP_REPS.value}")
  if _OUT.value:
    cli.check_output_file(_OUT.value)
  # Imported only now, so that bad input answers at once (rliable alone takes seconds).
  from cmta_jax.reporting import run_sets, tables

  runs = tables.load_runs(paths, _SKIP_BAD_RUNS.value)
  cells = tables.arrange(run_sets.group_by_setting(runs))
  output = tables.markdown if _FORMAT.value == "markdown" else tables.latex
  text = output(cells, _BOOTSTRAP_REPS.value)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      f.write(text)
    print(f"wrote {_OUT.value}")
  else:
    print(text, end="")


if __name__ == "__main__":
  app.run(cli.one_line_errors(main), flags_parser=cli.parse_flags)
