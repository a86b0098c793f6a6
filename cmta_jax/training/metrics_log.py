"""Where a run's numbers go: an append-only JSONL file, TensorBoard, an optional experiment
tracker (Weights & Biases: `wandb_log.py`) and the console.

The JSONL file is the source of truth (one record per log or eval step,
flushed as written). On resume from step s, records after s are dropped, so
the file never holds a duplicate or a missing step. TensorBoard event files
are written with tensorboardX, which purges events after the resume step.
A tracker gets the same scalars under the same names as TensorBoard.
"""

import glob
import json
import math
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from tensorboardX import SummaryWriter
from tensorboardX.proto.summary_pb2 import Summary

METRICS_FILE = "metrics.jsonl"


def _to_json(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _to_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_json(v) for v in value]
  if isinstance(value, np.ndarray):
    return _to_json(value.tolist())
  if isinstance(value, (np.floating, float)):
    value = float(value)
    return value if math.isfinite(value) else str(value)
  if isinstance(value, np.integer):
    return int(value)
  return value


def read_records(run_dir: str) -> list[dict]:
  """The records of RUN_DIR/metrics.jsonl ([] without the file).

  A torn last line (a crash mid-write) is dropped; any other bad line raises ValueError
  naming the file and the line.
  """
  path = os.path.join(run_dir, METRICS_FILE)
  records = []
  for number, record in read_json_lines(path):
    if (
      not isinstance(record, dict)
      or not isinstance(record.get("step"), int)
      or ("kind" not in record)
    ):
      raise ValueError(
        f"{path}, line {number}: not a metrics record (needs 'step' and 'kind'); "
        "fix or delete that line"
      )
    records.append(record)
  return records


def read_json_lines(path: str) -> list[tuple[int, Any]]:
  """(line number, value) of each line of a JSON-lines file that the run appends to ([]
  without the file). A torn last line (a crash mid-write) is dropped; any other line that is
  not JSON raises ValueError naming the file and the line."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = [(number, line) for number, line in enumerate(f, start=1) if line.strip()]
  values = []
  for index, (number, line) in enumerate(lines):
    try:
      values.append((number, json.loads(line)))
    except json.JSONDecodeError as error:
      if index == len(lines) - 1:
        break  # A write cut short by a crash: that step is past the last checkpoint anyway.
      raise ValueError(
        f"{path}, line {number}: not a JSON record ({error.msg}); fix or delete that line"
      ) from None
  return values


def _free_name(path: str) -> str:
  candidate, suffix = path, 0
  while os.path.exists(candidate):
    suffix += 1
    candidate = f"{path}.{suffix}"
  return candidate


class HistoryLost(ValueError):
  """metrics.jsonl lacks records that a run's checkpoint says it had."""


def check_history(
  run_dir: str, step: int, expected_records: int | None, accept_loss: bool
) -> tuple[int, int] | None:
  """Before resuming RUN_DIR at checkpoint `step`: are the metrics records up to it all there?

  `expected_records`: how many records metrics.jsonl held when the checkpoint was written
  (None for checkpoints that predate that count: then at least one record is expected).
  Returns None if nothing is missing, else (records kept, records expected) when
  `accept_loss`; otherwise raises HistoryLost in one line naming a backup that holds them
  (metrics.jsonl.*), if there is one.
  """
  path = os.path.join(run_dir, METRICS_FILE)
  kept = sum(r["step"] <= step for r in read_records(run_dir))
  expected = 1 if expected_records is None else expected_records
  if kept >= expected:
    return None
  if accept_loss:
    return kept, expected
  have = "is missing" if not os.path.exists(path) else f"holds {kept} of them"
  backups = [
    candidate
    for candidate in sorted(glob.glob(path + ".*"))
    if not candidate.endswith(".tmp") and _count_up_to(candidate, step) >= expected
  ]
  way_out = (
    f"restore it from {backups[-1]} (cp {backups[-1]} {path})"
    if backups
    else "restore it from a backup"
  )
  raise HistoryLost(
    f"{path} {have}, but the checkpoint at step {step} follows {expected} records: resuming "
    f"would lose the run's history up to step {step}; {way_out}, or pass "
    "--accept_history_loss to resume without it"
  )


def _count_up_to(path: str, step: int) -> int:
  """Records at steps <= `step` in a copy of metrics.jsonl (0 if it cannot be read)."""
  try:
    with open(path) as f:
      records = [json.loads(line) for line in f if line.strip()]
  except (OSError, ValueError):
    return 0
  return sum(
    isinstance(r, dict) and isinstance(r.get("step"), int) and r["step"] <= step for r in records
  )


class Tracker(Protocol):
  """An experiment tracker the run's records also go to (`wandb_log.WandbTracker`)."""

  def log(self, step: int, scalars: dict[str, float]) -> None: ...

  def finish(self, summary: dict, curves_path: str | None) -> None: ...

  def close(self) -> None: ...


# (the seed's run config, its run directory, the step it resumes from or None) -> Tracker
OpenTracker = Callable[[Any, str, int | None], Tracker]


def scalars(record: dict) -> dict[str, float]:
  """A record's numbers by name: '<kind>/<field>', and '<kind>/<field>/<task>' for per-task
  values (TensorBoard's tags)."""
  kind, out = record["kind"], {}
  for name, value in record.items():
    if name in ("step", "kind"):
      continue
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      out[f"{kind}/{name}"] = value
    elif isinstance(value, dict):  # per-task values
      for task, v in value.items():
        if isinstance(v, (int, float)):
          out[f"{kind}/{name}/{task}"] = v
  return out


class MetricsLog:
  def __init__(self, run_dir: str, resume_step: int | None, tracker: Tracker | None = None):
    """resume_step: the checkpoint step being resumed (records after it are dropped), or None.
    `moved_aside`: where the file was copied before records were dropped from it, or None.
    `tracker`: where the records also go (closed with this log)."""
    self.path = os.path.join(run_dir, METRICS_FILE)
    records = read_records(run_dir)
    kept = [r for r in records if resume_step is not None and r["step"] <= resume_step]
    self.moved_aside = None
    if len(kept) < len(records):
      # Records past the checkpoint are re-produced identically; keep the old file anyway,
      # so that a restart from scratch (e.g. after an unreadable only checkpoint) loses nothing.
      self.moved_aside = _free_name(self.path + ".replaced")
      shutil.copyfile(self.path, self.moved_aside)
    self.records = len(kept)  # in the file: the count a checkpoint notes
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      for record in kept:
        f.write(json.dumps(record) + "\n")
    os.replace(tmp, self.path)  # Atomic: a crash here leaves either the old or the new file.
    self._file = open(self.path, "a")
    self._tracker = tracker
    self._tensorboard = SummaryWriter(
      os.path.join(run_dir, "tensorboard"),
      # A fresh start purges events of an earlier attempt that died before its first checkpoint.
      purge_step=0 if resume_step is None else resume_step + 1,
    )

  def write(self, record: dict) -> None:
    record = _to_json(record)
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    os.fsync(self._file.fileno())
    self.records += 1
    numbers = scalars(record)
    for tag, value in numbers.items():
      self._tensorboard.add_scalar(tag, value, record["step"])
    self._tensorboard.flush()
    if self._tracker is not None:
      self._tracker.log(record["step"], numbers)

  def finish(self, summary: dict, curves_path: str | None) -> None:
    """The run's final summary (and its curves image, if drawn) to the tracker, if any."""
    if self._tracker is None:
      return
    try:
      self._tracker.finish(summary, curves_path)
    except Exception as error:  # pylint: disable=broad-except
      # A tracker (a network service) failing at the end must not cost the run's own files.
      reason = str(error).splitlines()[0] if str(error) else ""
      print(
        f"WARNING: the tracker did not take the final summary ({type(error).__name__}: "
        f"{reason[:200]}); summary.json is written as usual",
        file=sys.stderr,
      )

  def add_gif(self, tag: str, gif: bytes, height: int, width: int, step: int) -> None:
    """An animated image in TensorBoard's images tab, from a GIF file's bytes.
    (tensorboardX's add_video would need moviepy; the summary is the same.)"""
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=gif)
    summary = Summary(value=[Summary.Value(tag=tag, image=image)])
    self._tensorboard.file_writer.add_summary(summary, step)
    self._tensorboard.flush()

  def close(self) -> None:
    self._file.close()
    self._tensorboard.close()
    if self._tracker is not None:
      self._tracker.close()
