"""cmta_jax/figures.py and experiments/plot_curves.py: images of the expected size, written
whole, with one-line refusals; young runs drawn as they are (a marker for one evaluation, a
legend entry for none, no file when nothing is drawn). (A real run's own curves.png:
tests/training/test_driver.py.)"""

import os
import re
import subprocess
import sys

import pytest

from cmta_jax import testing
from cmta_jax.reporting import figures, run_sets, tables
from cmta_jax.step_labels import step_label

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


def _cells(*paths: str) -> list[tables.Cell]:
  return tables.arrange(run_sets.group_by_setting(tables.load_runs(list(paths), False)))


def _markers(ax) -> list:
  """The lines of `ax` that are a single point drawn as a marker."""
  return [
    line
    for line in ax.get_lines()
    if len(line.get_xdata()) == 1 and line.get_marker() not in (None, "", "None", " ")
  ]


def _tick_labels(ax) -> list[str]:
  formatter = ax.xaxis.get_major_formatter()
  low, high = ax.get_xlim()
  return [formatter(tick) for tick in ax.get_xticks() if low <= tick <= high]


def test_one_evaluation_is_a_marker_on_an_axis_around_its_step(tmp_path):
  run = testing.write_synthetic_run(str(tmp_path / "one"), [0.5], first_eval=1500)
  cells = _cells(run)
  drawn = [
    figures.setting_curves_figure(cells).axes[0],
    *figures.per_task_curves_figure(cells, "MT10-Fixed").axes,
    figures.run_curves_figure(cells[0].runs[0].evals, "one").axes[0],
  ]
  for ax in drawn:
    assert [list(m.get_xydata()[0]) for m in _markers(ax)][0] == [1500, 0.5]
    assert list(ax.get_xticks()) == [0, 1500] and _tick_labels(ax) == ["0", "1.5k"]
    assert ax.get_xlim() == (0, 3000)
  legend = [t.get_text() for t in drawn[0].get_legend().get_texts()]
  assert legend == ["CMTA (1 seed, one evaluation so far)"]


def test_step_ticks_are_exact(tmp_path):
  run = testing.write_synthetic_run(str(tmp_path / "run"), [0.0, 0.5, 1.0, 0.5], eval_every=500)
  ax = figures.setting_curves_figure(_cells(run)).axes[0]
  labels = _tick_labels(ax)
  assert "1k" in labels and len(set(labels)) == len(labels) > 2
  assert labels == [step_label(round(tick)) for tick in ax.get_xticks() if 0 <= tick <= 1500]


def test_a_variant_without_evaluations_is_named_in_the_legend(tmp_path):
  evaluated = testing.write_synthetic_run(str(tmp_path / "cmta_s0"), [0.0, 0.5], seed=0)
  waiting = testing.write_synthetic_run(str(tmp_path / "cmta_s1"), [], seed=1)
  mtsac = testing.write_synthetic_run(str(tmp_path / "mtsac"), [0.0, 1.0], agent="mtsac")
  mixed = testing.write_synthetic_run(str(tmp_path / "mixed"), [], mode="mixed")
  fixed_panel, mixed_panel = figures.setting_curves_figure(
    _cells(evaluated, waiting, mtsac, mixed)
  ).axes
  legend = [t.get_text() for t in fixed_panel.get_legend().get_texts()]
  assert legend == ["CMTA (2 seeds): no common evaluation yet (seed 1 has none)", "MT-SAC (1 seed)"]
  assert [t.get_text() for t in mixed_panel.get_legend().get_texts()] == [
    "CMTA (1 seed): no evaluation yet"
  ]
  assert [t.get_text() for t in mixed_panel.texts] == ["nothing to draw yet"]
  assert list(mixed_panel.get_xticks()) == []
  with pytest.raises(figures.NothingToDraw, match="no run has an evaluation yet"):
    figures.setting_curves_figure(_cells(waiting))


def _assert_clean(result: subprocess.CompletedProcess) -> None:
  assert result.returncode == 0, result.stderr
  assert not re.search(r"\bnan\b", result.stdout + result.stderr, re.IGNORECASE)
  assert "Warning" not in result.stderr, result.stderr


def test_the_command_on_one_evaluation_writes_every_figure(tmp_path):
  run = testing.write_synthetic_run(str(tmp_path / "one"), [0.5], first_eval=1000)
  out = str(tmp_path / "curves.png")
  result = _plot_curves(run, f"--out={out}", "--per_task", "--profile")
  _assert_clean(result)
  written = [line.removeprefix("wrote ") for line in result.stdout.strip().splitlines()]
  assert written == [
    out,
    str(tmp_path / "curves_profile.png"),
    str(tmp_path / "curves_MT10-Fixed.png"),
  ]
  assert testing.png_size(out) == PANEL


def test_the_command_with_nothing_to_draw_says_so_and_writes_nothing(tmp_path):
  run = testing.write_synthetic_run(str(tmp_path / "started"), [])
  result = _plot_curves(run, f"--out={tmp_path / 'curves.png'}", "--per_task", "--profile")
  _assert_clean(result)
  assert result.stdout.strip() == f"no figure written: no run has an evaluation yet ({run})"
  assert sorted(os.listdir(tmp_path)) == ["started"]


def test_the_command_names_the_figure_a_young_setting_leaves_out(tmp_path):
  fixed = testing.write_synthetic_run(str(tmp_path / "fixed"), [0.0, 0.5, 1.0])
  mixed = testing.write_synthetic_run(str(tmp_path / "mixed"), [], mode="mixed")
  out = str(tmp_path / "curves.png")
  result = _plot_curves(fixed, mixed, f"--out={out}", "--per_task")
  _assert_clean(result)
  assert result.stdout.strip().splitlines() == [
    f"wrote {out}",
    f"wrote {tmp_path / 'curves_MT10-Fixed.png'}",
    f"not written: {tmp_path / 'curves_MT10-Mixed.png'} (nothing to draw: no run has an "
    f"evaluation yet ({mixed}))",
  ]
  assert not os.path.exists(tmp_path / "curves_MT10-Mixed.png")
