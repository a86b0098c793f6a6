"""Run configuration: one frozen dataclass per concern, named presets.

Every default is the paper's value (docs/algorithm.md §2-§5). Field checks live in the
fields' metadata; `validate()` methods raise a one-line ValueError so a launch fails before
anything is built. Every leaf field name is unique across sections: it is the field's flag
(`experiments/train.py`), and `replace_fields` sets fields by it.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

from cmta_jax.envs.config import EnvConfig, validate_seed

CARRY_MODES = ("stored", "frozen_memory", "frozen_lstm", "burn_in")
REPLAY_PLACEMENTS = ("device", "host")
# How evaluations count (docs/algorithm.md §5): cmta = the CMTA paper's (full episodes);
# metaworld_plus = Meta-World+'s (an episode ends at its first success).
EVAL_PROTOCOLS = ("cmta", "metaworld_plus")
PROTOCOL_NAMES = {"cmta": "CMTA", "metaworld_plus": "Meta-World+"}
METAWORLD_PLUS_EPISODE_LENGTH = 500
SOFTMODU_NETWORK_REVISION = 2


def setting_name(
  benchmark: str, mode: str, eval_protocol: str = "cmta", episode_length: int | None = None
) -> str:
  """'MT10-Fixed'; with another evaluation protocol than the CMTA paper's, it says which:
  'MT10-Mixed (Meta-World+)'. Tables, curves and summaries name a run's setting so. A
  Meta-World+ evaluation of episodes shorter or longer than that benchmark's 500 steps is
  not comparable with its published numbers, and its name says so: 'MT10-Mixed
  (Meta-World+ rules, 150-step episodes)'."""
  name = f"{benchmark}-{mode.capitalize()}"
  if eval_protocol != "cmta":
    name += f" ({PROTOCOL_NAMES.get(eval_protocol, eval_protocol)}"
    if eval_protocol == "metaworld_plus" and episode_length not in (
      None,
      METAWORLD_PLUS_EPISODE_LENGTH,
    ):
      name += f" rules, {episode_length}-step episodes"
    name += ")"
  return name


# ---------------------------------------------------------------- field checks
# Each field's check lives in its metadata; `validate_fields` runs them, so a new field
# with a check needs no hand-written list. A check raises a one-line ValueError.


def _positive_int(name: str, value: Any) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _non_negative_int(name: str, value: Any) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value < 0:
    raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def _positive_ints(name: str, value: Any) -> None:
  if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
    raise ValueError(f"{name} widths must be positive integers, got {value}")


def _positive(name: str, value: Any) -> None:
  if not value > 0:
    raise ValueError(f"{name} must be > 0, got {value}")


def _non_negative(name: str, value: Any) -> None:
  if not value >= 0:
    raise ValueError(f"{name} must be >= 0, got {value}")


def _in_unit_interval(name: str, value: Any) -> None:  # (0, 1]
  if not 0.0 < value <= 1.0:
    raise ValueError(f"{name} must be in (0, 1], got {value}")


def _fraction_below_one(name: str, value: Any) -> None:  # [0, 1)
  if not 0.0 <= value < 1.0:
    raise ValueError(f"{name} must be in [0, 1), got {value}")


def _carry_mode(name: str, value: Any) -> None:
  if value not in CARRY_MODES:
    raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(CARRY_MODES)}")


def _replay_placement(name: str, value: Any) -> None:
  if value not in REPLAY_PLACEMENTS:
    raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(REPLAY_PLACEMENTS)}")


def _eval_protocol(name: str, value: Any) -> None:
  if value not in EVAL_PROTOCOLS:
    raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(EVAL_PROTOCOLS)}")


def _softmodu_revision(name: str, value: Any) -> None:
  if value != SOFTMODU_NETWORK_REVISION:
    raise ValueError(
      f"{name} {value!r}: only revision {SOFTMODU_NETWORK_REVISION} is built (revision 1, a "
      "routed encoder under MLP heads, was replaced by the paper's network); start a new "
      "--run_dir"
    )


def _field(default: Any, check: Callable[[str, Any], None] | None = None) -> Any:
  return dataclasses.field(default=default, metadata={"check": check} if check else {})


def validate_fields(config: Any) -> None:
  """Runs the check in each field's metadata (one-line ValueError naming the field)."""
  for field in dataclasses.fields(config):
    check = field.metadata.get("check")
    if check is not None:
      check(field.name, getattr(config, field.name))


# ---------------------------------------------------------------- one dataclass per concern


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  """The actor and critic MLPs on the encoder's features (docs/algorithm.md §2)."""

  hidden_width: int = _field(512, _positive_int)  # actor and each Q head: layers x width, ReLU
  hidden_layers: int = _field(3, _positive_int)
  log_std_min: float = -20.0
  log_std_max: float = 2.0

  def validate(self) -> None:
    validate_fields(self)
    if not self.log_std_min < self.log_std_max:
      raise ValueError(
        f"log_std_min ({self.log_std_min}) must be < log_std_max ({self.log_std_max})"
      )


@dataclasses.dataclass(frozen=True)
class TaskEncoderConfig:
  """The learned task encoder z_task = g(task) of CMTA, MT-SAC+TE and CARE's MLP on its
  pretrained embeddings (docs/algorithm.md §2)."""

  task_embedding_dim: int = _field(64, _positive_int)  # Embedding(T, 64)
  task_encoder_hidden: tuple[int, ...] = _field((128, 64, 64), _positive_ints)
  task_feature_dim: int = _field(64, _positive_int)  # z_task

  def validate(self) -> None:
    validate_fields(self)


@dataclasses.dataclass(frozen=True)
class MixtureConfig:
  """CMTA's (and CARE's) experts, attention, temporal input and contrastive term
  (docs/algorithm.md §2-§3, docs/carry_modes.md)."""

  num_experts: int = _field(6, _positive_int)
  expert_hidden: int = _field(64, _positive_int)
  expert_dim: int = _field(64, _positive_int)  # z^j
  lstm_hidden: int = _field(64, _positive_int)
  temporal_attention: bool = True  # False = CMTA w/o TI: attention from z_task only, no LSTM
  attention_temperature: float = _field(1.0, _positive)
  # Hidden widths of the attention network: () = one Dense layer (CMTA, Eq. 5-6); CARE's
  # default is mtrl's MLP (50, 50).
  attention_hidden: tuple[int, ...] = _field((), _positive_ints)
  contrastive_temperature: float = _field(0.1, _positive)  # of the InfoNCE logits (Eq. 3)

  def validate(self) -> None:
    validate_fields(self)


@dataclasses.dataclass(frozen=True)
class RecurrenceConfig:
  """How the update keeps a recurrent encoder's carry fresh (docs/carry_modes.md); read for
  every agent whose encoder declares a recurrence (`Encoder.advance_carry`)."""

  # stored | frozen_memory | frozen_lstm | burn_in. burn_in_steps: the window L burn_in replays.
  carry_mode: str = _field("burn_in", _carry_mode)
  burn_in_steps: int = _field(20, _positive_int)

  def validate(self) -> None:
    validate_fields(self)


@dataclasses.dataclass(frozen=True)
class SoftModuConfig:
  """Soft Modularization's routed modules (Yang et al. 2020; paper Table 5)."""

  softmodu_layers: int = _field(4, _positive_int)  # >= 2: routing joins consecutive layers
  softmodu_modules: int = _field(4, _positive_int)
  softmodu_width: int = _field(64, _positive_int)
  # Which network the agent is; recorded so that runs of different networks never resume
  # into or average with each other. 2: the actor and each critic are routed networks.
  # 1 (configs that do not record it): a routed encoder under MLP heads, no longer built.
  softmodu_network_revision: int = _field(SOFTMODU_NETWORK_REVISION, _softmodu_revision)

  def validate(self) -> None:
    validate_fields(self)
    if self.softmodu_layers < 2:
      raise ValueError(
        f"softmodu_layers must be >= 2 (routing joins consecutive layers), got "
        f"{self.softmodu_layers}"
      )


@dataclasses.dataclass(frozen=True)
class SACConfig:
  """The shared SAC update and the weight of an encoder's auxiliary loss (docs/algorithm.md §3)."""

  discount: float = _field(0.99, _fraction_below_one)
  actor_lr: float = _field(3e-4, _positive)
  critic_lr: float = _field(3e-4, _positive)  # critic heads and the shared encoder
  alpha_lr: float = _field(3e-4, _positive)
  adam_b1: float = _field(0.9, _fraction_below_one)
  adam_b2: float = _field(0.999, _fraction_below_one)
  init_alpha: float = _field(1.0, _positive)  # per task
  target_entropy: float | None = None  # None = -action_dim
  encoder_tau: float = _field(0.05, _in_unit_interval)
  critic_tau: float = _field(0.005, _in_unit_interval)
  # Weight of the encoder's own auxiliary loss (CMTA: beta of the InfoNCE term, Eq. 3);
  # 0 = CMTA w/o CL. Flag --auxiliary_weight, alias --contrastive_weight.
  auxiliary_weight: float = _field(2500.0, _non_negative)

  def validate(self) -> None:
    validate_fields(self)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Schedule, replay, evaluation, logging and checkpoints (docs/algorithm.md §4-§5)."""

  seed: int = 0
  total_steps: int = _field(2_400_000, _positive_int)  # vector steps (= env steps per task)
  warmup_steps: int = _field(1_500, _non_negative_int)  # uniform random actions, no updates
  batch_per_task: int = _field(128, _positive_int)
  replay_capacity: int = _field(5_000_000, _positive_int)  # transitions over all tasks
  # Where the replay lives (docs/seeds.md, "Replay"): device = the learner's accelerator,
  # sampled inside the update call; host = host memory (JAX's CPU backend), each batch
  # sampled there and sent to the learner. The same draws either way.
  replay_placement: str = _field("device", _replay_placement)
  # Gradient updates per vector step, one call (a lax.scan of THE update); 1 = the paper's.
  updates_per_step: int = _field(1, _positive_int)
  eval_every: int = _field(3_000, _positive_int)
  eval_episodes: int = _field(1, _positive_int)  # per task
  # cmta: each episode runs to its end; metaworld_plus: it ends at its first success, so its
  # return stops there (success counts alike: success at any step). Needs env.mode=mixed.
  eval_protocol: str = _field("cmta", _eval_protocol)
  log_every: int = _field(500, _positive_int)
  # A multiple of the episode length (resume is at episode starts).
  checkpoint_every: int = _field(30_000, _positive_int)
  keep_checkpoints: int = _field(3, _positive_int)
  # Videos of one evaluation episode per task every this many steps (0: none), into
  # RUN_DIR/videos and TensorBoard (docs/results.md, "Videos"). A multiple of eval_every.
  video_every: int = _field(0, _non_negative_int)

  def validate(self, episode_length: int) -> None:
    validate_fields(self)
    validate_seed(self.seed)
    if self.video_every % self.eval_every:
      raise ValueError(
        f"video_every ({self.video_every}) must be 0 or a multiple of eval_every "
        f"({self.eval_every}): videos are recorded at evaluations"
      )
    if self.checkpoint_every % episode_length:
      raise ValueError(
        f"checkpoint_every ({self.checkpoint_every}) must be a multiple of the episode length "
        f"({episode_length}): runs resume at episode starts"
      )


# Sections that agents bring with them (`register_section`, called by `registry.register`):
# name -> frozen dataclass. A run config holds each at its defaults unless it sets it.
_PLUGIN_SECTIONS: dict[str, type] = {}


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """One run: the agent (registry name) and a config per concern. Which sections an agent
  reads is its encoder factory's business (`agents/registry.py`); `registry.validate` adds
  the checks that depend on the agent. Sections registered by agents are attributes too
  (`run_config.film`), kept in `plugins`."""

  agent: str = "cmta"
  env: EnvConfig = EnvConfig()
  head: HeadConfig = HeadConfig()
  task_encoder: TaskEncoderConfig = TaskEncoderConfig()
  mixture: MixtureConfig = MixtureConfig()
  recurrence: RecurrenceConfig = RecurrenceConfig()
  softmodu: SoftModuConfig = SoftModuConfig()
  sac: SACConfig = SACConfig()
  train: TrainConfig = TrainConfig()
  # ((name, section), ...) for registered sections set away from their defaults' object;
  # a tuple, so the config stays hashable.
  plugins: tuple = ()

  def __getattr__(self, name: str) -> Any:  # only reached for names that are not fields
    sections = _plugin_sections(self)
    if name in sections:
      return sections[name]
    raise AttributeError(f"RunConfig has no section or field {name!r}")

  def sections(self) -> dict[str, Any]:
    """Every section by name: the built-in fields', then the registered agents'."""
    built_in = {
      field.name: getattr(self, field.name)
      for field in dataclasses.fields(self)
      if dataclasses.is_dataclass(getattr(self, field.name))
    }
    return {**built_in, **_plugin_sections(self)}

  def setting_name(self) -> str:
    """This run's setting as tables, curves and summaries name it (`setting_name`)."""
    return setting_name(
      self.env.benchmark, self.env.mode, self.train.eval_protocol, self.env.episode_length
    )

  def validate(self) -> None:
    """Every section's own checks (one-line ValueError); no agent-dependent ones."""
    if not isinstance(self.agent, str) or not self.agent:
      raise ValueError(f"agent must be a registered agent's name, got {self.agent!r}")
    if self.train.eval_protocol == "metaworld_plus" and self.env.mode != "mixed":
      raise ValueError(
        "--eval_protocol=metaworld_plus evaluates over random training variations: it needs "
        f"--mode=mixed (mode is {self.env.mode!r})"
      )
    for name, section in self.sections().items():
      if name == "train":
        section.validate(self.env.episode_length)
      elif hasattr(section, "validate"):
        section.validate()
      else:
        validate_fields(section)


def _plugin_sections(config: RunConfig) -> dict[str, Any]:
  given = dict(config.plugins)
  return {name: given.get(name) or section() for name, section in _PLUGIN_SECTIONS.items()}


def register_section(name: str, section: type) -> None:
  """Adds an agent's config section: a frozen dataclass whose fields all have defaults and
  whose field names no other section uses (each is its flag). One-line ValueError if not."""
  if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
    raise ValueError(f"a config section's name must be lower_snake_case, got {name!r}")
  taken = {field.name for field in dataclasses.fields(RunConfig)} | set(_PLUGIN_SECTIONS)
  if name in taken:
    raise ValueError(f"config section {name!r} exists already")
  params = getattr(section, "__dataclass_params__", None)
  if params is None or not params.frozen:
    raise ValueError(f"config section {name!r}: give a frozen dataclass")
  try:
    section()
  except TypeError:
    raise ValueError(f"config section {name!r}: every field needs a default") from None
  names = {path.split(".")[-1]: path for path in flatten(RunConfig()) if path != "agent"}
  clashes = [f"{f.name} ({names[f.name]})" for f in dataclasses.fields(section) if f.name in names]
  if clashes:
    raise ValueError(
      f"config section {name!r}: field names already used (each field is a flag): "
      f"{', '.join(clashes)}"
    )
  _PLUGIN_SECTIONS[name] = section


def unregister_section(name: str) -> None:
  """Removes a section `register_section` added (for tests that register agents)."""
  _PLUGIN_SECTIONS.pop(name, None)


def _paper(benchmark: str, mode: str) -> RunConfig:
  return RunConfig(
    env=EnvConfig(benchmark=benchmark, mode=mode),
    # The paper used 1 evaluation episode per task; Mixed needs more (docs/algorithm.md §5).
    train=TrainConfig(eval_episodes=1 if mode == "fixed" else 10),
  )


def _metaworld_plus(benchmark: str, replay_capacity: int) -> RunConfig:
  return RunConfig(
    env=EnvConfig(
      benchmark=benchmark,
      mode="mixed",
      episode_length=METAWORLD_PLUS_EPISODE_LENGTH,
      reward_normalization=False,
    ),
    train=TrainConfig(
      total_steps=2_000_000,
      warmup_steps=4_000,
      batch_per_task=128,
      replay_capacity=replay_capacity,
      eval_every=20_000,
      eval_episodes=50,
      eval_protocol="metaworld_plus",
      checkpoint_every=20_000,
    ),
  )


PRESETS: dict[str, RunConfig] = {
  "paper_mt10_fixed": _paper("MT10", "fixed"),
  "paper_mt10_mixed": _paper("MT10", "mixed"),
  "paper_mt50_fixed": _paper("MT50", "fixed"),
  "paper_mt50_mixed": _paper("MT50", "mixed"),
  # Minutes on 2 CPU cores: the cpu_evidence networks, temperatures starting at 0.1
  # instead of 1 (skips ~10k steps of entropy-dominated start), a short budget whose
  # evaluations solve a task from 6k steps on (BUILD_NOTES.md, "Quick start re-tuned").
  "quickstart": RunConfig(
    env=EnvConfig(benchmark="MT10", mode="fixed", reward_normalization=False),
    head=HeadConfig(hidden_width=128),
    sac=SACConfig(init_alpha=0.1),
    train=TrainConfig(
      total_steps=12_000,
      batch_per_task=64,
      replay_capacity=200_000,
      eval_every=1_500,
      log_every=500,
      checkpoint_every=1_500,
    ),
  ),
  # Meta-World+ (McLean et al. 2025; Farama's metaworld-algorithms): 500-step episodes, a
  # random training variation per episode, no reward normaliser, 4,000 random vector steps,
  # batch 128 per task, 2M steps per task, 50 evaluation episodes per task every 20k steps,
  # each ended at its first success. The agents keep their own networks.
  "metaworld_plus_mt10": _metaworld_plus("MT10", replay_capacity=1_000_000),
  "metaworld_plus_mt50": _metaworld_plus("MT50", replay_capacity=5_000_000),
  # The CPU evidence budget (BUILD_NOTES.md): about an hour per agent on one core of this
  # 2-core machine, two runs side by side. Without the reward normaliser, which at this
  # budget inflates the rewards of unsolved tasks (BUILD_NOTES.md, "reward normaliser").
  "cpu_evidence": RunConfig(
    env=EnvConfig(benchmark="MT10", mode="fixed", reward_normalization=False),
    head=HeadConfig(hidden_width=128),
    train=TrainConfig(
      total_steps=105_000,
      batch_per_task=64,
      replay_capacity=1_000_000,
      eval_every=3_000,
      log_every=1_000,
      checkpoint_every=15_000,
    ),
  ),
}


def replace_path(config: Any, path: str, value: Any) -> Any:
  """Returns `config` with the dotted field `path` (e.g. 'train.seed') set to `value`."""
  head, _, rest = path.partition(".")
  if isinstance(config, RunConfig) and head in _PLUGIN_SECTIONS:
    plugins = dict(config.plugins)
    plugins[head] = replace_path(getattr(config, head), rest, value)
    return dataclasses.replace(config, plugins=tuple(sorted(plugins.items())))
  if not rest:
    return dataclasses.replace(config, **{head: value})
  return dataclasses.replace(config, **{head: replace_path(getattr(config, head), rest, value)})


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
  """{'train.seed': 0, ...} for every leaf field (a run config's registered sections too)."""
  if isinstance(config, RunConfig):
    out = {"agent": config.agent}
    for name, section in config.sections().items():
      out.update(flatten(section, f"{name}."))
    return out
  out = {}
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    name = f"{prefix}{field.name}"
    if dataclasses.is_dataclass(value):
      out.update(flatten(value, name + "."))
    else:
      out[name] = list(value) if isinstance(value, tuple) else value
  return out


def getattr_path(config: Any, path: str) -> Any:
  for part in path.split("."):
    config = getattr(config, part)
  return config


def from_flat(flat: dict[str, Any]) -> RunConfig:
  """The inverse of `flatten` (lists back to tuples); absent fields keep their defaults.

  Raises ValueError naming an unknown field.
  """
  run_config = RunConfig()
  known = flatten(run_config)
  for path, value in flat.items():
    if path not in known:
      raise ValueError(f"unknown config field {path!r}")
    if isinstance(getattr_path(run_config, path), tuple):
      value = tuple(value)
    run_config = replace_path(run_config, path, value)
  return run_config


def field_paths() -> dict[str, str]:
  """{leaf field name: dotted path} of every RunConfig field but `agent` (names are unique)."""
  paths = {}
  for path in flatten(RunConfig()):
    if path != "agent":
      name = path.split(".")[-1]
      if name in paths:
        raise AssertionError(f"config field name {name!r} is used twice ({paths[name]}, {path})")
      paths[name] = path
  return paths


def replace_fields(config: RunConfig, **values: Any) -> RunConfig:
  """`config` with fields set by leaf name, e.g. replace_fields(c, hidden_width=32, seed=1).
  Raises ValueError naming an unknown field."""
  paths = field_paths()
  for name, value in values.items():
    if name not in paths:
      raise ValueError(f"unknown config field {name!r}")
    config = replace_path(config, paths[name], value)
  return config


# Config files written by earlier versions: their dotted paths, by today's.
_RENAMED_PATHS = {
  "sac.contrastive_weight": "sac.auxiliary_weight",
  "sac.contrastive_temperature": "mixture.contrastive_temperature",
  "mixture.carry_mode": "recurrence.carry_mode",
  "mixture.burn_in_steps": "recurrence.burn_in_steps",
}
# What a config written before a field existed ran with, where that is not today's default:
# before carry modes, the update fed the stored carries (Algorithm 1 as printed).
_IMPLIED_BY_ABSENCE = {"recurrence.carry_mode": "stored"}
# ... and for one agent's configs only: Soft Modularization's first network.
_IMPLIED_BY_ABSENCE_PER_AGENT = {"softmodu": {"softmodu.softmodu_network_revision": 1}}
_SECTIONS_SPLIT_FROM_NETWORK = ("head", "task_encoder", "mixture", "recurrence", "softmodu")


def upgrade_flat(flat: dict[str, Any]) -> dict[str, Any]:
  """A flattened config as written by any earlier version, with today's paths: the old
  `network.X` fields now live in head / task_encoder / mixture / softmodu,
  `sac.contrastive_weight` is `sac.auxiliary_weight`, `sac.contrastive_temperature` is
  `mixture.contrastive_temperature`, and the carry mode and burn-in window moved from
  `mixture` to `recurrence`. Unknown paths are kept as they are."""
  moved = {
    f"network.{path.split('.')[-1]}": path
    for path in flatten(RunConfig())
    if path.split(".")[0] in _SECTIONS_SPLIT_FROM_NETWORK
  }
  renames = {**moved, **_RENAMED_PATHS}
  upgraded = {renames.get(path, path): value for path, value in flat.items()}
  if upgraded and "agent" in upgraded:  # a whole config, not a single path
    for path, value in _IMPLIED_BY_ABSENCE.items():
      upgraded.setdefault(path, value)
    for path, value in _IMPLIED_BY_ABSENCE_PER_AGENT.get(upgraded["agent"], {}).items():
      upgraded.setdefault(path, value)
  return upgraded
