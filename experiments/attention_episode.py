"""How the experts are combined within an episode: the attention weights of a checkpoint's
policy over one evaluation episode of every task, as heat maps (experts x time) above the
per-step reward and success (docs/results.md, "Looking inside a policy").

  python experiments/attention_episode.py --run_dir=runs/cmta_mt10f_s0 --out=attention.png
  python experiments/attention_episode.py --run_dir=DIR --step=60000 --tasks=reach-v3,push-v3

Reads the run directory only (safe while it trains). The episode is the first
evaluation episode of the run's own evaluation environments. Agents with experts only
(CMTA and its ablations, CARE; Soft Modularization shows its routing weights).
"""

import os

from absl import app, flags, logging

from cmta_jax import cli

_RUN_DIR = flags.DEFINE_string("run_dir", None, "The run directory.", required=True)
cli.define_agent_module_flag()  # for runs of agents defined outside the package
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_TASKS = flags.DEFINE_list("tasks", None, "Tasks to show (default: every task).")
_OUT = flags.DEFINE_string("out", "attention.png", "Image file (.png, .svg or .pdf).")


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are written --name=value)")
  logging.set_verbosity(logging.WARNING)
  cli.import_agent_modules(flags.FLAGS.agent_module)
  cli.check_output_file(_OUT.value, cli.FIGURE_FORMATS)
  # Imported only now, so that bad input answers at once.
  from cmta_jax.reporting import figures, inspection

  tasks = inspection.chosen_tasks(inspection.saved_run_config(_RUN_DIR.value), _TASKS.value)
  policy = inspection.load_policy(_RUN_DIR.value, _STEP.value)
  (episode,) = inspection.trace_episodes(policy, episodes=1)
  if episode[0].attention is None:
    raise ValueError(f"agent {policy.run_config.agent} has no attention weights (no experts)")
  title = (
    f"{os.path.basename(os.path.normpath(_RUN_DIR.value))}: {policy.run_config.agent}, {policy.run_config.setting_name()}, "
    f"checkpoint of step {policy.step}"
  )
  chosen = [trace for trace in episode if trace.task in tasks]
  label = "actor's routing weight" if policy.networks.actor.routing is not None else "expert"
  print(f"wrote {figures.attention_over_episode(chosen, title, _OUT.value, label)}")


if __name__ == "__main__":
  app.run(cli.one_line_errors(main), flags_parser=cli.parse_flags)
