"""What happened to a run directory besides training: RUN_DIR/changes.jsonl.

A run's history is append-only. Whatever a launch accepts that a reader of the run must know
about is appended here as one JSON line, and said on the console when it happens:

- `config`: a field the resume changed (step, field, old and new value);
- `history_loss`: a resume told to go on although metrics.jsonl lacks records it had
  (`--accept_history_loss`);
- `moved_aside`: a file the launch moved out of the way (step, from, to).

`run_report.py` prints these entries and tables label the runs whose config changed.
"""

import json
import os

from cmta_jax.training import metrics_log

CHANGES_FILE = "changes.jsonl"
KINDS = ("config", "history_loss", "moved_aside")


def append(run_dir: str, entries: list[dict]) -> None:
  """Appends `entries` (each with "kind" and "step"), flushed to disk before returning."""
  for entry in entries:
    if entry.get("kind") not in KINDS or not isinstance(entry.get("step"), int):
      raise ValueError(f"a change needs a kind in {KINDS} and an integer step, got {entry}")
  if not entries:
    return
  with open(os.path.join(run_dir, CHANGES_FILE), "a") as f:
    for entry in entries:
      f.write(json.dumps(entry, sort_keys=True) + "\n")
    f.flush()
    os.fsync(f.fileno())


def read(run_dir: str) -> list[dict]:
  """The entries of RUN_DIR/changes.jsonl in order ([] without the file). A torn last line
  (a crash mid-write) is dropped; any other bad line raises ValueError naming it."""
  path = os.path.join(run_dir, CHANGES_FILE)
  entries = []
  for number, entry in metrics_log.read_json_lines(path):
    if not isinstance(entry, dict) or entry.get("kind") not in KINDS:
      raise ValueError(f"{path}, line {number}: not a change entry (needs a kind in {KINDS})")
    entries.append(entry)
  return entries


def config_changes(run_dir: str) -> list[dict]:
  """The run's accepted config changes, oldest first."""
  return [entry for entry in read(run_dir) if entry["kind"] == "config"]


def describe(entry: dict) -> str:
  """One line for a person: what changed, at which step."""
  step = entry["step"]
  if entry["kind"] == "config":
    return f"step {step}: {entry['field']} {entry['old']!r} -> {entry['new']!r}"
  if entry["kind"] == "history_loss":
    return (
      f"step {step}: resumed with {entry['records_kept']} of the {entry['records_expected']} "
      f"metrics records up to this step (the others were lost before the resume)"
    )
  return f"step {step}: {entry['from']} moved aside to {entry['to']}"
