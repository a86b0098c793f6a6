"""Weights & Biases, optional (`train.py --wandb_project=...`; install the `wandb` extra).

Each seed's run directory is one W&B run. It gets the run's config, every record of
metrics.jsonl under TensorBoard's names against `env_step`, the final summary and the
curves image. The W&B run id is made once per run directory and kept there
(`wandb_run_id`), so a resumed or requeued run, even one moved elsewhere, goes on in the same
W&B run. A resume re-logs the records between its checkpoint and the stop; resume is exact,
so they have the values they had, unless the resume accepted a config change
(`--allow_config_change`, recorded in changes.jsonl).
Online, offline or disabled: W&B's own `WANDB_MODE`. Its files go under RUN_DIR/wandb
unless `WANDB_DIR` says otherwise. Only a run that asks for W&B imports it.
"""

import dataclasses
import importlib.util
import os
import re
import secrets

from cmta_jax import config as config_lib

ID_FILE = "wandb_run_id"
INSTALL = "pip install 'cmta-jax[wandb]' (or pip install wandb)"


@dataclasses.dataclass(frozen=True)
class WandbOptions:
  """Where the runs go in W&B: project, entity (default: yours), group and tags."""

  project: str
  entity: str | None = None
  group: str | None = None
  tags: tuple[str, ...] = ()

  def validate(self) -> None:
    for name, value in (("project", self.project), ("entity", self.entity)):
      if value is not None and not re.fullmatch(r"[\w.-]+", value):
        raise ValueError(f"--wandb_{name}: {value!r} is not a W&B name (letters, digits, _ . -)")
    if self.group is not None and not self.group.strip():
      raise ValueError("--wandb_group: give a name or leave the flag out")
    for tag in self.tags:
      if not tag or len(tag) > 64:
        raise ValueError(f"--wandb_tags: {tag!r} must be 1 to 64 characters")


def check_installed() -> None:
  """ValueError (one line) unless wandb can be imported."""
  if importlib.util.find_spec("wandb") is None:
    raise ValueError(f"--wandb_project needs the wandb package: {INSTALL}")


def run_name(run_dir: str) -> str:
  """The run directory's name; a seed of a batch (RUN_DIR/seed<K>) as 'RUN_DIR-name/seed<K>'."""
  path = os.path.normpath(os.path.abspath(run_dir))
  name = os.path.basename(path)
  if re.fullmatch(r"seed\d+", name):
    name = f"{os.path.basename(os.path.dirname(path))}/{name}"
  return name


def run_id(run_dir: str) -> str:
  """The W&B run id of `run_dir`: read from RUN_DIR/wandb_run_id, else made from the
  directory's name and a random suffix and written there. Random, not derived from the path:
  a new run in a deleted run's place, or someone else's run at the same path, must not
  continue that W&B run."""
  path = os.path.join(run_dir, ID_FILE)
  if os.path.exists(path):
    with open(path) as f:
      stored = f.read().strip()
    if re.fullmatch(r"[\w-]{1,64}", stored):
      return stored
    raise ValueError(f"{path}: {stored[:80]!r} is not a W&B run id; delete the file for a new one")
  digest = secrets.token_hex(5)
  slug = re.sub(r"[^\w-]+", "-", run_name(run_dir)).strip("-")[:50]
  made = f"{slug}-{digest}"
  with open(path + ".tmp", "w") as f:
    f.write(made + "\n")
  os.replace(path + ".tmp", path)
  return made


class WandbTracker:
  """A metrics_log.Tracker: one seed's run directory as one W&B run."""

  def __init__(self, options: WandbOptions, run_config, run_dir: str, resume_step: int | None):
    import wandb  # only runs that ask for W&B import it

    self._wandb = wandb
    try:
      self._run = self._init(wandb, options, run_config, run_dir)
    except Exception as error:  # no API key, no network, a refused project...
      reason = str(error).splitlines()[0] if str(error) else ""
      raise ValueError(
        f"W&B could not start the run of {run_dir} ({type(error).__name__}: {reason[:200]}); "
        "WANDB_MODE=offline logs without a network (wandb sync uploads later)"
      ) from None
    self._run.define_metric("env_step")
    self._run.define_metric("*", step_metric="env_step")
    if resume_step is not None:
      self._run.summary["resumed_from_step"] = resume_step

  @staticmethod
  def _init(wandb, options: WandbOptions, run_config, run_dir: str):
    return wandb.init(
      project=options.project,
      entity=options.entity,
      group=options.group,
      tags=list(options.tags) or None,
      id=run_id(run_dir),
      name=run_name(run_dir),
      resume="allow",
      config={**config_lib.flatten(run_config), "run_dir": os.path.abspath(run_dir)},
      dir=os.environ.get("WANDB_DIR") or run_dir,
      reinit="create_new",  # the seeds of a batch are runs of one process
      settings=wandb.Settings(console="off", silent=True),
    )

  def log(self, step: int, scalars: dict[str, float]) -> None:
    self._run.log({"env_step": step, **scalars})

  def finish(self, summary: dict, curves_path: str | None) -> None:
    self._run.summary.update(
      {
        k: v
        for k, v in summary.items()
        if isinstance(v, (int, float, str)) or k.startswith("final")
      }
    )
    if curves_path is not None and os.path.exists(curves_path):
      self._run.log({"env_step": summary["steps"], "curves": self._wandb.Image(curves_path)})

  def close(self) -> None:
    self._run.finish()
