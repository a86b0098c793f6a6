"""Agent name -> networks. A new agent is an encoder plus one line here."""

from typing import Sequence

from cmta_jax.agents import cmta
from cmta_jax.agents.networks import AgentNetworks, make_actor, make_critic
from cmta_jax.config import NetworkConfig

AGENTS = ("cmta",)


def make_agent_networks(agent: str, config: NetworkConfig, task_names: Sequence[str],
                        obs_dim: int = 39, action_dim: int = 4) -> AgentNetworks:
  if agent not in AGENTS:
    raise ValueError(f"unknown agent {agent!r}; choose one of {', '.join(AGENTS)}")
  num_tasks = len(task_names)
  layout = "shared"
  encoder = cmta.make_mixture_encoder(config, num_tasks, obs_dim)
  actor = make_actor(encoder.feature_dim, action_dim, config.hidden_width, config.hidden_layers,
                     num_tasks, layout, config.log_std_min, config.log_std_max)
  critic = make_critic(encoder.feature_dim, action_dim, config.hidden_width, config.hidden_layers,
                       num_tasks, layout)
  return AgentNetworks(encoder=encoder, actor=actor, critic=critic, num_tasks=num_tasks,
                       obs_dim=obs_dim, action_dim=action_dim)


def check_agent(agent: str) -> None:
  if agent not in AGENTS:
    raise ValueError(f"unknown agent {agent!r}; choose one of {', '.join(AGENTS)}")


AGENT_HELP = {
    "cmta": "CMTA: task encoder + contrastive experts mixed by LSTM temporal attention",
}


def agent_defaults(run_config, explicit: set[str]):
  """Per-agent defaults that differ from the shared ones (none that override explicit flags)."""
  return run_config
