"""Run a sweep of training jobs, here or on a SLURM cluster; or say where one stands.

  python experiments/sweep.py --table=1 --root=runs/table1 --dry_run
  python experiments/sweep.py --table=1 --root=runs/table1 --executor=slurm --partition=gpu \\
      --gpus_per_job=1 --cpus_per_job=8 --time_min=2880
  python experiments/sweep.py --sweep_file=my_sweep.toml --root=runs/mine --parallel=2
  python experiments/sweep.py --status --root=runs/table1

Each job is one `experiments/train.py --seeds=...` command with its own run directory,
ROOT/<setting>/<variant> (cmta_jax/sweeps/plan.py). Running the same sweep again skips
finished jobs, resumes stopped ones, leaves running or queued ones alone and does not retry
failed ones unless --retry_failed.
"""

import json
import os
import shlex

from absl import app, flags

from cmta_jax import cli

_TABLE = flags.DEFINE_enum(
  "table", None, ["1", "2", "8"], "A paper table's jobs (docs/results.md)."
)
_SWEEP_FILE = flags.DEFINE_string(
  "sweep_file", None, "A sweep file (TOML: settings, seeds, [[variant]], [flags]; see README)."
)
_ROOT = flags.DEFINE_string("root", None, "Where the runs go: ROOT/<setting>/<variant>.")
_SEEDS = flags.DEFINE_string("seeds", "0-7", "Seeds of every job of --table (e.g. 0-7).")
_OVERRIDE = flags.DEFINE_multi_string(
  "override",
  [],
  "A train.py flag for every job, name=value (e.g. --override=total_steps=300); not part of "
  "the run directories' names, so a sweep may be extended.",
)
_EXECUTOR = flags.DEFINE_enum("executor", "local", ["local", "slurm"], "Where jobs run.")
_PARALLEL = flags.DEFINE_integer(
  "parallel", 1, "local: jobs at a time, each pinned to its share of this machine's cores."
)
_GPUS_PER_JOB = flags.DEFINE_integer("gpus_per_job", 0, "GPUs per job (both executors).")
_CPUS_PER_JOB = flags.DEFINE_integer("cpus_per_job", 4, "slurm: CPU cores per job.")
_MEM_GB = flags.DEFINE_integer("mem_gb", 0, "slurm: memory per job in GB (0: the default).")
_PARTITION = flags.DEFINE_string("partition", "", "slurm: partition (default: the cluster's).")
_TIME_MIN = flags.DEFINE_integer(
  "time_min", 2880, "slurm: time limit per attempt in minutes; a job near it is requeued."
)
_ARRAY_PARALLELISM = flags.DEFINE_integer(
  "array_parallelism", 64, "slurm: jobs of the sweep running at once."
)
_SBATCH = flags.DEFINE_multi_string(
  "sbatch", [], "slurm: an extra sbatch option, name=value (e.g. --sbatch=account=rl)."
)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print each job's train.py command; run nothing.")
_STATUS = flags.DEFINE_bool(
  "status", False, "Print where each job of the sweep under --root stands."
)
_RETRY_FAILED = flags.DEFINE_bool("retry_failed", False, "Run failed jobs again.")
_WANDB_PROJECT = flags.DEFINE_string(
  "wandb_project",
  None,
  "Every job logs to this W&B project (train.py --wandb_project), the seeds of a job as one "
  "group, ROOT's name/<setting>/<variant>.",
)
_WANDB_ENTITY = flags.DEFINE_string("wandb_entity", None, "W&B entity (default: yours).")
_WANDB_TAGS = flags.DEFINE_list("wandb_tags", [], "W&B tags of every run, comma-separated.")

_SKIPPED = ("done", "running", "queued", "diverged")


def _jobs():
  from cmta_jax.sweeps import plan

  if (_TABLE.value is None) == (_SWEEP_FILE.value is None):
    raise ValueError("give either --table or --sweep_file")
  overrides = [plan.parse_override(text) for text in _OVERRIDE.value]
  if _TABLE.value is not None:
    return plan.table_jobs(_TABLE.value, _SEEDS.value), overrides
  jobs, file_flags = plan.file_jobs(_SWEEP_FILE.value)
  return jobs, [*file_flags, *overrides]


def _wandb_flags(job, root: str) -> list[tuple[str, str]]:
  """The train.py flags that send `job`'s runs to W&B, grouped by job ([] without W&B)."""
  if _WANDB_PROJECT.value is None:
    if _WANDB_ENTITY.value is not None or _WANDB_TAGS.value:
      raise ValueError("--wandb_entity and --wandb_tags need --wandb_project")
    return []
  from cmta_jax.training import wandb_log  # wandb itself is not imported

  # Checked once here, not in every job after it reaches the queue.
  wandb_log.WandbOptions(
    _WANDB_PROJECT.value, _WANDB_ENTITY.value, None, tuple(_WANDB_TAGS.value)
  ).validate()
  wandb_log.check_installed()
  flags_ = [("wandb_project", _WANDB_PROJECT.value)]
  if _WANDB_ENTITY.value is not None:
    flags_.append(("wandb_entity", _WANDB_ENTITY.value))
  if _WANDB_TAGS.value:
    flags_.append(("wandb_tags", ",".join(_WANDB_TAGS.value)))
  return [*flags_, ("wandb_group", f"{os.path.basename(root)}/{job.name}")]


def _sbatch_args() -> dict[str, str]:
  args = {}
  for text in _SBATCH.value:
    name, sep, value = text.partition("=")
    if not sep or not name:
      raise ValueError(f"--sbatch takes name=value (an sbatch option without --), got {text!r}")
    args[name] = value
  return args


def _plan_path(root: str) -> str:
  from cmta_jax.sweeps import records

  return os.path.join(root, records.SWEEP_DIR, "plan.json")


def _remember(root: str, jobs) -> None:
  """Adds the jobs to ROOT/.sweep/plan.json, which --status reads."""
  path = _plan_path(root)
  known = _remembered(root)
  names = {job.name for job in known}
  merged = known + [job for job in jobs if job.name not in names]
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(
      [dict(setting=j.setting, agent=j.agent, flags=list(j.flags), seeds=j.seeds) for j in merged],
      f,
      indent=1,
    )
  os.replace(path + ".tmp", path)


def _remembered(root: str):
  from cmta_jax.sweeps.plan import Job

  try:
    with open(_plan_path(root)) as f:
      entries = json.load(f)
  except FileNotFoundError:
    return []
  except ValueError as error:
    raise ValueError(f"{_plan_path(root)} is not valid JSON ({error})") from None
  return [
    Job(e["setting"], e["agent"], tuple(tuple(flag) for flag in e["flags"]), e["seeds"])
    for e in entries
  ]


def _print_status(root: str, jobs) -> None:
  from cmta_jax.sweeps import status

  queue = status.slurm_states()
  states = [status.job_status(job, root, queue) for job in jobs]
  print(f"{'setting':<18} {'variant':<44} {'seeds':<11} {'steps reached':>17}  state")
  for job_status in states:
    print(job_status.line)
  counts = {}
  for job_status in states:
    counts[job_status.state] = counts.get(job_status.state, 0) + 1
  print(f"{len(states)} jobs: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
  print(f"table of what has finished: python experiments/tables.py {root}")


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are written --name=value)")
  try:
    if not _ROOT.value:
      raise ValueError("--root is required (where the sweep's runs go)")
    root = os.path.abspath(_ROOT.value)
    if _STATUS.value:
      if _TABLE.value is None and _SWEEP_FILE.value is None:
        jobs = _remembered(root)
        if not jobs:
          raise ValueError(f"{root} holds no sweep (no {_plan_path(root)})")
      else:
        jobs = _jobs()[0]
      _print_status(root, jobs)
      return
    jobs, overrides = _jobs()
    from cmta_jax.sweeps import executors, plan, status

    plan.check_jobs(jobs, overrides)
    sbatch_args = _sbatch_args()
    if _EXECUTOR.value == "local":
      executors.core_slots(_PARALLEL.value)  # enough cores?
    commands = [(job, job.command(root, [*overrides, *_wandb_flags(job, root)])) for job in jobs]
    if _DRY_RUN.value:
      for _, command in commands:
        print(shlex.join(command))
      return
    queue = status.slurm_states()
    to_run = []
    for job, command in commands:
      state = status.job_status(job, root, queue)
      if state.state in _SKIPPED or (state.state == "failed" and not _RETRY_FAILED.value):
        why = f" ({state.detail})" if state.detail else ""
        hint = "; --retry_failed runs it again" if state.state == "failed" else ""
        print(f"{job.name}: {state.state}{why}, skipped{hint}")
        continue
      to_run.append((job, command))
    _remember(root, jobs)
    if not to_run:
      print("nothing to run")
      return
    if _EXECUTOR.value == "slurm":
      executors.submit_slurm(
        to_run,
        root,
        partition=_PARTITION.value,
        time_min=_TIME_MIN.value,
        cpus_per_job=_CPUS_PER_JOB.value,
        gpus_per_job=_GPUS_PER_JOB.value,
        mem_gb=_MEM_GB.value,
        array_parallelism=_ARRAY_PARALLELISM.value,
        sbatch_args=sbatch_args,
      )
      print(f"watch it: python experiments/sweep.py --status --root={root}")
      return
    results = executors.run_local(to_run, root, _PARALLEL.value, _GPUS_PER_JOB.value)
  except KeyboardInterrupt:
    cli.fail("stopped: running jobs checkpointed; the same command resumes", cli.EXIT_PREEMPTED)
  except (ValueError, OSError) as error:
    cli.fail(error)
  failed = [name for name, code in results.items() if code != 0]
  if failed:
    cli.fail(f"{len(failed)} of {len(results)} jobs did not finish: {', '.join(failed)}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
