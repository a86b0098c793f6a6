"""Videos during training (`--video_every`): one evaluation episode of every task, rendered
offscreen, written to RUN_DIR/videos/<task>_step<step>_ep0.mp4 (attention bars beside the
frame where the agent has them) and to TensorBoard as animated images (every second frame
at half size). The episodes are the first evaluation episode of the run's seed, played by
the deterministic policy in an environment of their own, so recording changes nothing of
what the run learns or evaluates (docs/results.md, "Videos")."""

import os

import jax
import numpy as np

from cmta_jax.agents import sac
from cmta_jax.envs.metaworld_env import RenderSpec
from cmta_jax.training import evaluation

VIDEOS_DIR = "videos"
RENDER = RenderSpec(width=256, height=256, camera="corner")
FPS = 30


class VideoRecorder:
  def __init__(self, run_config, envs, networks, run_dir: str):
    """Builds the rendering environment; raises ValueError if the environments cannot
    render and gl_backend.RenderingUnavailable if MuJoCo cannot render here."""
    if envs.make_render_env is None:
      raise ValueError("--video_every: these environments cannot render")
    self._env = envs.make_render_env(run_config.env, run_config.train.seed, RENDER)
    self._networks = networks
    self._trace = jax.jit(sac.make_trace_fn(networks))
    self.directory = os.path.join(run_dir, VIDEOS_DIR)

  def record(self, params: sac.PolicyParams, step: int, metrics_file) -> str:
    """Records every task's episode at `step`; returns the files' pattern."""
    # Imported here: imageio and ffmpeg are needed only by runs that record videos.
    from cmta_jax.reporting import video

    os.makedirs(self.directory, exist_ok=True)
    clips = {task: [] for task in self._env.task_names}

    with video.Writers(self.directory, f"step{step}", "mp4", FPS, attention=True) as writers:

      def on_frame(task, frame, attention):
        writers.add_frame(0, task, frame, attention)
        clips[task].append(frame[::2, ::2])

      obs = self._env.reset()
      evaluation.play_rendered_episode(
        self._env, obs, self._networks, params, self._trace, self._env.task_names, on_frame
      )
    for task, frames in clips.items():
      frames = np.stack(frames[::2])
      gif = video.gif_bytes(frames, FPS // 2)
      metrics_file.add_gif(f"video/{task}", gif, frames.shape[1], frames.shape[2], step)
    return os.path.join(self.directory, f"*_step{step}_ep0.mp4")

  def close(self) -> None:
    self._env.close()


def make_recorder(run_config, envs, networks, run_dir: str) -> VideoRecorder | None:
  """A VideoRecorder if the run records videos (`train.video_every` > 0), else None."""
  if not run_config.train.video_every:
    return None
  return VideoRecorder(run_config, envs, networks, run_dir)
