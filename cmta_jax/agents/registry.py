"""Agents as data: name -> (encoder factory, head layout, help, per-agent config defaults).

Every agent is trained by the same SAC update (`sac.py`); agents differ only in
their encoder and in the task layout of the actor/critic heads. Adding an agent
is one module with an encoder factory, its own config section if it has
hyperparameters, and one `register` call (README, "Adding an agent"); a module
outside the package reaches the commands through `--agent_module`. A malformed
entry fails at registration, and an encoder whose outputs do not have the
promised shapes fails when the agent is built, each with a one-line ValueError.
"""

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from cmta_jax import config as config_lib
from cmta_jax.agents import baselines, cmta, soft_modularization, task_metadata
from cmta_jax.agents.networks import (
  HEAD_LAYOUTS,
  Actor,
  AgentNetworks,
  Critic,
  Encoder,
  make_actor,
  make_critic,
)
from cmta_jax.config import RunConfig
from cmta_jax.envs import metaworld_env
from cmta_jax.types import LSTMCarry

# (run config, task names, observation size) -> Encoder. The factory reads the config
# sections it needs (e.g. CMTA: task_encoder and mixture); heads are built from `head`.
EncoderFactory = Callable[[RunConfig, Sequence[str], int], Encoder]
# (run config, task names, feature size, action size) -> (actor, critic): an agent whose actor
# and critics are not the MLP heads of `head` (Soft Modularization's routed networks).
HeadsFactory = Callable[[RunConfig, Sequence[str], int, int], tuple[Actor, Critic]]
# The fields of `head` that only the MLP heads read.
MLP_HEAD_FIELDS = ("head.hidden_width", "head.hidden_layers")


class AgentSpec(NamedTuple):
  make_encoder: EncoderFactory
  head_layout: str | None  # shared | multihead | independent (networks.py); None with make_heads
  help: str
  # Config defaults of this agent ("section.field" -> value), applied unless given as flags.
  defaults: dict[str, Any] = {}
  # The encoder-specific sections its factory reads (task_encoder, mixture, softmodu, or
  # its own); flags of other encoders' sections are refused for it. Every agent reads env,
  # head, sac and train, and `recurrence` if its encoder declares a recurrence.
  reads: tuple[str, ...] = ()
  # Its own config sections, name -> frozen dataclass (registered with the agent; read too).
  sections: dict[str, type] = {}
  # Fields the agent fixes ("section.field" -> value): a flag asking for another value is
  # refused, not ignored.
  fixed: dict[str, Any] = {}
  # Its own actor and critic in place of the MLP heads; then the MLP heads' fields
  # (MLP_HEAD_FIELDS) are refused as flags.
  make_heads: HeadsFactory | None = None
  # Fields of the sections it reads that it does not use ("section.field" -> why): a flag
  # setting one is refused with the reason.
  ignores: dict[str, str] = {}


AGENT_SPECS: dict[str, AgentSpec] = {}
_NO_AUXILIARY = {"sac.auxiliary_weight": 0.0}
# Sections every agent reads; the others belong to particular encoders.
SHARED_SECTIONS = ("env", "head", "sac", "train")


def register(name: str, spec: AgentSpec) -> None:
  """Adds an agent and its own config sections; raises ValueError (one line) for a bad name
  or a malformed spec, registering nothing."""
  if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
    raise ValueError(f"agent name must be lower_snake_case, got {name!r}")
  if name in AGENT_SPECS:
    raise ValueError(f"agent {name!r} is already registered")
  if not isinstance(spec, AgentSpec) or not callable(spec.make_encoder):
    raise ValueError(f"agent {name!r}: give an AgentSpec whose make_encoder is callable")
  if spec.make_heads is not None:
    if spec.head_layout is not None or not callable(spec.make_heads):
      raise ValueError(
        f"agent {name!r}: with make_heads (a callable) give head_layout=None; the heads are its own"
      )
  elif spec.head_layout not in HEAD_LAYOUTS:
    raise ValueError(
      f"agent {name!r}: unknown head layout {spec.head_layout!r}; choose one of "
      f"{', '.join(HEAD_LAYOUTS)}"
    )
  if not spec.help.strip():
    raise ValueError(f"agent {name!r}: give a one-line help text")
  registered = []
  try:
    for section_name, section in spec.sections.items():
      config_lib.register_section(section_name, section)
      registered.append(section_name)
    sections = config_lib.RunConfig().sections()
    unknown_reads = sorted(set(spec.reads) - set(sections))
    if unknown_reads:
      raise ValueError(f"agent {name!r}: reads unknown config sections {', '.join(unknown_reads)}")
    fields = config_lib.flatten(config_lib.RunConfig())
    unknown = sorted((set(spec.defaults) | set(spec.fixed) | set(spec.ignores)) - set(fields))
    if unknown:
      raise ValueError(f"agent {name!r}: unknown config fields in defaults: {', '.join(unknown)}")
  except ValueError:
    for section_name in registered:
      config_lib.unregister_section(section_name)
    raise
  AGENT_SPECS[name] = spec


def unregister(name: str) -> None:
  """Removes an agent and its own sections (for tests that register agents)."""
  spec = AGENT_SPECS.pop(name)
  for section_name in spec.sections:
    config_lib.unregister_section(section_name)


def _state_encoder(run_config, task_names, obs_dim):
  return baselines.make_state_encoder(obs_dim)


def _task_state_encoder(run_config, task_names, obs_dim):
  return baselines.make_task_state_encoder(run_config.task_encoder, len(task_names), obs_dim)


def _soft_modular_heads(run_config, task_names, obs_dim, action_dim):
  config, task_config, head = run_config.softmodu, run_config.task_encoder, run_config.head
  actor = soft_modularization.make_soft_modular_actor(
    config, task_config, len(task_names), obs_dim, action_dim, head.log_std_min, head.log_std_max
  )
  critic = soft_modularization.make_soft_modular_critic(
    config, task_config, len(task_names), obs_dim, action_dim
  )
  return actor, critic


def _cmta_encoder(run_config, task_names, obs_dim):
  return cmta.make_mixture_encoder(
    run_config.mixture,
    run_config.task_encoder,
    len(task_names),
    obs_dim,
    carry_mode=run_config.recurrence.carry_mode,
  )


def _care_encoder(run_config, task_names, obs_dim):
  # Pretrained description embeddings in place of the learned table; never a temporal input.
  return cmta.make_mixture_encoder(
    dataclasses.replace(run_config.mixture, temporal_attention=False),
    run_config.task_encoder,
    len(task_names),
    obs_dim,
    pretrained_task_embeddings=task_metadata.load_task_embeddings(task_names),
  )


register(
  "cmta",
  AgentSpec(
    _cmta_encoder,
    "shared",
    "CMTA: task encoder + contrastive experts mixed by LSTM temporal attention",
    reads=("task_encoder", "mixture"),
  ),
)
register(
  "mtsac",
  AgentSpec(_state_encoder, "shared", "MT-SAC: shared actor/critic on the state", _NO_AUXILIARY),
)
register(
  "mtsac_te",
  AgentSpec(
    _task_state_encoder,
    "shared",
    "MT-SAC+TE: [learned task encoding; state]",
    _NO_AUXILIARY,
    reads=("task_encoder",),
  ),
)
register(
  "mtmhsac",
  AgentSpec(
    _state_encoder, "multihead", "MTMH-SAC: shared trunk, one output head per task", _NO_AUXILIARY
  ),
)
register(
  "softmodu",
  AgentSpec(
    _state_encoder,
    None,
    "Soft Modularization: actor and critics of 4x4 routed modules of width 64",
    _NO_AUXILIARY,
    reads=("task_encoder", "softmodu"),
    make_heads=_soft_modular_heads,
    ignores={
      "task_encoder.task_feature_dim": "its task encoding has the module width (--softmodu_width)"
    },
  ),
)
register(
  "care",
  AgentSpec(
    _care_encoder,
    "shared",
    "CARE: experts mixed by attention on a pretrained task-description embedding",
    # Its attention network as in mtrl (AttentionBasedExperts): an MLP 50-50 on z_task.
    {**_NO_AUXILIARY, "mixture.attention_hidden": (50, 50)},
    reads=("task_encoder", "mixture"),
    fixed={"mixture.temporal_attention": False},  # CARE's attention has no temporal input
  ),
)
register(
  "single_sac",
  AgentSpec(
    _state_encoder, "independent", "Single-SAC: independent networks per task", _NO_AUXILIARY
  ),
)


def agent_names() -> tuple[str, ...]:
  return tuple(AGENT_SPECS)


def agent_help() -> dict[str, str]:
  return {name: spec.help for name, spec in AGENT_SPECS.items()}


AGENTS = agent_names()  # the built-in agents, for flag choices and tests


def check_agent(agent: str) -> None:
  if agent not in AGENT_SPECS:
    raise ValueError(f"unknown agent {agent!r}; choose one of {', '.join(AGENT_SPECS)}")


def make_encoder(run_config) -> Encoder:
  """The encoder of `run_config`'s agent for its benchmark (no parameters are made)."""
  check_agent(run_config.agent)
  return AGENT_SPECS[run_config.agent].make_encoder(
    run_config, metaworld_env.task_names(run_config.env.benchmark), metaworld_env.OBS_DIM
  )


def validate(run_config: RunConfig) -> None:
  """Every check of a run config: each section's own, then those that depend on the agent.
  Raises a one-line ValueError."""
  run_config.validate()
  check_agent_config(run_config)


def check_agent_config(run_config) -> None:
  """Cross-field checks that depend on the agent (one-line ValueError)."""
  check_agent(run_config.agent)
  weight = run_config.sac.auxiliary_weight
  if weight > 0 and make_encoder(run_config).auxiliary_loss is None:
    raise ValueError(
      f"agent {run_config.agent!r} has no auxiliary (contrastive) loss, so "
      f"--contrastive_weight must be 0 (got {weight})"
    )


def agent_defaults(run_config, explicit: set[str]):
  """`run_config` with the agent's own defaults and fixed values for every field not given
  explicitly."""
  check_agent(run_config.agent)
  spec = AGENT_SPECS[run_config.agent]
  for path, value in {**spec.defaults, **spec.fixed}.items():
    if path not in explicit:
      run_config = config_lib.replace_path(run_config, path, value)
  return run_config


def sections_read(agent: str) -> tuple[str, ...]:
  """The encoder-specific config sections `agent` reads (its own included)."""
  spec = AGENT_SPECS[agent]
  return tuple(spec.reads) + tuple(spec.sections)


def check_explicit_fields(run_config, explicit: set[str]) -> None:
  """Flags that were given but cannot act on this agent: a one-line ValueError, not silence."""
  agent = run_config.agent
  spec = AGENT_SPECS[agent]
  for path in sorted(explicit):
    section, flag = path.split(".")[0], "--" + path.split(".")[-1]
    if section in SHARED_SECTIONS + ("recurrence",) or section in sections_read(agent):
      continue
    readers = [name for name in AGENT_SPECS if section in sections_read(name)]
    raise ValueError(
      f"{flag} sets the {section} section, which agent {agent!r} does not read (agents "
      f"that do: {', '.join(readers) or 'none'})"
    )
  unused = dict(spec.ignores)
  if spec.make_heads is not None:
    unused.update(dict.fromkeys(MLP_HEAD_FIELDS, "its actor and critics are its own networks"))
  refused = sorted(set(unused) & explicit)
  if refused:
    path = refused[0]
    raise ValueError(f"--{path.split('.')[-1]} does not act on agent {agent!r}: {unused[path]}")
  for path, value in spec.fixed.items():
    if path in explicit and config_lib.getattr_path(run_config, path) != value:
      raise ValueError(
        f"agent {agent!r} fixes {path} to {value!r}: --{path.split('.')[-1]} cannot change it"
      )
  carry_fields = sorted({"recurrence.carry_mode", "recurrence.burn_in_steps"} & explicit)
  if carry_fields and make_encoder(run_config).advance_carry is None:
    raise ValueError(
      f"{', '.join('--' + f.split('.')[-1] for f in carry_fields)} only applies to an "
      f"encoder with a recurrence, and agent {agent!r} has none with this config"
    )
  if "recurrence.burn_in_steps" in explicit and run_config.recurrence.carry_mode != "burn_in":
    raise ValueError(
      f"--burn_in_steps only applies to --carry_mode=burn_in "
      f"(carry_mode is {run_config.recurrence.carry_mode!r})"
    )


def make_agent_networks(
  run_config: RunConfig, task_names: Sequence[str], obs_dim: int, action_dim: int
) -> AgentNetworks:
  """`run_config.agent`'s encoder, actor and critic for these tasks and sizes (from the
  environment).

  Raises ValueError (one line) for an unknown agent or if the encoder's outputs do not have
  its declared shapes.
  """
  agent = run_config.agent
  check_agent(agent)
  spec, head = AGENT_SPECS[agent], run_config.head
  num_tasks = len(task_names)
  encoder = spec.make_encoder(run_config, task_names, obs_dim)
  _check_encoder_shapes(agent, encoder, num_tasks, obs_dim)
  if spec.make_heads is not None:
    actor, critic = spec.make_heads(run_config, task_names, encoder.feature_dim, action_dim)
    _check_head_shapes(agent, actor, critic, num_tasks, encoder.feature_dim, action_dim)
    return AgentNetworks(encoder, actor, critic, num_tasks, obs_dim, action_dim)
  actor = make_actor(
    encoder.feature_dim,
    action_dim,
    head.hidden_width,
    head.hidden_layers,
    num_tasks,
    spec.head_layout,
    head.log_std_min,
    head.log_std_max,
  )
  critic = make_critic(
    encoder.feature_dim,
    action_dim,
    head.hidden_width,
    head.hidden_layers,
    num_tasks,
    spec.head_layout,
  )
  return AgentNetworks(
    encoder=encoder,
    actor=actor,
    critic=critic,
    num_tasks=num_tasks,
    obs_dim=obs_dim,
    action_dim=action_dim,
  )


def _check_encoder_shapes(agent: str, encoder: Encoder, num_tasks: int, obs_dim: int) -> None:
  """Traces (no compute) the encoder on a [2 tasks, 3 rows] batch against its declaration."""
  groups, rows, carry_dim = min(2, num_tasks), 3, encoder.carry_dim
  carry = LSTMCarry(
    jax.ShapeDtypeStruct((groups, rows, carry_dim), jnp.float32),
    jax.ShapeDtypeStruct((groups, rows, carry_dim), jnp.float32),
  )
  out = _traced(
    f"agent {agent!r}: its encoder fails on a [{groups}, {rows}, {obs_dim}] batch",
    lambda key, obs, ids, carry: encoder.apply(encoder.init(key), obs, ids, carry),
    jax.ShapeDtypeStruct((groups, rows, obs_dim), jnp.float32),
    jax.ShapeDtypeStruct((groups,), jnp.int32),
    carry,
  )
  expected = {
    "features": (groups, rows, encoder.feature_dim),
    "carry.h": (groups, rows, carry_dim),
    "carry.c": (groups, rows, carry_dim),
  }
  got = {"features": out.features.shape, "carry.h": out.carry.h.shape, "carry.c": out.carry.c.shape}
  wrong = [
    f"{name} {got[name]} (expected {shape})"
    for name, shape in expected.items()
    if tuple(got[name]) != shape
  ]
  if wrong:
    raise ValueError(
      f"agent {agent!r}: its encoder returns {', '.join(wrong)} for a "
      f"[{groups}, {rows}, {obs_dim}] batch (feature_dim {encoder.feature_dim}, "
      f"carry_dim {carry_dim})"
    )


def _check_head_shapes(
  agent: str, actor, critic, num_tasks: int, feature_dim: int, action_dim: int
):
  """Traces (no compute) an agent's own actor and critic on a [2 tasks, 3 rows] batch:
  mean and log_std [G, B, A], Q [num_q, G, B]. One-line ValueError otherwise."""
  groups, rows = min(2, num_tasks), 3
  features = jax.ShapeDtypeStruct((groups, rows, feature_dim), jnp.float32)
  actions = jax.ShapeDtypeStruct((groups, rows, action_dim), jnp.float32)
  ids = jax.ShapeDtypeStruct((groups,), jnp.int32)
  failure = (
    f"agent {agent!r}: its actor or critic fails on a [{groups}, {rows}, {feature_dim}] batch"
  )
  mean, log_std = _traced(
    failure, lambda key, x, i: actor.apply(actor.init(key), x, i), features, ids
  )
  q = _traced(
    failure, lambda key, x, a, i: critic.apply(critic.init(key), x, a, i), features, actions, ids
  )
  policy = (groups, rows, action_dim)
  if mean.shape != policy or log_std.shape != policy or q.shape[1:] != (groups, rows):
    raise ValueError(
      f"agent {agent!r}: its actor returns {mean.shape} / {log_std.shape} (expected {policy}) "
      f"and its critic {q.shape} (expected [num_q, {groups}, {rows}])"
    )


def _traced(failure: str, fn, *args):
  """jax.eval_shape(fn, key, *args): output shapes without compute; a one-line ValueError
  starting with `failure` if tracing fails."""
  try:
    return jax.eval_shape(fn, jax.random.PRNGKey(0), *args)
  except Exception as error:  # pylint: disable=broad-except
    raise ValueError(f"{failure}: {type(error).__name__}: {str(error).splitlines()[0]}") from None
