"""Sweeps: the paper's tables and sweep files as train.py jobs, checked before anything runs."""

import os
import re
import shlex
import subprocess
import sys

import pytest

from cmta_jax import cli
from cmta_jax.sweeps import plan

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SWEEP = os.path.join(REPO, "experiments", "sweep.py")


def test_table_1_is_every_agent_in_four_settings_and_single_sac_on_mt10():
  jobs = plan.table_jobs("1", "0-7")
  assert len(jobs) == 26 and len({job.name for job in jobs}) == 26
  by_agent = {}
  for job in jobs:
    by_agent.setdefault(job.agent, []).append(job.setting)
  assert sorted(by_agent) == sorted([*plan._MULTI_TASK_AGENTS, "single_sac"])
  assert all(len(settings) == 4 for agent, settings in by_agent.items() if agent != "single_sac")
  assert by_agent["single_sac"] == ["paper_mt10_fixed", "paper_mt10_mixed"]
  assert all(job.flags == () and job.seeds == "0-7" for job in jobs)


def test_tables_2_and_8_name_their_variants_by_their_flags():
  table2 = {job.name for job in plan.table_jobs("2", "0-7")}
  assert table2 == {
    f"{setting}/{variant}"
    for setting in ("paper_mt10_mixed", "paper_mt50_mixed")
    for variant in (
      "cmta",
      "cmta__contrastive_weight=0.0",
      "care",
      "care__contrastive_weight=2500.0",
    )
  }
  table8 = plan.table_jobs("8", "0-3")
  assert len(table8) == 10
  assert "paper_mt10_mixed/cmta__num_experts=12__total_steps=1000000" in {j.name for j in table8}
  # Table 1's CMTA and Table 2's are the same job, in the same run directory.
  assert plan.table_jobs("1", "0-7")[0].run_dir("/r") == "/r/paper_mt10_fixed/cmta"
  assert plan.table_jobs("2", "0-7")[0].run_dir("/r") == "/r/paper_mt10_mixed/cmta"


def test_a_job_is_one_train_command_whose_overrides_come_last_and_stay_out_of_the_name():
  job = plan.Job("paper_mt10_fixed", "cmta", (("num_experts", 4),), "0-1")
  command = job.command("/runs", [("total_steps", 300), ("num_experts", 2)], python="py")
  assert command == [
    "py",
    plan.TRAIN_SCRIPT,
    "--preset=paper_mt10_fixed",
    "--agent=cmta",
    "--num_experts=2",
    "--total_steps=300",
    "--seeds=0-1",
    "--run_dir=/runs/paper_mt10_fixed/cmta__num_experts=4",
  ]


def test_a_sweep_file_expands_settings_times_variants(tmp_path):
  path = tmp_path / "sweep.toml"
  path.write_text(
    'settings = ["paper_mt10_fixed", "paper_mt10_mixed"]\nseeds = "0-1"\n'
    '[[variant]]\nagent = "cmta"\n'
    '[[variant]]\nagent = "cmta"\nflags = { temporal_attention = false }\n'
    '[[variant]]\nagent = "single_sac"\nsettings = ["paper_mt10_fixed"]\n'
    "[flags]\ntotal_steps = 300\n"
  )
  jobs, overrides = plan.file_jobs(str(path))
  assert [job.name for job in jobs] == [
    "paper_mt10_fixed/cmta",
    "paper_mt10_mixed/cmta",
    "paper_mt10_fixed/cmta__temporal_attention=false",
    "paper_mt10_mixed/cmta__temporal_attention=false",
    "paper_mt10_fixed/single_sac",
  ]
  assert overrides == [("total_steps", 300)] and {job.seeds for job in jobs} == {"0-1"}
  plan.check_jobs(jobs, overrides)


@pytest.mark.parametrize(
  "text,message",
  [
    ("settings = [", "is not valid TOML"),
    ('settings = ["paper_mt10_fixed"]\nagents = ["cmta"]', "unknown key(s) agents"),
    ('settings = ["paper_mt10_fixed"]', "give at least one [[variant]]"),
    ('settings = "paper_mt10_fixed"\n[[variant]]\nagent = "cmta"', "`settings` must be a list"),
    ('settings = ["paper_mt10_fixed"]\n[[variant]]\nflags = {}', "variant 1 names no `agent`"),
  ],
)
def test_a_bad_sweep_file_is_named_in_one_line(tmp_path, text, message):
  path = tmp_path / "sweep.toml"
  path.write_text(text)
  with pytest.raises(ValueError, match=f"sweep file {re.escape(str(path))}.*{re.escape(message)}"):
    plan.file_jobs(str(path))


@pytest.mark.parametrize(
  "job,overrides,message",
  [
    (plan.Job("paper_mt20_fixed", "cmta"), [], "unknown setting 'paper_mt20_fixed'"),
    (plan.Job("paper_mt10_fixed", "cmtb"), [], "unknown agent 'cmtb'"),
    (plan.Job("paper_mt10_fixed", "cmta"), [("totl_steps", 3)], "'totl_steps' is not a flag"),
    (plan.Job("paper_mt10_fixed", "cmta", (("num_experts", 0),)), [], "num_experts must be"),
    (plan.Job("paper_mt10_fixed", "mtsac", (("contrastive_weight", 1.0),)), [], "no auxiliary"),
    (plan.Job("paper_mt10_fixed", "cmta", seeds="3-1"), [], "the range 3-1 is empty"),
  ],
)
def test_jobs_are_checked_before_anything_runs(job, overrides, message):
  with pytest.raises(ValueError, match=f"{job.name}: .*{message}"):
    plan.check_jobs([job], overrides)


def test_overrides_parse_numbers_and_booleans():
  assert plan.parse_override("total_steps=300") == ("total_steps", 300)
  assert plan.parse_override("critic_lr=1e-3") == ("critic_lr", 1e-3)
  assert plan.parse_override("temporal_attention=False") == ("temporal_attention", False)
  assert plan.parse_override("mode=mixed") == ("mode", "mixed")
  with pytest.raises(ValueError, match="--override takes name=value"):
    plan.parse_override("total_steps")


def _sweep(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, SWEEP, *args], capture_output=True, text=True, timeout=120, check=False
  )


def test_dry_run_prints_the_26_commands_of_table_1_and_writes_nothing(tmp_path):
  root = tmp_path / "table1"
  result = _sweep("--table=1", f"--root={root}", "--dry_run", "--seeds=0-1")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert len(lines) == 26 and all(" --seeds=0-1 --run_dir=" in line for line in lines)
  assert not root.exists()


def test_with_wandb_each_job_is_a_group_of_its_seeds_runs(tmp_path):
  root = tmp_path / "table1"
  result = _sweep(
    "--table=1", f"--root={root}", "--dry_run", "--wandb_project=cmta", "--wandb_tags=t1,paper"
  )
  assert result.returncode == 0, result.stderr
  first = shlex.split(result.stdout.splitlines()[0])
  assert first[4:8] == [
    "--wandb_project=cmta",
    "--wandb_tags=t1,paper",
    "--wandb_group=table1/paper_mt10_fixed/cmta",
    "--seeds=0-7",
  ]
  groups = [line.split("--wandb_group=")[1].split()[0] for line in result.stdout.splitlines()]
  assert len(set(groups)) == 26


@pytest.mark.parametrize(
  "args,message",
  [
    (["--table=1"], "--root is required"),
    (["--table=1", "--root=/tmp/x", "--wandb_tags=a"], "--wandb_tags need --wandb_project"),
    (
      ["--table=1", "--root=/tmp/x", "--dry_run", "--wandb_project=my project"],
      "--wandb_project: 'my project' is not a W&B name",
    ),
    (["--root=/tmp/x"], "give either --table or --sweep_file"),
    (["--table=1", "--root=/tmp/x", "--override=totl_steps=3"], "'totl_steps' is not a flag"),
    (["--table=1", "--root=/tmp/x", "--sbatch=account"], "--sbatch takes name=value"),
    (["--table=1", "--root=/tmp/x", "--parallel=999"], "--parallel=999 jobs need as many cores"),
    (["--status", "--root=/nonexistent/sweep"], "holds no sweep"),
  ],
)
def test_bad_input_is_one_line_before_anything_is_written(args, message):
  result = _sweep(*args)
  assert result.returncode == cli.EXIT_ERROR
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
  assert not os.path.exists("/tmp/x/.sweep")
