"""t-SNE of what a policy's encoder computes (paper Fig. 5 and 7): the expert encodings z^j
over evaluation episodes coloured by expert, and the attention weights coloured by task.
Several runs are drawn side by side (e.g. CMTA and CMTA w/o CL, Fig. 5).

  python experiments/tsne.py --run_dirs=runs/cmta_mt10m_s0,runs/cmta_wo_cl_mt10m_s0 --out=tsne.png

Reads the run directories only (safe while they train). The episodes are those of each
run's own evaluation; in Fixed mode they repeat exactly (one variation per task and a
deterministic policy), so use Mixed runs for the spread the paper shows. Points are a
seeded random subsample of at most --max_points per panel (t-SNE is quadratic in them).
"""

import os

from absl import app, flags, logging

from cmta_jax import cli

_RUN_DIRS = flags.DEFINE_list("run_dirs", None, "Run directories, side by side.", required=True)
cli.define_agent_module_flag()  # for runs of agents defined outside the package
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: each run's newest).")
_EPISODES = flags.DEFINE_integer("episodes", 10, "Evaluation episodes per task and run.")
_MAX_POINTS = flags.DEFINE_integer("max_points", 3000, "Points per panel (a seeded subsample).")
_PERPLEXITY = flags.DEFINE_float("perplexity", 30.0, "t-SNE perplexity.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the subsample and of t-SNE.")
_OUT = flags.DEFINE_string("out", "tsne.png", "Image file (.png, .svg or .pdf).")


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are written --name=value)")
  logging.set_verbosity(logging.WARNING)
  cli.import_agent_modules(flags.FLAGS.agent_module)
  for name, value in (("episodes", _EPISODES.value), ("max_points", _MAX_POINTS.value)):
    if value < 1:
      cli.fail(f"--{name} must be positive, got {value}")
  if _PERPLEXITY.value <= 0:
    cli.fail(f"--perplexity must be positive, got {_PERPLEXITY.value}")
  cli.check_output_file(_OUT.value, cli.FIGURE_FORMATS)
  # Imported only now, so that bad input answers at once.
  from cmta_jax.reporting import figures, inspection, tsne

  expert_panels, attention_panels = [], []
  for run_dir in _RUN_DIRS.value:
    policy = inspection.load_policy(run_dir, _STEP.value)
    traces = inspection.trace_episodes(policy, _EPISODES.value)
    if traces[0][0].experts is None:
      raise ValueError(f"{run_dir}: agent {policy.run_config.agent} has no experts")
    options = dict(max_points=_MAX_POINTS.value, perplexity=_PERPLEXITY.value, seed=_SEED.value)
    name = f"{os.path.basename(os.path.normpath(run_dir))} (step {policy.step})"
    expert_panels.append(tsne.expert_encodings(traces, f"experts z^j: {name}", **options))
    attention_panels.append(tsne.attention_by_task(traces, f"attention: {name}", **options))
  panels = expert_panels + attention_panels
  print(f"wrote {figures.tsne_panels(panels, _OUT.value)}")


if __name__ == "__main__":
  app.run(cli.one_line_errors(main), flags_parser=cli.parse_flags)
