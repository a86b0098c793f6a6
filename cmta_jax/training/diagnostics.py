"""The attention diagnostics logged with every train record (docs/carry_modes.md): how stale the
carries the update feeds the attention are, measured on a few replay transitions per task."""

import jax

from cmta_jax.training import run_state

# Replay transitions per task for the attention diagnostics at each log step.
DIAGNOSTIC_SAMPLES_PER_TASK = 8


def attention_records(run: run_state.Run, state: run_state.LoopState) -> list[dict] | None:
  """Each seed's attention diagnostics on its own replay draw (from its DIAGNOSTICS stream,
  so logging never moves what the updates draw), in one vmapped call; None without temporal
  input."""
  if run.diagnostics is None or state.step == 0:
    return None
  used, exact = run.diagnostic_batches(state.replay, run.replay_keys, state.step)
  values = jax.device_get(
    run.diagnostics(
      state.learner.params["encoder"],
      run.replay_place.to_learner(used),
      run.replay_place.to_learner(exact),
    )
  )
  return [
    {name: float(value[index]) for name, value in values.items()} for index in range(run.num_seeds)
  ]
