"""Suite-wide: with pytest-xdist (scripts/run_tests.sh), the tests that share the driver's
module-scoped baseline run stay on one worker, which computes it once."""

import pytest


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups from the markers
def pytest_collection_modifyitems(items):
  for item in items:
    if "baseline_run" in getattr(item, "fixturenames", ()):
      item.add_marker(pytest.mark.xdist_group("baseline_run"))
