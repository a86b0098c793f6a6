"""Videos of a checkpoint's policy: evaluation episodes of each task as MP4 (or GIF), with
the attention weights drawn beside the frame if asked (docs/results.md, "Videos").

  python experiments/record_video.py --run_dir=runs/cmta_mt10f_s0 --out_dir=videos
  python experiments/record_video.py --run_dir=DIR --out_dir=DIR --tasks=push-v3 --with_attention

Writes OUT_DIR/<task>_step<step>_ep<k>.mp4 (one per task and episode) and names them.
Reads the run directory only. MuJoCo renders offscreen with MUJOCO_GL=egl unless the
environment variable says otherwise (about 0.2 s a 480x480 frame on a CPU).
"""

import os

from absl import app, flags, logging

from cmta_jax import cli
from cmta_jax.envs import gl_backend

# The OpenGL backend of MuJoCo's offscreen renderer (read when a renderer is created).
os.environ.setdefault("MUJOCO_GL", "egl")

_RUN_DIR = flags.DEFINE_string("run_dir", None, "The run directory.", required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Directory for the videos.", required=True)
cli.define_agent_module_flag()  # for runs of agents defined outside the package
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_TASKS = flags.DEFINE_list("tasks", None, "Tasks to record (default: every task).")
_EPISODES = flags.DEFINE_integer("episodes", 1, "Evaluation episodes per task.")
_SIZE = flags.DEFINE_integer("size", 480, "Frame width and height in pixels (a multiple of 16).")
_CAMERA = flags.DEFINE_string("camera", "corner", "Meta-World camera name.")
_FPS = flags.DEFINE_integer("fps", 30, "Frames per second of the video.")
_FORMAT = flags.DEFINE_enum("format", "mp4", ["mp4", "gif"], "Video format.")
_WITH_ATTENTION = flags.DEFINE_bool(
  "with_attention", False, "Draw the attention weights as bars beside each frame."
)


def _check_flags() -> None:
  for name, value in (("episodes", _EPISODES.value), ("fps", _FPS.value)):
    if value < 1:
      cli.fail(f"--{name} must be positive, got {value}")
  if _SIZE.value < 16 or _SIZE.value % 16:
    cli.fail(f"--size must be a positive multiple of 16 (video codecs), got {_SIZE.value}")
  if os.path.exists(_OUT_DIR.value) and not os.path.isdir(_OUT_DIR.value):
    cli.fail(f"--out_dir: {_OUT_DIR.value} exists and is not a directory")


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are written --name=value)")
  logging.set_verbosity(logging.WARNING)
  cli.import_agent_modules(flags.FLAGS.agent_module)
  _check_flags()
  gl_backend.check_offscreen_rendering()  # before anything is loaded or written
  # Imported only now, so that bad input answers at once.
  from cmta_jax.envs.metaworld_env import RenderSpec
  from cmta_jax.reporting import inspection, video

  tasks = inspection.chosen_tasks(inspection.saved_run_config(_RUN_DIR.value), _TASKS.value)
  policy = inspection.load_policy(_RUN_DIR.value, _STEP.value)
  os.makedirs(_OUT_DIR.value, exist_ok=True)
  writers = video.Writers(
    _OUT_DIR.value, f"step{policy.step}", _FORMAT.value, _FPS.value, _WITH_ATTENTION.value
  )
  with writers:
    inspection.render_episodes(
      policy,
      _EPISODES.value,
      tasks,
      RenderSpec(_SIZE.value, _SIZE.value, _CAMERA.value),
      writers.add_frame,
    )
  for path, frames in writers.written.items():
    print(f"wrote {path} ({frames} frames)")


if __name__ == "__main__":
  app.run(
    cli.one_line_errors(main, (gl_backend.RenderingUnavailable,)), flags_parser=cli.parse_flags
  )
