"""Pretrained task-description embeddings for the CARE baseline.

The embeddings are generated offline by experiments/make_task_embeddings.py
(all-MiniLM-L6-v2 sentence embeddings of one-line Meta-World task
descriptions) and shipped as cmta_jax/data/task_embeddings.json. This module
only reads that file: numpy + json, no language model at train time.
"""

import importlib.resources
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

EMBEDDINGS_PACKAGE = "cmta_jax.data"
EMBEDDINGS_FILE = "task_embeddings.json"
REGENERATE_CMD = "python experiments/make_task_embeddings.py"


def embeddings_path() -> pathlib.Path:
  """Returns the path of the shipped embeddings file (may not exist)."""
  return pathlib.Path(str(importlib.resources.files(EMBEDDINGS_PACKAGE) / EMBEDDINGS_FILE))


def load_task_metadata() -> dict[str, Any]:
  """Returns the parsed embeddings file (model, dim, descriptions, embeddings)."""
  path = embeddings_path()
  if not path.is_file():
    raise FileNotFoundError(
      f"Task embeddings file {path} is missing; regenerate it with "
      f"`{REGENERATE_CMD}` (see that script's docstring)."
    )
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def load_task_embeddings(task_names: Sequence[str]) -> np.ndarray:
  """Returns the embeddings of `task_names`, in that order.

  Args:
    task_names: Meta-World v3 task ids, e.g. ["reach-v3", "push-v3"].

  Returns:
    float32 array of shape [len(task_names), dim].

  Raises:
    FileNotFoundError: the embeddings file is missing.
    ValueError: a task has no embedding, or a vector is malformed/non-finite.
  """
  meta = load_task_metadata()
  table = meta["embeddings"]
  dim = int(meta["dim"])
  unknown = [t for t in task_names if t not in table]
  if unknown:
    raise ValueError(
      f"No task embedding for {unknown} in {embeddings_path()}; known tasks: {sorted(table)}."
    )
  wrong_dim = [t for t in task_names if len(table[t]) != dim]
  if wrong_dim:
    raise ValueError(f"Task embedding for {wrong_dim} is not of dim {dim}.")
  out = np.asarray([table[t] for t in task_names], dtype=np.float32).reshape(len(task_names), dim)
  bad = [t for t, row in zip(task_names, out) if not np.all(np.isfinite(row))]
  if bad:
    raise ValueError(f"Non-finite task embedding for {bad}.")
  return out
