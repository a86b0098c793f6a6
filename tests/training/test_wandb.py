"""Weights & Biases, offline (WANDB_MODE=offline): a run's records, config, summary and curves
go to one W&B run per seed, continued by a resume; a batch's seeds are a group; bad flags are
one line; without the flag nothing of W&B is imported."""

import functools
import json
import os
import subprocess
import sys

import pytest
from driver_support import (
  CLI_TIMEOUT,
  TOTAL_STEPS,
  LogCapture,
  cli_args,
  make_config,
  read_records,
  subprocess_env,
  train,
)
from wandb_files import offline_runs, run_info

from cmta_jax import config as config_lib
from cmta_jax.reporting import figures
from cmta_jax.training import metrics_log, wandb_log

pytestmark = pytest.mark.usefixtures("compilation_cache_dir")

HALF = TOTAL_STEPS // 2


def _tracker(**options):
  return functools.partial(
    wandb_log.WandbTracker, wandb_log.WandbOptions(project="cmta-tests", **options)
  )


def _logged(run_dir: str) -> list[dict]:
  """metrics.jsonl as the rows W&B should hold: env_step and each scalar by its name."""
  return [{"env_step": r["step"], **metrics_log.scalars(r)} for r in read_records(run_dir)]


def _rows(info: dict) -> list[dict]:
  """An offline run's history rows of records (not the curves image), W&B's own keys left out."""
  return [
    {k: v for k, v in row.items() if not k.startswith("_")}
    for row in info["history"]
    if not _is_image(row)
  ]


def _is_image(row: dict) -> bool:
  return row.get("curves/_type") == "image-file"


@pytest.mark.slow
def test_a_run_and_its_resume_log_to_one_wandb_run(tmp_path, monkeypatch):
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.delenv("WANDB_DIR", raising=False)
  run_dir = str(tmp_path / "run")
  tracker = _tracker(entity="cmta", group="g", tags=("a", "b"))
  train(make_config(total_steps=HALF), run_dir, log=LogCapture(), open_tracker=tracker)
  first_records = _logged(run_dir)
  train(
    make_config(),
    run_dir,
    log=LogCapture(),
    open_tracker=tracker,
    draw_curves=figures.run_curves,
  )

  first, second = (run_info(d) for d in offline_runs(os.path.join(run_dir, "wandb")))
  with open(os.path.join(run_dir, wandb_log.ID_FILE)) as f:
    run_id = f.read().strip()
  assert run_id.startswith("run-") and first["id"] == second["id"] == run_id
  assert (first["project"], first["group"], first["tags"]) == ("cmta-tests", "g", ["a", "b"])
  assert first["name"] == "run"
  # Every record of metrics.jsonl, under TensorBoard's names, in the run that wrote it.
  assert _rows(first) == first_records
  everything = _logged(run_dir)
  assert _rows(second) == everything[len(first_records) :]
  assert [r["env_step"] for r in everything] == sorted(r["env_step"] for r in everything)
  # The config, as config.json has it; the final summary and the curves image at the end.
  flat = config_lib.flatten(make_config())
  assert {k: second["config"][k] for k in flat} == {
    k: list(v) if isinstance(v, tuple) else v for k, v in flat.items()
  }
  assert second["config"]["run_dir"] == os.path.abspath(run_dir)
  assert second["summary"]["resumed_from_step"] == HALF
  assert second["summary"]["steps"] == TOTAL_STEPS
  assert second["summary"]["max_smoothed"] == pytest.approx(read_summary(run_dir)["max_smoothed"])
  (image,) = [row for row in second["history"] if _is_image(row)]
  assert image["env_step"] == TOTAL_STEPS
  assert not any(_is_image(row) for row in first["history"])  # the first stopped half-way


def read_summary(run_dir: str) -> dict:
  with open(os.path.join(run_dir, "summary.json")) as f:
    return json.load(f)


def test_the_run_id_is_kept_in_the_run_directory(tmp_path):
  run_dir = tmp_path / "cmta mt10" / "seed3"
  run_dir.mkdir(parents=True)
  made = wandb_log.run_id(str(run_dir))
  assert made.startswith("cmta-mt10-seed3-") and len(made) <= 64
  assert wandb_log.run_name(str(run_dir)) == "cmta mt10/seed3"
  moved = tmp_path / "moved"
  os.rename(run_dir, moved)
  assert wandb_log.run_id(str(moved)) == made  # a moved run goes on in the same W&B run
  (moved / wandb_log.ID_FILE).write_text("not an id!\n")
  with pytest.raises(ValueError, match="is not a W&B run id; delete the file for a new one"):
    wandb_log.run_id(str(moved))


@pytest.mark.slow
def test_a_batch_of_seeds_is_a_group_of_wandb_runs_from_the_command_line(
  tmp_path, compilation_cache_dir
):
  run_dir = str(tmp_path / "batch")
  env = dict(subprocess_env(compilation_cache_dir), WANDB_MODE="offline")
  env.pop("WANDB_DIR", None)
  args = [*cli_args(run_dir, seed=None, total_steps=HALF), "--seeds=0-1"]
  args += ["--wandb_project=cmta-tests", "--wandb_tags=table1,mt10"]
  result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=CLI_TIMEOUT)
  assert result.returncode == 0, result.stderr
  assert "wandb" not in result.stderr.lower()  # W&B stays off the console
  ids = set()
  for seed in (0, 1):
    seed_dir = os.path.join(run_dir, f"seed{seed}")
    (offline,) = offline_runs(os.path.join(seed_dir, "wandb"))
    info = run_info(offline)
    assert (info["group"], info["tags"], info["name"]) == (
      "batch",
      ["table1", "mt10"],
      f"batch/seed{seed}",
    )
    assert info["config"]["train.seed"] == seed
    assert _rows(info) == _logged(seed_dir)
    ids.add(info["id"])
  assert len(ids) == 2


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--wandb_tags=a"], "--wandb_tags needs --wandb_project"),
    (["--wandb_group=g"], "--wandb_group needs --wandb_project"),
    (
      ["--wandb_project=my project"],
      "--wandb_project: 'my project' is not a W&B name (letters, digits, _ . -)",
    ),
    (["--wandb_project=p", "--wandb_group= "], "--wandb_group: give a name or leave the flag out"),
  ],
)
def test_bad_wandb_flags_are_one_line_before_anything_is_written(
  tmp_path, compilation_cache_dir, flags, message
):
  run_dir = tmp_path / "run"
  result = subprocess.run(
    [*cli_args(str(run_dir)), *flags],
    capture_output=True,
    text=True,
    env=subprocess_env(compilation_cache_dir),
    timeout=CLI_TIMEOUT,
  )
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 1 and lines == [f"error: {message}"], result.stderr
  assert not run_dir.exists()


def test_without_the_flag_nothing_of_wandb_is_imported():
  script = (
    "import sys\n"
    "from cmta_jax.training import launch, metrics_log, wandb_log\n"
    "wandb_log.run_name('runs/x')\n"
    "print(sorted(m for m in sys.modules if m.split('.')[0] == 'wandb'))\n"
  )
  result = subprocess.run(
    [sys.executable, "-c", script], capture_output=True, text=True, timeout=CLI_TIMEOUT
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "[]"
