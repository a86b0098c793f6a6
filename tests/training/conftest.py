"""Fixtures of the training tests."""

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache


@pytest.fixture(scope="module")
def compilation_cache_dir(tmp_path_factory):
  # Every train() call builds fresh jitted closures; the persistent cache turns their
  # recompilation (identical HLO) into a disk read, also across subprocesses.
  # JAX_COMPILATION_CACHE_DIR, if set, keeps the cache across sessions.
  path = jax.config.jax_compilation_cache_dir or str(tmp_path_factory.mktemp("jax_cache"))
  previous = (
    jax.config.jax_compilation_cache_dir,
    jax.config.jax_persistent_cache_min_compile_time_secs,
  )
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  compilation_cache.reset_cache()  # JAX decides whether to use the cache only once
  yield path
  jax.config.update("jax_compilation_cache_dir", previous[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", previous[1])
  compilation_cache.reset_cache()
