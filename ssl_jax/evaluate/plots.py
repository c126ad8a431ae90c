"""A 2-D map of the learned features of the evaluation set, coloured by class.

PCA to 2-D (cheap; what the trainer writes at the end of a run), or PCA to
``TSNE_PCA_DIM`` dimensions followed by t-SNE (van der Maaten & Hinton 2008;
``python -m ssl_jax.evaluate --protocol=feature_map``). Saved as
``workdir/feature_map.png`` with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations


import numpy as np

from ssl_jax import files

FEATURE_MAP_FILE = "feature_map.png"
# Points drawn: enough to see the clusters, few enough for t-SNE in seconds on a CPU.
MAX_POINTS = 2000
# PCA before t-SNE, as van der Maaten & Hinton 2008 (Sec. 4.2) recommend (they use 30).
TSNE_PCA_DIM = 30
# Gradient-descent iterations of t-SNE (van der Maaten & Hinton 2008 use 1000).
TSNE_ITERS = 1000


def embed_2d(features: np.ndarray, *, method: str = "pca", seed: int = 0,
             tsne_iters: int = TSNE_ITERS) -> np.ndarray:
  """float [N, D] -> float64 [N, 2] by PCA, or PCA then t-SNE."""
  from sklearn import decomposition, manifold  # pylint: disable=g-import-not-at-top
  x = np.asarray(features, np.float64)
  x = x - x.mean(0)
  if method == "pca":
    dim = min(2, x.shape[1], x.shape[0])
    out = decomposition.PCA(dim, random_state=seed).fit_transform(x)
    return np.pad(out, ((0, 0), (0, 2 - dim)))
  if method == "tsne":
    dim = min(TSNE_PCA_DIM, x.shape[1], x.shape[0])
    x = decomposition.PCA(dim, random_state=seed).fit_transform(x)
    perplexity = min(30.0, max(1.0, (len(x) - 1) / 3))
    return manifold.TSNE(2, perplexity=perplexity, init="pca", max_iter=tsne_iters,
                         random_state=seed).fit_transform(x)
  raise ValueError(f"method={method!r}: use 'pca' or 'tsne'.")


def feature_map(features: np.ndarray, labels: np.ndarray, path: str, *, method: str = "pca",
                title: str = "", seed: int = 0, class_names=None) -> str:
  """Writes the scatter plot of ``embed_2d(features)`` coloured by ``labels``; returns path."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  if len(features) > MAX_POINTS:
    keep = np.sort(np.random.default_rng(seed).choice(len(features), MAX_POINTS, replace=False))
    features, labels = features[keep], labels[keep]
  points = embed_2d(features, method=method, seed=seed)
  classes = np.unique(labels)
  cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
  fig, ax = plt.subplots(figsize=(6, 5))
  for i, c in enumerate(classes):
    at = labels == c
    name = class_names[c] if class_names is not None else str(c)
    ax.scatter(points[at, 0], points[at, 1], s=6, color=cmap(i % cmap.N), label=name)
  if len(classes) <= 20:
    ax.legend(markerscale=2, fontsize=7, loc="best", ncol=2 if len(classes) > 10 else 1)
  ax.set_title(title or f"features ({method.upper()}, {len(labels)} points)")
  ax.set_xticks([])
  ax.set_yticks([])
  fig.tight_layout()
  files.save_figure(fig, path)
  plt.close(fig)
  return path


def write_feature_map(workdir: str, config, params, batch_stats, mesh, *, method: str = "pca",
                      data_config=None, step: int | None = None) -> str:
  """Features of (at most MAX_POINTS of) the eval test split -> ``workdir/feature_map.png``."""
  from ssl_jax.evaluate import features as features_lib  # pylint: disable=g-import-not-at-top
  data_config = data_config or config.data
  feature_fn = features_lib.make_feature_fn(config, mesh)
  feats, labels = features_lib.extract_features(
      feature_fn, params, batch_stats, config, data_config.eval_test_split, mesh,
      data_config=data_config, max_examples=MAX_POINTS)
  title = (f"{config.get('method', '')} on {data_config.name} "
           f"{data_config.eval_test_split}" + (f", step {step}" if step is not None else "") +
           f" ({method.upper()})")
  return feature_map(feats, labels, files.join(workdir, FEATURE_MAP_FILE), method=method,
                     title=title, seed=int(config.get("seed", 0)))


def feature_map_from_workdir(workdir: str, *, method: str = "tsne", dataset=None,
                             data_dir=None, folder=None) -> str:
  """The feature map of a workdir's newest checkpoint (any device topology)."""
  from ssl_jax.evaluate import features as features_lib  # pylint: disable=g-import-not-at-top
  s = features_lib.setup(workdir, dataset=dataset, data_dir=data_dir, folder=folder)
  return write_feature_map(workdir, s.config, s.params, s.batch_stats, s.mesh, method=method,
                           step=s.ckpt.step)
