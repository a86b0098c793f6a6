"""Tests for the shipped CARE task-description embeddings (no model import)."""

import numpy as np
import pytest

from cmta_jax.agents import task_metadata

# Meta-World v3 MT10 and MT50 task ids (metaworld/env_dict.py MT10_V3 / MT50_V3).
MT10 = [
  "reach-v3",
  "push-v3",
  "pick-place-v3",
  "door-open-v3",
  "drawer-open-v3",
  "drawer-close-v3",
  "button-press-topdown-v3",
  "peg-insert-side-v3",
  "window-open-v3",
  "window-close-v3",
]
MT50 = [
  "assembly-v3",
  "basketball-v3",
  "bin-picking-v3",
  "box-close-v3",
  "button-press-topdown-v3",
  "button-press-topdown-wall-v3",
  "button-press-v3",
  "button-press-wall-v3",
  "coffee-button-v3",
  "coffee-pull-v3",
  "coffee-push-v3",
  "dial-turn-v3",
  "disassemble-v3",
  "door-close-v3",
  "door-lock-v3",
  "door-open-v3",
  "door-unlock-v3",
  "hand-insert-v3",
  "drawer-close-v3",
  "drawer-open-v3",
  "faucet-open-v3",
  "faucet-close-v3",
  "hammer-v3",
  "handle-press-side-v3",
  "handle-press-v3",
  "handle-pull-side-v3",
  "handle-pull-v3",
  "lever-pull-v3",
  "pick-place-wall-v3",
  "pick-out-of-hole-v3",
  "pick-place-v3",
  "plate-slide-v3",
  "plate-slide-side-v3",
  "plate-slide-back-v3",
  "plate-slide-back-side-v3",
  "peg-insert-side-v3",
  "peg-unplug-side-v3",
  "soccer-v3",
  "stick-push-v3",
  "stick-pull-v3",
  "push-v3",
  "push-wall-v3",
  "push-back-v3",
  "reach-v3",
  "reach-wall-v3",
  "shelf-place-v3",
  "sweep-into-v3",
  "sweep-v3",
  "window-open-v3",
  "window-close-v3",
]
DIM = 384


def test_task_lists_are_consistent():
  assert len(set(MT50)) == 50
  assert set(MT10) <= set(MT50)


def test_file_exists_with_metadata():
  assert task_metadata.embeddings_path().is_file()
  meta = task_metadata.load_task_metadata()
  assert meta["dim"] == DIM
  assert "all-MiniLM-L6-v2" in meta["model"]
  assert set(meta["embeddings"]) == set(MT50)
  assert set(meta["descriptions"]) == set(MT50)
  assert all(isinstance(d, str) and d for d in meta["descriptions"].values())


@pytest.mark.parametrize("tasks", [MT10, MT50], ids=["mt10", "mt50"])
def test_one_finite_unit_vector_per_task(tasks):
  emb = task_metadata.load_task_embeddings(tasks)
  assert emb.dtype == np.float32
  assert emb.shape == (len(tasks), DIM)
  assert np.all(np.isfinite(emb))
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)


def test_vectors_are_distinct():
  emb = task_metadata.load_task_embeddings(MT50).astype(np.float64)
  cos = emb @ emb.T
  np.fill_diagonal(cos, -1.0)
  # No two tasks share a vector (faucet-open/close are the closest, ~0.99).
  assert cos.max() < 0.999
  assert len({row.tobytes() for row in emb}) == 50


def test_related_tasks_are_closer_than_unrelated():
  e = dict(zip(MT50, task_metadata.load_task_embeddings(MT50)))
  cos = lambda a, b: float(e[a] @ e[b])
  assert cos("drawer-open-v3", "drawer-close-v3") > cos("reach-v3", "peg-insert-side-v3")
  assert cos("window-open-v3", "window-close-v3") > cos("reach-v3", "peg-insert-side-v3")


def test_loader_respects_order():
  fwd = task_metadata.load_task_embeddings(MT10)
  rev = task_metadata.load_task_embeddings(MT10[::-1])
  np.testing.assert_array_equal(fwd[::-1], rev)
  one = task_metadata.load_task_embeddings(["window-close-v3"])
  np.testing.assert_array_equal(one[0], fwd[MT10.index("window-close-v3")])


def test_missing_file_gives_clear_error(monkeypatch):
  monkeypatch.setattr(task_metadata, "EMBEDDINGS_FILE", "no_such_file.json")
  with pytest.raises(FileNotFoundError) as err:
    task_metadata.load_task_embeddings(MT10)
  msg = str(err.value)
  assert "no_such_file.json" in msg
  assert "make_task_embeddings.py" in msg
  assert "\n" not in msg


def test_unknown_task_raises():
  with pytest.raises(ValueError, match="reach-v2"):
    task_metadata.load_task_embeddings(["reach-v3", "reach-v2"])


def test_non_finite_raises(monkeypatch):
  meta = task_metadata.load_task_metadata()
  meta["embeddings"]["reach-v3"] = [float("nan")] * DIM
  monkeypatch.setattr(task_metadata, "load_task_metadata", lambda: meta)
  with pytest.raises(ValueError, match="reach-v3"):
    task_metadata.load_task_embeddings(["push-v3", "reach-v3"])
