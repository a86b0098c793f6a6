"""cmta_jax/step_labels.py: k and M labels that keep every digit."""

import pytest

from cmta_jax.step_labels import step_label


@pytest.mark.parametrize(
  "step,label",
  [
    (0, "0"),
    (150, "150"),
    (999, "999"),
    (1000, "1k"),
    (1500, "1.5k"),
    (2000, "2k"),
    (1234, "1.234k"),
    (6000, "6k"),
    (999_999, "999.999k"),
    (1_000_000, "1M"),
    (1_250_000, "1.25M"),
    (2_400_000, "2.4M"),
    (1_000_500, "1.0005M"),
    (-1500, "-1.5k"),
    (2500.0, "2.5k"),  # an axis tick
    (0.5, "0.5"),
  ],
)
def test_a_label_is_the_exact_step(step, label):
  assert step_label(step) == label


def _value(label: str) -> float:
  units = {"k": 1_000, "M": 1_000_000}
  return float(label[:-1]) * units[label[-1]] if label[-1] in units else float(label)


def test_every_label_reads_back_as_its_step_and_no_two_steps_share_one():
  steps = list(range(0, 3_000_000, 250)) + [299, 300, 301, 1499, 1501, 2_400_001]
  labels = [step_label(step) for step in steps]
  assert [round(_value(label)) for label in labels] == steps
  assert len(set(labels)) == len(labels)
