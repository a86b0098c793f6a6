"""The one SAC update every agent trains with (docs/algorithm.md §3), and action selection.

It knows no agent: an encoder brings its own carry recurrence, auxiliary loss (CMTA's
InfoNCE) and diagnostics (`networks.Encoder`).

`make_update_fn(networks, config)` returns a pure function
`update(state, batch, key) -> (state, metrics)` that does, in one call:
critic + beta * InfoNCE on the encoder and Q heads, the actor on stop-gradient
features, the per-task temperature, and Polyak targets. Per-task losses come
from `jax.vmap` over the task axis of the [T, B_task, ...] batch and are
averaged with weight 1/T; the networks themselves run once on the whole
batch (see `networks.py` for why). Given `axis_name`, the same function runs under
`jax.pmap`: gradients and metrics are `pmean`-ed, parameters stay replicated.

Gradient routing is done with stop_gradient inside one objective, so a single
forward and backward pass yields every parameter group's own gradient:
  encoder      <- critic loss + beta * contrastive loss
  critic heads <- critic loss
  actor        <- actor loss (features and Q parameters stop-gradient)
  log_alpha    <- temperature loss
"""

from typing import NamedTuple

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax

from cmta_jax.agents import carry as carry_lib
from cmta_jax.agents.networks import AgentNetworks
from cmta_jax.config import SACConfig
from cmta_jax.nn import distributions, layers
from cmta_jax.types import LSTMCarry, Params, Transition

sg = jax.lax.stop_gradient


class TrainingState(flax.struct.PyTreeNode):
  params: dict  # {"encoder", "critic", "actor", "log_alpha" [T]}
  target_params: dict  # {"encoder", "critic"}
  opt_state: optax.OptState
  step: jax.Array


class PolicyParams(NamedTuple):
  """What acting needs: the online encoder and the actor."""

  encoder: Params
  actor: Params


def policy_params(state: TrainingState) -> PolicyParams:
  return PolicyParams(encoder=state.params["encoder"], actor=state.params["actor"])


def make_optimizer(config: SACConfig) -> optax.GradientTransformation:
  """Adam per parameter group; the encoder shares the critic's learning rate."""

  def adam(lr):
    return optax.adam(lr, b1=config.adam_b1, b2=config.adam_b2)

  return optax.multi_transform(
    {
      "actor": adam(config.actor_lr),
      "critic": adam(config.critic_lr),
      "alpha": adam(config.alpha_lr),
    },
    {"encoder": "critic", "critic": "critic", "actor": "actor", "log_alpha": "alpha"},
  )


def init_training_state(
  key: jax.Array, networks: AgentNetworks, config: SACConfig
) -> TrainingState:
  k_encoder, k_critic, k_actor = jax.random.split(key, 3)
  params = {
    "encoder": networks.encoder.init(k_encoder),
    "critic": networks.critic.init(k_critic),
    "actor": networks.actor.init(k_actor),
    "log_alpha": jnp.full((networks.num_tasks,), jnp.log(config.init_alpha), jnp.float32),
  }
  target_params = {"encoder": params["encoder"], "critic": params["critic"]}
  # Copies, so that donating the state never aliases online and target buffers.
  target_params = jax.tree.map(jnp.array, target_params)
  return TrainingState(
    params=params,
    target_params=target_params,
    opt_state=make_optimizer(config).init(params),
    step=jnp.zeros((), jnp.int32),
  )


def target_entropy(networks: AgentNetworks, config: SACConfig) -> float:
  return -float(networks.action_dim) if config.target_entropy is None else config.target_entropy


def make_loss(networks: AgentNetworks, config: SACConfig):
  """The per-task losses of a task-grouped batch.

  loss(params, target_params, batch [G, B, ...], task_ids [G], noise_next [G, B, A],
  noise_now [G, B, A]) -> (objective [G], metrics {name: [G]}).

  Every network runs once on the whole batch (all groups together); the loss
  terms of each task are then computed by `jax.vmap` over the group axis.
  """
  encoder, actor, critic = networks.encoder, networks.actor, networks.critic
  entropy_target = target_entropy(networks, config)
  auxiliary = encoder.auxiliary_loss
  weight = config.auxiliary_weight
  if weight > 0 and auxiliary is None:
    raise ValueError(
      f"auxiliary_weight (--contrastive_weight) is {weight} but this encoder has "
      "no auxiliary loss; use 0"
    )

  def task_terms(
    log_alpha,
    reward,
    terminated,
    q,
    next_q,
    next_log_prob,
    log_prob,
    q_pi,
    auxiliary_per_sample,
    diagnostics,
  ):
    """ONE task's loss terms: q, next_q [num_q, B]; the rest [B, ...]."""
    alpha = jnp.exp(log_alpha)
    # Critic: y = r + gamma (1 - terminated) (min Q_target(s', a') - alpha log pi(a'|s')).
    next_value = next_q.min(axis=0) - sg(alpha) * next_log_prob
    td_target = sg(reward + config.discount * (1.0 - terminated) * next_value)
    critic_loss = jnp.mean(jnp.square(q - td_target), axis=-1).sum()
    actor_loss = jnp.mean(sg(alpha) * log_prob - q_pi)
    alpha_loss = jnp.mean(alpha * sg(-log_prob - entropy_target))
    objective = critic_loss + actor_loss + alpha_loss
    metrics = {
      "critic_loss": critic_loss,
      "actor_loss": actor_loss,
      "alpha_loss": alpha_loss,
      "alpha": alpha,
      "entropy": -jnp.mean(log_prob),
      "q_mean": q.mean(),
      "td_target_mean": td_target.mean(),
    }
    if auxiliary is not None:  # e.g. Eq. 3: mean over the task's samples
      auxiliary_loss = auxiliary_per_sample.mean() if weight > 0 else jnp.zeros(())
      objective = objective + weight * auxiliary_loss
      metrics[auxiliary.name] = auxiliary_loss
    metrics.update({name: value.mean() for name, value in diagnostics.items()})
    return objective, metrics

  def loss(params, target_params, batch: Transition, task_ids, noise_next, noise_now):
    carry_in, carry_next = carry_lib.carries_for_update(
      encoder.advance_carry, params["encoder"], batch
    )
    online_t = encoder.apply(params["encoder"], batch.obs, task_ids, carry_in)
    if carry_next is None:  # burn-in: s_{t+1}'s carry is this pass's fresh carry_out
      carry_next = sg(online_t.carry)
    online_next = encoder.apply(sg(params["encoder"]), batch.next_obs, task_ids, carry_next)
    target_next = encoder.apply(target_params["encoder"], batch.next_obs, task_ids, carry_next)

    # a' from the actor on the online encoding of s'; its Q from the target networks.
    next_mean, next_log_std = actor.apply(sg(params["actor"]), online_next.features, task_ids)
    next_action, next_log_prob = distributions.sample_tanh_gaussian(
      next_mean, next_log_std, noise_next
    )
    next_q = critic.apply(target_params["critic"], target_next.features, next_action, task_ids)
    q = critic.apply(params["critic"], online_t.features, batch.action, task_ids)  # [num_q, G, B]

    # Actor on stop-gradient features; Q parameters frozen for this term.
    features = sg(online_t.features)
    mean, log_std = actor.apply(params["actor"], features, task_ids)
    action, log_prob = distributions.sample_tanh_gaussian(mean, log_std, noise_now)
    q_pi = critic.apply(sg(params["critic"]), features, action, task_ids).min(axis=0)

    # The encoder's own terms, per sample [G, B], over all groups at once.
    auxiliary_per_sample = None
    if auxiliary is not None and weight > 0:
      auxiliary_per_sample = auxiliary.per_sample(online_t, target_next)
    diagnostics = sg(encoder.diagnostics(online_t)) if encoder.diagnostics else {}
    if actor.routing is not None:  # mean entropy (nats) of the actor's routing distributions
      routing = sg(actor.routing(params["actor"], features, task_ids))
      diagnostics["routing_entropy"] = distributions.categorical_entropy(routing).mean(-1)
    return jax.vmap(task_terms, in_axes=(0, 0, 0, 1, 1, 0, 0, 0, 0, 0))(
      params["log_alpha"][task_ids],
      batch.reward,
      batch.terminated,
      q,
      next_q,
      next_log_prob,
      log_prob,
      q_pi,
      auxiliary_per_sample,
      diagnostics,
    )

  return loss


def polyak(target: Params, online: Params, tau: float) -> Params:
  return jax.tree.map(lambda t, o: (1.0 - tau) * t + tau * o, target, online)


def _noise_for_this_shard(key, shape, axis_name):
  """Standard-normal noise for the whole (global) batch, sliced to this device's shard.

  Each sample gets the same noise whether the batch is processed on one device
  or split over several, so the pmapped update equals the single-device one.
  """
  if axis_name is None:
    return jax.random.normal(key, shape)
  num_shards = jax.lax.psum(1, axis_name)
  t, b, a = shape
  full = jax.random.normal(key, (t, b * num_shards, a))
  return jax.lax.dynamic_slice_in_dim(full, jax.lax.axis_index(axis_name) * b, b, axis=1)


def make_update_fn(networks: AgentNetworks, config: SACConfig, axis_name: str | None = None):
  """Returns update(state, batch, key) -> (state, metrics). Not jitted: jit/pmap it."""
  optimizer = make_optimizer(config)
  loss = make_loss(networks, config)
  num_tasks = networks.num_tasks

  def update(state: TrainingState, batch: Transition, key: jax.Array):
    chex.assert_rank(batch.reward, 2)
    chex.assert_axis_dimension(batch.reward, 0, num_tasks)
    t, b = batch.reward.shape
    chex.assert_shape(batch.obs, (t, b, networks.obs_dim))
    chex.assert_shape(batch.action, (t, b, networks.action_dim))
    key_next, key_now = jax.random.split(key)
    noise_shape = (t, b, networks.action_dim)
    noise_next = _noise_for_this_shard(key_next, noise_shape, axis_name)
    noise_now = _noise_for_this_shard(key_now, noise_shape, axis_name)
    task_ids = jnp.arange(t, dtype=jnp.int32)

    def objective(params):
      per_task, metrics = loss(params, state.target_params, batch, task_ids, noise_next, noise_now)
      return per_task.mean(), metrics  # Eq. 11: equal weights 1/T

    grads, metrics = jax.grad(objective, has_aux=True)(state.params)
    if axis_name is not None:
      grads = jax.lax.pmean(grads, axis_name)
      metrics = jax.lax.pmean(metrics, axis_name)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    target_params = {
      "encoder": polyak(state.target_params["encoder"], params["encoder"], config.encoder_tau),
      "critic": polyak(state.target_params["critic"], params["critic"], config.critic_tau),
    }
    new_state = TrainingState(
      params=params, target_params=target_params, opt_state=opt_state, step=state.step + 1
    )
    return new_state, metrics  # per-task metrics, each [T]

  return update


def _policy_on_groups_of_one(networks: AgentNetworks, params: PolicyParams, obs, task_ids, carry):
  """Encoder and actor on one row per environment: (mean, log_std [T, 1, A], EncoderOutput)."""
  chex.assert_shape(obs, (task_ids.shape[0], networks.obs_dim))
  grouped = lambda x: x[:, None]  # each env is a group of one row: obs [T, 1, obs_dim]
  out = networks.encoder.apply(params.encoder, grouped(obs), task_ids, jax.tree.map(grouped, carry))
  mean, log_std = networks.actor.apply(params.actor, out.features, task_ids)
  return mean, log_std, out


def make_select_action_fn(networks: AgentNetworks):
  """Returns select_action(policy_params, obs [T, obs_dim], task_ids [T], carry [T, H], key,
  deterministic) -> (actions [T, A], carry_out [T, H]); one call for all tasks.
  Jit it with `deterministic` static."""

  def select_action(
    params: PolicyParams, obs, task_ids, carry: LSTMCarry, key, deterministic=False
  ):
    mean, log_std, out = _policy_on_groups_of_one(networks, params, obs, task_ids, carry)
    if deterministic:
      action = distributions.deterministic_action(mean)
    else:
      noise = jax.random.normal(key, mean.shape)
      action, _ = distributions.sample_tanh_gaussian(mean, log_std, noise)
    return action[:, 0], jax.tree.map(lambda x: x[:, 0], out.carry)

  return select_action


def make_trace_fn(networks: AgentNetworks):
  """Returns trace(policy_params, obs [T, obs_dim], task_ids [T], carry [T, H]) ->
  (deterministic actions [T, A], carry_out [T, H], attention [T, ...] or None, experts
  [T, k, expert_dim] or None): the evaluation policy, with what the encoder computed on the
  way, or the actor's own routing where the encoder has no attention (docs/results.md,
  "Looking inside a policy")."""

  def trace(params: PolicyParams, obs, task_ids, carry: LSTMCarry):
    mean, _, out = _policy_on_groups_of_one(networks, params, obs, task_ids, carry)
    attention = None if out.attention is None else out.attention[:, 0]
    if attention is None and networks.actor.routing is not None:
      routing = networks.actor.routing(params.actor, out.features, task_ids)  # [T, 1, N, M]
      attention = routing[:, 0]
    experts = None if out.experts is None else jnp.moveaxis(out.experts[:, :, 0], 0, 1)
    action = distributions.deterministic_action(mean)[:, 0]
    return action, jax.tree.map(lambda x: x[:, 0], out.carry), attention, experts

  return trace


def initial_carry(networks: AgentNetworks, num_envs: int | tuple[int, ...]) -> LSTMCarry:
  """The zero carry of an episode start, [num_envs, carry_dim] each, or [*num_envs,
  carry_dim] for a shape such as (seeds, tasks) (docs/algorithm.md §4)."""
  shape = num_envs if isinstance(num_envs, tuple) else (num_envs,)
  return layers.zero_carry(shape, networks.encoder.carry_dim)
