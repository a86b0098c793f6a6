"""Imports run one way: building blocks (nn, config, types) <- agents and replay <- the compiled
steps <- the loop <- run start <- commands; reporting sits beside the loop, never under it."""

import ast
import os
import subprocess
import sys

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cmta_jax")
# What each layer may not import (at module level): the layers above it.
FORBIDDEN = {
  "nn": ("cmta_jax.agents", "cmta_jax.replay", "cmta_jax.training", "cmta_jax.reporting"),
  "agents": ("cmta_jax.replay", "cmta_jax.training", "cmta_jax.reporting"),
  "replay": ("cmta_jax.agents", "cmta_jax.training", "cmta_jax.reporting"),
  "envs": ("cmta_jax.agents", "cmta_jax.replay", "cmta_jax.training", "cmta_jax.reporting"),
  "training": ("cmta_jax.reporting",),
}


def _module_level_imports(path: str) -> list[str]:
  with open(path) as f:
    tree = ast.parse(f.read())
  names = []
  for node in tree.body:  # module level only: a command may import lazily inside a function
    if isinstance(node, ast.ImportFrom) and node.module:
      names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    elif isinstance(node, ast.Import):
      names += [alias.name for alias in node.names]
  return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer):
  wrong = []
  for name in sorted(os.listdir(os.path.join(PACKAGE, layer))):
    if not name.endswith(".py"):
      continue
    for imported in _module_level_imports(os.path.join(PACKAGE, layer, name)):
      if imported.startswith(FORBIDDEN[layer]):
        wrong.append(f"{layer}/{name} imports {imported}")
  assert not wrong, wrong


def _modules_loaded_by(statement: str) -> set[str]:
  code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  return {name.split(".")[0] for name in out.stdout.split()}


def test_the_config_loads_no_simulator_and_the_driver_no_plotting():
  config = _modules_loaded_by("import cmta_jax.config")
  assert not config & {"gymnasium", "metaworld", "mujoco", "jax"}, config
  driver = _modules_loaded_by("import cmta_jax.training.launch")
  # (imageio comes with gymnasium's MuJoCo renderer, so it is not ours to keep out.)
  assert not driver & {"matplotlib", "rliable", "sklearn", "pandas"}, driver
