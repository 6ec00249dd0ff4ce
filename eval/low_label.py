"""Low-label evaluation: a class-stratified labelled subset of the training split.

`examples_per_class=n`: n examples of every class present (an error names a class with fewer).
`train_fraction=f`: floor(f * n_c + 0.5) examples of a class with n_c examples, at least one.
Within a class, examples are drawn without replacement by `np.random.default_rng(seed)`, classes in
increasing order, so a seed gives the same subset every time.
"""

from typing import Optional

import numpy as np


def low_label_indices(labels: np.ndarray, train_fraction: Optional[float] = None,
                      examples_per_class: Optional[int] = None, seed: int = 0) -> np.ndarray:
  """Sorted indices into `labels` of the labelled subset."""
  if (train_fraction is None) == (examples_per_class is None):
    raise ValueError("give exactly one of train_fraction and examples_per_class, got "
                     f"train_fraction={train_fraction}, examples_per_class={examples_per_class}")
  if train_fraction is not None and not 0 < train_fraction <= 1:
    raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
  if examples_per_class is not None and (
      isinstance(examples_per_class, bool) or int(examples_per_class) != examples_per_class
      or examples_per_class < 1):
    raise ValueError(f"examples_per_class must be a positive integer, got {examples_per_class}")
  labels = np.asarray(labels).reshape(-1)
  rng = np.random.default_rng(seed)
  chosen = []
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    if examples_per_class is not None:
      count = int(examples_per_class)
      if count > len(members):
        raise ValueError(f"class {label} has only {len(members)} training examples, fewer than "
                         f"examples_per_class={examples_per_class}")
    else:
      count = max(1, int(np.floor(train_fraction * len(members) + 0.5)))
    chosen.append(rng.choice(members, size=count, replace=False))
  return np.sort(np.concatenate(chosen))
