"""The attention diagnostics logged with every train record (docs/carry_modes.md): how stale the
carries the update feeds the attention are, measured on a few replay transitions per task."""

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from cmta_jax.replay.buffer import ReplayBuffer, stack_transitions
from cmta_jax.training import keys, run_state

# Replay transitions per task for the attention diagnostics at each log step (docs/carry_modes.md).
DIAGNOSTIC_SAMPLES_PER_TASK = 8


def attention_batches(
  buffers: Sequence[ReplayBuffer],
  rngs: Sequence[np.random.Generator],
  window: int,
  episode_length: int,
  samples_per_task: int = DIAGNOSTIC_SAMPLES_PER_TASK,
) -> tuple[Any, Any]:
  """(used, exact), each a [S, T, samples_per_task, ...] `Transition` stacked over buffers:
  replay transitions drawn with each buffer's `rng`, gathered as the update sees them (the
  run's burn-in `window`, 0 = stored carries) and exactly (a window of a whole episode)."""
  used, exact = [], []
  for buffer, rng in zip(buffers, rngs):
    slots = buffer.draw_slots(samples_per_task, rng)
    used.append(buffer.gather(slots, window))
    exact.append(buffer.gather(slots, episode_length))
  return stack_transitions(used), stack_transitions(exact)


def attention_records(run: run_state.Run, state: run_state.LoopState) -> list[dict] | None:
  """Each seed's attention diagnostics on its own seeded replay draw (so logging never moves
  the replay sampler's stream), in one vmapped call; None without temporal input."""
  if run.diagnostics is None or state.step == 0:
    return None
  rngs = [
    np.random.default_rng([s.seed, int(keys.Stream.DIAGNOSTICS), state.step]) for s in run.seeds
  ]
  used, exact = attention_batches(
    [s.buffer for s in run.seeds], rngs, run.burn_in_steps, run.config.env.episode_length
  )
  values = jax.device_get(
    run.diagnostics(
      state.learner.params["encoder"], run.placement.put(used), run.placement.put(exact)
    )
  )
  return [
    {name: float(value[index]) for name, value in values.items()} for index in range(run.num_seeds)
  ]
