"""How a layer's features enter its probes (eval/heads.py): their statistics on the training rows,
from one streamed pass over a feature store, and the transform those define.

Input normalisation, a fixed part of every head (`FeatureStats`, on by default): each feature is
shifted and scaled by its mean and standard deviation on the training rows the heads see (one
streamed pass over the store: `store_stats`), and the same transform is applied at test time.
Pooled features of different layers (and architectures) differ in scale by orders of magnitude;
standardising makes one grid of learning rates serve every layer (Lee et al. 2022 found probes
on normalised inputs stable across hyperparameters) and leaves the set of linear classifiers
unchanged. Weight decay then acts on the weights of standardised features. Features that are
constant on the training rows are zeroed.

Decorrelation (on by default with standardisation): the standardised features are also rotated
onto the principal axes of their covariance on the training rows (its eigenvectors, from the same
streamed pass), and directions along which the training rows do not vary are dropped. A rotation
changes neither the set of linear classifiers nor the L2 penalty (the norm of the weights is
the same on either axes), so the heads' objective is the one of the standardised features. What
it changes is the optimisation: pooled features are strongly correlated (a few directions carry
most of the variance), and SGD along a direction of variance `lam` moves at a rate proportional
to `lam`, so that weakly regularised heads are still far from their optimum after any affordable
schedule. Along every axis the heads' first kernel's step is scaled by `(1 + wd) / (lam + wd +
heads.PRECONDITIONER_DAMPING)`, the inverse of the objective's curvature there (up to the
softmax's factor, the same on every axis) relative to that of an uncorrelated standardised
feature: a diagonal Newton step in this basis, with which the heads reach the optimum of a fitted
logistic regression in the schedule of `configs/evaluation/shapes.flags` (docs/probes.md).
"""

import dataclasses
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from scipy.linalg import blas
import tensorflow as tf

from eval import store as store_lib

# Directions of the standardised features whose variance on the training rows is below this
# fraction of the largest are taken as constant there (rounding) and dropped.
MIN_EIGENVALUE = 1e-9


@dataclasses.dataclass
class FeatureStats:
  """How a layer's features enter its heads: `(x - mean) * inv_std`, or with a `basis` `[D, K]`
  (decorrelated; inv_std folded in) `(x - mean) @ basis`, whose K columns have the variances
  `eigenvalues` on the training rows. Fields left None are not applied: the stats of features
  already transformed keep only the `eigenvalues`, for the preconditioner."""
  mean: Optional[np.ndarray]
  inv_std: Optional[np.ndarray]
  basis: Optional[np.ndarray] = None
  eigenvalues: Optional[np.ndarray] = None

  def input_dim(self, dim: int) -> int:
    """The width of the heads' input for `dim` features."""
    if self.basis is not None:
      return self.basis.shape[1]
    return dim if self.eigenvalues is None else len(self.eigenvalues)

  def applied(self) -> "FeatureStats":
    """The stats of features already transformed by these."""
    return FeatureStats(None, None, None, self.eigenvalues)


def transform(stats: Optional[FeatureStats], x: tf.Tensor) -> tf.Tensor:
  """Features `x` `[..., D]` as the heads take them: float32, transformed by `stats`."""
  x = tf.cast(x, tf.float32)
  if stats is None:
    return x
  if stats.mean is not None:
    x = x - stats.mean
  if stats.basis is not None:
    return tf.matmul(x, stats.basis)
  return x if stats.inv_std is None else x * stats.inv_std


class StatsAccumulator:
  """Streaming per-feature mean and variance, chunks merged as in Chan et al. Per chunk, the sum
  and the sum of squares are accumulated in float64 straight from the features (no copy of a
  chunk, which for large tables costs more in fresh memory than the arithmetic), and its
  squared deviations are sum(x^2) - n * mean^2: in float64 that keeps about 16 - 2 * log10(|mean|
  / std) digits, all of float32's for any |mean| / std below 10^4.

  With `decorrelate`, also the covariance between features, for the decorrelated input (module
  docstring): the products of each chunk less the first chunk's mean (so that they do not cancel)
  summed in float64 in place (BLAS's symmetric rank-k update, no D x D temporary per chunk), whose
  rounding (about 1e-15 of the largest variance, against float32's 1e-6) lets
  MIN_EIGENVALUE tell the directions that do not vary from those that vary a little;
  `result` gives the `basis` and `eigenvalues` of the standardised features' covariance (its
  eigendecomposition in float64). While a layer has had no more rows than features, its rows are
  kept instead (no more memory than the D x D sums) and the decomposition is that of their N x N
  Gram matrix, whose eigenvectors give the covariance's (u = X^T v / sqrt(N lam)): the same basis
  for N^3 instead of D^3, which for a few rows of wide layers (smoke runs) is the difference
  between milliseconds and minutes."""

  def __init__(self, decorrelate: bool = False):
    self.decorrelate = decorrelate
    self._count: Dict[str, int] = {}
    self._mean: Dict[str, np.ndarray] = {}
    self._m2: Dict[str, np.ndarray] = {}
    self._shift: Dict[str, np.ndarray] = {}
    self._cross: Dict[str, np.ndarray] = {}
    self._rows: Dict[str, List[np.ndarray]] = {}

  def update(self, features: Mapping[str, np.ndarray]):
    for name, x in features.items():
      x = np.asarray(x)
      if self.decorrelate:
        if name not in self._shift:
          self._shift[name] = x.mean(axis=0, dtype=np.float64)
          self._rows[name] = []
        centred = x - self._shift[name]  # float64
        if name in self._rows and self._count.get(name, 0) + x.shape[0] <= x.shape[1]:
          self._rows[name].append(centred)
        else:
          if name in self._rows:  # More rows than features from here: their D x D sums.
            self._cross[name] = np.zeros([x.shape[1]] * 2, order="F")
            for kept in self._rows.pop(name):
              self._add_products(name, kept)
          self._add_products(name, centred)
      n_b, mean_b = x.shape[0], x.mean(axis=0, dtype=np.float64)
      squares = np.einsum("ij,ij->j", x, x, dtype=np.float64)
      m2_b = np.maximum(squares - n_b * mean_b ** 2, 0.0)
      if name not in self._count:
        self._count[name], self._mean[name], self._m2[name] = n_b, mean_b, m2_b
        continue
      n_a, mean_a = self._count[name], self._mean[name]
      n = n_a + n_b
      delta = mean_b - mean_a
      self._mean[name] = mean_a + delta * n_b / n
      self._m2[name] = self._m2[name] + m2_b + delta ** 2 * n_a * n_b / n
      self._count[name] = n

  def _add_products(self, name: str, centred: np.ndarray) -> None:
    """The upper triangle of cross += centred^T centred, in place (centred^T: Fortran-ordered,
    not copied)."""
    self._cross[name] = blas.dsyrk(1.0, centred.T, beta=1.0, c=self._cross[name],
                                   overwrite_c=True)

  def result(self) -> Dict[str, FeatureStats]:
    stats = {}
    for name, count in self._count.items():
      mean = self._mean[name]
      std = np.sqrt(self._m2[name] / count)
      constant = std <= 1e-6 * (1.0 + np.abs(mean))
      inv_std = np.where(constant, 0.0, 1.0 / np.where(constant, 1.0, std))
      stats[name] = FeatureStats(mean.astype(np.float32), inv_std.astype(np.float32))
      if self.decorrelate:
        stats[name] = self._decorrelated(name, count, mean, inv_std)
    return stats

  def _decorrelated(self, name: str, count: int, mean: np.ndarray, inv_std: np.ndarray
                    ) -> FeatureStats:
    offset = mean - self._shift.pop(name)
    if name in self._rows:  # No more rows than features: from their Gram matrix.
      rows = (np.concatenate(self._rows.pop(name)) - offset) * inv_std  # Standardised.
      eigenvalues, gram_vectors = np.linalg.eigh(rows @ rows.T / count)
      keep = eigenvalues > MIN_EIGENVALUE * max(eigenvalues.max(), 0.0)
      vectors = rows.T @ (gram_vectors[:, keep] / np.sqrt(count * eigenvalues[keep]))
    else:
      cov = self._cross.pop(name)  # Freed as each layer is done: one layer's matrices at a time.
      cov /= count  # Its upper triangle, as the rank-k updates wrote it and eigh reads it.
      cov = blas.dsyr(-1.0, offset, a=cov, overwrite_a=True)  # About the mean, not the shift.
      cov *= inv_std[:, None]
      cov *= inv_std[None, :]  # The standardised features' covariance (their correlations).
      eigenvalues, vectors = np.linalg.eigh(cov, UPLO="U")
      del cov
      keep = eigenvalues > MIN_EIGENVALUE * max(eigenvalues.max(), 0.0)
      vectors = vectors[:, np.argmax(keep):]  # Ascending: the kept ones are the last (a view).
    if not keep.any():  # Every feature constant: one direction, always zero.
      return FeatureStats(mean.astype(np.float32), None, np.zeros([len(mean), 1], np.float32),
                          np.zeros([1], np.float32))
    basis = (inv_std[:, None] * vectors).astype(np.float32)
    return FeatureStats(mean.astype(np.float32), None, basis,
                        np.maximum(eigenvalues[keep], 0.0).astype(np.float32))


# Bytes per entry of a layer's D x D covariance while decorrelating: its float64 sums (8) and its
# float32 basis (4) for every layer of a group, and, one layer at a time, the eigendecomposition's
# float64 vectors and workspace (DECORRELATION_PEAK, of the widest layer).
DECORRELATION_BYTES = 12
DECORRELATION_PEAK = 24


def decorrelation_bytes(dims: Sequence[int]) -> int:
  """Memory of the decorrelation of layers of `dims` features trained together (0: none)."""
  if not dims:
    return 0
  return sum(DECORRELATION_BYTES * d * d for d in dims) + DECORRELATION_PEAK * max(dims) ** 2


def store_stats(store: store_lib.Store, layers: Sequence[str], rows: np.ndarray,
                block_rows: int, decorrelate: bool = False) -> Dict[str, FeatureStats]:
  """Per-layer FeatureStats of `rows` of the store, in one streamed pass of `block_rows`."""
  acc = StatsAccumulator(decorrelate)
  for start in range(0, len(rows), block_rows):
    block = store_lib.as_rows(rows[start:start + block_rows])
    acc.update({name: store.read(name, block) for name in layers})
  return acc.result()
