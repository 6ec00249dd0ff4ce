"""An ImageNet-shaped dataset made here, without a download: `imagenet2012` in TFDS's own format,
whose JPEGs are cut from the photographs that scikit-image ships (datasets/photos.py).

So that every ImageNet code path (TFDS's `imagenet2012` reader, JPEG decoding, `inception_crop`,
`resize_small,central_crop` at 224, 1000 classes) runs on it as on the real set:
  - it is written by TFDS's own imagenet2012 builder class, with only its examples made here:
    the same version, features (`image`: a JPEG-encoded `tfds.features.Image`, `label`: the
    1000-class `ClassLabel`, `file_name`), split names (`train`, `validation`) and files, read
    back by `tfds.builder("imagenet2012", data_dir=...)` like the real set. (TFDS's builder
    itself cannot write a subset: it gives validation images their labels by their position
    among all 50,000.) File names are ILSVRC2012's: `<wnid>_<i>.JPEG` in training and
    `ILSVRC2012_val_<n>.JPEG` for validation, n among the validation images that ILSVRC2012's
    label list gives that class;
  - images of ImageNet's shapes and sizes: a random crop (40-100% of the photograph's area,
    aspect ratio 3/4 to 4/3) resized so that its longer side is 300-500 pixels, with a little
    Gaussian noise (sigma NOISE, as a camera sensor's) and JPEG quality QUALITY: about 90 kB a
    file, ImageNet's being about 110 kB. The JPEG bytes are stored as they are.

Class i is photograph i of `photos.CLASSES` (at most 16 classes), labelled with the wnid at
position i * 1000 / classes of TFDS's label list; the other classes have no images. Training
and validation images are different random crops of the same photographs: the set is for
running ImageNet's code paths at ImageNet's shapes and sizes, not for measuring representations.

`prepare(data_dir)` writes it into a TFDS data directory, which it refuses where that holds an
imagenet2012 it did not make; the same settings again keep it.
"""

import io
import json
import os
import shutil
from typing import Dict, List, Optional

import numpy as np
from PIL import Image

from core import files
from datasets import photos

NAME = "imagenet2012"
INFO_FILE = "imagenet_like.json"  # In <data_dir>/imagenet2012/: what made it.
QUALITY = 96
NOISE = 7.0
LONGER_SIDE = (300, 500)
MIN_AREA = 0.4
ASPECTS = (3 / 4, 4 / 3)
NUM_CLASSES = 1000


def _tfds_file(name: str) -> str:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return os.fspath(tfds.core.tfds_path(f"datasets/imagenet2012/{name}"))


def wnids() -> List[str]:
  """The 1000 class ids of TFDS's imagenet2012, in label order."""
  with open(_tfds_file("labels.txt")) as f:
    return [line.strip() for line in f if line.strip()]


def validation_wnids() -> List[str]:
  """The class id of each of ILSVRC2012's 50,000 validation images, in file order."""
  with open(_tfds_file("validation_labels.txt")) as f:
    return [line.strip() for line in f if line.strip()]


def class_wnids(classes: int) -> List[str]:
  """The wnids of `classes` classes, spread over the label list."""
  ids = wnids()
  return [ids[i * len(ids) // classes] for i in range(classes)]


def photo_jpeg(photo: Image.Image, rng: np.random.Generator) -> bytes:
  """One ImageNet-like JPEG of a photograph (module docstring)."""
  width, height = photo.size
  area = width * height * rng.uniform(MIN_AREA, 1.0)
  aspect = float(np.exp(rng.uniform(np.log(ASPECTS[0]), np.log(ASPECTS[1]))))
  w = int(min(width, round(np.sqrt(area * aspect))))
  h = int(min(height, round(np.sqrt(area / aspect))))
  x, y = int(rng.integers(width - w + 1)), int(rng.integers(height - h + 1))
  longer = int(rng.integers(LONGER_SIDE[0], LONGER_SIDE[1] + 1))
  scale = longer / max(w, h)
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  crop = photo.crop((x, y, x + w, y + h)).resize(size, Image.Resampling.BICUBIC)
  pixels = np.asarray(crop, np.float32) + rng.normal(0.0, NOISE, (size[1], size[0], 3))
  out = io.BytesIO()
  Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8)).save(
      out, "JPEG", quality=QUALITY)
  return out.getvalue()


def examples(classes: int, train_per_class: int, val_per_class: int) -> Dict[str, list]:
  """(file name, class index) of every example, by split (module docstring)."""
  chosen = class_wnids(classes)
  val_labels = validation_wnids()
  out = {"train": [], "validation": []}
  for i, wnid in enumerate(chosen):
    out["train"] += [(f"{wnid}_{k}.JPEG", i) for k in range(train_per_class)]
    numbers = [n + 1 for n, label in enumerate(val_labels) if label == wnid][:val_per_class]
    out["validation"] += [(f"ILSVRC2012_val_{n:08d}.JPEG", i) for n in numbers]
  return out


def _builder(data_dir: str, classes: int, planned: Dict[str, list], seed: int):
  """TFDS's imagenet2012 builder, its examples those of `planned` (JPEGs made as they are
  written, seeded per split)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.datasets.imagenet2012 import (  # pylint: disable=g-import-not-at-top
      imagenet2012_dataset_builder as imagenet)
  chosen = class_wnids(classes)

  with tfds.core.registered.skip_registration():

    class Builder(imagenet.Builder):  # pylint: disable=unused-variable
      name = NAME

      def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download or unpack.
        return {split: self._generate_examples(split) for split in planned}

      def _generate_examples(self, split):  # pylint: disable=arguments-renamed
        rng = np.random.default_rng([seed, list(planned).index(split)])
        loaded = {}
        for file_name, index in planned[split]:
          if index not in loaded:
            loaded[index] = Image.fromarray(photos.load_photo(photos.CLASSES[index]))
          yield file_name, {"file_name": file_name, "label": chosen[index],
                            "image": io.BytesIO(photo_jpeg(loaded[index], rng))}

  return Builder(data_dir=data_dir)


def _settings(classes, train_per_class, val_per_class, seed) -> Dict:
  import skimage  # pylint: disable=g-import-not-at-top
  return dict(classes=classes, train_per_class=train_per_class, val_per_class=val_per_class,
              seed=seed, quality=QUALITY, noise=NOISE, longer_side=list(LONGER_SIDE),
              min_area=MIN_AREA, source=f"scikit-image {skimage.__version__} (skimage.data)")


def prepare(data_dir: str, classes: int = 16, train_per_class: int = 64,
            val_per_class: int = 16, seed: int = 0) -> Dict:
  """Writes the set into the TFDS data directory `data_dir` (as `imagenet2012`) unless it holds
  the same one already; returns what made it (imagenet_like.json). A `data_dir` holding another
  imagenet2012 (the real one, say) is refused, never written to."""
  for name, value, top in (("classes", classes, len(photos.CLASSES)),
                           ("train_per_class", train_per_class, None),
                           ("val_per_class", val_per_class, 50)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (
        top is not None and value > top):
      raise ValueError(f"{name} must be an integer from 1 to {top or 'any'}, got {value!r}"
                       + (" (one photograph per class)" if name == "classes" else "")
                       + (" (ILSVRC2012 has 50 validation images per class)"
                          if name == "val_per_class" else ""))
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = os.path.abspath(data_dir)
  root = os.path.join(data_dir, NAME)
  info_path = os.path.join(root, INFO_FILE)
  settings = _settings(classes, train_per_class, val_per_class, seed)
  existing: Optional[Dict] = files.read_json(info_path)
  if existing and existing.get("settings") == settings and tfds.builder(
      NAME, data_dir=data_dir).is_prepared():
    return existing
  if os.path.exists(root):
    what = "an ImageNet-like set made with other settings" if existing else \
        "an imagenet2012 this script did not make"
    raise FileExistsError(f"{root} holds {what}; give another --data_dir, or remove it")
  planned = examples(classes, train_per_class, val_per_class)
  builder = _builder(data_dir, classes, planned, seed)
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  except BaseException:
    shutil.rmtree(root, ignore_errors=True)  # Nothing half-prepared is left.
    raise
  counts = {split: {wnid: sum(1 for _, i in planned[split] if i == index)
                    for index, wnid in enumerate(class_wnids(classes))} for split in planned}
  info = dict(settings=settings, counts=counts, version=str(builder.version))
  files.write_text_atomic(info_path, json.dumps(info, indent=2, sort_keys=True) + "\n")
  return info
