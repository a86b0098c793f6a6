"""cmta_jax/figures.py and experiments/plot_curves.py: images of the expected size, written
whole, with one-line refusals. (A real run's own curves.png: tests/training/test_driver.py.)"""

import os
import subprocess
import sys

import pytest

from cmta_jax import testing
from cmta_jax.reporting import figures, run_sets, tables

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLOT_CURVES = os.path.join(REPO, "experiments", "plot_curves.py")
PANEL = (480, 360)  # figures.PANEL_INCHES at figures.DPI


@pytest.fixture
def cells(tmp_path):
  root = testing.write_synthetic_tree(str(tmp_path / "runs"))
  return tables.arrange(run_sets.group_by_setting(tables.load_runs([root], False)))


def test_setting_curves_have_a_panel_per_setting(cells, tmp_path):
  path = figures.setting_curves(cells, str(tmp_path / "curves.png"))
  assert testing.png_size(path) == (2 * PANEL[0], PANEL[1])  # MT10-Fixed, MT10-Mixed


def test_per_task_curves_have_a_panel_per_task(cells, tmp_path):
  path = figures.per_task_curves(cells, "MT10-Fixed", str(tmp_path / "tasks.png"))
  assert testing.png_size(path) == (2 * PANEL[0], PANEL[1])  # task-a, task-b
  with pytest.raises(ValueError, match="no runs of MT50-Fixed"):
    figures.per_task_curves(cells, "MT50-Fixed", str(tmp_path / "none.png"))


@pytest.mark.parametrize("extension,magic", [("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_the_extension_chooses_the_format(cells, tmp_path, extension, magic):
  path = figures.setting_curves(cells, str(tmp_path / f"curves.{extension}"))
  with open(path, "rb") as f:
    assert f.read(5).startswith(magic)


def test_a_failed_write_keeps_the_previous_figure(cells, tmp_path, monkeypatch):
  path = figures.setting_curves(cells, str(tmp_path / "curves.png"))
  before = open(path, "rb").read()

  def full_disk(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr("matplotlib.figure.Figure.savefig", full_disk)
  with pytest.raises(OSError, match="No space left"):
    figures.setting_curves(cells, path)
  assert open(path, "rb").read() == before
  assert sorted(os.listdir(tmp_path)) == ["curves.png", "runs"]  # no partial file left


def _plot_curves(*args):
  return subprocess.run(
    [sys.executable, PLOT_CURVES, *args], capture_output=True, text=True, cwd=REPO, timeout=120
  )


def test_the_command_writes_the_figures_it_names(tmp_path):
  root = testing.write_synthetic_tree(str(tmp_path / "runs"))
  out = str(tmp_path / "curves.png")
  result = _plot_curves(root, f"--out={out}", "--per_task", "--profile")
  assert result.returncode == 0, result.stderr
  written = [line.removeprefix("wrote ") for line in result.stdout.strip().splitlines()]
  assert written == [
    out,
    str(tmp_path / "curves_profile.png"),
    str(tmp_path / "curves_MT10-Fixed.png"),
    str(tmp_path / "curves_MT10-Mixed.png"),
  ]
  assert testing.png_size(written[1]) == (2 * PANEL[0], PANEL[1])  # a profile per setting
  assert all(testing.png_size(p)[0] > 0 for p in written)


@pytest.mark.parametrize(
  "args,message",
  [
    ([], "usage: plot_curves.py RUN_DIR"),
    (["--out=curves.gif", "."], "curves.gif: give a file name ending in .png, .svg, .pdf"),
    (["--out=/nonexistent/dir/c.png", "."], "/nonexistent/dir is not a directory"),
  ],
)
def test_bad_input_is_one_line_before_any_work(args, message):
  result = _plot_curves(*args)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 1 and len(lines) == 1 and message in lines[0], result.stderr
