"""The grid: parsing and naming, errors, the runner (skip, resume, failures), benchmark.py."""

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from core import files
from core import options
from core import specs
from grid import flags as flags_lib
from grid import gridfile
from grid import local
from grid import runner as runner_lib
from grid import state as grid_state
from grid.cells import select_cells
from grid.common import GridError
from tests.conftest import REPO_ROOT

# A stand-in for train_and_eval.py: writes the files a real step writes, in no time.
FAKE_STEP = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, os.getcwd())  # The project (steps run in its root).
    from core import files
    args = {}
    for a in sys.argv[1:]:
      name, eq, value = a[2:].partition("=")
      if eq:
        args[name] = value
      elif name.startswith("no") and name != "norm":
        args[name[2:]] = False
      else:
        args[name] = True
    wd = args["workdir"]
    os.makedirs(wd, exist_ok=True)
    cell = wd if args["task"] != "linear_eval" else os.path.dirname(wd)
    with open(os.path.join(cell, "calls.txt"), "a") as f:
      f.write(json.dumps(sys.argv[1:]) + "\\n")
    import atexit, time
    begun = time.time()
    def _times():  # When the step ran and with how many TF threads (the runner's --jobs).
      with open(os.path.join(cell, "times.txt"), "a") as f:
        threads = os.environ.get("TF_NUM_INTRAOP_THREADS", "-")
        f.write(json.dumps([begun, time.time(), threads]) + "\\n")
    atexit.register(_times)
    print("step 1/2 loss 1.3 | 10 img/s | ETA 0m01s", flush=True)
    if os.environ.get("FAKE_SLEEP"):
      open(os.path.join(cell, "pid"), "w").write(str(os.getpid()))
      import time
      time.sleep(float(os.environ["FAKE_SLEEP"]))
    fail = os.environ.get("FAKE_FAIL", "")
    if args.get("architecture") == "broken" or fail in (os.path.basename(cell),
                                                       os.path.basename(cell) + ":" + args["task"]):
      print("Traceback (most recent call last):")
      print("error: cell broken on purpose", file=sys.stderr)
      sys.exit(3)
    if args["task"] != "linear_eval":
      os.makedirs(os.path.join(wd, "export"), exist_ok=True)
      open(os.path.join(wd, "export", "saved_model.pb"), "w").write("fake")
      with open(os.path.join(wd, "export", "export_info.json"), "w") as f:
        json.dump({"architecture": args.get("architecture", "resnet50"), "task": args["task"]}, f)
      if args.get("run_eval"):
        with open(os.path.join(wd, "pretext_results.json"), "w") as f:
          json.dump({"config": args, "metrics": {"accuracy": 0.75}}, f)
      sys.exit(0)
    if args["hub_module"] == "random_init":
      arch = args["architecture"]
    else:
      arch = json.load(open(os.path.join(args["hub_module"], "export_info.json")))["architecture"]
    order = (["block1", "block2", "block3", "block4", "block5", "fc6", "pre_logits"]
             if arch == "vgg19" else
             ["after_root", "block1", "block2", "block3", "block4", "pre_logits"])
    peak = 2 if args["hub_module"] == "random_init" else 3
    layers = {n: {"dim": 8, "top1": 0.5 - 0.05 * abs(i - peak), "top5": 0.9, "loss": 1.0}
              for i, n in enumerate(order)}
    config = {k: v for k, v in args.items() if k not in ("task", "force")}
    fingerprint = (None if args["hub_module"] == "random_init" else
                   files.export_fingerprint(args["hub_module"]))
    results = {"format_version": 1, "config": config,
               "source": {"hub_module": args["hub_module"], "architecture": arch,
                          "fingerprint": fingerprint},
               "dataset": {"name": args.get("dataset"), "train_split": args.get("train_split"),
                           "val_split": args.get("val_split")},
               "layer_order": order, "layers": layers,
               "best_layer": {"name": order[peak], "top1": 0.5}, "times": {"total_s": 1.0}}
    with open(os.path.join(wd, "results.json"), "w") as f:
      json.dump(results, f)
    """)


@pytest.fixture(scope="module")
def known():
  """The real flags of train_and_eval.py (from its --helpxml)."""
  return flags_lib.known_flags()


@pytest.fixture
def configs(tmp_path):
  """Method and evaluation flagfiles in tmp_path/configs/<method>/toy.flags."""
  files = {
      "rotation": "--task=rotation\n--dataset=toy\n--architecture=resnet50\n--filters_factor=4\n"
                  "--preprocessing=resize,-1_to_1,rotate\n--epochs=3\n--lr=0.1\n--run_eval\n",
      "supervised": "# The reference.\n--task=supervised\n--dataset=toy\n--epochs=3\n"
                    "--preprocessing=resize,-1_to_1\n--run_eval\n",
      "evaluation": "--task=linear_eval\n--dataset=toy\n--epochs=10\n--decay_epochs=6,8\n",
  }
  for name, text in files.items():
    os.makedirs(tmp_path / "configs" / name, exist_ok=True)
    (tmp_path / "configs" / name / "toy.flags").write_text(text)
  return tmp_path


def write_grid(directory, text, name="grid.toml"):
  path = os.path.join(directory, name)
  with open(path, "w") as f:
    f.write(textwrap.dedent(text))
  return path


GRID = """
    [grid]
    name = "toy"
    [defaults]
    dataset = "toy"
    [pretext]
    epochs = 1
    [evaluation]
    flagfile = "configs/evaluation/toy.flags"
    train_split = "train[:100]"
    [baselines]
    random_init = true
    supervised = true
    [[cells]]
    method = "rotation"
    axes = { architecture = ["resnet50", "revnet50"], filters_factor = [1, 2] }
    exclude = [{ architecture = "revnet50", filters_factor = 2 }]
    [[cells]]
    method = "rotation"
    flags = { architecture = "vgg19", filters_factor = 1, lr = 0.05 }
    eval_flags = { epochs = 5 }
    """


def test_expansion_names_and_precedence(configs, known):
  grid = gridfile.load_grid(write_grid(configs, GRID), known, base_dir=str(configs))
  assert grid.name == "toy"
  assert grid.names() == [
      "rotation-resnet50_v2-w1", "rotation-resnet50_v2-w2", "rotation-revnet50-w1",
      "rotation-vgg19-w1",
      "supervised-resnet50_v2-w1", "supervised-resnet50_v2-w2", "supervised-revnet50-w1",
      "supervised-vgg19-w1",
      "random_init-resnet50_v2-w1", "random_init-resnet50_v2-w2", "random_init-revnet50-w1",
      "random_init-vgg19-w1"]
  rot = grid.cell("rotation-vgg19-w1")
  assert rot.kind == "pretext" and not rot.reference
  # flagfile < [defaults] < [pretext] < the cell's flags.
  assert rot.pretext_flags["epochs"] == "1" and rot.pretext_flags["lr"] == "0.05"
  assert rot.pretext_flags["filters_factor"] == "1" and rot.pretext_flags["run_eval"] is True
  # The evaluation flagfile's decays (6, 8 of 10 epochs) scale with the cell's 5 epochs.
  assert rot.eval_flags == {"task": "linear_eval", "dataset": "toy", "epochs": "5",
                            "decay_epochs": "3,4", "train_split": "train[:100]"}
  steps = rot.steps("/r/rotation-vgg19-w1")
  assert [s for s, _ in steps] == ["pretext", "eval:linear_eval"]
  assert steps[1][1]["hub_module"] == "/r/rotation-vgg19-w1/export"
  assert steps[1][1]["workdir"] == "/r/rotation-vgg19-w1/linear_eval"
  # Axis values win over the flagfile (filters_factor=4 there).
  assert grid.cell("rotation-resnet50_v2-w2").pretext_flags["filters_factor"] == "2"
  sup = grid.cell("supervised-revnet50-w1")
  assert sup.kind == "supervised" and sup.pretext_flags["task"] == "supervised"
  assert sup.pretext_flags["architecture"] == "revnet50" and sup.mode is None
  base = grid.cell("random_init-resnet50_v2-w2")
  assert base.pretext_flags is None and base.kind == "random_init"
  assert base.steps("/r/x") == [("eval:linear_eval", dict(
      base.eval_flags, hub_module="random_init", workdir="/r/x/linear_eval"))]
  assert base.eval_flags["architecture"] == "resnet50" and base.eval_flags["mode"] == "v2"
  assert base.eval_flags["filters_factor"] == "2"
  assert base.eval_flags["eval_preprocessing"] == "resize,-1_to_1"
  args = options.flags_to_args({"run_eval": True, "last_relu": False, "epochs": "1"})
  assert args == ["--run_eval", "--nolast_relu", "--epochs=1"]


def test_patch_methods_get_a_random_init_baseline_on_their_patches(configs, known):
  jigsaw = ("--task=jigsaw\n--dataset=toy\n--preprocessing=to_gray,crop,crop_patches,"
            "standardization\n--crop_size=60\n--splits_per_side=3\n--patch_jitter=4\n")
  for method, crop in (("jigsaw", 60), ("relative_patch_location", 60), ("other_patches", 48)):
    os.makedirs(configs / "configs" / method, exist_ok=True)
    (configs / "configs" / method / "toy.flags").write_text(
        jigsaw.replace("jigsaw", method).replace("60", str(crop)))
  base = GRID.split("[[cells]]")[0]
  grid = gridfile.load_grid(write_grid(configs, base + """
      [[cells]]
      method = ["rotation", "jigsaw", "relative_patch_location"]
      flags = { filters_factor = 1 }
      """), known, base_dir=str(configs))
  names = grid.names()
  # One whole-image baseline per architecture, and one on patches: jigsaw and relative patch
  # location share their patch settings, rotation has none.
  assert [n for n in names if n.startswith("random_init")] == [
      "random_init-resnet50_v2-w1", "random_init-resnet50_v2-w1-patches"]
  patches = grid.cell("random_init-resnet50_v2-w1-patches").eval_flags
  assert patches["eval_preprocessing"] == "to_gray,crop,crop_patches,standardization"
  assert (patches["crop_size"], patches["splits_per_side"], patches["patch_jitter"]) == (
      "60", "3", "4")
  assert "resize_size" not in patches  # [baselines]' whole-image size does not leak in.
  assert patches["architecture"] == "resnet50" and patches["filters_factor"] == "1"
  whole = grid.cell("random_init-resnet50_v2-w1").eval_flags
  assert whole["eval_preprocessing"] == "resize,-1_to_1" and "crop_size" not in whole
  # A second patch setting on the same architecture gets a baseline of its own.
  grid = gridfile.load_grid(write_grid(configs, base + """
      [[cells]]
      method = ["jigsaw", "other_patches"]
      flags = { filters_factor = 1 }
      """), known, base_dir=str(configs))
  # (The whole-image one is the supervised reference's, which comes after the cells.)
  assert [n for n in grid.names() if n.startswith("random_init")] == [
      "random_init-resnet50_v2-w1-patches", "random_init-resnet50_v2-w1-patches2",
      "random_init-resnet50_v2-w1"]
  assert grid.cell("random_init-resnet50_v2-w1-patches2").eval_flags["crop_size"] == "48"
  assert grid.cell("other_patches-resnet50_v2-w1").baseline == (
      "random_init-resnet50_v2-w1-patches2")


def test_every_trained_cell_gets_a_baseline_on_its_own_evaluation_input(configs, known):
  """A baseline per (architecture, width, evaluation input): the export's spec without the
  pretext ops and the training's sizes, or what the evaluation sets; each cell names its own."""
  (configs / "configs" / "exemplar").mkdir()
  (configs / "configs" / "exemplar" / "toy.flags").write_text(
      "--task=exemplar\n--dataset=toy\n--preprocessing=resize,exemplar_copies,standardization\n"
      "--resize_size=32\n--crop_size=28\n")
  base = GRID.split("[[cells]]")[0].replace("supervised = true", "supervised = false")
  cells = """
      [[cells]]
      method = ["rotation", "supervised", "exemplar"]
      flags = { filters_factor = 1 }
      [[cells]]
      method = "rotation"
      flags = { filters_factor = 1, resize_size = 48 }
      tag = "big"
      """
  grid = gridfile.load_grid(write_grid(configs, base + cells), known, base_dir=str(configs))
  baselines = {c.name: c.eval_flags for c in grid.cells if c.kind == "random_init"}
  input_flags = lambda flags: {k: v for k, v in flags.items() if k in gridfile.INPUT_FLAGS}
  assert {n: input_flags(f) for n, f in baselines.items()} == {
      # Rotation and supervised: "resize,-1_to_1" (rotate dropped), no size of their own.
      "random_init-resnet50_v2-w1": {"eval_preprocessing": "resize,-1_to_1"},
      # Exemplar: standardised images (exemplar_copies dropped), its own sizes.
      "random_init-resnet50_v2-w1-input2": {"eval_preprocessing": "resize,standardization",
                                            "resize_size": "32", "crop_size": "28"},
      "random_init-resnet50_v2-w1-input3": {"eval_preprocessing": "resize,-1_to_1",
                                            "resize_size": "48"}}
  assert {c.name: c.baseline for c in grid.cells if c.kind != "random_init"} == {
      "rotation-resnet50_v2-w1": "random_init-resnet50_v2-w1",
      "supervised-resnet50_v2-w1": "random_init-resnet50_v2-w1",
      "exemplar-resnet50_v2-w1": "random_init-resnet50_v2-w1-input2",
      "rotation-resnet50_v2-w1-big": "random_init-resnet50_v2-w1-input3"}
  # The baselines keep the evaluation's other flags; the pairing reaches cell.json.
  assert baselines["random_init-resnet50_v2-w1-input2"]["train_split"] == "train[:100]"
  assert grid.cell("exemplar-resnet50_v2-w1").to_dict()["baseline"] == (
      "random_init-resnet50_v2-w1-input2")
  # An evaluation that sets a size takes every parameter from its own flags, as
  # linear_eval does: then every cell is probed on that input and one baseline serves all.
  sized = base.replace('train_split = "train[:100]"',
                       'train_split = "train[:100]"\neval_preprocessing = "resize,-1_to_1"\n'
                       'resize_size = 24')
  grid = gridfile.load_grid(write_grid(configs, sized + cells), known, base_dir=str(configs))
  assert [c.name for c in grid.cells if c.kind == "random_init"] == [
      "random_init-resnet50_v2-w1"]
  assert input_flags(grid.cell("random_init-resnet50_v2-w1").eval_flags) == {
      "eval_preprocessing": "resize,-1_to_1", "resize_size": "24"}
  # random_init_flags with an input of their own: one more baseline, untagged, first.
  given = base.replace("random_init = true", "random_init = true\nrandom_init_flags = "
                       "{ eval_preprocessing = \"resize,0_to_1\", resize_size = 32 }")
  grid = gridfile.load_grid(write_grid(configs, given + cells), known, base_dir=str(configs))
  names = [c.name for c in grid.cells if c.kind == "random_init"]
  assert names[0] == "random_init-resnet50_v2-w1" and len(names) == 4
  assert grid.cell(names[0]).eval_flags["eval_preprocessing"] == "resize,0_to_1"
  assert grid.cell("rotation-resnet50_v2-w1").baseline == "random_init-resnet50_v2-w1-input2"
  # Sizes without a spec: ambiguous, refused.
  bad = base.replace("random_init = true",
                     "random_init = true\nrandom_init_flags = { resize_size = 32 }")
  with pytest.raises(GridError, match=r"random_init_flags: resize_size without "
                     "eval_preprocessing: each baseline is evaluated on the input of its"):
    gridfile.load_grid(write_grid(configs, bad + cells), known, base_dir=str(configs))


def test_inputs_alike_to_the_cached_probes_share_a_baseline(configs, known):
  """Specs that differ only in ops that act in training alone (flip_lr; to_gray below
  probability 1) give the cached probes the same input, so one baseline; not so on the fly."""
  base = GRID.split("[[cells]]")[0].replace("supervised = true", "supervised = false")
  cells = """
      [[cells]]
      method = ["rotation", "supervised"]
      flags = { filters_factor = 1, preprocessing = "resize,flip_lr,-1_to_1,rotate" }
      [[cells]]
      method = "supervised"
      flags = { filters_factor = 1 }
      tag = "plain"
      [[cells]]
      method = "rotation"
      flags = { filters_factor = 1, preprocessing = "to_gray,resize,-1_to_1,rotate", \
                grayscale_probability = 1.0 }
      tag = "grey"
      """
  pairs = lambda g: {c.name: c.baseline for c in g.cells if c.kind != "random_init"}
  grid = gridfile.load_grid(write_grid(configs, base + cells), known, base_dir=str(configs))
  assert pairs(grid) == {
      "rotation-resnet50_v2-w1": "random_init-resnet50_v2-w1",
      "supervised-resnet50_v2-w1": "random_init-resnet50_v2-w1",
      "supervised-resnet50_v2-w1-plain": "random_init-resnet50_v2-w1",  # resize,-1_to_1
      "rotation-resnet50_v2-w1-grey": "random_init-resnet50_v2-w1-input2"}  # Grey at test.
  assert grid.cell("random_init-resnet50_v2-w1").eval_flags["eval_preprocessing"] == (
      "resize,flip_lr,-1_to_1")
  # On the fly, the probes train on flipped images: the plain cell gets a baseline of its own.
  fly = base.replace('train_split = "train[:100]"',
                     'train_split = "train[:100]"\non_the_fly = true')
  grid = gridfile.load_grid(write_grid(configs, fly + cells), known, base_dir=str(configs))
  assert pairs(grid)["supervised-resnet50_v2-w1-plain"] == "random_init-resnet50_v2-w1-input2"
  assert grid.cell("random_init-resnet50_v2-w1-input2").eval_flags["eval_preprocessing"] == (
      "resize,-1_to_1")


def test_other_axes_and_tags_make_names(configs, known):
  path = write_grid(configs, """
      [defaults]
      dataset = "toy"
      [[cells]]
      method = ["rotation", "supervised"]
      axes = { lr = [0.1, 0.03], last_relu = [true, false] }
      [[cells]]
      method = "rotation"
      tag = "long"
      flags = { epochs = 30 }
      [[cells]]
      method = "random_init"
      axes = { architecture = ["vgg19"] }
      flags = { eval_preprocessing = "resize,-1_to_1" }
      """)
  grid = gridfile.load_grid(path, known, base_dir=str(configs))
  assert "rotation-resnet50_v2-w4-lr0.03-nolast_relu" in grid.names()
  assert "supervised-resnet50_v2-w4-lr0.1-last_relu" in grid.names()
  assert "rotation-resnet50_v2-w4-long" in grid.names()
  assert "random_init-vgg19-w8" in grid.names()  # The standard width of VGG19.
  assert len(grid.names()) == len(set(grid.names())) == 10


def test_a_vits_patch_size_is_its_variant_in_names_and_baselines(configs, known):
  """Like ResNet's mode, a ViT's patch size names its cells and its random-init baselines, each
  built with the patch size of the cells it is compared with."""
  path = write_grid(configs, """
      [defaults]
      dataset = "toy"
      [evaluation]
      flagfile = "configs/evaluation/toy.flags"
      [baselines]
      random_init = true
      [[cells]]
      method = "rotation"
      axes = { vit_patch_size = [4, 8] }
      flags = { architecture = "vit", filters_factor = 3 }
      """)
  grid = gridfile.load_grid(path, known, base_dir=str(configs))
  assert grid.names() == ["rotation-vit_p4-w3", "rotation-vit_p8-w3", "random_init-vit_p4-w3",
                          "random_init-vit_p8-w3"]
  for size in (4, 8):
    assert grid.cell(f"rotation-vit_p{size}-w3").pretext_flags["vit_patch_size"] == str(size)
    base = grid.cell(f"random_init-vit_p{size}-w3")
    assert base.eval_flags["vit_patch_size"] == str(size) and "mode" not in base.eval_flags
    assert grid.cell(f"rotation-vit_p{size}-w3").baseline == base.name


def test_an_image_folder_grid_starts_from_the_embedded_flagfiles(tmp_path, known):
  """dataset = "folder:<root>" has no configs/<method>/<dataset>.flags: the cells take
  configs/<method>/shapes.flags, with the folder as their dataset; a flagfile given wins."""
  path = write_grid(tmp_path, """
      [defaults]
      dataset = "folder:/data/photos"
      [evaluation]
      flagfile = "configs/evaluation/shapes.flags"
      [baselines]
      random_init = true
      [[cells]]
      method = ["rotation", "jigsaw"]
      [[cells]]
      method = "exemplar"
      flagfile = "configs/exemplar/imagenet.flags"
      """)
  grid = gridfile.load_grid(path, known)
  rotation = grid.cell("rotation-resnet50_v2-w1").pretext_flags
  embedded = flags_lib.read_flagfile("configs/rotation/shapes.flags", known, REPO_ROOT)
  assert {k: v for k, v in rotation.items() if k != "dataset"} == dict(
      {k: v for k, v in embedded.items() if k != "dataset"}, run_eval=True)
  assert rotation["dataset"] == "folder:/data/photos"
  assert rotation["preprocessing"] == "resize,flip_lr,-1_to_1,rotate"
  assert grid.cell("jigsaw-resnet50_v2-w1").pretext_flags["preprocessing"].endswith(
      "crop_patches,standardization")
  assert grid.cell("exemplar-resnet50_v1-w12").pretext_flags["dataset"] == "folder:/data/photos"
  assert grid.cell("random_init-resnet50_v2-w1").eval_flags["dataset"] == "folder:/data/photos"


@pytest.mark.parametrize("text, message", [
    ("[defualts]\ndataset = 'toy'\n", r"grid.toml: top level: unknown key 'defualts' \(did you "
     r"mean 'defaults'\?\); valid keys: grid, defaults"),
    ("[[cells]]\nmethod = 'rotation'\nflag = { lr = 1 }\n",
     r"grid.toml: \[\[cells\]\] #1 \(method 'rotation'\): unknown key 'flag' \(did you mean "
     r"'flags'\?\)"),
    ("[[cells]]\nmethod = 'rotation'\n[[cells]]\nmethod = 'rotation'\nflags = { epoch = 1 }\n",
     r"grid.toml: \[\[cells\]\] #2 \(method 'rotation'\), flags: unknown flag 'epoch' \(did you "
     r"mean 'epochs'\?\)"),
    ("[[cells]]\nmethod = 'rotation'\naxes = { mode = ['v1', 'v3'] }\n",
     r"#1 \(method 'rotation'\), axes: mode = 'v3' is not valid; choices: v1, v2"),
    ("[[cells]]\nmethod = 'rotation'\naxes = { architecture = ['resnet50', 'vgg16'] }\n",
     r"#1 \(method 'rotation'\), axes: architecture = 'vgg16' is not valid; choices: resnet50, "
     r"revnet50, vgg19, vit$"),
    ("[[cells]]\nmethod = 'rotation'\naxes = { filters_factor = 2 }\n",
     r"axes: filters_factor = 2: an axis is a non-empty list"),
    ("[[cells]]\nmethod = 'jigsaw'\n",
     r"#1 \(method 'jigsaw'\): flagfile configs/jigsaw/toy.flags not found .*methods with a "
     r"flagfile configs/<method>/toy.flags: rotation, supervised. Give the cells a flagfile "
     r"\(\[pretext\] flagfile = .*an image folder \(dataset \"folder:<root>\"\) takes "
     r"configs/<method>/shapes.flags"),
    ("[[cells]]\nmethod = 'rotation'\nflags = { epochs = 'many' }\n",
     r"epochs = 'many' is not a float"),
    ("[[cells]]\nmethod = 'rotation'\nflags = { workdir = '/tmp/x' }\n",
     r"flag 'workdir' is set by the grid runner"),
    ("[[cells]]\nmethod = 'rotation'\n[[cells]]\nmethod = 'rotation'\n",
     r"#2 \(method 'rotation'\): this entry and \[\[cells\]\] #1 \(method 'rotation'\) give the "
     r"same cell name 'rotation-resnet50_v2-w4'.*tag"),
    ("[[cells]]\nmethod = 'random_init'\n",
     r"#1 \(method 'random_init'\): the random-init baseline .* set eval_preprocessing"),
    ("[baselines]\nrandom_init = 'yes'\n[[cells]]\nmethod = 'rotation'\n",
     r"\[baselines\]: random_init = 'yes': use true or false"),
    ("[[cells]]\nmethod = 'rotation'\nexclude = [{ width = 2 }]\n",
     r"exclude: 'width' is neither an axis nor a flag of this entry"),
    ("[evaluation]\ntask = 'probe_series'\n[[cells]]\nmethod = 'rotation'\n",
     r"#1 \(method 'rotation'\): evaluation 'linear_eval' \(task = \"probe_series\"\) probes "
     r"the checkpoints .* set eval_every_epochs"),
    ("[[evaluations]]\nname = 'exports'\n[[cells]]\nmethod = 'rotation'\n",
     r"name = 'exports': a directory name .*kept_checkpoints"),
    ("[defaults]\ndataset = 'toy'\n", r"no \[\[cells\]\]"),
    ("[[cells]\nmethod = 'rotation'\n", r"grid.toml: not valid TOML"),
])
def test_grid_file_errors_name_file_cell_and_key(configs, known, text, message):
  if not text.startswith("[defaults]") and not text.startswith("[defualts]"):
    text = "[defaults]\ndataset = 'toy'\n" + text
  path = write_grid(configs, text)
  with pytest.raises(GridError, match=message):
    gridfile.load_grid(path, known, base_dir=str(configs))


def test_flagfile_errors(configs, known):
  (configs / "configs" / "rotation" / "toy.flags").write_text("--task=rotation\n--mode=v7\n")
  path = write_grid(configs, "[defaults]\ndataset = 'toy'\n[[cells]]\nmethod = 'rotation'\n")
  with pytest.raises(GridError, match=r"#1 \(method 'rotation'\), flagfile "
                                      r"configs/rotation/toy.flags: mode = 'v7' is not valid"):
    gridfile.load_grid(path, known, base_dir=str(configs))
  (configs / "configs" / "rotation" / "toy.flags").write_text("--task=rotation\nepochs 3\n")
  with pytest.raises(GridError, match=r"toy.flags:2: 'epochs 3' is not a flag"):
    gridfile.load_grid(path, known, base_dir=str(configs))


def test_several_evaluations(configs, known, fake_runner, tmp_path):
  text = GRID.replace("""[evaluation]
    flagfile = "configs/evaluation/toy.flags"
    train_split = "train[:100]"
    """, """[[evaluations]]
    name = "toy_linear"
    flagfile = "configs/evaluation/toy.flags"
    [[evaluations]]
    name = "other_mlp"
    flagfile = "configs/evaluation/toy.flags"
    dataset = "other"
    eval_model = "mlp"
    """)
  grid = gridfile.load_grid(write_grid(configs, text), known, base_dir=str(configs))
  cell = grid.cell("rotation-vgg19-w1")
  assert list(cell.evaluations) == ["toy_linear", "other_mlp"]
  assert cell.evaluations["other_mlp"]["dataset"] == "other"
  assert cell.evaluations["other_mlp"]["epochs"] == "5"  # The cell's eval_flags: every one.
  assert cell.evaluations["toy_linear"]["dataset"] == "toy"
  assert [s for s, _ in grid.cell("random_init-vgg19-w1").steps("/r")] == [
      "eval:toy_linear", "eval:other_mlp"]
  root = tmp_path / "root"
  runner, _ = fake_runner(root)
  statuses = runner.run([cell, grid.cell("random_init-vgg19-w1")])
  assert all(s["status"] == "done" for s in statuses.values())
  for name in ("toy_linear", "other_mlp"):
    assert (root / "rotation-vgg19-w1" / name / "results.json").exists()
    assert (root / "random_init-vgg19-w1" / name / "results.json").exists()
  with pytest.raises(GridError, match=r"\[\[evaluations\]\] #2: name 'toy_linear' is used twice"):
    gridfile.load_grid(write_grid(configs, text.replace('"other_mlp"', '"toy_linear"')), known,
                       base_dir=str(configs))
  with pytest.raises(GridError, match=r"\[\[evaluations\]\] #1: no name"):
    gridfile.load_grid(write_grid(configs, text.replace('name = "toy_linear"', '')), known,
                       base_dir=str(configs))
  # Fine-tuning is an evaluation too; a pretext task is not.
  fine = text.replace('eval_model = "mlp"', 'task = "fine_tune"\n    train_fraction = 0.1')
  grid = gridfile.load_grid(write_grid(configs, fine), known, base_dir=str(configs))
  assert grid.cell("random_init-vgg19-w1").evaluations["other_mlp"]["task"] == "fine_tune"
  steps = dict(grid.cell("rotation-vgg19-w1").steps("/r"))
  assert steps["eval:other_mlp"]["task"] == "fine_tune"
  assert steps["eval:other_mlp"]["hub_module"] == "/r/export"  # The cell's workdir is /r here.
  with pytest.raises(GridError, match=r"task = 'rotation': an evaluation runs one of "
                                      r"linear_eval, fine_tune"):
    gridfile.load_grid(write_grid(configs, text.replace('eval_model = "mlp"',
                                                        'task = "rotation"')),
                       known, base_dir=str(configs))


def test_select_cells(configs, known):
  grid = gridfile.load_grid(write_grid(configs, GRID), known, base_dir=str(configs))
  names = lambda cells: [c.name for c in cells]
  assert names(select_cells(grid, ["rotation-resnet50*", "random_init-vgg19-w1"])) == [
      "rotation-resnet50_v2-w1", "rotation-resnet50_v2-w2", "random_init-vgg19-w1"]
  assert names(select_cells(grid, methods=["supervised"],
                                     architectures=["vgg19"])) == ["supervised-vgg19-w1"]
  with pytest.raises(GridError, match=r"--cells: 'rotaton-\*' matches no cell.*cells: rotation-"):
    select_cells(grid, ["rotaton-*"])
  with pytest.raises(GridError, match=r"--only_method: 'jigsaw' is not in .*choices: "
                                      r"random_init, rotation, supervised"):
    select_cells(grid, methods=["jigsaw"])


# ------------------------------------------------------------------------------------- runner
@pytest.fixture
def fake_runner(tmp_path):
  script = tmp_path / "fake_step.py"
  script.write_text(FAKE_STEP)

  def make(root, jobs=1, fail_fast=False):
    lines = []
    executor = local.LocalExecutor([sys.executable, str(script)], jobs=jobs, tty=False)
    runner = runner_lib.GridRunner(str(root), executor, grid_name="toy", print_fn=lines.append,
                                   fail_fast=fail_fast)
    return runner, lines
  return make


def _calls(root, name):
  with open(os.path.join(root, name, "calls.txt")) as f:
    return [json.loads(line) for line in f]


def _task(argv):
  return next(a.split("=", 1)[1] for a in argv if a.startswith("--task="))


def test_runner_runs_skips_and_resumes(configs, known, fake_runner, tmp_path):
  grid = gridfile.load_grid(write_grid(configs, GRID), known, base_dir=str(configs))
  cells = select_cells(grid, ["rotation-vgg19-w1", "random_init-vgg19-w1"])
  root = tmp_path / "root"
  runner, lines = fake_runner(root)
  statuses = runner.run(cells)
  assert {n: s["status"] for n, s in statuses.items()} == {
      "rotation-vgg19-w1": "done", "random_init-vgg19-w1": "done"}
  assert [_task(a) for a in _calls(root, "rotation-vgg19-w1")] == ["rotation", "linear_eval"]
  assert [_task(a) for a in _calls(root, "random_init-vgg19-w1")] == ["linear_eval"]
  log = (root / "rotation-vgg19-w1" / "log.txt").read_text()
  assert "step pretext: " in log and "step 1/2 loss" in log and "exit 0 after" in log
  status = json.loads((root / "grid_status.json").read_text())
  assert status["summary"]["total"] == 2 and status["summary"]["done"] == 2
  assert any(l.startswith("[1/2] rotation-vgg19-w1: starting") for l in lines)
  assert any("[2/2] random_init-vgg19-w1: starting" in l and "ETA" in l for l in lines)
  assert any("best layer block4: top-1 50.0%" in l for l in lines)
  assert "1 to run" not in lines[0] and "2 to run" in lines[0]

  # The same grid again: nothing runs.
  runner, lines = fake_runner(root)
  statuses = runner.run(cells)
  assert all(s["status"] == "done" and s["reused"] for s in statuses.values())
  assert len(_calls(root, "rotation-vgg19-w1")) == 2
  assert "2 already done, 0 to run" in lines[0]
  # A done cell paired with another baseline (run by another grid file in this root, or copied
  # from another root): reused as it is, and paired as this grid pairs it.
  state_path = root / "rotation-vgg19-w1" / "cell.json"
  state = json.loads(state_path.read_text())
  assert state["baseline"] == "random_init-vgg19-w1"
  state_path.write_text(json.dumps(dict(state, baseline="random_init-vgg19-w1-input2")))
  runner, lines = fake_runner(root)
  runner.run(cells)
  assert "2 already done, 0 to run" in lines[0] and len(_calls(root, "rotation-vgg19-w1")) == 2
  assert json.loads(state_path.read_text()) == state  # The rest as the run wrote it.
  # Also with the data elsewhere (another machine): data_dir does not change results.
  moved = gridfile.load_grid(write_grid(configs, GRID), known, base_dir=str(configs),
                             overrides={"data_dir": "/elsewhere"})
  assert moved.cell("rotation-vgg19-w1").eval_flags["data_dir"] == "/elsewhere"
  runner, lines = fake_runner(root)
  runner.run(select_cells(moved, ["rotation-vgg19-w1", "random_init-vgg19-w1"]))
  assert "2 already done, 0 to run" in lines[0]

  # Results deleted: only the evaluation runs again (the export is still there).
  os.remove(root / "rotation-vgg19-w1" / "linear_eval" / "results.json")
  runner, _ = fake_runner(root)
  runner.run(cells)
  calls = _calls(root, "rotation-vgg19-w1")
  assert [_task(a) for a in calls] == ["rotation", "linear_eval", "linear_eval"]
  assert "--force" not in calls[-1]

  # Changed evaluation settings: its old results move aside, the pretext step is kept.
  cell = root / "rotation-vgg19-w1"
  grid2 = gridfile.load_grid(write_grid(configs, GRID.replace("eval_flags = { epochs = 5 }",
                                                              "eval_flags = { epochs = 4 }")),
                             known, base_dir=str(configs))
  assert "changed: evaluation linear_eval re-runs" in runner_lib.describe(
      select_cells(grid2, ["rotation-vgg19-w1"]), str(root))
  runner, _ = fake_runner(root)
  runner.run(select_cells(grid2, ["rotation-vgg19-w1"]))
  calls = _calls(root, "rotation-vgg19-w1")
  assert [_task(a) for a in calls[3:]] == ["linear_eval"] and "--epochs=4" in calls[3]
  (aside,) = os.listdir(cell / "replaced")
  assert os.listdir(cell / "replaced" / aside) == ["linear_eval"]
  old = json.loads((cell / "replaced" / aside / "linear_eval" / "results.json").read_text())
  assert old["config"]["epochs"] == "5"  # Kept whole, under the settings that made it.

  # Changed pretext settings: everything the cell made moves aside (the logs stay) and it
  # trains from step 0; nothing is forced, nothing of the old run is read.
  grid3 = gridfile.load_grid(write_grid(configs, GRID.replace("epochs = 1", "epochs = 2")),
                             known, base_dir=str(configs))
  listed = runner_lib.describe(select_cells(grid3, ["rotation-vgg19-w1"]), str(root))
  assert "changed: epochs 1 -> 2; retrains from step 0" in listed, listed
  runner, _ = fake_runner(root)
  runner.run(select_cells(grid3, ["rotation-vgg19-w1"]))
  calls = _calls(root, "rotation-vgg19-w1")
  assert [_task(a) for a in calls] == ["rotation", "linear_eval"]
  assert "--epochs=2" in calls[0] and not any("--force" in a for a in calls)
  (second,) = set(os.listdir(cell / "replaced")) - {aside}
  assert sorted(os.listdir(cell / "replaced" / second)) == [
      "calls.txt", "cell.json", "export", "linear_eval", "pretext_results.json", "times.txt"]
  state = json.loads((cell / "replaced" / second / "cell.json").read_text())
  assert state["pretext_flags"]["epochs"] == "1"
  assert json.loads((cell / "cell.json").read_text())["pretext_flags"]["epochs"] == "2"
  assert "changed: epochs 1 -> 2; retrains from step 0: the outputs of pretext" in (
      cell / "log.txt").read_text()
  assert grid_state.cell_done(grid3.cell("rotation-vgg19-w1"), str(cell))


def test_a_root_written_before_the_grid_package_is_skipped_and_resumed(configs, known,
                                                                     fake_runner, tmp_path):
  """tests/data/root_18fe8a7 holds two cells of GRID written by the grid runner of commit
  18fe8a7 (core/grid.py, before grid/) with FAKE_STEP. The random-init cell is done as it is;
  the trained cell's evaluation runs again, since its results do not record which export they
  measured (their fingerprint). With the evaluation's settings changed, only the evaluation
  runs again."""
  root = tmp_path / "root"
  shutil.copytree(os.path.join(REPO_ROOT, "tests", "data", "root_18fe8a7"), root)
  names = ["rotation-vgg19-w1", "random_init-vgg19-w1"]
  # GRID as it was then: its baselines on an input of their own.
  then = GRID.replace("random_init = true\n", "random_init = true\nrandom_init_flags = { "
                      "eval_preprocessing = \"resize,-1_to_1\", resize_size = 32 }\n")
  grid = gridfile.load_grid(write_grid(configs, then), known, base_dir=str(configs))
  runner, lines = fake_runner(root)
  statuses = runner.run(select_cells(grid, names))
  assert "1 already done, 1 to run" in lines[0]
  assert all(statuses[n]["status"] == "done" for n in names)
  assert statuses["random_init-vgg19-w1"]["reused"]
  assert [_task(a) for a in _calls(root, "rotation-vgg19-w1")] == [
      "rotation", "linear_eval", "linear_eval"]
  changed = gridfile.load_grid(write_grid(configs, then.replace("eval_flags = { epochs = 5 }",
                                                                "eval_flags = { epochs = 6 }")),
                               known, base_dir=str(configs))
  runner, lines = fake_runner(root)
  runner.run(select_cells(changed, names))
  calls = _calls(root, "rotation-vgg19-w1")
  assert [_task(a) for a in calls] == ["rotation", "linear_eval", "linear_eval", "linear_eval"]
  assert "--epochs=6" in calls[-1]
  assert len(_calls(root, "random_init-vgg19-w1")) == 1  # Its evaluation did not change.


def test_failing_cell_is_recorded_and_the_rest_go_on(configs, known, fake_runner, tmp_path,
                                                     monkeypatch):
  grid = gridfile.load_grid(write_grid(configs, GRID), known, base_dir=str(configs))
  cells = select_cells(grid, ["rotation-resnet50_v2-w1", "rotation-vgg19-w1",
                                       "random_init-vgg19-w1"])
  root = tmp_path / "root"
  # The evaluation of one cell fails: its pretext step is done, and resumed from there.
  monkeypatch.setenv("FAKE_FAIL", "rotation-resnet50_v2-w1:linear_eval")
  runner, lines = fake_runner(root)
  statuses = runner.run(cells)
  failed = statuses["rotation-resnet50_v2-w1"]
  assert failed["status"] == "failed" and failed["failed_step"] == "eval:linear_eval"
  assert failed["exit_code"] == 3 and failed["error"] == "error: cell broken on purpose"
  assert any("Traceback" in l for l in failed["log_tail"])
  assert statuses["rotation-vgg19-w1"]["status"] == "done"
  assert statuses["random_init-vgg19-w1"]["status"] == "done"
  status = json.loads((root / "grid_status.json").read_text())
  assert status["cells"]["rotation-resnet50_v2-w1"]["status"] == "failed"
  assert status["summary"] == {"total": 3, "done": 2, "failed": 1}
  assert any("rotation-resnet50_v2-w1: FAILED in step eval:linear_eval (exit 3): error: cell "
             "broken" in l for l in lines)
  assert lines[-1].endswith("2/3 done, 1 failed")
  assert "failed (error: cell broken on purpose)" in runner_lib.describe(cells, str(root))

  monkeypatch.delenv("FAKE_FAIL")
  runner, _ = fake_runner(root)
  statuses = runner.run(cells)
  assert all(s["status"] == "done" for s in statuses.values())
  calls = _calls(root, "rotation-resnet50_v2-w1")
  assert [_task(a) for a in calls] == ["rotation", "linear_eval", "linear_eval"]
  assert "--force" not in calls[-1]  # The evaluation itself tells an export it has not seen.
  status = json.loads((root / "grid_status.json").read_text())
  assert "error" not in status["cells"]["rotation-resnet50_v2-w1"]


def test_two_runners_on_one_root_keep_each_others_status(configs, known, fake_runner, tmp_path):
  grid = gridfile.load_grid(write_grid(configs, GRID), known, base_dir=str(configs))
  root = tmp_path / "root"
  first, _ = fake_runner(root)   # Both start before either has written anything.
  second, _ = fake_runner(root)
  second.run(select_cells(grid, ["random_init-vgg19-w1"]))
  first.run(select_cells(grid, ["random_init-revnet50-w1"]))
  status = json.loads((root / "grid_status.json").read_text())
  assert sorted(status["cells"]) == ["random_init-revnet50-w1", "random_init-vgg19-w1"]
  assert status["summary"] == {"total": 2, "done": 2}


def _interrupt_once_started(run, pid_files) -> float:
  """Calls run(), sends it a KeyboardInterrupt (as Ctrl-C would) once every fake step of
  `pid_files` has started, checks that run() raises it; returns the seconds it took."""

  def interrupt(signum, frame):
    if not all(p.exists() for p in pid_files):  # Not started yet: try again a little later.
      signal.setitimer(signal.ITIMER_REAL, 0.2)
      return
    raise KeyboardInterrupt

  previous = signal.signal(signal.SIGALRM, interrupt)
  try:
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    start = time.time()
    with pytest.raises(KeyboardInterrupt):
      run()
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)
  return time.time() - start


def test_interrupt_stops_the_step_and_is_recorded(configs, known, fake_runner, tmp_path,
                                                  monkeypatch):
  grid = gridfile.load_grid(write_grid(configs, GRID), known, base_dir=str(configs))
  cells = select_cells(grid, ["rotation-vgg19-w1"])
  root = tmp_path / "root"
  monkeypatch.setenv("FAKE_SLEEP", "60")
  runner, lines = fake_runner(root)
  pid_file = root / "rotation-vgg19-w1" / "pid"
  assert _interrupt_once_started(lambda: runner.run(cells), [pid_file]) < 30
  pid = int(pid_file.read_text())
  with pytest.raises(ProcessLookupError):
    os.kill(pid, 0)  # The step's process is gone.
  status = json.loads((root / "grid_status.json").read_text())
  assert status["cells"]["rotation-vgg19-w1"]["status"] == "interrupted"
  assert "interrupted" in (root / "rotation-vgg19-w1" / "log.txt").read_text()
  assert any("interrupted; run the same command again" in l for l in lines)
  # The next run resumes: the step runs again and the cell completes.
  monkeypatch.delenv("FAKE_SLEEP")
  runner, _ = fake_runner(root)
  assert runner.run(cells)["rotation-vgg19-w1"]["status"] == "done"


def test_jobs_run_cells_side_by_side_and_stop_together(configs, known, fake_runner, tmp_path,
                                                       monkeypatch):
  grid = gridfile.load_grid(write_grid(configs, GRID), known, base_dir=str(configs))
  names = ["random_init-vgg19-w1", "random_init-revnet50-w1", "random_init-resnet50_v2-w1"]
  cells = select_cells(grid, names)
  root = tmp_path / "root"
  monkeypatch.setenv("FAKE_SLEEP", "1")
  runner, lines = fake_runner(root, jobs=2)
  statuses = runner.run(cells)
  assert all(statuses[n]["status"] == "done" for n in names)
  assert "3 to run, 2 at a time" in lines[0] and lines[-1].endswith("3/3 done, 0 failed")
  times = {n: json.loads((root / n / "times.txt").read_text()) for n in names}
  threads = str(max(1, (os.cpu_count() or 1) // 2))
  assert all(t[2] == threads for t in times.values())
  # Two ran at once; the third started when one of them had finished.
  (s1, e1, _), (s2, e2, _), (s3, _, _) = sorted(times.values())
  assert s2 < e1 and s1 < e2
  assert s3 >= min(e1, e2) - 0.1
  status = json.loads((root / "grid_status.json").read_text())
  assert status["summary"] == {"total": 3, "done": 3} and status["running"] == []

  # An interrupt stops both running steps; both cells are recorded as interrupted.
  for n in names[:2]:
    os.remove(root / n / "linear_eval" / "results.json")
    os.remove(root / n / "pid")
  monkeypatch.setenv("FAKE_SLEEP", "60")
  runner, lines = fake_runner(root, jobs=2)
  pid_files = [root / n / "pid" for n in names[:2]]
  assert _interrupt_once_started(lambda: runner.run(cells), pid_files) < 30
  status = json.loads((root / "grid_status.json").read_text())
  for n in names[:2]:
    with pytest.raises(ProcessLookupError):
      os.kill(int((root / n / "pid").read_text()), 0)
    assert status["cells"][n]["status"] == "interrupted"
  assert status["cells"][names[2]]["status"] == "done"
  with pytest.raises(ValueError, match="jobs must be a positive integer, got 0"):
    local.LocalExecutor([sys.executable], jobs=0)


def _benchmark(*args, env=None):
  return subprocess.run([sys.executable, "benchmark.py", *args], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=600, env=env)


def test_benchmark_cli_list_errors_and_exit_status(configs, tmp_path):
  flagfile = str(configs / "configs" / "{method}" / "toy.flags")
  text = GRID.replace('flagfile = "configs/evaluation/toy.flags"',
                      f'flagfile = "{configs}/configs/evaluation/toy.flags"')
  text = text.replace('method = "rotation"\n', f'method = "rotation"\nflagfile = "{flagfile}"\n')
  text = text.replace("supervised = true", f'supervised = true\nsupervised_flagfile = "{flagfile}"')
  path = write_grid(tmp_path, text)
  root = str(tmp_path / "root")
  proc = _benchmark(f"--grid={path}", f"--root={root}", "--list", "--show_commands",
                    "--cells=rotation-vgg19*,random_init-*")
  assert proc.returncode == 0, proc.stderr
  assert "5 of 12 cell(s)" in proc.stdout
  assert re.search(r"\nrotation-vgg19-w1 +pretext +pending\n", proc.stdout), proc.stdout
  assert "--hub_module=random_init" in proc.stdout and "--architecture=vgg19" in proc.stdout
  # A typo: exit status 2, one line naming the file, the cell and the key.
  bad = write_grid(tmp_path, text.replace("eval_flags = { epochs = 5 }",
                                          "eval_flags = { epoks = 5 }"), "bad.toml")
  proc = _benchmark(f"--grid={bad}", f"--root={root}", "--list")
  assert proc.returncode == 2
  assert proc.stderr.strip().startswith(f"error: {bad}: [[cells]] #2 (method 'rotation'), "
                                        "eval_flags: unknown flag 'epoks' (did you mean "
                                        "'epochs'?)"), proc.stderr
  proc = _benchmark(f"--grid={path}", f"--root={root}", "--cells=nope")
  assert proc.returncode == 2 and "--cells: 'nope' matches no cell" in proc.stderr


def test_probes_over_training_in_a_grid(configs, known, tmp_path):
  path = write_grid(configs, textwrap.dedent("""
      [defaults]
      dataset = "toy"
      [pretext]
      eval_every_epochs = 0.5
      [evaluation]
      task = "probe_series"
      [[cells]]
      method = "rotation"
      """))
  cell = gridfile.load_grid(path, known, base_dir=str(configs)).cells[0]
  assert float(cell.pretext_flags["eval_every_epochs"]) == 0.5
  assert cell.evaluations["linear_eval"]["task"] == "probe_series"
  # Its step is done when results.json of the series is there (the last checkpoint's).
  workdir = str(tmp_path / cell.name)
  os.makedirs(os.path.join(workdir, "linear_eval"))
  with open(os.path.join(workdir, "linear_eval", "results.json"), "w") as f:
    json.dump({"layers": {}, "config": {}, "evaluation": "probe_series"}, f)
  state = {"steps": {"eval:linear_eval": {"done": True,
                                          "fingerprint": cell.fingerprints()["eval:linear_eval"]}}}
  assert grid_state.step_done(cell, workdir, "eval:linear_eval", state)


def test_a_cka_evaluation_is_done_when_its_matrix_is_there(configs, known, tmp_path):
  path = write_grid(configs, textwrap.dedent("""
      [defaults]
      dataset = "toy"
      [evaluation]
      task = "cka"
      cka_other = "random_init"
      [[cells]]
      method = "rotation"
      """))
  cell = gridfile.load_grid(path, known, base_dir=str(configs)).cells[0]
  workdir = str(tmp_path / cell.name)
  state = {"steps": {"eval:linear_eval": {"done": True,
                                          "fingerprint": cell.fingerprints()["eval:linear_eval"]}}}
  os.makedirs(os.path.join(workdir, "linear_eval"))
  assert not grid_state.step_done(cell, workdir, "eval:linear_eval", state)
  os.makedirs(os.path.join(workdir, "export", "variables"))
  for name, text in (("saved_model.pb", "graph"), ("variables/variables.index", "weights")):
    with open(os.path.join(workdir, "export", name), "w") as f:
      f.write(text)
  fingerprint = files.export_fingerprint(os.path.join(workdir, "export"))
  with open(os.path.join(workdir, "linear_eval", "cka.json"), "w") as f:
    json.dump({"matrix": [[1.0]], "config": {"cka_other": "random_init"},
               "fingerprints": [fingerprint, "random_init-0"]}, f)
  assert grid_state.step_done(cell, workdir, "eval:linear_eval", state)
  with open(os.path.join(workdir, "export", "variables", "variables.index"), "w") as f:
    f.write("other weights")  # Another export since: its matrix is not of this one.
  assert not grid_state.step_done(cell, workdir, "eval:linear_eval", state)
  with open(os.path.join(workdir, "linear_eval", "cka.json"), "w") as f:
    json.dump({"matrix": [[1.0]], "config": {"cka_other": "/another/export"},
               "fingerprints": [files.export_fingerprint(os.path.join(workdir, "export")),
                                "x"]}, f)
  assert not grid_state.step_done(cell, workdir, "eval:linear_eval", state)


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(REPO_ROOT, "configs", "grids"))))
def test_every_shipped_grid_parses_and_pairs_each_trained_cell_with_a_baseline(name, known):
  """configs/grids/*.toml with the real flags; each has random-init baselines, one for every
  trained cell's architecture and width."""
  grid = gridfile.load_grid(os.path.join(REPO_ROOT, "configs", "grids", name), known)
  names = set(grid.names())
  for cell in grid.cells:
    if cell.pretext_flags is not None:
      assert cell.baseline in names, cell.name
      base = grid.cell(cell.baseline)
      assert (base.architecture, base.mode, base.width) == (cell.architecture, cell.mode,
                                                            cell.width)


def test_the_paper_grid_probes_the_patch_methods_on_patches_of_their_export_size(known):
  """imagenet_paper.toml: 87 trained cells and 19 random-init baselines on whole images (one of
  them on colorization's lightness) and 14 on the patch methods' patches (106, as its header says;
  the ViTs' by their position embeddings). Each patch method's cell is probed on
  3x3 patches of the size its export takes, with the baseline of its architecture and width on
  the same patches; the other cells on whole 224x224 images."""
  from datasets.preprocess import patch_geometry  # The grid layer itself never imports TF.
  grid = gridfile.load_grid(os.path.join(REPO_ROOT, "configs", "grids", "imagenet_paper.toml"),
                            known)
  kinds = collections.Counter(
      (c.kind, c.name.endswith("-patches")) for c in grid.cells)
  assert len(grid.cells) == 106
  assert kinds[("random_init", True)] == 14 and kinds[("random_init", False)] == 19
  lightness = grid.cell(grid.cell("colorization-resnet50_v2-w4").baseline)
  assert lightness.evaluations["linear_eval"]["eval_preprocessing"] == (
      "resize_small,central_crop,lightness,-1_to_1")
  for cell in grid.cells:
    if cell.pretext_flags is None:
      continue
    flags = cell.evaluations["linear_eval"]
    base = grid.cell(cell.baseline).evaluations["linear_eval"]
    patches = cell.method in ("jigsaw", "relative_patch_location")
    assert specs.makes_patches(flags["eval_preprocessing"]) == patches, cell.name
    assert cell.baseline.endswith("-patches") == patches, cell.name
    for key in gridfile.INPUT_FLAGS + ("combine_patches", "pool_mode", "epochs", "lr"):
      assert base.get(key) == flags.get(key), (cell.name, key)
    if patches:
      pretext = cell.pretext_flags
      trained = patch_geometry(int(pretext["crop_size"]), int(pretext["crop_size"]),
                               int(pretext["splits_per_side"]), int(pretext["patch_jitter"]))
      probed = patch_geometry(int(flags["crop_size"]), int(flags["crop_size"]),
                              int(flags["splits_per_side"]), int(flags["patch_jitter"]))
      assert trained[2:] == probed[2:] == (64, 64), cell.name
    else:
      assert flags["crop_size"] == "224", cell.name


def test_a_patch_flagfile_must_cut_patches(tmp_path, known):
  path = tmp_path / "g.toml"
  path.write_text('[evaluation]\nflagfile = "configs/evaluation/shapes.flags"\n'
                  'patch_flagfile = "configs/evaluation/shapes.flags"\n'
                  '[[cells]]\nmethod = "jigsaw"\n')
  with pytest.raises(GridError, match="patch_flagfile .*cuts them .*crop_patches"):
    gridfile.load_grid(str(path), known)


def test_a_smoke_run_keeps_every_cell_and_setting_but_the_amount_of_work(known):
  """--smoke: the same cells (widths divided by the standard width in their names), the same
  image sizes, preprocessing, patches, precision and evaluation inputs; splits cut to their
  first images, small batches, one epoch with the flagfiles' schedules scaled to it."""
  path = os.path.join(REPO_ROOT, "configs", "grids", "imagenet_paper.toml")
  full, smoke = gridfile.load_grid(path, known), gridfile.load_grid(path, known, smoke=True)
  assert len(smoke.cells) == len(full.cells) == 106
  renamed = {c.name: s for c, s in zip(full.cells, smoke.cells)}
  assert renamed["rotation-resnet50_v2-w16"].name == "rotation-resnet50_v2-w4"
  assert renamed["jigsaw-vgg19-w16"].name == "jigsaw-vgg19-w2"
  assert renamed["random_init-resnet50_v1-w12-patches"].name == "random_init-resnet50_v1-w3-patches"
  kept = ("crop_size", "resize_size", "preprocessing", "splits_per_side", "patch_jitter",
          "precision", "lr")
  for cell, small in zip(full.cells, smoke.cells):
    if small.pretext_flags is not None:
      assert smoke.cell(small.baseline).name == renamed[cell.baseline].name
      flags = small.pretext_flags
      assert (flags["train_split"], flags["val_split"], flags["batch_size"], flags["epochs"]) == (
          "train[:16]", "validation[:16]", "8", "1")
      assert all(flags.get(k) == cell.pretext_flags.get(k) for k in kept), cell.name
      scale = 1 / float(cell.pretext_flags["epochs"])
      assert float(flags.get("warmup_epochs", 0)) == pytest.approx(
          float(cell.pretext_flags.get("warmup_epochs", 0)) * scale, rel=1e-4)
    probe = small.evaluations["linear_eval"]
    assert (probe["train_split"], probe["val_split"], probe["epochs"]) == (
        "train[:64]", "validation[:32]", "1")
    # Two head settings per layer, still chosen on a minival.
    assert (probe["probe_lrs"], probe["probe_weight_decays"]) == ("0.1", "0,1e-5"), cell.name
    for key in gridfile.INPUT_FLAGS + ("combine_patches", "pool_mode"):
      assert probe.get(key) == cell.evaluations["linear_eval"].get(key), (cell.name, key)
  semi = gridfile.load_grid(os.path.join(REPO_ROOT, "configs", "grids",
                                         "imagenet_semi_supervised.toml"), known, smoke=True)
  tune = semi.cell("rotation-resnet50_v1-w1").evaluations["fine_tune_1pct"]
  assert (tune["train_split"], tune["train_fraction"], tune["batch_size"]) == ("train", "0.01", "8")
  # A split given as its first examples keeps being cut from the start.
  shapes = gridfile.load_grid(os.path.join(REPO_ROOT, "configs", "grids", "shapes.toml"), known,
                              smoke=True)
  assert shapes.cells[0].pretext_flags["val_split"] == "test[:16]"


def test_a_baseline_has_its_trained_cells_backbone_settings(known):
  """shapes_vit.toml: MAE's ViT has fixed sine-cosine positions, the other ViT cells learned ones:
  each gets the random-init ViT built as it is, named by the setting; the ResNets their own. In
  a smoke run of the paper grid, ViT-S and ViT-B stay apart (1 and 2 heads)."""
  grid = gridfile.load_grid(os.path.join(REPO_ROOT, "configs", "grids", "shapes_vit.toml"), known)
  baselines = {c.name: c.baseline for c in grid.cells if c.pretext_flags is not None}
  assert baselines == {
      "rotation-vit_p4-w3": "random_init-vit_p4-w3",
      "simclr-vit_p4-w3": "random_init-vit_p4-w3",
      "dino-vit_p4-w3": "random_init-vit_p4-w3",
      "mae-vit_p4-w3": "random_init-vit_p4-w3-vit_position_embeddingsincos",
      "rotation-resnet50_v2-w2": "random_init-resnet50_v2-w2",
      "simclr-resnet50_v2-w2": "random_init-resnet50_v2-w2",
      "dino-resnet50_v2-w2": "random_init-resnet50_v2-w2",
      "dino-vit_p8-w3": "random_init-vit_p8-w3"}
  assert grid.cell("random_init-vit_p8-w3").evaluations["linear_eval"]["vit_patch_size"] == "8"
  assert grid.cell("mae-vit_p4-w3").pretext_flags["vit_position_embedding"] == "sincos"
  sincos = grid.cell(baselines["mae-vit_p4-w3"]).evaluations["linear_eval"]
  learned = grid.cell("random_init-vit_p4-w3").evaluations["linear_eval"]
  assert sincos["vit_position_embedding"] == "sincos"
  assert "vit_position_embedding" not in learned
  for flags in (sincos, learned):
    assert (flags["architecture"], flags["filters_factor"], flags["vit_patch_size"]) == (
        "vit", "3", "4")
  paper = os.path.join(REPO_ROOT, "configs", "grids", "imagenet_paper.toml")
  smoke = gridfile.load_grid(paper, known, smoke=True)
  names = [c.name for c in smoke.cells if c.architecture == "vit"]
  assert names == ["dino-vit_p16-w1", "dino-vit_p16-w2", "mae-vit_p16-w1", "mae-vit_p16-w2",
                   "random_init-vit_p16-w1", "random_init-vit_p16-w2",
                   "random_init-vit_p16-w1-vit_position_embeddingsincos",
                   "random_init-vit_p16-w2-vit_position_embeddingsincos"]


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(os.path.join(REPO_ROOT, "configs",
                                                                          "grids"))
                                        if n.endswith(".toml")))
def test_every_step_of_every_grid_file_has_a_schedule_that_fits_its_epochs(known, name):
  """Each step of each grid file, as run and as a smoke run (of as many cells), warms up and
  decays within its epochs: a smoke run scales the grid file's own schedule to its one epoch as
  it does a flagfile's (shapes.toml's supervised cell sets epochs 3 and a decay at 2.4)."""
  path = os.path.join(REPO_ROOT, "configs", "grids", name)
  grids = [gridfile.load_grid(path, known, smoke=smoke) for smoke in (False, True)]
  assert len(grids[0].cells) == len(grids[1].cells)
  for smoke, grid in zip((False, True), grids):
    for cell in grid.cells:
      for step, flags in [("pretext", cell.pretext_flags)] + list(cell.evaluations.items()):
        if not flags or "epochs" not in flags:
          continue
        epochs = float(flags["epochs"])
        decays = [float(d) for d in str(flags.get("decay_epochs") or "").split(",") if d]
        assert float(flags.get("warmup_epochs") or 0) <= epochs, (cell.name, step, smoke)
        assert all(d < epochs for d in decays), (cell.name, step, smoke, decays)
  if name == "shapes_full.toml":  # Widths below the standard one stay apart.
    assert [c.name for c in grids[1].cells] == [c.name for c in grids[0].cells]
  if name == "shapes.toml":
    supervised = gridfile.load_grid(path, known, smoke=True).cell("supervised-resnet50_v2-w1")
    flags = supervised.pretext_flags
    assert (flags["epochs"], flags["decay_epochs"]) == ("1", "0.8")
    assert float(flags["warmup_epochs"]) == pytest.approx(0.2 / 3, rel=1e-4)
  if name == "shapes_zero_init.toml":
    # The cell's epochs (0.25 of the flagfile's 2) scale the flagfile's decay at 1.6 to 0.2,
    # which a smoke run's one epoch scales to 0.8, not the flagfile's decay to 6.4.
    for grid, expected in zip(grids, [("0.25", "0.2"), ("1", "0.8")]):
      flags = grid.cell("rotation-resnet50_v2-w1-zero_init_residual").pretext_flags
      assert (flags["epochs"], flags["decay_epochs"]) == expected


def test_a_smoke_run_scales_the_schedule_of_a_cells_own_epochs(configs, known):
  """A cell's eval_flags epochs (5 of the evaluation flagfile's 10, its decays at 6 and 8 scaled
  to 3 and 4): a smoke run's one epoch scales those, not the flagfile's."""
  path = write_grid(configs, GRID)
  for smoke, expected in ((False, ("5", "3,4")), (True, ("1", "0.6,0.8"))):
    grid = gridfile.load_grid(path, known, base_dir=str(configs), smoke=smoke)
    flags = grid.cell("rotation-vgg19-w1").evaluations["linear_eval"]
    assert (flags["epochs"], flags["decay_epochs"]) == expected, smoke
