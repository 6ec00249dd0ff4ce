"""The feature store: every layer's pooled features of one split, written as the extraction goes
and read back by rows, from disk or from memory, within a memory budget.

On disk (`<cache_dir>/<key>/`, the key a hash of what determines the features: `cache_key`):
  meta.json      what the key was made of, the layers, their dims and files, the dtype, the rows
                 written, and whether the extraction is complete
  labels.bin     int32 [N]
  <layer>.bin    float16 or float32 [N, D], the split's rows in order, no header
                 (`np.memmap(path, dtype, shape=(N, D))` reads one)
A store is written in place: rows go to the files as each batch is extracted, and every
`COMMIT_SECONDS` the files are flushed and meta.json records how many rows are whole, so that an
interrupted extraction goes on from its last complete batch (`Writer`). Readers take only a
store whose meta.json says it is complete (`open_store`). For an export, the key includes its
fingerprint (re-exporting changes it); for the random-init baseline, its architecture and seed;
then the dataset, split, preprocessing, pooling, layers, feature limit and dtype.

Reading (`Store.read`) copies the rows asked for into a fresh array with positioned reads, one
per run of consecutive rows: the process's resident memory holds no more of the store than those
rows, whatever the store's size (the kernel's page cache keeps what it can, outside it). A memory
map would not do: the kernel maps the page cache's large folios whole, so that a few random rows
bring most of a file into the process's resident memory.
"""

import hashlib
import json
import os
import re
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from absl import logging
import numpy as np

from core import options

STORE_FORMAT_VERSION = 2
FEATURE_DTYPES = options.FEATURE_DTYPES
COMMIT_SECONDS = 10.0
META_FILE = "meta.json"
LABELS_FILE = "labels.bin"

Rows = Union[slice, np.ndarray]


class Store:
  """Per-layer features `[N, D]` (layers in depth order) and int32 labels `[N]` (in memory)."""

  def __init__(self, dims: Mapping[str, int], dtype: str, labels: np.ndarray):
    self.dims = {name: int(d) for name, d in dims.items()}
    self.layers = list(self.dims)
    self.dtype = np.dtype(dtype)
    self.labels = np.asarray(labels, np.int32)

  @property
  def num_examples(self) -> int:
    return int(self.labels.shape[0])

  def row_bytes(self, layers: Optional[Iterable[str]] = None) -> int:
    """Bytes of one example's features of `layers` (default: all)."""
    names = self.layers if layers is None else layers
    return sum(self.dims[n] for n in names) * self.dtype.itemsize

  def read(self, name: str, rows: Rows) -> np.ndarray:
    """A fresh array of layer `name`'s features at `rows` (a slice, or row numbers in any
    order)."""
    raise NotImplementedError

  def read_all(self, name: str) -> np.ndarray:
    return self.read(name, slice(0, self.num_examples))


class MemoryStore(Store):
  """A store held in memory (`--feature_cache=memory`)."""

  def __init__(self, features: Mapping[str, np.ndarray], labels: np.ndarray):
    first = next(iter(features.values()))
    super().__init__({n: a.shape[1] for n, a in features.items()}, str(first.dtype), labels)
    self.features = dict(features)

  def read(self, name: str, rows: Rows) -> np.ndarray:
    out = self.features[name][rows]
    return out.copy() if isinstance(rows, slice) else out


class DiskStore(Store):
  """A complete store folder, read with positioned reads (module docstring)."""

  def __init__(self, folder: str, meta: Mapping[str, Any]):
    labels = np.fromfile(os.path.join(folder, LABELS_FILE), np.int32, count=int(meta["rows"]))
    super().__init__({n: meta["dims"][n] for n in meta["layers"]}, meta["dtype"], labels)
    self.folder, self.files = folder, dict(meta["files"])
    self._fds: Dict[str, int] = {}

  def _fd(self, name: str) -> int:
    if name not in self._fds:
      self._fds[name] = os.open(os.path.join(self.folder, self.files[name]), os.O_RDONLY)
    return self._fds[name]

  def read(self, name: str, rows: Rows) -> np.ndarray:
    fd, dim = self._fd(name), self.dims[name]
    row = dim * self.dtype.itemsize
    if isinstance(rows, slice):
      start, stop, step = rows.indices(self.num_examples)
      if step != 1:
        return self.read(name, np.arange(start, stop, step))
      out = np.empty([max(0, stop - start), dim], self.dtype)
      _read_into(fd, out, start * row)
      return out
    rows = np.asarray(rows, np.int64)
    out = np.empty([len(rows), dim], self.dtype)
    if len(rows) and (rows.min() < 0 or rows.max() >= self.num_examples):
      raise IndexError(f"rows {rows.min()} .. {rows.max()} of a store of {self.num_examples}")
    # Runs of consecutive rows, one read each.
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for first, last in zip(np.concatenate([[0], breaks]), np.concatenate([breaks, [len(rows)]])):
      _read_into(fd, out[first:last], int(rows[first]) * row)
    return out

  def close(self):
    for fd in self._fds.values():
      os.close(fd)
    self._fds.clear()


# Bytes per read call (Linux reads at most about 2 GiB at once).
_READ_BYTES = 1 << 30


def _read_into(fd: int, out: np.ndarray, offset: int) -> None:
  """Fills the contiguous array `out` from `fd` at `offset`."""
  view = memoryview(out).cast("B")
  done = 0
  while done < len(view):
    got = os.preadv(fd, [view[done:done + _READ_BYTES]], offset + done)
    if got <= 0:
      raise OSError(f"the feature store ended early: {done} of {len(view)} bytes at {offset}")
    done += got


def in_memory(store: Store, budget: Optional[int]) -> Store:
  """`store` read whole into memory when it fits in `budget` bytes (gathering rows from memory
  is much faster than one read per row), else `store` itself."""
  if isinstance(store, MemoryStore) or budget is None:
    return store
  if store.num_examples * store.row_bytes() > budget:
    return store
  whole = MemoryStore({name: store.read_all(name) for name in store.layers}, store.labels)
  if isinstance(store, DiskStore):
    store.close()
  return whole


def as_rows(rows: np.ndarray) -> Rows:
  """Sorted row numbers as a slice where they are consecutive (a plain read), else as they
  are."""
  rows = np.asarray(rows)
  if len(rows) and rows[-1] - rows[0] == len(rows) - 1:
    return slice(int(rows[0]), int(rows[-1]) + 1)
  return rows


def cache_key(parts: Mapping[str, Any]) -> str:
  """A short hash of what determines the features (JSON of `parts`, keys sorted)."""
  text = json.dumps(dict(parts, cache_format=STORE_FORMAT_VERSION), sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:20]


def layer_file(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".bin"


def _read_meta(folder: str) -> Optional[Dict[str, Any]]:
  try:
    with open(os.path.join(folder, META_FILE)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _write_meta(folder: str, meta: Mapping[str, Any]) -> None:
  tmp = os.path.join(folder, f".{META_FILE}.tmp")
  with open(tmp, "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True, default=str)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(folder, META_FILE))


def open_store(folder: str, layers: Sequence[str]) -> Optional[DiskStore]:
  """The complete store in `folder` if it holds `layers`, else None."""
  meta = _read_meta(folder)
  if meta is None or not meta.get("complete"):
    return None
  if meta.get("cache_format") != STORE_FORMAT_VERSION or any(
      n not in meta.get("files", {}) for n in layers):
    logging.info("feature store %s is of another format or lacks some of the layers %s; "
                 "extracting again", folder, list(layers))
    return None
  try:
    store = DiskStore(folder, meta)
  except (OSError, ValueError, KeyError) as e:
    logging.warning("ignoring unreadable feature store %s: %s", folder, e)
    return None
  if store.num_examples != int(meta["rows"]):
    logging.warning("ignoring inconsistent feature store %s", folder)
    return None
  store.layers = [n for n in store.layers if n in layers] if layers else store.layers
  logging.info("loaded the feature store %s (%d examples)", folder, store.num_examples)
  return store


class Writer:
  """Rows of features as extraction makes them, into a folder (resumable) or into memory.

  `num_examples`: the split's size as its metadata says; a split that turns out longer or shorter
  is stored as it is (a folder's files grow or are cut, the memory tables joined or cut)."""

  def __init__(self, folder: Optional[str], parts: Mapping[str, Any], dtype: str,
               num_examples: int):
    if dtype not in FEATURE_DTYPES:
      raise ValueError(f"unknown feature dtype {dtype!r}; valid choices: "
                       f"{', '.join(FEATURE_DTYPES)}")
    self.folder, self.parts, self.dtype = folder, dict(parts), np.dtype(dtype)
    self.num_examples = int(num_examples)
    self.rows = 0  # Rows written (and, on disk, committed up to `self.committed`).
    self.committed = 0
    self.dims: Optional[Dict[str, int]] = None
    self._tables: Dict[str, np.ndarray] = {}
    self._extra: Dict[str, List[np.ndarray]] = {}
    self._labels: List[np.ndarray] = []
    self._in_table = 0  # In memory: the rows in `_tables` (the rest in `_extra`).
    self._fds: Dict[str, int] = {}
    self._last_commit = time.time()
    if folder:
      meta = _read_meta(folder)
      if (meta and not meta.get("complete") and meta.get("parts") == json.loads(
          json.dumps(self.parts, default=str)) and meta.get("dtype") == self.dtype.name):
        self.rows = self.committed = int(meta["rows"])
        self.dims = {n: int(meta["dims"][n]) for n in meta["layers"]}
        if self.rows:
          logging.info("feature store %s: going on from row %d of %d", folder, self.rows,
                       self.num_examples)

  def _start(self, dims: Mapping[str, int]):
    self.dims = dict(dims)
    if self.folder is None:
      self._tables = {n: np.empty([self.num_examples, d], self.dtype) for n, d in dims.items()}
      self._extra = {n: [] for n in dims}
      return
    os.makedirs(self.folder, exist_ok=True)
    files = {n: layer_file(n) for n in dims}
    for name, file in list(files.items()) + [(None, LABELS_FILE)]:
      self._fds[name] = os.open(os.path.join(self.folder, file), os.O_RDWR | os.O_CREAT, 0o644)
    if not self.committed:
      self._commit(complete=False)

  def _meta(self, complete: bool) -> Dict[str, Any]:
    return dict(parts=self.parts, layers=list(self.dims), dims=self.dims,
                files={n: layer_file(n) for n in self.dims}, dtype=self.dtype.name,
                rows=self.committed, expected_rows=self.num_examples, complete=complete,
                cache_format=STORE_FORMAT_VERSION)

  def _commit(self, complete: bool):
    for fd in self._fds.values():
      os.fsync(fd)
    self.committed = self.rows
    _write_meta(self.folder, self._meta(complete))
    self._last_commit = time.time()

  def write(self, features: Mapping[str, np.ndarray], labels: np.ndarray) -> None:
    """The next rows: `features[layer]` `[B, D]`, `labels` `[B]`."""
    if self.dims is None or (self.folder and not self._fds):
      self._start(self.dims or {n: int(a.shape[1]) for n, a in features.items()})
    size = int(len(labels))
    start = self.rows
    if self.folder is None:
      fits = start + size <= self.num_examples and self._in_table == start
      self._in_table += size if fits else 0
      for name in self.dims:
        array = np.asarray(features[name]).astype(self.dtype, copy=False)
        if fits:
          self._tables[name][start:start + size] = array
        else:
          self._extra[name].append(array)
      self._labels.append(np.asarray(labels, np.int32))
    else:
      for name, dim in self.dims.items():
        array = np.ascontiguousarray(np.asarray(features[name]).astype(self.dtype, copy=False))
        os.pwrite(self._fds[name], array.tobytes(), start * dim * self.dtype.itemsize)
      os.pwrite(self._fds[None], np.asarray(labels, np.int32).tobytes(), start * 4)
    self.rows += size
    if self.folder and time.time() - self._last_commit >= COMMIT_SECONDS:
      self._commit(complete=False)

  @property
  def layers(self) -> List[str]:
    return list(self.dims or {})

  def finish(self) -> Store:
    """The whole store: a folder's files cut to the rows written and marked complete."""
    if self.dims is None:
      raise ValueError("no rows to store")
    if self.folder is None:
      features = {}
      for name in self.dims:
        parts = [self._tables[name][:self._in_table]] + self._extra[name]
        features[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
      return MemoryStore(features, np.concatenate(self._labels))
    for name, dim in self.dims.items():
      os.ftruncate(self._fds[name], self.rows * dim * self.dtype.itemsize)
    os.ftruncate(self._fds[None], self.rows * 4)
    self._commit(complete=True)
    self.close()
    return open_store(self.folder, self.layers)

  def close(self):
    for fd in self._fds.values():
      os.close(fd)
    self._fds.clear()


# The default budget's share of the memory there is (the rest: the runtime, the backbone, the
# input pipeline and the page cache that the store is read through).
DEFAULT_BUDGET_SHARE = 0.5


def default_budget(environ: Mapping[str, str] = os.environ) -> int:
  """`DEFAULT_BUDGET_SHARE` of the SLURM job's memory per node (SLURM_MEM_PER_NODE, MiB) where
  it is set, else of this machine's available memory (/proc/meminfo's MemAvailable)."""
  if environ.get("SLURM_MEM_PER_NODE", "").isdigit():
    return int(DEFAULT_BUDGET_SHARE * (int(environ["SLURM_MEM_PER_NODE"]) << 20))
  available = None
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          available = int(line.split()[1]) << 10
  except OSError:
    pass
  if available is None:
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
  return int(DEFAULT_BUDGET_SHARE * available)
