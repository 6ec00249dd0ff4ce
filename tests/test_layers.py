"""The dependencies of the project point one way (docs/DESIGN.md): no module imports one of a
layer above its own (imports inside functions included), packages form no circle, and the
bottom layer and the grid runner and report stay free of TensorFlow."""

import ast
import glob
import os

from tests.conftest import REPO_ROOT

# Bottom first. Within a layer, only the pairs in SAME_LAYER may import each other (one way).
LAYERS = {"core": 0, "datasets": 1, "models": 1, "methods": 2, "eval": 2, "training": 2,
          "grid": 3, "report": 3, "train_and_eval": 4, "benchmark": 4}
SAME_LAYER = {("training", "methods"), ("eval", "training")}
TENSORFLOW = ("tensorflow", "keras", "tensorflow_datasets")


def _imports(path: str):
  """The top-level names of every module `path` imports, at any depth of its code."""
  tree = ast.parse(open(path).read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name.split(".")[0]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      yield node.module.split(".")[0]


def _modules():
  """(package or entry point, path) of every module of the project (tests and bench/ aside)."""
  for package in LAYERS:
    if os.path.isdir(os.path.join(REPO_ROOT, package)):
      for path in sorted(glob.glob(os.path.join(REPO_ROOT, package, "*.py"))):
        yield package, path
    else:
      yield package, os.path.join(REPO_ROOT, f"{package}.py")


def test_no_module_imports_a_layer_above_its_own():
  wrong = []
  for package, path in _modules():
    for name in set(_imports(path)):
      if name not in LAYERS or name == package:
        continue
      above = LAYERS[name] > LAYERS[package]
      sideways = LAYERS[name] == LAYERS[package] and (package, name) not in SAME_LAYER
      if above or sideways:
        wrong.append(f"{os.path.relpath(path, REPO_ROOT)} imports {name}")
  assert not wrong, wrong


def test_packages_form_no_circle():
  edges = {}
  for package, path in _modules():
    edges.setdefault(package, set()).update(
        n for n in _imports(path) if n in LAYERS and n != package)

  def reaches(start, goal, seen=()):
    return any(n == goal or (n not in seen and reaches(n, goal, seen + (n,)))
               for n in edges.get(start, ()))

  assert not [p for p in edges if reaches(p, p)]


def test_core_grid_and_report_are_free_of_tensorflow():
  for package, path in _modules():
    if package in ("core", "grid", "report"):
      imported = set(_imports(path))
      assert not imported & set(TENSORFLOW), (path, imported & set(TENSORFLOW))
  # What grid and report import of the project is core alone, or their own package.
  for package, path in _modules():
    if package in ("grid", "report"):
      assert {n for n in _imports(path) if n in LAYERS} <= {"core", package}, path
