"""Grouping run directories into settings (cmta_jax/run_sets.py) and experiments/aggregate.py
on a synthetic tree of runs: what may be averaged, and the numbers."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cmta_jax import testing
from cmta_jax.reporting import run_sets, statistics
from cmta_jax.training import run_dir as run_dir_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AGGREGATE = os.path.join(REPO, "experiments", "aggregate.py")


_write_run = testing.write_synthetic_run


def _aggregate(*paths):
  return subprocess.run(
    [sys.executable, AGGREGATE, *paths], capture_output=True, text=True, cwd=REPO, timeout=120
  )


def test_seeds_of_one_setting_group_and_other_agents_never_share_a_group(tmp_path):
  runs = [
    _write_run(str(tmp_path / "cmta_s0"), [0.0, 0.5], seed=0),
    _write_run(str(tmp_path / "cmta_s1"), [0.1, 0.4], seed=1, log_every=250),  # bookkeeping
    _write_run(str(tmp_path / "mtsac_s0"), [0.0, 0.2], agent="mtsac", seed=0),
    _write_run(str(tmp_path / "cmta_w64_s0"), [0.0, 0.1], seed=0, hidden_width=64),
  ]
  groups = run_sets.group_by_setting(run_sets.load_run(d) for d in run_sets.find_run_dirs(runs))
  assert [[os.path.basename(r.run_dir) for r in g] for g in groups] == [
    ["cmta_s0", "cmta_s1"],
    ["mtsac_s0"],
    ["cmta_w64_s0"],
  ]


def test_a_root_is_searched_and_a_directory_given_twice_is_refused(tmp_path):
  a = _write_run(str(tmp_path / "setting" / "s0"), [0.0], seed=0)
  _write_run(str(tmp_path / "setting" / "s1"), [0.0], seed=1)
  assert run_sets.find_run_dirs([str(tmp_path / "setting")]) == [
    str(tmp_path / "setting" / "s0"),
    str(tmp_path / "setting" / "s1"),
  ]
  with pytest.raises(ValueError, match=r"s0 is given twice \(also as .*s0\); each run counts once"):
    run_sets.find_run_dirs([a, str(tmp_path / "setting" / ".." / "setting" / "s0")])
  os.makedirs(tmp_path / "no_runs" / "logs")
  with pytest.raises(ValueError, match="no_runs holds no run directories"):
    run_sets.find_run_dirs([str(tmp_path / "no_runs")])


def test_two_copies_of_one_seed_are_refused(tmp_path):
  a = _write_run(str(tmp_path / "a"), [0.0, 0.5], seed=3)
  b = _write_run(str(tmp_path / "b"), [0.0, 0.5], seed=3)
  with pytest.raises(ValueError, match=r"b and .*a are the same setting with the same seed \(3\)"):
    run_sets.group_by_setting([run_sets.load_run(a), run_sets.load_run(b)])


def test_aggregate_refuses_mixed_settings_naming_the_run_and_the_fields(tmp_path):
  cmta = _write_run(str(tmp_path / "cmta"), [0.0, 0.5], seed=0)
  mtsac = _write_run(str(tmp_path / "mtsac"), [0.0, 0.5], agent="mtsac", seed=1)
  result = _aggregate(cmta, mtsac)
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert f"{mtsac} is not a seed of the setting of {cmta} (agent: 'cmta' != 'mtsac'" in lines[0]
  result = _aggregate(cmta, cmta)
  assert result.returncode != 0 and "is given twice" in result.stderr


def test_a_corrupt_run_is_named_in_one_line(tmp_path):
  good = _write_run(str(tmp_path / "good"), [0.0, 0.5], seed=0)
  bad = _write_run(str(tmp_path / "bad"), [0.0, 0.5], seed=1)
  with open(os.path.join(bad, "metrics.jsonl"), "a") as f:
    f.write("{garbled\n")
    f.write(json.dumps({"step": 5000, "kind": "train"}) + "\n")
  result = _aggregate(good, bad)
  lines = result.stderr.strip().splitlines()
  assert result.returncode != 0 and len(lines) == 1, result.stderr
  assert "bad/metrics.jsonl, line 5: not a JSON record" in lines[0]
  empty = str(tmp_path / "empty")
  os.makedirs(empty)
  run_dir_lib.write_config(empty, testing.run_config(seed=2))
  with pytest.raises(ValueError, match=r"empty has no metrics.jsonl \(did the run start\?\)"):
    run_sets.load_run(empty)


def test_aggregate_numbers_equal_hand_computation(tmp_path):
  curves = {0: [0.0, 0.2, 0.4, 0.6], 1: [0.1, 0.1, 0.3, 0.5], 2: [0.0, 0.3, 0.3]}  # s2 is behind
  for seed, curve in curves.items():
    _write_run(str(tmp_path / f"s{seed}"), curve, seed=seed)
  result = _aggregate(str(tmp_path))
  assert result.returncode == 0, result.stderr
  out = json.loads(result.stdout.strip().splitlines()[-1])
  # Common steps 0, 1000, 2000; seed-mean curve (0.0333, 0.2, 0.3333).
  mean = np.array([0.1 / 3, 0.6 / 3, 1.0 / 3])
  smoothed = [mean[0]]
  for point in mean[1:]:
    smoothed.append(0.8 * smoothed[-1] + 0.2 * point)
  assert out["seeds"] == 3 and out["steps"] == 2000
  assert out["max_smoothed"] == pytest.approx(max(smoothed))
  assert out["max"] == pytest.approx(mean.max()) and out["final"] == pytest.approx(mean[-1])
  # Final scores [runs, tasks] at step 2000: every task of a seed at its curve's value.
  finals = np.array([[0.4, 0.4], [0.3, 0.3], [0.3, 0.3]])
  middle_half = np.sort(finals.ravel())[1:-1]  # scipy trims floor(0.25 * 6) = 1 at each end
  assert out["final_iqm"] == pytest.approx(middle_half.mean())
  assert out["final_iqm"] == pytest.approx(statistics.iqm(finals))
  low, high = out["final_iqm_ci95"]
  assert 0.3 <= low <= out["final_iqm"] <= high <= 0.4


def test_runs_of_versions_with_and_without_a_newer_field_group_together(tmp_path):
  old = str(tmp_path / "old")
  new = str(tmp_path / "new")
  testing.write_synthetic_run(old, [0.1, 0.2], agent="mtsac", seed=0)
  testing.write_synthetic_run(new, [0.2, 0.3], agent="mtsac", seed=1)
  path = os.path.join(old, "config.json")
  with open(path) as f:
    saved = json.load(f)
  del saved["train.updates_per_step"], saved["train.replay_placement"]  # predates them
  with open(path, "w") as f:
    json.dump(saved, f)
  runs = [run_sets.load_run(old), run_sets.load_run(new)]
  assert len(run_sets.group_by_setting(runs)) == 1


def test_seeds_without_a_common_evaluation_are_summarized_as_such(tmp_path):
  evaluated = run_sets.load_run(_write_run(str(tmp_path / "s0"), [0.0, 0.5], seed=0))
  started = run_sets.load_run(_write_run(str(tmp_path / "s1"), [], seed=1))
  also = run_sets.load_run(_write_run(str(tmp_path / "s2"), [], seed=2))
  assert started.evals == () and started.last_step == 0 and evaluated.last_step == 1000
  assert run_sets.common_eval_steps([evaluated, started]) == []
  assert run_sets.summarize_setting([started, also]) == {
    "seeds": 2,
    "evaluations": 0,
    "not_evaluated": "no evaluation yet",
  }
  summary = run_sets.summarize_setting([evaluated, started, also])
  assert summary["not_evaluated"] == "no common evaluation yet (seeds 1, 2 have none)"


@pytest.mark.parametrize(
  "curves,first_line,evaluations",
  [
    ({0: [0.5, 1.0], 1: []}, "2 seeds (0, 1): no common evaluation yet (seed 1 has none)", 0),
    ({0: [0.5]}, "1 seed (0), one common evaluation so far, at step 0", 1),
  ],
)
def test_aggregate_on_young_seeds_says_how_far_they_are(tmp_path, curves, first_line, evaluations):
  for seed, curve in curves.items():
    _write_run(str(tmp_path / f"s{seed}"), curve, seed=seed)
  result = _aggregate(str(tmp_path))
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert lines[0] == first_line and "nan" not in result.stdout.lower()
  assert json.loads(lines[-1])["evaluations"] == evaluations
