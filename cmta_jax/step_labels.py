"""How a step count reads in reports and on figure axes: shortened with k and M, never rounded.

  150 -> "150", 1500 -> "1.5k", 2000 -> "2k", 1234 -> "1.234k", 2_400_000 -> "2.4M",
  1_250_000 -> "1.25M", 1_000_500 -> "1.0005M"

Every command and figure that writes steps as k or M uses `step_label`, so the same step
reads the same everywhere and no two different steps share a label.
"""

import math

_UNITS = ((1_000_000, "M"), (1_000, "k"))


def step_label(step: float) -> str:
  """`step` (an integer, or a float with an integer value such as an axis tick) with the
  largest unit (M, k) it reaches and every digit it needs; other floats as `:g` prints them."""
  if not math.isfinite(step) or step != int(step):
    return f"{step:g}"
  step = int(step)
  sign, size = ("-" if step < 0 else ""), abs(step)
  for unit, suffix in _UNITS:
    if size >= unit:
      whole, rest = divmod(size, unit)
      digits = str(rest).rjust(len(str(unit)) - 1, "0").rstrip("0")
      return f"{sign}{whole}{'.' + digits if digits else ''}{suffix}"
  return f"{sign}{size}"
