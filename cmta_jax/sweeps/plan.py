"""What a sweep runs: jobs, each one `experiments/train.py --seeds=...` command with its own
run directory, from a paper table's name or from a sweep file a person writes.

A job is a setting (a preset of experiments/train.py), an agent and the flags of its variant;
its run directory is ROOT/<setting>/<variant>, named by the agent and the variant's flags,
so the same job always lands in the same directory (and Table 1's CMTA and Table 2's are one
job). Flags given for the whole sweep (`overrides`: e.g. a short budget) apply to every job
and do not enter the names, so a sweep extended with a larger --total_steps resumes its runs.

Sweep file (TOML):

    settings = ["paper_mt10_fixed", "paper_mt10_mixed"]   # presets
    seeds = "0-7"

    [[variant]]
    agent = "cmta"

    [[variant]]
    agent = "cmta"
    flags = { contrastive_weight = 0 }                   # CMTA w/o CL

    [[variant]]
    agent = "single_sac"
    settings = ["paper_mt10_fixed"]                       # only these settings

    [flags]                                               # every job
    eval_every = 15000
"""

import dataclasses
import os
import sys
import tomllib
from collections.abc import Sequence
from typing import Any

from cmta_jax import cli
from cmta_jax import config as config_lib

TRAIN_SCRIPT = os.path.join(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
  "experiments",
  "train.py",
)
_PAPER_SETTINGS = ("paper_mt10_fixed", "paper_mt10_mixed", "paper_mt50_fixed", "paper_mt50_mixed")
_MULTI_TASK_AGENTS = ("cmta", "mtsac", "mtsac_te", "mtmhsac", "softmodu", "care")


@dataclasses.dataclass(frozen=True)
class Job:
  """One train.py command: a batch of seeds of one variant in one setting."""

  setting: str  # a preset of experiments/train.py
  agent: str
  flags: tuple[tuple[str, Any], ...] = ()  # the variant's flags, (name, value), sorted
  seeds: str = "0-7"

  @property
  def variant(self) -> str:
    """The agent and the variant's flags: 'cmta', 'cmta__contrastive_weight=0'."""
    return "__".join([self.agent, *(f"{name}={_text(value)}" for name, value in self.flags)])

  @property
  def name(self) -> str:
    return f"{self.setting}/{self.variant}"

  def run_dir(self, root: str) -> str:
    return os.path.join(root, self.setting, self.variant)

  def command(
    self, root: str, overrides: Sequence[tuple[str, Any]] = (), python: str = sys.executable
  ) -> list[str]:
    """The job's train.py command line; `overrides` (name, value) come last and win."""
    flags = dict(self.flags)
    flags.update(overrides)
    return [
      python,
      TRAIN_SCRIPT,
      f"--preset={self.setting}",
      f"--agent={self.agent}",
      *(f"--{name}={_text(value)}" for name, value in flags.items()),
      f"--seeds={self.seeds}",
      f"--run_dir={self.run_dir(root)}",
    ]


def _text(value: Any) -> str:
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, (list, tuple)):
    return ",".join(_text(v) for v in value)
  return str(value)


def table_jobs(table: str, seeds: str) -> list[Job]:
  """The jobs behind one of the paper's tables (docs/results.md): '1' (every agent in the four
  settings, Single-SAC on MT10 only: 26 jobs), '2' (contrastive loss on and off for CMTA
  and CARE, the Mixed settings: 8) or '8' (CMTA's number of experts, MT10, 1M steps: 10)."""
  if table == "1":
    jobs = [Job(s, agent, seeds=seeds) for s in _PAPER_SETTINGS for agent in _MULTI_TASK_AGENTS]
    jobs += [Job(s, "single_sac", seeds=seeds) for s in _PAPER_SETTINGS[:2]]
  elif table == "2":
    variants = [
      ("cmta", ()),
      ("cmta", (("contrastive_weight", 0.0),)),
      ("care", ()),
      ("care", (("contrastive_weight", 2500.0),)),
    ]
    jobs = [
      Job(s, a, f, seeds) for s in ("paper_mt10_mixed", "paper_mt50_mixed") for a, f in variants
    ]
  elif table == "8":
    jobs = [
      Job(s, "cmta", (("num_experts", n), ("total_steps", 1_000_000)), seeds)
      for s in _PAPER_SETTINGS[:2]
      for n in (2, 4, 6, 12, 20)
    ]
  else:
    raise ValueError(f"--table must be 1, 2 or 8 (the paper's tables we reproduce), got {table!r}")
  return jobs


def file_jobs(path: str) -> tuple[list[Job], list[tuple[str, Any]]]:
  """(jobs, flags for every job) of a sweep file (module docstring); ValueError in one line
  naming the file for anything it cannot use."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError as error:
    raise ValueError(f"sweep file {path}: {error.strerror}") from None
  return file_jobs_from_text(text, path)


def file_jobs_from_text(text: str, path: str = "<text>") -> tuple[list[Job], list]:
  """`file_jobs` of a sweep file's content."""
  try:
    spec = tomllib.loads(text)
  except tomllib.TOMLDecodeError as error:
    raise ValueError(f"sweep file {path} is not valid TOML ({error})") from None
  unknown = sorted(set(spec) - {"settings", "seeds", "variant", "flags"})
  if unknown:
    raise ValueError(
      f"sweep file {path}: unknown key(s) {', '.join(unknown)}; use settings, seeds, "
      "[[variant]] and [flags]"
    )
  settings = spec.get("settings")
  if not isinstance(settings, list) or not settings:
    raise ValueError(f"sweep file {path}: `settings` must be a list of presets")
  variants = spec.get("variant")
  if not isinstance(variants, list) or not variants:
    raise ValueError(f"sweep file {path}: give at least one [[variant]] with an `agent`")
  seeds = str(spec.get("seeds", "0-7"))
  jobs = []
  for number, variant in enumerate(variants, start=1):
    if not isinstance(variant.get("agent"), str):
      raise ValueError(f"sweep file {path}: variant {number} names no `agent`")
    extra = sorted(set(variant) - {"agent", "flags", "settings"})
    if extra:
      raise ValueError(f"sweep file {path}: variant {number} has unknown key(s) {extra}")
    flags = variant.get("flags", {})
    if not isinstance(flags, dict):
      raise ValueError(f"sweep file {path}: variant {number}'s `flags` must be a table")
    for setting in variant.get("settings", settings):
      jobs.append(Job(setting, variant["agent"], tuple(sorted(flags.items())), seeds))
  overrides = spec.get("flags", {})
  if not isinstance(overrides, dict):
    raise ValueError(f"sweep file {path}: [flags] must be a table of flag = value")
  return jobs, sorted(overrides.items())


def parse_override(text: str) -> tuple[str, Any]:
  """'total_steps=300' -> ('total_steps', 300): ints, floats, true/false, else the string."""
  name, sep, value = text.partition("=")
  if not sep or not name:
    raise ValueError(f"--override takes name=value (a train.py flag without --), got {text!r}")
  for kind in (int, float):
    try:
      return name.strip(), kind(value)
    except ValueError:
      pass
  lowered = value.strip().lower()
  if lowered in ("true", "false"):
    return name.strip(), lowered == "true"
  return name.strip(), value.strip()


# Flags of train.py that a sweep may set besides config fields, and its flag aliases.
_LAUNCH_FLAGS = ("env_workers",)
_ALIASES = {"contrastive_weight": "auxiliary_weight"}


def check_jobs(jobs: Sequence[Job], overrides: Sequence[tuple[str, Any]]) -> None:
  """Every job's setting, agent and flags make a valid config (one-line ValueError naming the
  job otherwise), and no two jobs share a run directory. Nothing is started."""
  from cmta_jax.agents import registry  # (loads jax: only when a sweep is checked)

  names = config_lib.field_paths()
  seen = {}
  for job in jobs:
    try:
      cli.parse_seeds(job.seeds)
    except ValueError as error:
      raise ValueError(f"{job.name}: {error}") from None
    if job.setting not in config_lib.PRESETS:
      raise ValueError(
        f"{job.name}: unknown setting {job.setting!r}; choose presets among "
        f"{', '.join(sorted(config_lib.PRESETS))}"
      )
    if job.agent not in registry.AGENT_SPECS:
      raise ValueError(
        f"{job.name}: unknown agent {job.agent!r}; choose among {', '.join(registry.agent_names())}"
      )
    flags = {**dict(job.flags), **dict(overrides)}
    for name in flags:
      if name not in names and name not in _LAUNCH_FLAGS and name not in _ALIASES:
        raise ValueError(f"{job.name}: {name!r} is not a flag of experiments/train.py")
    fields = {
      _ALIASES.get(name, name): (tuple(value) if isinstance(value, list) else value)
      for name, value in flags.items()
      if name not in _LAUNCH_FLAGS
    }
    try:
      run_config = dataclasses.replace(config_lib.PRESETS[job.setting], agent=job.agent)
      run_config = registry.agent_defaults(run_config, explicit={names[n] for n in fields})
      run_config = config_lib.replace_fields(run_config, **fields)
      registry.validate(run_config)
    except (TypeError, ValueError) as error:
      raise ValueError(f"{job.name}: {error}") from None
    if job.name in seen:
      raise ValueError(f"{job.name} is listed twice in the sweep")
    seen[job.name] = job
