"""MuJoCo's rendering backend (MUJOCO_GL), from the command line: simulation and every
command that does not render work whatever the variable says; a command that renders with a
backend this machine lacks says so in one line and writes nothing."""

import ctypes.util
import os
import subprocess
import sys

import pytest
from driver_support import CLI_TIMEOUT, REPO, cli_args, subprocess_env

from cmta_jax import cli
from cmta_jax.envs import gl_backend

# One worker runs the module, so its tiny training run is made once.
pytestmark = [
  pytest.mark.usefixtures("compilation_cache_dir"),
  pytest.mark.xdist_group("rendering_backends"),
]

TOTAL = 40  # a tiny run: one checkpoint, two evaluations
_NO_OSMESA = ctypes.util.find_library("OSMesa") is None
# Backends this machine cannot render with: OSMesa where it is not installed (the README's
# fallback), GLX and GLFW without a display, and a value MuJoCo does not know.
UNUSABLE = [
  pytest.param(
    "osmesa", marks=pytest.mark.skipif(not _NO_OSMESA, reason="OSMesa is installed here")
  ),
  "glx",
  "glfw",
  "nonsense",
]


def _env(cache_dir: str, backend: str) -> dict:
  env = subprocess_env(cache_dir)
  env["MUJOCO_GL"] = backend
  for name in ("DISPLAY", "WAYLAND_DISPLAY", "PYOPENGL_PLATFORM"):
    env.pop(name, None)
  return env


def _run(args: list[str], cache_dir: str, backend: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    args, capture_output=True, text=True, env=_env(cache_dir, backend), timeout=CLI_TIMEOUT
  )


def _command(script: str, *args: str) -> list[str]:
  return [sys.executable, os.path.join(REPO, "experiments", script), *args]


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, compilation_cache_dir):
  """A tiny run trained by train.py with MUJOCO_GL naming a backend MuJoCo does not know."""
  run_dir = str(tmp_path_factory.mktemp("plain") / "run")
  overrides = dict(total_steps=TOTAL, warmup_steps=20, log_every=20, eval_every=20)
  result = _run(cli_args(run_dir, **overrides), compilation_cache_dir, "nonsense")
  return run_dir, result


@pytest.mark.parametrize("backend", UNUSABLE)
def test_meta_world_simulates_whatever_mujoco_gl_says(backend, compilation_cache_dir):
  script = (
    "import os, numpy as np\n"
    "from cmta_jax.envs.config import EnvConfig\n"
    "from cmta_jax.envs.metaworld_env import MultiTaskEnv\n"
    "with MultiTaskEnv(EnvConfig(benchmark='MT10', episode_length=5), 0) as env:\n"
    "  env.reset()\n"
    "  result = env.step(np.zeros((env.num_tasks, 4), np.float32))\n"
    "print(os.environ['MUJOCO_GL'], result.obs.shape)\n"
  )
  result = _run([sys.executable, "-c", script], compilation_cache_dir, backend)
  assert result.returncode == 0, result.stderr
  assert result.stderr == ""  # no traceback, no warning
  # The variable is left as it was, for child processes and rendering checks.
  assert result.stdout.split("\n")[0] == f"{backend} (10, 39)"


@pytest.mark.slow
def test_commands_that_do_not_render_work_whatever_mujoco_gl_says(
  plain_run, compilation_cache_dir, tmp_path
):
  run_dir, trained = plain_run
  assert trained.returncode == 0, trained.stderr
  assert "Traceback" not in trained.stderr
  assert f"run dir {run_dir}" in trained.stdout
  backend = "osmesa" if _NO_OSMESA else "nonsense"
  table = str(tmp_path / "table.md")
  for args in (
    _command("run_report.py", run_dir),
    _command("tables.py", f"--out={table}", run_dir),
    _command("plot_curves.py", f"--out={tmp_path / 'curves.png'}", run_dir),
    _command("attention_episode.py", f"--run_dir={run_dir}", f"--out={tmp_path / 'att.png'}"),
  ):
    result = _run(args, compilation_cache_dir, backend)
    assert result.returncode == 0, (args, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
  assert os.path.getsize(table) > 0


@pytest.mark.slow
@pytest.mark.parametrize("backend", UNUSABLE)
def test_rendering_commands_say_in_one_line_that_the_backend_is_missing(
  backend, plain_run, compilation_cache_dir, tmp_path
):
  run_dir, trained = plain_run
  assert trained.returncode == 0, trained.stderr
  before = sorted(os.listdir(run_dir))
  out_dir = tmp_path / "videos"
  new_run = tmp_path / "new_run"
  for args in (
    _command("record_video.py", f"--run_dir={run_dir}", f"--out_dir={out_dir}"),
    [*cli_args(str(new_run), total_steps=TOTAL, eval_every=20), "--video_every=20"],
  ):
    result = _run(args, compilation_cache_dir, backend)
    assert result.returncode == cli.EXIT_ERROR, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # nothing else: no traceback, no GLFW warning
    assert lines[0].startswith(f"error: MuJoCo cannot render offscreen with MUJOCO_GL={backend} (")
    assert lines[0].endswith(gl_backend.advice(backend))
  # Refused before anything was written.
  assert not out_dir.exists() and not new_run.exists()
  assert sorted(os.listdir(run_dir)) == before


@pytest.mark.parametrize(
  "backend, advice",
  [
    ("osmesa", "install OSMesa: apt install libosmesa6, or set MUJOCO_GL=egl (needs libEGL"),
    ("egl", "install libEGL: apt install libegl1, or set MUJOCO_GL=osmesa (needs OSMesa"),
    ("glfw", "this backend needs a display; without one set MUJOCO_GL=egl"),
    ("", "this backend needs a display; without one set MUJOCO_GL=egl"),
    ("nonsense", "set MUJOCO_GL=egl (needs libEGL: apt install libegl1) or MUJOCO_GL=osmesa"),
  ],
)
def test_the_advice_names_what_to_install_or_set(backend, advice):
  assert gl_backend.advice(backend).startswith(advice)


def test_the_working_backend_passes_the_check(monkeypatch):
  # This machine renders with EGL (the tests of videos need it too).
  monkeypatch.setenv("MUJOCO_GL", "egl")
  gl_backend.check_offscreen_rendering()
