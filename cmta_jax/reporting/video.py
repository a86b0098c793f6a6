"""Writing rendered episodes as video files with imageio (ffmpeg for MP4).

Each (task, episode) gets its own file, written under a temporary name and renamed when
complete, so an interrupted recording never leaves a truncated video under the final name.
"""

import os
import warnings

import imageio.v2 as imageio
import numpy as np

BAR_WIDTH = 16  # pixels per expert in the attention strip (keeps widths multiples of 16)


def with_attention_bars(frame: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """`frame` [H, W, 3] with a strip of one vertical bar per attention weight (0..1, bottom
  up) on its right: [H, W + BAR_WIDTH * k, 3] uint8."""
  weights = np.clip(np.asarray(weights, dtype=np.float64).ravel(), 0.0, 1.0)
  height = frame.shape[0]
  strip = np.full((height, BAR_WIDTH * len(weights), 3), 255, np.uint8)
  for j, weight in enumerate(weights):
    top = height - int(round(weight * height))
    colour = _PALETTE[j % len(_PALETTE)]
    strip[top:, j * BAR_WIDTH + 2 : (j + 1) * BAR_WIDTH - 2] = colour
  return np.concatenate([np.asarray(frame, np.uint8), strip], axis=1)


# matplotlib's default colour cycle (C0..C9), as RGB.
_PALETTE = [
  tuple(int(h[i : i + 2], 16) for i in (0, 2, 4))
  for h in (
    "1f77b4",
    "ff7f0e",
    "2ca02c",
    "d62728",
    "9467bd",
    "8c564b",
    "e377c2",
    "7f7f7f",
    "bcbd22",
    "17becf",
  )
]


def gif_bytes(frames: np.ndarray, fps: int) -> bytes:
  """An animated GIF (looping) of frames [N, H, W, 3] uint8, as bytes."""
  return imageio.mimwrite("<bytes>", list(frames), format="GIF", duration=1000 / fps, loop=0)


class Writers:
  """A video writer per (task, episode), opened on its first frame; a context manager
  that finishes every file on exit (and removes unfinished ones after an error)."""

  def __init__(self, out_dir: str, tag: str, video_format: str, fps: int, attention: bool):
    self._out_dir, self._tag, self._format, self._fps = out_dir, tag, video_format, fps
    self._attention = attention
    self._open: dict[tuple[str, int], tuple[str, object]] = {}
    self.written: dict[str, int] = {}  # final path -> frame count

  def path(self, task: str, episode: int) -> str:
    return os.path.join(self._out_dir, f"{task}_{self._tag}_ep{episode}.{self._format}")

  def add_frame(self, episode: int, task: str, frame: np.ndarray, attention) -> None:
    if self._attention and attention is not None:
      frame = with_attention_bars(frame, attention)
    key = (task, episode)
    with warnings.catch_warnings():
      # imageio-ffmpeg starts ffmpeg (at the first frame) with fork+exec, which JAX warns
      # about; exec follows at once, so nothing of JAX runs in the child.
      warnings.filterwarnings("ignore", message="os.fork\\(\\) was called")
      if key not in self._open:
        self._open[key] = (self.path(task, episode), self._new_writer(task, episode))
        self.written[self._open[key][0]] = 0
      final, writer = self._open[key]
      writer.append_data(frame)
    self.written[final] += 1

  def _new_writer(self, task: str, episode: int):
    partial = f"{self.path(task, episode)}.partial.{self._format}"
    if self._format == "mp4":
      return imageio.get_writer(
        partial, fps=self._fps, codec="libx264", macro_block_size=16, quality=7
      )
    return imageio.get_writer(partial, duration=1000 / self._fps, loop=0)

  def __enter__(self) -> "Writers":
    return self

  def __exit__(self, error_type, *unused) -> None:
    for final, writer in self._open.values():
      writer.close()
      partial = f"{final}.partial.{self._format}"
      if error_type is None:
        os.replace(partial, final)
      else:
        os.remove(partial)
        self.written.pop(final, None)
