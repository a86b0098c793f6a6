"""requirements.lock pins every dependency of pyproject.toml within its range, and the
environment the tests run in is the one the lock describes."""

import os
import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pins() -> dict[str, str]:
  pins = {}
  with open(os.path.join(REPO, "requirements.lock")) as f:
    for line in f:
      line = line.split("#")[0].strip()
      if line:
        name, _, version = line.partition("==")
        assert version, f"requirements.lock: {line!r} is not an exact pin"
        pins[canonicalize_name(Requirement(name).name)] = version.split(";")[0].strip()
  return pins


def _declared() -> list[Requirement]:
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  return [
    Requirement(r)
    for r in [
      *project["dependencies"],
      *(r for e in project["optional-dependencies"].values() for r in e),
    ]
  ]


def test_the_lock_pins_every_declared_dependency_within_its_range():
  pins = _pins()
  for requirement in _declared():
    name = canonicalize_name(requirement.name)
    assert name in pins, f"{requirement} is not in requirements.lock: run scripts/update_lock.sh"
    assert requirement.specifier.contains(pins[name], prereleases=True), (
      f"requirements.lock pins {name}=={pins[name]}, outside {requirement}: "
      "run scripts/update_lock.sh"
    )


def test_the_installed_versions_are_the_locked_ones():
  pins = _pins()
  for requirement in _declared():
    name = canonicalize_name(requirement.name)
    assert metadata.version(name) == pins[name], (
      f"{name} {metadata.version(name)} is installed, the lock says {pins[name]}: "
      "run scripts/setup_env.sh"
    )
