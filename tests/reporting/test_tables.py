"""cmta_jax/results.py and experiments/tables.py on a synthetic tree of runs: cells
by saved config, rows and labels, numbers equal to hand computation, and one-line refusals."""

import os
import subprocess
import sys

import numpy as np
import pytest

from cmta_jax import success_curve, testing
from cmta_jax.reporting import run_sets, tables

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TABLES = os.path.join(REPO, "experiments", "tables.py")
write_run = testing.write_synthetic_run


def _table(paths: list[str], output=None, skip_bad_runs: bool = False) -> str:
  """The table of `paths`, in process (the command line is tested below)."""
  runs = tables.load_runs(paths, skip_bad_runs)
  cells = tables.arrange(run_sets.group_by_setting(runs))
  return (output or tables.markdown)(cells, bootstrap_reps=200)


def _tables(*args):
  return subprocess.run(
    [sys.executable, TABLES, "--bootstrap_reps=200", *args],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=120,
  )


def _rows(markdown: str) -> dict[str, list[str]]:
  lines = markdown.strip().splitlines()
  cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
  return {"header": cells[0], **{row[0]: row[1:] for row in cells[2:]}}


@pytest.fixture
def tree(tmp_path):
  return testing.write_synthetic_tree(str(tmp_path / "runs"))


def test_cells_follow_the_saved_config_and_equal_hand_computation(tree):
  rows = _rows(_table([tree]))
  assert rows["header"][:6] == [
    "agent",
    "MT10-Fixed max smoothed",
    "MT10-Fixed max",
    "MT10-Fixed final",
    "MT10-Fixed IQM [95% CI]",
    "MT10-Fixed seeds",
  ]
  assert rows["header"][6] == "MT10-Mixed max smoothed"
  # Registry order; a variant is named by where it departs from its agent's defaults.
  assert list(rows)[1:] == ["CMTA", "CMTA (mixture.num_experts=2)", "MT-SAC"]
  # CMTA fixed: seeds share steps 0, 1000, 2000; mean curve 0, 0.5, 0.625.
  mean = np.array([0.0, 0.5, 0.625])
  smoothed = success_curve.smooth(mean)  # 0, 0.1, 0.205
  assert smoothed.max() == pytest.approx(0.205)
  final_scores = np.array([[1.0, 0.5], [0.5, 0.5]])
  iqm = np.sort(final_scores.ravel())[1:3].mean()  # 0.5
  fixed = rows["CMTA"][:5]
  assert fixed[:3] == ["20.50%", "62.50%", "62.50%"]
  assert fixed[3].startswith(f"{100 * iqm:.2f}% [")
  assert fixed[4] == "2 @ 2,000"
  assert rows["CMTA"][5:8] == ["36.00%", "100.00%", "100.00%"]  # mixed: smoothed 0, 0.2, 0.36
  # No mixed run of the other rows: "/" in every mixed column.
  assert rows["MT-SAC"][5:] == ["/"] * 5 and rows["CMTA (mixture.num_experts=2)"][5:] == ["/"] * 5
  assert rows["MT-SAC"][:3] == ["10.00%", "50.00%", "50.00%"]


def test_latex_output_escapes_and_keeps_every_cell(tree):
  text = _table([tree], tables.latex)
  assert "\\multicolumn{5}{c}{MT10-Fixed}" in text and "\\multicolumn{5}{c}{MT10-Mixed}" in text
  assert "CMTA (mixture.num\\_experts=2) & 10.00\\% & 50.00\\%" in text
  assert text.count("\\\\") == 2 + 3  # two header lines, three rows


def test_a_duplicated_directory_a_duplicated_seed_and_a_corrupt_run_are_refused(tree, capsys):
  run = os.path.join(tree, "fixed", "mtsac_s0")
  with pytest.raises(ValueError, match="is given twice"):
    _table([run, run])
  twin = write_run(os.path.join(tree, "copy_of_cmta_s0"), [0.0, 0.5, 0.5], seed=0)
  with pytest.raises(ValueError, match=r"the same setting with the same seed \(0\)") as error:
    _table([tree])
  assert "copy_of_cmta_s0" in str(error.value)
  os.rename(twin, os.path.join(os.path.dirname(tree), "elsewhere"))

  with open(os.path.join(run, "metrics.jsonl"), "a") as f:
    f.write("{garbled\n{}\n")
  with pytest.raises(ValueError, match=r"mtsac_s0/metrics.jsonl, line 7: .*--skip_bad_runs"):
    _table([tree])
  # With the flag: named on stderr, and the table has every other row.
  assert list(_rows(_table([tree], skip_bad_runs=True)))[1:] == [
    "CMTA",
    "CMTA (mixture.num_experts=2)",
  ]
  assert "skipped: " in capsys.readouterr().err


def test_the_command_writes_the_table_and_names_a_corrupt_run_in_one_line(tree, tmp_path):
  out = str(tmp_path / "table.md")
  result = _tables(tree, f"--out={out}")
  assert result.returncode == 0 and result.stdout.strip() == f"wrote {out}", result.stderr
  assert open(out).read() == _table([tree])
  with open(os.path.join(tree, "fixed", "mtsac_s0", "metrics.jsonl"), "a") as f:
    f.write("{garbled\n{}\n")
  result = _tables(tree)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 1 and len(lines) == 1, result.stderr
  assert "mtsac_s0/metrics.jsonl, line 7: not a JSON record" in lines[0]


@pytest.mark.parametrize(
  "args,message",
  [
    ([], "usage: tables.py RUN_DIR"),
    (
      ["--out=/nonexistent/dir/t.md", "."],
      "/nonexistent/dir is not a directory (for /nonexistent/dir/t.md)",
    ),
    (["--bootstrap_reps=0", "."], "--bootstrap_reps must be positive"),
  ],
)
def test_bad_input_is_one_line_before_any_work(args, message):
  result = _tables(*args)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 1 and len(lines) == 1 and message in lines[0], result.stderr


def test_a_setting_not_evaluated_yet_says_so_in_its_cell(tree):
  write_run(os.path.join(tree, "fixed", "cmta_s2"), [], seed=2)
  write_run(os.path.join(tree, "mixed", "mtsac_s0"), [], agent="mtsac", mode="mixed")
  rows = _rows(_table([tree]))
  assert rows["CMTA"][:5] == ["no common evaluation yet (seed 2 has none)", "-", "-", "-", "3"]
  assert rows["MT-SAC"][5:] == ["no evaluation yet", "-", "-", "-", "1"]
  assert rows["CMTA"][5:8] == ["36.00%", "100.00%", "100.00%"]  # the other cells as before
  assert "nan" not in _table([tree], tables.latex).lower()
