"""Agent name -> networks. A new agent is an encoder plus one entry here.

Every agent is trained by the same SAC update (`sac.py`); agents differ only
in their encoder and in the task layout of the actor/critic heads.
"""

import dataclasses
from typing import NamedTuple, Sequence

from cmta_jax.agents import baselines, cmta, task_metadata
from cmta_jax.agents.networks import AgentNetworks, make_actor, make_critic
from cmta_jax.config import NetworkConfig


class AgentSpec(NamedTuple):
  encoder: str  # state | task_state | mixture | mixture_pretrained | soft_modular
  head_layout: str  # shared | multihead | independent
  help: str


AGENT_SPECS = {
    "cmta": AgentSpec("mixture", "shared",
                      "CMTA: task encoder + contrastive experts mixed by LSTM temporal attention"),
    "mtsac": AgentSpec("state", "shared", "MT-SAC: shared actor/critic on the state"),
    "mtsac_te": AgentSpec("task_state", "shared", "MT-SAC+TE: [learned task encoding; state]"),
    "mtmhsac": AgentSpec("state", "multihead", "MTMH-SAC: shared trunk, one output head per task"),
    "softmodu": AgentSpec("soft_modular", "shared",
                          "Soft Modularization: 4x4 modules of width 64 with task-state routing"),
    "care": AgentSpec("mixture_pretrained", "shared",
                      "CARE: experts mixed by attention on a pretrained task-description embedding"),
    "single_sac": AgentSpec("state", "independent", "Single-SAC: independent networks per task"),
}
AGENTS = tuple(AGENT_SPECS)
AGENT_HELP = {name: spec.help for name, spec in AGENT_SPECS.items()}
# Encoders with experts can take the contrastive term (CMTA; CARE + CL as an ablation).
_HAS_EXPERTS = ("mixture", "mixture_pretrained")


def check_agent(agent: str) -> None:
  if agent not in AGENT_SPECS:
    raise ValueError(f"unknown agent {agent!r}; choose one of {', '.join(AGENTS)}")


def has_experts(agent: str) -> bool:
  check_agent(agent)
  return AGENT_SPECS[agent].encoder in _HAS_EXPERTS


def check_agent_config(run_config) -> None:
  """Cross-field checks that depend on the agent (one-line ValueError)."""
  check_agent(run_config.agent)
  if run_config.sac.contrastive_weight > 0 and not has_experts(run_config.agent):
    raise ValueError(f"agent {run_config.agent!r} has no experts, so contrastive_weight must be 0 "
                     f"(got {run_config.sac.contrastive_weight})")
  if not run_config.network.temporal_attention and not has_experts(run_config.agent):
    raise ValueError("temporal_attention=False (CMTA w/o TI) only applies to agents with experts "
                     "('cmta'; 'care' never has temporal input)")


def agent_defaults(run_config, explicit: set[str]):
  """Per-agent defaults: only CMTA uses the contrastive term unless it is set explicitly."""
  check_agent(run_config.agent)
  if run_config.agent != "cmta" and "sac.contrastive_weight" not in explicit:
    run_config = dataclasses.replace(
        run_config, sac=dataclasses.replace(run_config.sac, contrastive_weight=0.0))
  if AGENT_SPECS[run_config.agent].encoder == "mixture_pretrained" and (
      "network.temporal_attention" not in explicit):
    run_config = dataclasses.replace(
        run_config, network=dataclasses.replace(run_config.network, temporal_attention=False))
  return run_config


def check_explicit_fields(run_config, explicit: set[str]) -> None:
  """Flags that were given but cannot act on this agent: a one-line ValueError, not silence."""
  recurrent = has_experts(run_config.agent) and run_config.network.temporal_attention and (
      AGENT_SPECS[run_config.agent].encoder == "mixture")
  carry_fields = {"network.carry_mode", "network.burn_in_steps"} & explicit
  if carry_fields and not recurrent:
    raise ValueError(f"{', '.join('--' + f.split('.')[-1] for f in sorted(carry_fields))} only "
                     "applies to agents with an LSTM ('cmta' with temporal_attention=true)")
  if "network.burn_in_steps" in explicit and run_config.network.carry_mode != "burn_in":
    raise ValueError(f"--burn_in_steps only applies to --carry_mode=burn_in "
                     f"(carry_mode is {run_config.network.carry_mode!r})")


def make_agent_networks(agent: str, config: NetworkConfig, task_names: Sequence[str],
                        obs_dim: int = 39, action_dim: int = 4) -> AgentNetworks:
  check_agent(agent)
  spec = AGENT_SPECS[agent]
  num_tasks = len(task_names)
  if spec.encoder == "state":
    encoder = baselines.make_state_encoder(obs_dim)
  elif spec.encoder == "task_state":
    encoder = baselines.make_task_state_encoder(config, num_tasks, obs_dim)
  elif spec.encoder == "soft_modular":
    encoder = baselines.make_soft_modular_encoder(config, num_tasks, obs_dim)
  elif spec.encoder == "mixture":
    encoder = cmta.make_mixture_encoder(config, num_tasks, obs_dim)
  else:  # CARE: pretrained description embeddings, no temporal input.
    embeddings = task_metadata.load_task_embeddings(task_names)
    encoder = cmta.make_mixture_encoder(
        dataclasses.replace(config, temporal_attention=False), num_tasks, obs_dim,
        pretrained_task_embeddings=embeddings)
  actor = make_actor(encoder.feature_dim, action_dim, config.hidden_width, config.hidden_layers,
                     num_tasks, spec.head_layout, config.log_std_min, config.log_std_max)
  critic = make_critic(encoder.feature_dim, action_dim, config.hidden_width, config.hidden_layers,
                       num_tasks, spec.head_layout)
  return AgentNetworks(encoder=encoder, actor=actor, critic=critic, num_tasks=num_tasks,
                       obs_dim=obs_dim, action_dim=action_dim)
