"""Where a sweep's jobs run: on this machine (N at a time, each pinned to its own cores and
GPUs) or on a SLURM cluster through submitit (requeued after preemption and time-outs).

Every attempt of a job runs `TrainCommand`: it starts the job's train.py, waits for it and
records how it ended (records.write_result). train.py exits 75 when a stop signal made it
checkpoint and stop; under SLURM such a job is requeued and its next attempt resumes.
"""

import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any

from cmta_jax import cli
from cmta_jax.sweeps import records
from cmta_jax.sweeps.plan import Job


class TrainCommand:
  """One attempt of a job (picklable: what submitit sends to the cluster). `__call__` runs
  the command with its console going to `log_path`, records the result in `record_dir`,
  and returns the exit status; submitit calls `checkpoint` when SLURM warns that the time
  limit is near (its --signal): the command, warned too, checkpoints and stops, and the job
  is requeued."""

  def __init__(self, command: list[str], record_dir: str, env: dict | None = None):
    self.command = command
    self.record_dir = record_dir
    self.env = env
    self._process: subprocess.Popen | None = None

  def __getstate__(self) -> dict:
    return {**self.__dict__, "_process": None}

  def __call__(self) -> int:
    os.makedirs(self.record_dir, exist_ok=True)
    log_path = os.path.join(self.record_dir, "train.log")
    with open(log_path, "a") as log:
      log.write(f"\n=== {' '.join(self.command)}\n")
      log.flush()
      self._process = subprocess.Popen(
        self.command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=None if self.env is None else {**os.environ, **self.env},
      )
      status = _wait(self._process)
    with open(log_path) as log:
      error = records.error_line(log.read()) if status not in (0, cli.EXIT_PREEMPTED) else None
    records.write_result(self.record_dir, status, error)
    if status == cli.EXIT_PREEMPTED and "SLURM_JOB_ID" in os.environ:
      _requeue_this_slurm_job()
    if status not in (0, cli.EXIT_PREEMPTED):
      raise RuntimeError(f"{' '.join(self.command)} failed (exit {status}): {error}")
    return status

  def stop(self) -> None:
    """Asks the running command to checkpoint and stop (SIGTERM); returns at once."""
    if self._process is not None and self._process.poll() is None:
      self._process.send_signal(signal.SIGTERM)

  def checkpoint(self, *args: Any, **kwargs: Any):
    """submitit's hook before a requeue: waits for train.py to checkpoint and stop (it got
    the same signal; SIGTERM it again in case it did not), then resubmits this command."""
    import submitit  # (only ever called inside a submitit job)

    self.stop()
    if self._process is not None:
      _wait(self._process, timeout_s=80)
    return submitit.helpers.DelayedSubmission(
      TrainCommand(self.command, self.record_dir, self.env), *args, **kwargs
    )


def _wait(process: subprocess.Popen, timeout_s: float | None = None) -> int | None:
  """Polls rather than blocks, so that a signal handler (submitit's) may poll it as well."""
  deadline = None if timeout_s is None else time.monotonic() + timeout_s
  while process.poll() is None:
    if deadline is not None and time.monotonic() > deadline:
      return None
    time.sleep(0.2)
  return process.returncode


def _requeue_this_slurm_job() -> None:
  """Puts this job back in the queue (its next attempt resumes the run). If SLURM is already
  requeuing it (preemption, `scontrol requeue`), this changes nothing."""
  job_id = os.environ.get("SLURM_JOB_ID")
  if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
    job_id = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
  subprocess.run(["scontrol", "requeue", job_id], capture_output=True, timeout=60, check=False)


# ----------------------------------------------------------------------------- this machine


def core_slots(parallel: int, cores: Sequence[int] | None = None) -> list[list[int]]:
  """`parallel` disjoint sets of this process's cores, as even as they split; ValueError if
  there are fewer cores than jobs."""
  cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
  if parallel < 1:
    raise ValueError(f"--parallel must be >= 1, got {parallel}")
  if parallel > len(cores):
    raise ValueError(
      f"--parallel={parallel} jobs need as many cores; this machine has {len(cores)}"
    )
  per = len(cores) // parallel
  return [cores[i * per : (i + 1) * per] for i in range(parallel)]


def run_local(
  jobs: Sequence[tuple[Job, list[str]]],
  root: str,
  parallel: int,
  gpus_per_job: int,
  log=print,
) -> dict[str, int | None]:
  """Runs (job, command) pairs on this machine, `parallel` at a time, each pinned to its own
  cores (and `gpus_per_job` GPUs through CUDA_VISIBLE_DEVICES). SIGTERM or Ctrl-C stops them
  all (each checkpoints) and raises KeyboardInterrupt once they have. Returns {job name:
  exit status}."""
  slots = core_slots(parallel)
  free = list(range(parallel))
  results: dict[str, int | None] = {}
  lock = threading.Condition()
  running: dict[str, TrainCommand] = {}
  stopping = threading.Event()

  def run_one(job: Job, command: list[str], slot: int) -> None:
    env = {
      "CUDA_VISIBLE_DEVICES": ",".join(str(slot * gpus_per_job + g) for g in range(gpus_per_job))
    }
    cores = ",".join(map(str, slots[slot]))
    attempt = TrainCommand(
      ["taskset", "-c", cores, *command],
      records.job_dir(root, job.name),
      env if gpus_per_job else None,
    )
    with lock:
      running[job.name] = attempt
    try:
      status = attempt()
    except RuntimeError:
      status = (records.read_result(root, job.name) or {}).get("status")
    with lock:
      results[job.name] = status
      running.pop(job.name)
      free.append(slot)
      lock.notify_all()
    state = {0: "done", cli.EXIT_PREEMPTED: "stopped (resumes on the next launch)"}.get(status)
    error = (records.read_result(root, job.name) or {}).get("error")
    log(f"{job.name}: {state or f'failed (exit {status}): {error}'}")

  def stop(signum, frame):
    del frame
    if not stopping.is_set():
      log(f"{signal.Signals(signum).name}: stopping every running job after its checkpoint")
      stopping.set()
      with lock:
        for attempt in running.values():
          attempt.stop()

  previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
  threads = []
  try:
    for job, command in jobs:
      with lock:
        while not free and not stopping.is_set():
          lock.wait(0.5)
        if stopping.is_set():
          break
        slot = free.pop(0)
      records.write_submitted(root, job.name, "local", command)
      log(f"{job.name}: started on cores {','.join(map(str, slots[slot]))}")
      thread = threading.Thread(target=run_one, args=(job, command, slot), daemon=True)
      thread.start()
      threads.append(thread)
    for thread in threads:
      while thread.is_alive():
        thread.join(0.5)
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)
  if stopping.is_set():
    raise KeyboardInterrupt
  return results


# ----------------------------------------------------------------------------- SLURM


def submit_slurm(
  jobs: Sequence[tuple[Job, list[str]]],
  root: str,
  *,
  partition: str,
  time_min: int,
  cpus_per_job: int,
  gpus_per_job: int,
  mem_gb: int,
  array_parallelism: int,
  sbatch_args: dict[str, str],
  log=print,
) -> list[str]:
  """Submits the jobs as one SLURM job array through submitit (one array task per job);
  returns their job ids. Each task is requeued after preemption or when its time limit
  nears (submitit's --signal=USR2), up to submitit's limit of timeouts."""
  import submitit  # (only when submitting to a cluster)

  executor = submitit.AutoExecutor(folder=os.path.join(root, records.SWEEP_DIR, "slurm", "%j"))
  if executor.cluster != "slurm":
    raise ValueError("--executor=slurm: no SLURM here (sbatch not found or not working)")
  parameters = dict(
    timeout_min=time_min,
    cpus_per_task=cpus_per_job,
    gpus_per_node=gpus_per_job,
    slurm_array_parallelism=array_parallelism,
    slurm_additional_parameters=sbatch_args,
    name="cmta_jax_sweep",
  )
  if partition:
    parameters["slurm_partition"] = partition
  if mem_gb:
    parameters["mem_gb"] = mem_gb
  executor.update_parameters(**parameters)
  attempts = [TrainCommand(command, records.job_dir(root, job.name)) for job, command in jobs]
  for job, _ in jobs:
    records.clear_result(root, job.name)
  with executor.batch():  # one job array
    handles = [executor.submit(attempt) for attempt in attempts]
  submitted = handles
  for (job, command), handle in zip(jobs, submitted):
    records.write_submitted(root, job.name, "slurm", command, handle.job_id)
    log(f"{job.name}: submitted as SLURM job {handle.job_id}")
  return [handle.job_id for handle in submitted]
