"""Where a run's numbers go: an append-only JSONL file, TensorBoard and the console.

The JSONL file is the source of truth (one record per log or eval step,
flushed as written). On resume from step s, records after s are dropped, so
the file never holds a duplicate or a missing step. TensorBoard event files
are written with tensorboardX, which purges events after the resume step.
"""

import json
import math
import os
import shutil
from typing import Any

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
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = [(number, line) for number, line in enumerate(f, start=1) if line.strip()]
  records = []
  for index, (number, line) in enumerate(lines):
    try:
      record = json.loads(line)
    except json.JSONDecodeError as error:
      if index == len(lines) - 1:
        break  # A write cut short by a crash: that step is past the last checkpoint anyway.
      raise ValueError(
        f"{path}, line {number}: not a JSON record ({error.msg}); fix or delete that line"
      ) from None
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


def _free_name(path: str) -> str:
  candidate, suffix = path, 0
  while os.path.exists(candidate):
    suffix += 1
    candidate = f"{path}.{suffix}"
  return candidate


class MetricsLog:
  def __init__(self, run_dir: str, resume_step: int | None):
    """resume_step: the checkpoint step being resumed (records after it are dropped), or None."""
    self.path = os.path.join(run_dir, METRICS_FILE)
    records = read_records(run_dir)
    kept = [r for r in records if resume_step is not None and r["step"] <= resume_step]
    if len(kept) < len(records):
      # Records past the checkpoint are re-produced identically; keep the old file anyway,
      # so that a restart from scratch (e.g. after an unreadable only checkpoint) loses nothing.
      backup = _free_name(self.path + ".replaced")
      shutil.copyfile(self.path, backup)
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      for record in kept:
        f.write(json.dumps(record) + "\n")
    os.replace(tmp, self.path)  # Atomic: a crash here leaves either the old or the new file.
    self._file = open(self.path, "a")
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
    step, kind = record["step"], record["kind"]
    for name, value in record.items():
      if name in ("step", "kind"):
        continue
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        self._tensorboard.add_scalar(f"{kind}/{name}", value, step)
      elif isinstance(value, dict):  # per-task values
        for task, v in value.items():
          if isinstance(v, (int, float)):
            self._tensorboard.add_scalar(f"{kind}/{name}/{task}", v, step)
    self._tensorboard.flush()

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
