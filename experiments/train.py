"""Train (or resume) one agent on Meta-World MT10/MT50, one seed or a batch of seeds.

  python experiments/train.py --preset=quickstart --run_dir=runs/quickstart
  python experiments/train.py --preset=paper_mt10_fixed --agent=cmta --seed=3 --run_dir=runs/cmta_s3
  python experiments/train.py --preset=paper_mt10_fixed --agent=cmta --seeds=0-7 --run_dir=runs/cmta

Every config field is a flag (see --helpfull); flags override the preset.
Starting on a run directory that holds a checkpoint resumes it exactly.
"""

import dataclasses
import functools
import glob
import os
import sys

from absl import app, flags, logging

from cmta_jax import cli
from cmta_jax import config as config_lib
from cmta_jax.agents import registry
from cmta_jax.envs import gl_backend
from cmta_jax.training import run_dir as run_dir_lib

# Agents defined outside the package register themselves on import; that must happen before
# the flags below are defined from the registry and the config's sections.
cli.import_agent_modules(cli.agent_modules_in(sys.argv))

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
_SEEDS = flags.DEFINE_string(
  "seeds",
  None,
  "Train several seeds in one process as independent runs (a range 0-7, a list 0,3,5, or "
  "both: 0-3,8), each in RUN_DIR/seed<K>; the update is vmapped over the seeds and they "
  "are spread over the local devices (docs/seeds.md). Excludes --seed.",
)
_ENV_WORKERS = flags.DEFINE_integer(
  "env_workers",
  None,
  "With --seeds: processes that step the seeds' environments, each a group of seeds "
  "(default: one per CPU core this process may use, at most one per seed; 0: in the training "
  "process).",
)
_DATA_PARALLEL = flags.DEFINE_bool(
  "data_parallel",
  False,
  "One run on all local devices: each device updates on a slice of every batch and the "
  "gradients are averaged (batch_per_task must split evenly; docs/seeds.md).",
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
  "allow_config_change", False, "Resume a run directory even if its saved config differs."
)
_ACCEPT_HISTORY_LOSS = flags.DEFINE_bool(
  "accept_history_loss",
  False,
  "Resume although metrics.jsonl lacks records its checkpoint says it had (deleted or cut "
  "short); the loss is recorded in changes.jsonl. Without it such a resume is refused.",
)
_WANDB_PROJECT = flags.DEFINE_string(
  "wandb_project",
  None,
  "Also log to this Weights & Biases project (needs the wandb extra; WANDB_MODE=offline "
  "logs without a network). Each seed's run directory is one W&B run, continued on resume.",
)
_WANDB_ENTITY = flags.DEFINE_string("wandb_entity", None, "W&B entity (default: yours).")
_WANDB_GROUP = flags.DEFINE_string(
  "wandb_group", None, "W&B group (default: with --seeds, the batch's run directory name)."
)
_WANDB_TAGS = flags.DEFINE_list("wandb_tags", [], "W&B tags, comma-separated.")
_AGENT = flags.DEFINE_enum(
  "agent",
  None,
  list(registry.agent_names()),
  "Agent: " + "; ".join(f"{k}: {v}" for k, v in registry.agent_help().items()),
)

cli.define_agent_module_flag()


def _section_help(section) -> str:
  """The first sentence of a section dataclass's docstring."""
  paragraph = (type(section).__doc__ or type(section).__name__).strip().split("\n\n")[0]
  return " ".join(paragraph.split()).split(". ")[0].rstrip(".")


def _define_config_flags() -> dict[str, str]:
  """One flag per leaf config field of every section (the agents' own included), named by the
  field (e.g. --seed for train.seed)."""
  defaults = config_lib.RunConfig()
  sections, flat = defaults.sections(), config_lib.flatten(defaults)
  paths = config_lib.field_paths()
  for name, path in paths.items():
    section = sections[path.split(".")[0]]
    help_text = (
      f"`{path}` (default {flat[path]!r} or the preset's); {path.split('.')[0]}: "
      f"{_section_help(section)}"
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


def resolve_config(argv_flags=flags.FLAGS, saved: dict | None = None) -> config_lib.RunConfig:
  """The run's config: the preset (or the paper's defaults) and the agent's defaults, then
  every flag given explicitly. Resuming, the `saved` config.json of the run is the base
  instead, so today's defaults never change a run already under way; the explicit flags are
  then compared with it when the run starts (launch.train)."""
  if saved is not None:
    run_config = _saved_run_config(saved)
    if _AGENT.value is not None:
      run_config = dataclasses.replace(run_config, agent=_AGENT.value)
  else:
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


def _saved_run_config(saved: dict) -> config_lib.RunConfig:
  try:
    return config_lib.from_flat(saved)
  except ValueError:
    known = {*config_lib.RunConfig().sections(), "agent"}
    unknown = sorted({path.split(".")[0] for path in saved} - known)
    if unknown and saved.get("agent") not in registry.AGENT_SPECS:
      raise ValueError(
        f"the run's config.json has sections {', '.join(unknown)} of agent "
        f"{saved.get('agent')!r}, which is not registered: give the --agent_module that "
        "defines it"
      ) from None
    raise


def saved_config(run_dir: str, batch: bool) -> dict | None:
  """The config.json of the run in `run_dir` (a batch: of its first seed that has one), or
  None for a new run."""
  if not batch:
    return run_dir_lib.read_saved_config(run_dir)
  for seed_dir in sorted(glob.glob(os.path.join(run_dir, "seed*"))):
    saved = run_dir_lib.read_saved_config(seed_dir)
    if saved is not None:
      return saved
  return None


def _explicit_paths(argv_flags) -> set[str]:
  return {path for name, path in _FIELD_PATHS.items() if argv_flags[name].value is not None}


def resolve_seeds(run_config: config_lib.RunConfig) -> tuple[tuple[int, ...], int]:
  """(seeds, env workers) from --seed/--seeds/--env_workers; ValueError on a bad combination."""
  if _SEEDS.value is None:
    if _ENV_WORKERS.value is not None:
      raise ValueError("--env_workers needs --seeds (one seed steps its own environments)")
    return (run_config.train.seed,), 0
  if flags.FLAGS["seed"].value is not None:
    raise ValueError("give either --seed (one run) or --seeds (a batch), not both")
  seeds = cli.parse_seeds(_SEEDS.value)
  workers = _ENV_WORKERS.value
  if workers is None:
    # The cores this process may use (a sweep or a scheduler may pin it to a few).
    workers = min(len(seeds), len(os.sched_getaffinity(0))) if len(seeds) > 1 else 0
  if workers < 0:
    raise ValueError(f"--env_workers must be >= 0, got {workers}")
  if workers and run_config.env.vector_strategy == "async":
    raise ValueError(
      "--vector_strategy=async starts a process per task; with --seeds the environment "
      "workers already step them in parallel: drop one (e.g. --env_workers=0)"
    )
  return seeds, workers


def _wandb_options(run_dir: str):
  """The W&B options of the flags (checked, wandb found), or None without --wandb_project."""
  if _WANDB_PROJECT.value is None:
    for flag in (_WANDB_ENTITY, _WANDB_GROUP):
      if flag.value is not None:
        raise ValueError(f"--{flag.name} needs --wandb_project")
    if _WANDB_TAGS.value:
      raise ValueError("--wandb_tags needs --wandb_project")
    return None
  from cmta_jax.training import wandb_log

  group = _WANDB_GROUP.value
  if group is None and _SEEDS.value is not None:
    group = os.path.basename(os.path.normpath(os.path.abspath(run_dir)))
  options = wandb_log.WandbOptions(
    _WANDB_PROJECT.value, _WANDB_ENTITY.value, group, tuple(_WANDB_TAGS.value)
  )
  options.validate()
  wandb_log.check_installed()
  return options


def _tracker_opener(options):
  if options is None:
    return None
  from cmta_jax.training import wandb_log

  return functools.partial(wandb_log.WandbTracker, options)


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are written --name=value)")
  # Orbax reports every file it writes at INFO; keep the console for progress.
  logging.set_verbosity(logging.WARNING)
  try:
    run_config = resolve_config()
    registry.validate(run_config)
    seeds, env_workers = resolve_seeds(run_config)
    if _DATA_PARALLEL.value and _SEEDS.value is not None:
      raise ValueError("--data_parallel trains one run; drop --seeds or --data_parallel")
    which = f"seed{seeds[0]}" if len(seeds) == 1 else f"seeds{_SEEDS.value}"
    run_dir = _RUN_DIR.value or os.path.join(
      "runs", f"{run_config.agent}_{run_config.env.benchmark}_{run_config.env.mode}_{which}"
    )
    saved = saved_config(run_dir, batch=_SEEDS.value is not None)
    if saved is not None:
      run_config = resolve_config(saved=saved)
      # A resume that changes what the run is (its agent, say) is refused as such before the
      # new values are validated.
      run_dir_lib.check_identity(
        run_dir, config_lib.flatten(_saved_run_config(saved)), config_lib.flatten(run_config)
      )
      registry.validate(run_config)
      given = sorted("--" + path.split(".")[-1] for path in _explicit_paths(flags.FLAGS))
      print(
        f"resuming {run_dir}: its config.json is the base"
        + (f"; flags given now: {', '.join(given)}" if given else "")
        + ("; --preset is not applied to a run under way" if _PRESET.value else ""),
        flush=True,
      )
    wandb_options = _wandb_options(run_dir)
    if run_config.train.video_every:
      # A machine that cannot render says so before anything is written.
      gl_backend.check_offscreen_rendering()
  except (ValueError, OSError, gl_backend.RenderingUnavailable) as error:
    cli.fail(error)
  # Imported only now, so that --help and bad flags answer without loading the driver.
  from cmta_jax.envs.seed_envs import EnvWorkerFailed
  from cmta_jax.reporting import figures
  from cmta_jax.training import launch, loop, run_state
  from cmta_jax.training.checkpointing import CheckpointWriteFailed, NoUsableCheckpoint
  from cmta_jax.training.preemption import Preempted
  from cmta_jax.training.run_dir import RunDirInUse

  try:
    if _SEEDS.value is None:
      launch.train(
        run_config,
        run_dir,
        allow_config_change=_ALLOW_CONFIG_CHANGE.value,
        data_parallel=_DATA_PARALLEL.value,
        draw_curves=figures.run_curves,
        open_tracker=_tracker_opener(wandb_options),
        accept_history_loss=_ACCEPT_HISTORY_LOSS.value,
      )
      summaries = {}
    else:
      summaries = launch.train_seeds(
        run_config,
        run_dir,
        seeds,
        allow_config_change=_ALLOW_CONFIG_CHANGE.value,
        env_workers=env_workers,
        draw_curves=figures.run_curves,
        open_tracker=_tracker_opener(wandb_options),
        accept_history_loss=_ACCEPT_HISTORY_LOSS.value,
      )
    diverged = [seed for seed, summary in summaries.items() if summary is None]
    if diverged:
      cli.fail(
        f"seed(s) {diverged} diverged and stopped (see {run_state.DIVERGED_FILE} in their run "
        f"directories); the other {len(seeds) - len(diverged)} finished"
      )
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
    run_state.TrainingDiverged,
    RunDirInUse,
    gl_backend.RenderingUnavailable,
    EnvWorkerFailed,
  ) as error:
    cli.fail(error)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
