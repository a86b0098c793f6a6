"""Train (or resume) one agent on Meta-World MT10/MT50.

  python experiments/train.py --preset=quickstart --run_dir=runs/quickstart
  python experiments/train.py --preset=paper_mt10_fixed --agent=cmta --seed=3 --run_dir=runs/cmta_s3

Every config field is a flag (see --helpfull); flags override the preset.
Starting on a run directory that holds a checkpoint resumes it exactly.
"""

import dataclasses
import os
import sys

from absl import app, flags, logging

from cmta_jax import cli
from cmta_jax import config as config_lib
from cmta_jax.agents import registry

# The OpenGL backend of MuJoCo's offscreen renderer, for --video_every (read when a renderer
# is created, never otherwise).
os.environ.setdefault("MUJOCO_GL", "egl")

_PRESET = flags.DEFINE_enum(
  "preset",
  None,
  sorted(config_lib.PRESETS),
  "Named configuration; flags given explicitly override its values. "
  "Without a preset: the paper's MT10-Fixed defaults.",
)
_RUN_DIR = flags.DEFINE_string(
  "run_dir",
  None,
  "Run directory (default runs/<agent>_<benchmark>_"
  "<mode>_seed<seed>). Holding a checkpoint -> resume.",
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
  "allow_config_change", False, "Resume a run directory even if its saved config differs."
)
_AGENT = flags.DEFINE_enum(
  "agent",
  None,
  list(registry.agent_names()),
  "Agent: " + "; ".join(f"{k}: {v}" for k, v in registry.agent_help().items()),
)

_SECTION_HELP = {
  "env": "environment",
  "head": "actor/critic heads",
  "task_encoder": "task encoder",
  "mixture": "CMTA/CARE mixture encoder",
  "softmodu": "Soft Modularization encoder",
  "sac": "SAC update",
  "train": "schedule",
}


def _define_config_flags() -> dict[str, str]:
  """One flag per leaf config field, named by the field (e.g. --seed for train.seed)."""
  paths = {}
  defaults = config_lib.RunConfig()
  for path, default in config_lib.flatten(defaults).items():
    if path == "agent":
      continue
    name = path.split(".")[-1]
    assert name not in paths, f"duplicate config field name {name}"
    paths[name] = path
    help_text = (
      f"{_SECTION_HELP[path.split('.')[0]]} config `{path}` (default {default!r} or the preset's)"
    )
    current = config_lib.getattr_path(defaults, path)
    if isinstance(current, bool):
      flags.DEFINE_bool(name, None, help_text)
    elif isinstance(current, int):
      flags.DEFINE_integer(name, None, help_text)
    elif isinstance(current, float) or (current is None and name == "target_entropy"):
      flags.DEFINE_float(name, None, help_text)
    elif isinstance(current, tuple):
      flags.DEFINE_list(name, None, help_text + " (comma-separated integers)")
    else:
      flags.DEFINE_string(name, None, help_text)
  return paths


_FIELD_PATHS = _define_config_flags()
# Renamed fields keep their old flag names (users' scripts use them).
flags.DEFINE_alias("contrastive_weight", "auxiliary_weight")


def resolve_config(argv_flags=flags.FLAGS) -> config_lib.RunConfig:
  run_config = config_lib.PRESETS[_PRESET.value] if _PRESET.value else config_lib.RunConfig()
  if _AGENT.value is not None:
    run_config = dataclasses.replace(run_config, agent=_AGENT.value)
  run_config = registry.agent_defaults(run_config, explicit=_explicit_paths(argv_flags))
  for name, path in _FIELD_PATHS.items():
    value = argv_flags[name].value
    if value is None:
      continue
    if isinstance(config_lib.getattr_path(config_lib.RunConfig(), path), tuple):
      try:
        value = tuple(int(v) for v in value)
      except ValueError:
        raise ValueError(
          f"--{name} must be comma-separated integers, got {','.join(value)!r}"
        ) from None
    run_config = config_lib.replace_path(run_config, path, value)
  registry.check_explicit_fields(run_config, _explicit_paths(argv_flags))
  return run_config


def _explicit_paths(argv_flags) -> set[str]:
  return {path for name, path in _FIELD_PATHS.items() if argv_flags[name].value is not None}


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are written --name=value)")
  # Orbax reports every file it writes at INFO; keep the console for progress.
  logging.set_verbosity(logging.WARNING)
  try:
    run_config = resolve_config()
    registry.validate(run_config)
  except ValueError as error:
    cli.fail(error)
  # Imported only now, so that --help and bad flags answer without loading the driver.
  from cmta_jax.training import loop
  from cmta_jax.training.checkpointing import CheckpointWriteFailed, NoUsableCheckpoint
  from cmta_jax.training.evaluation import RenderingUnavailable
  from cmta_jax.training.preemption import Preempted
  from cmta_jax.training.run_dir import RunDirInUse

  run_dir = _RUN_DIR.value or os.path.join(
    "runs",
    f"{run_config.agent}_{run_config.env.benchmark}_{run_config.env.mode}"
    f"_seed{run_config.train.seed}",
  )
  try:
    loop.train(run_config, run_dir, allow_config_change=_ALLOW_CONFIG_CHANGE.value)
    cli.leave_at_once_on_ctrl_c(0)
  except Preempted as stopped:
    cli.fail(f"{stopped}", cli.EXIT_PREEMPTED)
  except (loop.Interrupted, KeyboardInterrupt) as interrupted:
    cli.fail(f"{interrupted}" or "interrupted before the first checkpoint", cli.EXIT_INTERRUPTED)
  except CheckpointWriteFailed as error:
    # orbax's worker threads may still be failing: leave without waiting for them.
    print(f"error: {cli.describe(error)}", file=sys.stderr, flush=True)
    os._exit(cli.EXIT_ERROR)
  except (
    *cli.USER_ERRORS,
    NoUsableCheckpoint,
    loop.TrainingDiverged,
    RunDirInUse,
    RenderingUnavailable,
  ) as error:
    cli.fail(error)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
