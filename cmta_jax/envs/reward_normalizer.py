"""Per-task running reward scale, as Meta-World's `NormalizeRewardsExponential`.

Each task keeps an exponential moving average (EMA) of the reward mean and of
the squared deviation from it; rewards are divided by the running standard
deviation but NOT shifted by the mean (a shift would change which behaviour is
optimal when episodes have different lengths, and Meta-World's wrapper does not
shift either).

Difference from Meta-World 3.1.1: its wrapper's `step` updates the estimate
twice per reward (`_update_reward_estimate` and then again inside
`_apply_normalize_reward`). We update once per reward, so `rate` is the actual
EMA rate.
"""

from typing import Any

import numpy as np

_EPSILON = 1e-8


class RewardNormalizer:
  """Running per-task reward scale, vectorised over tasks (numpy, float64 state)."""

  def __init__(self, num_tasks: int, rate: float = 0.001) -> None:
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
      raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate <= 1.0:
      raise ValueError(f"reward normalisation rate must be in (0, 1], got {rate!r}")
    self.num_tasks = num_tasks
    self.rate = float(rate)
    self.mean = np.zeros(num_tasks, dtype=np.float64)
    self.var = np.ones(num_tasks, dtype=np.float64)

  def reset(self) -> None:
    """Back to the initial estimate (mean 0, variance 1)."""
    self.mean[:] = 0.0
    self.var[:] = 1.0

  def update(self, rewards: np.ndarray) -> None:
    """Folds one reward per task into the running estimate."""
    rewards = self._check(rewards)
    # Same operation order as Meta-World: the variance uses the updated mean.
    self.mean = (1.0 - self.rate) * self.mean + self.rate * rewards
    self.var = (1.0 - self.rate) * self.var + self.rate * np.square(rewards - self.mean)

  def scale(self, rewards: np.ndarray) -> np.ndarray:
    """Divides by the current running std (no update), float64 [T]."""
    return self._check(rewards) / (np.sqrt(self.var) + _EPSILON)

  def normalize(self, rewards: np.ndarray) -> np.ndarray:
    """Updates with `rewards`, then scales them (Meta-World's order), float64 [T]."""
    self.update(rewards)
    return self.scale(rewards)

  def state_dict(self) -> dict[str, Any]:
    """Plain, picklable copy of the state."""
    return {
      "num_tasks": self.num_tasks,
      "rate": self.rate,
      "mean": self.mean.copy(),
      "var": self.var.copy(),
    }

  def load_state_dict(self, state: dict[str, Any]) -> None:
    """Restores `state_dict()` output; the task count and rate must match."""
    if int(state["num_tasks"]) != self.num_tasks:
      raise ValueError(
        f"reward normaliser state is for {state['num_tasks']} tasks, this one has {self.num_tasks}"
      )
    if float(state["rate"]) != self.rate:
      raise ValueError(
        f"reward normaliser state has rate {state['rate']}, this one has {self.rate}"
      )
    mean = np.array(state["mean"], dtype=np.float64)
    var = np.array(state["var"], dtype=np.float64)
    if mean.shape != (self.num_tasks,) or var.shape != (self.num_tasks,):
      raise ValueError(
        f"reward normaliser state has shapes {mean.shape}/{var.shape}, expected ({self.num_tasks},)"
      )
    self.mean, self.var = mean, var

  def _check(self, rewards: np.ndarray) -> np.ndarray:
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.shape != (self.num_tasks,):
      raise ValueError(f"expected rewards of shape ({self.num_tasks},), got {rewards.shape}")
    return rewards
