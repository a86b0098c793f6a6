"""t-SNE embeddings (scikit-learn) of traced evaluation episodes, as panels for
`figures.tsne_panels`: (title, points [N, 2], colour index [N], colour names)."""

import numpy as np
from sklearn.manifold import TSNE


def _embed(features: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
  # scikit-learn requires perplexity < number of points.
  perplexity = min(perplexity, max(1.0, (len(features) - 1) / 3))
  tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
  return tsne.fit_transform(features.astype(np.float64))


def _subsample(count: int, max_points: int, seed: int) -> np.ndarray:
  if count <= max_points:
    return np.arange(count)
  return np.sort(np.random.default_rng(seed).choice(count, max_points, replace=False))


def expert_encodings(traces, title: str, max_points: int, perplexity: float, seed: int) -> tuple:
  """Every expert's encoding z^j at every traced step, coloured by expert j (paper Fig. 5).
  `traces`: [episode][task] -> inspection.EpisodeTrace with experts [L, k, D]."""
  experts = np.concatenate([t.experts for episode in traces for t in episode])  # [N, k, D]
  k = experts.shape[1]
  features = experts.reshape(-1, experts.shape[2])
  colour = np.tile(np.arange(k), len(experts))
  chosen = _subsample(len(features), max_points, seed)
  points = _embed(features[chosen], perplexity, seed)
  return title, points, colour[chosen], [f"expert {j}" for j in range(k)]


def attention_by_task(traces, title: str, max_points: int, perplexity: float, seed: int) -> tuple:
  """The attention weights at every traced step, coloured by task (paper Fig. 7)."""
  tasks = [t.task for t in traces[0]]
  steps = [t for episode in traces for t in episode]
  weights = [t.attention.reshape(len(t.attention), -1) for t in steps]
  colour = np.concatenate([np.full(len(t.attention), tasks.index(t.task)) for t in steps])
  features = np.concatenate(weights)
  chosen = _subsample(len(features), max_points, seed)
  return title, _embed(features[chosen], perplexity, seed), colour[chosen], tasks
