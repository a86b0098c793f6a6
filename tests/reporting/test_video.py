"""cmta_jax/video.py: the attention strip and files written whole or not at all. (A real
checkpoint's videos: tests/training/test_driver.py.)"""

import os

import imageio.v2 as imageio
import numpy as np
import pytest

from cmta_jax.reporting import video


def test_attention_bars_are_drawn_to_scale_beside_the_frame():
  frame = np.zeros((32, 48, 3), np.uint8)
  out = video.with_attention_bars(frame, np.array([1.0, 0.5, 0.0]))
  assert out.shape == (32, 48 + 3 * video.BAR_WIDTH, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[:, :48], frame)
  column = lambda j: out[:, 48 + j * video.BAR_WIDTH + video.BAR_WIDTH // 2]
  coloured = lambda j: int(np.sum(np.any(column(j) != 255, axis=-1)))
  assert [coloured(0), coloured(1), coloured(2)] == [32, 16, 0]


@pytest.mark.parametrize("video_format", ["mp4", "gif"])
def test_writers_finish_each_file_and_count_its_frames(tmp_path, video_format):
  frames = [np.full((32, 32, 3), 20 * i, np.uint8) for i in range(5)]
  with video.Writers(str(tmp_path), "step7", video_format, fps=10, attention=False) as writers:
    for frame in frames:
      writers.add_frame(0, "reach-v3", frame, None)
      writers.add_frame(1, "reach-v3", frame, None)
  expected = [f"reach-v3_step7_ep{k}.{video_format}" for k in (0, 1)]
  assert sorted(os.listdir(tmp_path)) == expected
  assert writers.written == {str(tmp_path / name): 5 for name in expected}
  assert len(imageio.mimread(str(tmp_path / expected[0]))) == 5


def test_an_interrupted_recording_leaves_no_file(tmp_path):
  with pytest.raises(KeyboardInterrupt):
    with video.Writers(str(tmp_path), "step7", "mp4", fps=10, attention=False) as writers:
      writers.add_frame(0, "reach-v3", np.zeros((32, 32, 3), np.uint8), None)
      raise KeyboardInterrupt
  assert os.listdir(tmp_path) == [] and writers.written == {}
