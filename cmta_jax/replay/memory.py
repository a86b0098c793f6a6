"""What replay buffers take in memory, and whether they fit."""

import os

from cmta_jax.replay.buffer import FLOAT_BYTES, ReplayBuffer, floats_per_transition

# Fraction of available memory the buffers may take; the rest is headroom for
# JAX, the simulators and the checkpoint writer.
_MEMORY_FRACTION = 0.8


def format_bytes(n: float) -> str:
  """Human-readable binary size, e.g. "1.23 GiB"."""
  n = float(n)
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(n) < 1024.0 or unit == "TiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
    n /= 1024.0
  raise AssertionError("unreachable")


def _available_memory_bytes() -> int | None:
  """MemAvailable from /proc/meminfo (counts reclaimable cache), else free pages, else None."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024  # reported in kB
  except OSError:
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    return None


def device_memory_available(device) -> int | None:
  """Bytes free on an accelerator as JAX reports them (limit - in use), or None where JAX
  does not report them (the CPU backend: use host memory)."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if not stats or "bytes_limit" not in stats:
    return None
  return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


def check_fits_in_memory(
  num_tasks: int,
  capacity: int,
  obs_dim: int,
  action_dim: int,
  carry_dim: int,
  available_bytes: int | None = None,
  num_seeds: int = 1,
  extra: int = 0,
  where: str = "host memory",
  otherwise: str = "",
) -> int:
  """Returns the bytes `num_seeds` replays of this shape (one per seed of a batch) plus
  `extra` more (e.g. the one seed's replay a checkpoint save or restore holds besides them)
  need in `where`; raises MemoryError (one line, naming the largest capacity that fits, then
  `otherwise`) if they would not fit.

  Pages of host arrays are committed lazily, so an oversized replay would otherwise only fail
  (OOM kill) hours into a run. If `available_bytes` is None it is read from the OS; if the OS
  cannot tell, the check is skipped and only the byte count is returned.
  """
  buffers = num_seeds + extra
  needed = buffers * ReplayBuffer.bytes_needed(num_tasks, capacity, obs_dim, action_dim, carry_dim)
  if available_bytes is None:
    available_bytes = _available_memory_bytes()
    if available_bytes is None:
      return needed
  usable = int(available_bytes * _MEMORY_FRACTION)
  if needed > usable:
    bytes_per_transition = floats_per_transition(obs_dim, action_dim, carry_dim) * FLOAT_BYTES
    aside = 2 * num_tasks * carry_dim * FLOAT_BYTES  # the oldest slot's carry_in
    largest = ((usable // buffers - aside) // bytes_per_transition) // num_tasks * num_tasks
    what = f"replay buffer{'s of ' + str(num_seeds) + ' seeds' if num_seeds > 1 else ''}"
    if extra:
      what += f" and {extra} more while a checkpoint is saved or restored"
    per = ", per seed" if num_seeds > 1 else ""
    verb = "need" if buffers > 1 else "needs"
    raise MemoryError(
      f"{what} {verb} {needed} B ({format_bytes(needed)}) but only {available_bytes} B "
      f"({format_bytes(available_bytes)}) are available in {where} ({_MEMORY_FRACTION:.0%} "
      f"usable); largest capacity that fits: {largest} ({largest // num_tasks} per task{per})"
      + otherwise
    )
  return needed
