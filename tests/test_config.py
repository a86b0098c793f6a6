"""Named presets: valid, and differing from the paper's settings only where documented."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from cmta_jax import config as config_lib


@pytest.mark.parametrize("name", sorted(config_lib.PRESETS))
def test_preset_validates_and_its_budgets_are_whole_episodes(name):
  preset = config_lib.PRESETS[name]
  preset.validate()
  episode = preset.env.episode_length
  assert preset.train.total_steps % episode == 0
  assert preset.train.checkpoint_every % episode == 0


@pytest.mark.parametrize(
  "name", ["paper_mt10_fixed", "paper_mt10_mixed", "paper_mt50_fixed", "paper_mt50_mixed"]
)
def test_paper_presets_hold_the_paper_settings(name):
  flat = config_lib.flatten(config_lib.PRESETS[name])
  assert flat["train.total_steps"] == 2_400_000
  assert flat["train.batch_per_task"] == 128
  assert flat["head.hidden_width"] == 512
  assert flat["head.hidden_layers"] == 3
  assert flat["env.reward_normalization"] is True
  # The carry mode chosen from the CPU evidence (docs/carry_modes.md, BUILD_NOTES.md).
  assert flat["recurrence.carry_mode"] == "burn_in" and flat["recurrence.burn_in_steps"] == 20


def test_cpu_evidence_differs_from_the_paper_mt10_fixed_preset_only_in_its_budget_fields():
  paper = config_lib.flatten(config_lib.PRESETS["paper_mt10_fixed"])
  evidence = config_lib.flatten(config_lib.PRESETS["cpu_evidence"])
  changed = {key for key in paper if paper[key] != evidence[key]}
  # BUILD_NOTES.md documents each of these; anything else would make the CPU
  # evidence runs a different algorithm from the paper's.
  assert changed == {
    "head.hidden_width",
    "train.batch_per_task",
    "train.total_steps",
    "train.replay_capacity",
    "train.checkpoint_every",
    "train.log_every",
    "env.reward_normalization",
  }
  assert evidence["env.reward_normalization"] is False


def test_config_module_imports_no_agent_code():
  # The registry depends on the config, never the reverse (no import cycle).
  code = (
    "import sys, cmta_jax.config; "
    "assert not [m for m in sys.modules if m.startswith('cmta_jax.agents')], sys.modules"
  )
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(
  "field,value,message",
  [
    ("hidden_width", 0, "hidden_width must be a positive integer, got 0"),
    ("task_encoder_hidden", (16, 0), r"task_encoder_hidden widths must be positive integers"),
    ("num_experts", 2.5, "num_experts must be a positive integer, got 2.5"),
    (
      "carry_mode",
      "fresh",
      "unknown carry_mode 'fresh'; choose one of stored, frozen_memory, frozen_lstm",
    ),
    ("contrastive_temperature", 0.0, "contrastive_temperature must be > 0"),
    ("softmodu_width", -1, "softmodu_width must be a positive integer"),
    ("discount", 1.0, r"discount must be in \[0, 1\)"),
    ("critic_tau", 0.0, r"critic_tau must be in \(0, 1\]"),
    ("auxiliary_weight", -1.0, "auxiliary_weight must be >= 0"),
    ("warmup_steps", -1, "warmup_steps must be a non-negative integer"),
    ("log_std_min", 5.0, r"log_std_min \(5.0\) must be < log_std_max"),
  ],
)
def test_every_section_checks_its_fields_in_one_line(field, value, message):
  with pytest.raises(ValueError, match=message) as error:
    config_lib.replace_fields(config_lib.RunConfig(), **{field: value}).validate()
  assert "\n" not in str(error.value)


def test_every_checked_field_carries_its_check_in_metadata():
  # Validation is derived from field metadata: integer fields without a check are the
  # seed (checked by envs.validate_seed) only.
  unchecked = []
  for name, section in config_lib.RunConfig().sections().items():
    if name == "env":
      continue
    for field in dataclasses.fields(section):
      if field.type in (int, "int") and "check" not in field.metadata:
        unchecked.append(f"{name}.{field.name}")
  assert unchecked == ["train.seed"]


def test_unknown_field_names_fail_in_one_line():
  with pytest.raises(ValueError, match="unknown config field 'hidden_widht'"):
    config_lib.replace_fields(config_lib.RunConfig(), hidden_widht=3)


def test_config_files_of_earlier_versions_read_with_todays_paths():
  # Before the config was split per concern: one `network` section, and the auxiliary
  # weight named after CMTA's contrastive term.
  old = {
    "agent": "cmta",
    "network.hidden_width": 128,
    "network.carry_mode": "burn_in",
    "network.softmodu_layers": 2,
    "network.task_feature_dim": 32,
    "sac.contrastive_weight": 0.0,
    "train.seed": 4,
  }
  run_config = config_lib.from_flat(config_lib.upgrade_flat(old))
  assert run_config.head.hidden_width == 128 and run_config.recurrence.carry_mode == "burn_in"
  assert run_config.softmodu.softmodu_layers == 2
  assert run_config.task_encoder.task_feature_dim == 32
  assert run_config.sac.auxiliary_weight == 0.0 and run_config.train.seed == 4
  current = config_lib.flatten(config_lib.RunConfig())
  assert config_lib.upgrade_flat(current) == current


def test_every_field_path_an_earlier_version_wrote_has_a_place_today():
  # The field paths of RunConfig at every earlier commit that changed config.py (listed in
  # the file); a path missing here would make old run directories unreadable.
  with open(
    os.path.join(os.path.dirname(__file__), "data", "config_paths_of_earlier_versions.json")
  ) as f:
    earlier = json.load(f)
  known = set(config_lib.flatten(config_lib.RunConfig()))
  homeless = [
    p for p in earlier["paths"] if next(iter(config_lib.upgrade_flat({p: 0}))) not in known
  ]
  assert not homeless
  assert config_lib.upgrade_flat({"sac.contrastive_temperature": 0.5}) == {
    "mixture.contrastive_temperature": 0.5
  }


def test_a_config_written_before_carry_modes_reads_as_the_stored_carries_it_ran():
  before_carry_modes = {"agent": "cmta", "mixture.num_experts": 6, "train.seed": 1}
  upgraded = config_lib.upgrade_flat(before_carry_modes)
  assert upgraded["recurrence.carry_mode"] == "stored"
  assert config_lib.from_flat(upgraded).recurrence.carry_mode == "stored"
  # A config that names its carry mode keeps it.
  named = config_lib.upgrade_flat({**before_carry_modes, "mixture.carry_mode": "burn_in"})
  assert named["recurrence.carry_mode"] == "burn_in"
