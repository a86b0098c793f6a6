"""What a sweep keeps about its jobs, beside their run directories: ROOT/.sweep/<job name>/
holds `job.json` (where and when it was submitted, its command), `result.json` (how its last
attempt ended: exit status and one-line error) and, for jobs run on this machine,
`train.log` (their console). Run directories stay ordinary run directories."""

import datetime
import json
import os

SWEEP_DIR = ".sweep"


def job_dir(root: str, name: str) -> str:
  return os.path.join(root, SWEEP_DIR, name)


def _now() -> str:
  return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _write(path: str, content: dict) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(content, f, indent=1)
  os.replace(tmp, path)


def _read(path: str) -> dict | None:
  try:
    with open(path) as f:
      content = json.load(f)
  except (OSError, ValueError):
    return None
  return content if isinstance(content, dict) else None


def write_submitted(root: str, name: str, executor: str, command: list[str], job_id=None) -> None:
  _write(
    os.path.join(job_dir(root, name), "job.json"),
    {"executor": executor, "job_id": job_id, "submitted": _now(), "command": command},
  )


def read_submitted(root: str, name: str) -> dict | None:
  return _read(os.path.join(job_dir(root, name), "job.json"))


def write_result(record_dir: str, status: int, error: str | None) -> None:
  _write(
    os.path.join(record_dir, "result.json"),
    {"status": status, "error": error, "finished": _now()},
  )


def read_result(root: str, name: str) -> dict | None:
  return _read(os.path.join(job_dir(root, name), "result.json"))


def clear_result(root: str, name: str) -> None:
  try:
    os.remove(os.path.join(job_dir(root, name), "result.json"))
  except FileNotFoundError:
    pass


def error_line(log_text: str) -> str | None:
  """The command's one-line error (every experiments/ command ends with 'error: ...' on
  stderr when it fails), or its last line."""
  lines = [line for line in log_text.splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith("error: ")]
  if errors:
    return errors[-1].removeprefix("error: ")
  return lines[-1][:300] if lines else None
