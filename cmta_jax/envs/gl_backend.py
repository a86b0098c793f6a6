"""MuJoCo's OpenGL backend, chosen and checked only where a command renders.

MuJoCo reads `MUJOCO_GL` once, when it is first imported, and loads that backend's library
then: with `MUJOCO_GL=osmesa` on a machine without OSMesa (or an unknown value) `import
mujoco` fails, and with it Meta-World and every command, renderer or not. `import_mujoco`
imports it whatever the variable says: when the named backend cannot load, MuJoCo is
imported without one, and only rendering fails. A command that renders calls
`check_offscreen_rendering` before it builds a renderer: a probe in a child process renders
one frame with the backend asked for, so a missing backend is one line on the console, not
a half-built viewer's tracebacks and GLFW warnings at exit.
"""

import importlib
import os
import subprocess
import sys
import types

VARIABLES = ("MUJOCO_GL", "PYOPENGL_PLATFORM")  # what MuJoCo and PyOpenGL read at import
HEADLESS = ("egl", "osmesa")
# What a machine needs for each headless backend: the library and its Debian/Ubuntu package.
_NEEDS = {"egl": "libEGL: apt install libegl1", "osmesa": "OSMesa: apt install libosmesa6"}

# A scene of one box, rendered once: what the probe asks of the backend. It prints why it
# failed (a GLFW warning says more than the error that follows it) as its last line.
_PROBE = """
import sys, warnings
with warnings.catch_warnings(record=True) as caught:
  warnings.simplefilter("always")
  try:
    import mujoco
    model = mujoco.MjModel.from_xml_string(
      "<mujoco><worldbody><light pos='0 0 1'/><geom type='box' size='.1 .1 .1'/></worldbody>"
      "</mujoco>"
    )
    with mujoco.Renderer(model, 16, 16) as renderer:
      renderer.update_scene(mujoco.MjData(model))
      renderer.render()
  except Exception as error:
    reasons = [str(w.message) for w in caught] + [f"{type(error).__name__}: {error}"]
    print(reasons[0].splitlines()[0] if reasons[0] else type(error).__name__)
    sys.exit(1)
"""


class RenderingUnavailable(RuntimeError):
  """MuJoCo cannot render offscreen on this machine (one line: what to set or install)."""


def import_mujoco() -> types.ModuleType:
  """`mujoco`, imported whatever `MUJOCO_GL` says. The variables are left as they were, so
  child processes and `check_offscreen_rendering` see the backend the user asked for."""
  if "mujoco" in sys.modules:
    return sys.modules["mujoco"]
  saved = {name: os.environ.get(name) for name in VARIABLES}
  try:
    return importlib.import_module("mujoco")
  except Exception:
    # The backend named cannot load here. Without one, MuJoCo simulates as before; a
    # renderer then fails, which rendering commands check for first.
    _restore(saved)
    os.environ["MUJOCO_GL"] = "disable"
    try:
      return importlib.import_module("mujoco")
    finally:
      _restore(saved)


def check_offscreen_rendering(timeout_s: float = 120.0) -> None:
  """RenderingUnavailable (one line: what to set or install) unless MuJoCo can render a
  frame offscreen with the backend `MUJOCO_GL` names. Runs in a child process, so a
  backend that fails leaves nothing behind in this one."""
  backend = os.environ.get("MUJOCO_GL", "").strip().lower()
  try:
    result = subprocess.run(
      [sys.executable, "-c", _PROBE],
      capture_output=True,
      text=True,
      timeout=timeout_s,
    )
  except subprocess.TimeoutExpired:
    reason = f"a frame took over {timeout_s:.0f} s"
  else:
    if result.returncode == 0:
      return
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    reason = lines[-1] if lines else f"the probe exited with status {result.returncode}"
  raise RenderingUnavailable(
    f"MuJoCo cannot render offscreen with MUJOCO_GL={backend or '(unset: glfw)'} "
    f"({reason[:160]}); {advice(backend)}"
  )


def advice(backend: str) -> str:
  """What to set or install for offscreen rendering, given the backend asked for."""
  either = f"MUJOCO_GL=egl (needs {_NEEDS['egl']}) or MUJOCO_GL=osmesa (needs {_NEEDS['osmesa']})"
  if backend in HEADLESS:
    other = HEADLESS[1 - HEADLESS.index(backend)]
    return f"install {_NEEDS[backend]}, or set MUJOCO_GL={other} (needs {_NEEDS[other]})"
  if backend in ("", "glfw", "glx"):
    return f"this backend needs a display; without one set {either}"
  return f"set {either}"


def _restore(saved: dict[str, str | None]) -> None:
  for name, value in saved.items():
    if value is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = value
