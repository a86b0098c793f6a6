"""Run configuration: one frozen dataclass per concern, named presets.

Every default is the paper's value (docs/algorithm.md §2-§5). `validate()` methods raise a
one-line ValueError so a launch fails before anything is built.
"""

import dataclasses
from typing import Any

from cmta_jax.envs import EnvConfig, validate_seed



CARRY_MODES = ("stored", "frozen_memory", "burn_in")


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
  """Widths and shapes of the encoder, actor and critic (docs/algorithm.md §2, §6)."""

  hidden_width: int = 512  # actor and each Q head: hidden_layers x hidden_width, ReLU
  hidden_layers: int = 3
  task_embedding_dim: int = 64  # Embedding(T, 64) of the task encoder
  task_encoder_hidden: tuple[int, ...] = (128, 64, 64)  # then Dense(task_feature_dim)
  task_feature_dim: int = 64  # z_task
  num_experts: int = 6
  expert_hidden: int = 64
  expert_dim: int = 64  # z^j
  lstm_hidden: int = 64
  temporal_attention: bool = True  # False = CMTA w/o TI: attention from z_task only, no LSTM
  # How the LSTM carry the attention reads is kept fresh (docs/carry_modes.md): stored |
  # frozen_memory | burn_in. burn_in_steps: the window L that mode replays in each update.
  carry_mode: str = "frozen_memory"
  burn_in_steps: int = 20
  attention_temperature: float = 1.0
  contrastive_temperature: float = 0.1  # of CMTA's InfoNCE logits (Eq. 3)
  log_std_min: float = -20.0
  log_std_max: float = 2.0
  # Soft Modularization (Yang et al. 2020), paper Table 5.
  softmodu_layers: int = 4
  softmodu_modules: int = 4
  softmodu_width: int = 64

  def validate(self) -> None:
    positive = dict(
        hidden_width=self.hidden_width, hidden_layers=self.hidden_layers,
        task_embedding_dim=self.task_embedding_dim, task_feature_dim=self.task_feature_dim,
        num_experts=self.num_experts, expert_hidden=self.expert_hidden, expert_dim=self.expert_dim,
        lstm_hidden=self.lstm_hidden, burn_in_steps=self.burn_in_steps,
        softmodu_layers=self.softmodu_layers,
        softmodu_modules=self.softmodu_modules, softmodu_width=self.softmodu_width)
    for name, value in positive.items():
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if any(w < 1 for w in self.task_encoder_hidden):
      raise ValueError(f"task_encoder_hidden widths must be positive, got {self.task_encoder_hidden}")
    if self.carry_mode not in CARRY_MODES:
      raise ValueError(f"unknown carry_mode {self.carry_mode!r}; choose one of {', '.join(CARRY_MODES)}")
    if self.contrastive_temperature <= 0:
      raise ValueError(f"contrastive_temperature must be > 0, got {self.contrastive_temperature}")
    if self.attention_temperature <= 0:
      raise ValueError(f"attention_temperature must be > 0, got {self.attention_temperature}")
    if not self.log_std_min < self.log_std_max:
      raise ValueError(f"log_std_min ({self.log_std_min}) must be < log_std_max ({self.log_std_max})")


@dataclasses.dataclass(frozen=True)
class SACConfig:
  """The shared SAC update and CMTA's contrastive term (docs/algorithm.md §3)."""

  discount: float = 0.99
  actor_lr: float = 3e-4
  critic_lr: float = 3e-4  # critic heads and the shared encoder
  alpha_lr: float = 3e-4
  adam_b1: float = 0.9
  adam_b2: float = 0.999
  init_alpha: float = 1.0  # per task
  target_entropy: float | None = None  # None = -action_dim
  encoder_tau: float = 0.05
  critic_tau: float = 0.005
  # Weight of the encoder's own auxiliary loss (CMTA: beta of the InfoNCE term, Eq. 3);
  # 0 = CMTA w/o CL. Flag --auxiliary_weight, alias --contrastive_weight.
  auxiliary_weight: float = 2500.0

  def validate(self) -> None:
    if not 0.0 <= self.discount < 1.0:
      raise ValueError(f"discount must be in [0, 1), got {self.discount}")
    for name in ("actor_lr", "critic_lr", "alpha_lr", "init_alpha"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
    for name in ("encoder_tau", "critic_tau"):
      if not 0.0 < getattr(self, name) <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
    if self.auxiliary_weight < 0:
      raise ValueError(f"auxiliary_weight must be >= 0, got {self.auxiliary_weight}")
    if not (0 <= self.adam_b1 < 1 and 0 <= self.adam_b2 < 1):
      raise ValueError("adam_b1 and adam_b2 must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Schedule, replay, evaluation, logging and checkpoints (docs/algorithm.md §4-§5)."""

  seed: int = 0
  total_steps: int = 2_400_000  # vector steps (= environment steps per task)
  warmup_steps: int = 1_500  # uniform random actions, no updates
  batch_per_task: int = 128
  replay_capacity: int = 5_000_000  # transitions over all tasks
  eval_every: int = 3_000
  eval_episodes: int = 1  # per task
  log_every: int = 500
  checkpoint_every: int = 30_000  # a multiple of the episode length (resume is at episode starts)
  keep_checkpoints: int = 3

  def validate(self, episode_length: int) -> None:
    for name in ("total_steps", "batch_per_task", "replay_capacity", "eval_every",
                 "eval_episodes", "log_every", "checkpoint_every", "keep_checkpoints"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
      raise ValueError(f"warmup_steps must be a non-negative integer, got {self.warmup_steps!r}")
    if self.checkpoint_every % episode_length:
      raise ValueError(
          f"checkpoint_every ({self.checkpoint_every}) must be a multiple of the episode length "
          f"({episode_length}): runs resume at episode starts")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  agent: str = "cmta"
  env: EnvConfig = EnvConfig()
  network: NetworkConfig = NetworkConfig()
  sac: SACConfig = SACConfig()
  train: TrainConfig = TrainConfig()

  def validate(self) -> None:
    from cmta_jax.agents import registry  # Local: registry imports this module.
    registry.check_agent_config(self)
    self.env.validate()
    validate_seed(self.train.seed)
    self.network.validate()
    self.sac.validate()
    self.train.validate(self.env.episode_length)


def _paper(benchmark: str, mode: str) -> RunConfig:
  return RunConfig(
      env=EnvConfig(benchmark=benchmark, mode=mode),
      # The paper used 1 evaluation episode per task; Mixed needs more (docs/algorithm.md §5).
      train=TrainConfig(eval_episodes=1 if mode == "fixed" else 10))


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
        network=NetworkConfig(hidden_width=128),
        sac=SACConfig(init_alpha=0.1),
        train=TrainConfig(total_steps=12_000, batch_per_task=64, replay_capacity=200_000,
                          eval_every=1_500, log_every=500, checkpoint_every=1_500)),
    # The CPU evidence budget (BUILD_NOTES.md): about an hour per agent on one core of this
    # 2-core machine, two runs side by side. Without the reward normaliser, which at this
    # budget inflates the rewards of unsolved tasks (BUILD_NOTES.md, "reward normaliser").
    "cpu_evidence": RunConfig(
        env=EnvConfig(benchmark="MT10", mode="fixed", reward_normalization=False),
        network=NetworkConfig(hidden_width=128),
        train=TrainConfig(total_steps=105_000, batch_per_task=64, replay_capacity=1_000_000,
                          eval_every=3_000, log_every=1_000, checkpoint_every=15_000)),
}


def replace_path(config: Any, path: str, value: Any) -> Any:
  """Returns `config` with the dotted field `path` (e.g. 'train.seed') set to `value`."""
  head, _, rest = path.partition(".")
  if not rest:
    return dataclasses.replace(config, **{head: value})
  return dataclasses.replace(config, **{head: replace_path(getattr(config, head), rest, value)})


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
  """{'train.seed': 0, ...} for every leaf field."""
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
