"""`shapes`: the embedded, procedurally generated dataset.

Ten classes of upright objects made of parts (house, tree, person, ...), each
drawn at a random position and scale, with a small tilt, part-shape jitter and
random part colours, over random isotropic backgrounds with distractors made
of loose object parts. Only the object's shape tells the class, and only the
object tells which way is up: rotation prediction needs shape knowledge and
linear probes on raw pixels or colours are near chance.

Rendering is vectorised numpy over a batch: `render_batch(rng, labels)`,
`render(rng, label)` for one image, `render_backgrounds(rng, n)` for
backgrounds and distractors without an object. `Shapes` is the TFDS builder.
"""

import functools

import numpy as np
import tensorflow_datasets as tfds

from datasets.shape_parts import (CLASS_NAMES, TEMPLATES, Parts, class_scale, class_stats,
                                  frames, group_distances, jittered, part_bank, part_distances)

SIZE = 64
SEED = 20190125
NUM_CLASSES = len(CLASS_NAMES)

# One unit of the object frame in pixels, before the per-class factor that
# equalises the mean object area across classes.
_SCALE_RANGE = (18.0, 28.0)  # Objects fill about half the frame.
_MAX_TILT = np.deg2rad(15.0)
_PART_JITTER = 0.05    # Object-frame jitter of part positions and vertices.
_ASPECT_JITTER = 0.12  # Max |log aspect ratio| of the whole object.
_CLUTTER_P = (0.6, 0.3, 0.1)  # P(0, 1, 2 distractors).
_CLUTTER_FRONT = 0.3   # Chance that a distractor is drawn over the object.
_CLUTTER_RADIUS = (3.0, 11.0)  # Distractor radius in pixels.
_OUTLINE_P = 0.3       # Chance that an object's parts get an outline.


# ------------------------------------------------------------------- colours
def _colours(rng, shape):
  """Random RGB colours in [0, 1], shape + (3,); one distribution for all."""
  h = rng.random(shape) * 6.0
  s = rng.random(shape) ** 0.7
  v = rng.uniform(0.12, 1.0, shape)
  k = (np.array([5.0, 3.0, 1.0]) + h[..., None]) % 6.0
  f = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
  return v[..., None] * (1.0 - s[..., None] * f)


def _pick_contrasting(cands, avoid, k, min_dist=0.3):
  """k colours per row of cands (n, c, 3), each far from avoid (n, 3) and
  from the ones picked before it (the first far enough, else the farthest)."""
  n = len(cands)
  rows = np.arange(n)
  dist = np.sqrt(((cands - avoid[:, None]) ** 2).sum(-1))
  out = []
  for _ in range(k):
    ok = dist >= min_dist
    i = np.where(ok.any(1), ok.argmax(1), dist.argmax(1))
    out.append(cands[rows, i])
    dist = np.minimum(dist, np.sqrt(((cands - out[-1][:, None]) ** 2).sum(-1)))
    dist[rows, i] = -1.0
  return np.stack(out, axis=1)


# --------------------------------------------------------------- backgrounds
_C = np.arange(SIZE, dtype=np.float32) + 0.5  # Pixel centres.


@functools.lru_cache(maxsize=None)
def _interp_matrix(k):
  """(SIZE, k) linear upsampling matrix, symmetric under flips."""
  pos = np.clip(_C / SIZE * k - 0.5, 0, k - 1)
  lo = np.floor(pos).astype(int)
  hi = np.minimum(lo + 1, k - 1)
  w = pos - lo
  m = np.zeros((SIZE, k), np.float32)
  m[np.arange(SIZE), lo] += 1 - w
  m[np.arange(SIZE), hi] += w
  return m


def _smooth_fields(rng, ks):
  """Smooth random fields in [0, 1], (n, SIZE, SIZE), from k x k grids."""
  out = np.empty((len(ks), SIZE, SIZE), np.float32)
  for k in np.unique(ks):
    sel = np.nonzero(ks == k)[0]
    a = _interp_matrix(int(k))
    out[sel] = a @ rng.random((len(sel), k, k), np.float32) @ a.T
  out -= out.min(axis=(1, 2), keepdims=True)
  out /= np.maximum(out.max(axis=(1, 2), keepdims=True), 1e-6)
  return out


def _two_tone(t, c0, c1):
  """(n, 3, S, S) blend of colours c0, c1 (n, 3) by t (n, S, S)."""
  c0, c1 = c0[:, :, None, None], c1[:, :, None, None]
  return c0 + t[:, None] * (c1 - c0)


def _bg_noise(rng, c):
  """Smooth two-colour noise with patches of a third colour."""
  n = len(c)
  img = _two_tone(_smooth_fields(rng, rng.choice([3, 4, 6, 9], n)),
                  c[:, 0], c[:, 1])
  t = _smooth_fields(rng, rng.choice([4, 6, 9, 12], n))
  t = np.clip((t - 0.6) * 4.0, 0, 1) * rng.uniform(0.3, 1.0, (n, 1, 1))
  return img + t[:, None] * (c[:, 2, :, None, None] - img)


def _bg_waves(rng, c):
  """Stripes (one wave) or a checker (two) at a random angle and period."""
  n = len(c)
  x, y = _C - SIZE / 2, (_C - SIZE / 2)[:, None]
  th, k, ph, k2, ph2, sharp, two = rng.random((7, n, 1, 1), np.float32)
  th = th * np.pi
  k = 2 * np.pi / (4.0 + 14.0 * k)
  ct, st = np.cos(th), np.sin(th)
  t = np.sin(k * (x * ct + y * st) + 2 * np.pi * ph)
  t2 = np.sin(k * (0.7 + 0.7 * k2) * (y * ct - x * st) + 2 * np.pi * ph2)
  t = np.where(two < 0.4, t * t2, t)
  t = np.clip(0.5 + 0.5 * (0.7 + 5.3 * sharp) * t, 0, 1).astype(np.float32)
  return _two_tone(t, c[:, 0], c[:, 1])


def _bg_blobs(rng, c):
  """A colour under 5 to 14 random discs (painter's order, hard edges)."""
  n, nb = len(c), 14
  cx, cy, r, on = rng.random((4, nb, n)).astype(np.float32)
  cx, cy = (SIZE + 8) * cx - 4, (SIZE + 8) * cy - 4
  # Discs 0-4 always, the others with probability 1/2.
  r = (2.0 + 8.0 * r) * ((on < 0.5) | (np.arange(nb) < 5)[:, None])
  top = np.zeros((n, SIZE, SIZE), np.uint8)
  rows = np.arange(n)
  for b in range(nb):
    x0, y0, h, w, xs, ys = _windows(cx[b], cy[b], r[b] + 1, r[b] + 1)
    view = _window_view(top, h, w)
    inside = ((xs - cx[b, :, None])[:, None, :] ** 2
              + (ys - cy[b, :, None])[:, :, None] ** 2
              < (r[b] ** 2)[:, None, None])
    view[rows, y0, x0] = np.where(inside, np.uint8(b + 1),
                                  view[rows, y0, x0])
  idx = top.reshape(n, -1) + (c.shape[1] * rows)[:, None]
  return np.take(c.reshape(-1, 3), idx, axis=0).transpose(0, 2, 1).reshape(
      n, 3, SIZE, SIZE)


def _bg_speckle(rng, c):
  """Smooth two-colour ramp plus per-pixel noise, grey or coloured."""
  n = len(c)
  img = _two_tone(_smooth_fields(rng, rng.choice([2, 3, 4], n)),
                  c[:, 0], c[:, 1])
  amp = rng.uniform(0.08, 0.3, (n, 1, 1, 1)).astype(np.float32)
  noise = rng.random((n, 3, SIZE, SIZE), np.float32) - 0.5
  grey = rng.random(n) < 0.5
  noise[grey] = noise[grey, :1]
  return img + amp * noise


_BACKGROUNDS = (_bg_noise, _bg_waves, _bg_blobs, _bg_speckle)


def _backgrounds(rng, n):
  """(n, 3, S, S) float32 backgrounds, statistically invariant under the
  symmetries of the square (no gradient direction, isotropic textures)."""
  kinds = rng.integers(0, len(_BACKGROUNDS), n)
  pal = _colours(rng, (n, 17)).astype(np.float32)
  out = np.empty((n, 3, SIZE, SIZE), np.float32)
  for k, fn in enumerate(_BACKGROUNDS):
    sel = np.nonzero(kinds == k)[0]
    if len(sel):
      out[sel] = fn(rng, pal[sel])
  return out


# ------------------------------------------------------------------- drawing
def _window_view(canvas, h, w):
  """Writeable view of every (h, w) window: [n, c, y0, x0, h, w]."""
  return np.lib.stride_tricks.sliding_window_view(
      canvas, (h, w), axis=(-2, -1), writeable=True)


def _windows(cx, cy, half_w, half_h):
  """Windows covering [c - half, c + half] within the image: the offsets
  (x0, y0), their sizes (h, w) and pixel centres xs (n, w), ys (n, h).

  A window never leaves the image: shifted inside, it still covers all of
  the object's pixels that are in the image.
  """
  w = min(2 * int(np.ceil(np.max(half_w))) + 1, SIZE)
  h = min(2 * int(np.ceil(np.max(half_h))) + 1, SIZE)
  x0 = np.clip(np.floor(cx - w / 2).astype(int), 0, SIZE - w)
  y0 = np.clip(np.floor(cy - h / 2).astype(int), 0, SIZE - h)
  xs = (x0[:, None] + np.arange(w) + 0.5).astype(np.float32)
  ys = (y0[:, None] + np.arange(h) + 0.5).astype(np.float32)
  return x0, y0, h, w, xs, ys


def _composite(win, d_groups, colours, outline=None):
  """Paints groups (distances (n, h, w)) over win (n, 3, h, w) in order."""
  for g, d in enumerate(d_groups):
    if outline is not None:
      ocol, width = outline
      cov = np.clip(0.5 + width[:, None, None] - d, 0.0, 1.0)[:, None]
      win += cov * (ocol[:, :, None, None] - win)
    cov = np.clip(0.5 - d, 0.0, 1.0)[:, None]
    win += cov * (colours[:, g, :, None, None] - win)


def _draw_clutter(rng, canvas, counts):
  """Draws counts[i] distractors on image i: single parts of random classes,
  at random positions and orientations (rotation-invariant by design)."""
  bank = part_bank()
  sizes = np.array([len(b[-1]) for b in bank])
  for slot in range(int(counts.max(initial=0))):
    idx = np.nonzero(counts > slot)[0]
    j = rng.integers(0, sizes.sum(), len(idx))
    kind = np.searchsorted(np.cumsum(sizes), j, side='right')
    j = j - np.concatenate([[0], np.cumsum(sizes)])[kind]
    for k in range(3):
      sel = np.nonzero(kind == k)[0]
      if not len(sel):
        continue
      n, img, jj = len(sel), idx[sel], j[sel]
      empty = Parts(np.zeros((n, 0, 4, 2)), np.zeros((n, 0), bool),
                     np.zeros((n, 0, 5)), np.zeros((n, 0, 5)), np.zeros(1, int))
      radius = bank[k][-1][jj]
      if k == 0:  # Polygons get vertex jitter, relative to their size.
        poly = bank[0][0][jj][:, None] + 0.1 * radius[:, None, None, None] * (
            rng.uniform(-1, 1, (n, 1, 4, 2)))
        tri = bank[0][1][jj][:, None]
        poly[tri, 3] = poly[tri, 2]
        parts = empty._replace(poly=poly, tri=tri)
      elif k == 1:
        parts = empty._replace(ell=bank[1][0][jj][:, None])
      else:
        parts = empty._replace(cap=bank[2][0][jj][:, None])
      r = rng.random((n, 6))
      target = _CLUTTER_RADIUS[0] + r[:, 0] * np.ptp(_CLUTTER_RADIUS)
      aspect = np.exp(0.3 * (2 * r[:, 1] - 1))
      cx, cy = -4 + (SIZE + 8) * r[:, 2], -4 + (SIZE + 8) * r[:, 3]
      m = frames(cx, cy, target / radius, 2 * np.pi * r[:, 4], r[:, 5] < 0.5,
                  aspect)
      reach = 1.25 * target * np.maximum(aspect, 1 / aspect) + 1.5
      x0, y0, h, w, xs, ys = _windows(cx, cy, reach, reach)
      d = part_distances(parts, m, xs, ys)[:, 0]
      view = _window_view(canvas, h, w)
      win = view[img, :, y0, x0]
      _composite(win, [d], _colours(rng, (n, 1)).astype(np.float32))
      view[img, :, y0, x0] = win


def _draw_objects(rng, canvas, labels, masks=None):
  """Draws one object of class labels[i] on image i (and its coverage into
  masks[i] if given)."""
  n = len(labels)
  stats = class_stats()[labels]
  cu, cv, hu, hv = stats[:, 1], stats[:, 2], stats[:, 3], stats[:, 4]
  r = rng.random((n, 6))
  lo, hi = np.log(_SCALE_RANGE)
  scale = np.exp(lo + r[:, 0] * (hi - lo)) * class_scale()[labels]
  aspect = np.exp(_ASPECT_JITTER * (2 * r[:, 1] - 1))
  tilt = _MAX_TILT * (2 * r[:, 2] - 1)
  flip = r[:, 3] < 0.5
  su, sv = scale * aspect, scale / aspect  # Pixels per unit along u, v.
  # The bounding box centre is uniform over a square centred in the image:
  # one margin on all four sides keeps the placement isotropic.
  margin = np.minimum(0.75 * np.maximum(hu * su, hv * sv), SIZE / 2 - 1)
  bx = margin + r[:, 4] * (SIZE - 2 * margin)
  by = margin + r[:, 5] * (SIZE - 2 * margin)
  c, s = np.cos(tilt), np.sin(tilt)
  ou, ov = np.where(flip, -cu, cu) * su, cv * sv
  m = frames(bx - (c * ou - s * ov), by + (s * ou + c * ov), scale, tilt,
              flip, aspect)
  # Window half sizes, with room for jitter and outlines.
  ex = np.abs(c) * hu * su + np.abs(s) * hv * sv + 0.1 * scale + 2.5
  ey = np.abs(s) * hu * su + np.abs(c) * hv * sv + 0.1 * scale + 2.5

  colours = _colours(rng, (n, 8)).astype(np.float32)
  r = rng.random((n, 2))
  has_outline = r[:, 0] < _OUTLINE_P
  outline = (_colours(rng, (n,)).astype(np.float32),
             (0.6 + 0.9 * r[:, 1]).astype(np.float32))
  for label in range(NUM_CLASSES):
    sel = np.nonzero(labels == label)[0]
    if not len(sel):
      continue
    parts = jittered(TEMPLATES[label], rng, len(sel), _PART_JITTER)
    # Two window sizes per class, so that small objects get small windows,
    # and outlines drawn only where there are.
    order = np.argsort(ex[sel] * ey[sel], kind='stable')
    halves = np.array_split(order, 2)
    for chunk in [c[has_outline[sel[c]] == o] for c in halves for o in (0, 1)]:
      if not len(chunk):
        continue
      i = sel[chunk]
      x0, y0, h, w, xs, ys = _windows(bx[i], by[i], ex[i], ey[i])
      sub = Parts(parts.poly[chunk], parts.tri[chunk], parts.ell[chunk],
                   parts.cap[chunk], parts.group)
      d = group_distances(part_distances(sub, m[i], xs, ys), parts.group)
      view = _window_view(canvas, h, w)
      win = view[i, :, y0, x0]
      # Colours contrast with the local background.
      cols = _pick_contrasting(colours[i], win.mean(axis=(2, 3)), len(d))
      _composite(win, d, cols,
                 (outline[0][i], outline[1][i]) if has_outline[i[0]] else None)
      view[i, :, y0, x0] = win
      if masks is not None:
        cov = np.clip(0.5 - np.min(d, axis=0), 0, 1)
        _window_view(masks, h, w)[i, y0, x0] = cov


def _to_uint8(canvas):
  """(n, 3, S, S) float in [0, 1] -> (n, S, S, 3) uint8, rounded."""
  img = canvas * np.float32(255.0)
  img += np.float32(0.5)
  np.clip(img, 0.0, 255.0, out=img)
  out = np.empty(canvas.shape[:1] + canvas.shape[2:] + (3,), np.uint8)
  for ch in range(3):
    out[..., ch] = img[:, ch]
  return out


def _clutter_counts(rng, n):
  counts = rng.choice(len(_CLUTTER_P), n, p=_CLUTTER_P)
  front = rng.binomial(counts, _CLUTTER_FRONT)
  return counts - front, front


def render_batch(rng, labels, return_masks=False):
  """Renders one image per label: uint8 [n, SIZE, SIZE, 3].

  Deterministic given the state of `rng` (a np.random.Generator) and the
  labels. With return_masks, also the objects' coverage, float32 [n, S, S].
  """
  labels = np.asarray(labels, np.int64).reshape(-1)
  if np.any((labels < 0) | (labels >= NUM_CLASSES)):
    raise ValueError(f'labels must be in [0, {NUM_CLASSES}), got {labels}.')
  n = len(labels)
  canvas = _backgrounds(rng, n)
  behind, front = _clutter_counts(rng, n)
  _draw_clutter(rng, canvas, behind)
  masks = np.zeros((n, SIZE, SIZE), np.float32) if return_masks else None
  _draw_objects(rng, canvas, labels, masks)
  _draw_clutter(rng, canvas, front)
  images = _to_uint8(canvas)
  if return_masks:
    return images, masks
  return images


def render(rng, label):
  """Renders one image of class `label`: uint8 [SIZE, SIZE, 3]."""
  return render_batch(rng, [label])[0]


def render_backgrounds(rng, n, clutter=True):
  """n images with background (and distractors) only: uint8 [n, S, S, 3].

  Same distributions as behind the objects of `render_batch`.
  """
  canvas = _backgrounds(rng, n)
  if clutter:
    behind, front = _clutter_counts(rng, n)
    _draw_clutter(rng, canvas, behind + front)
  return _to_uint8(canvas)


# ---------------------------------------------------------------------- TFDS
class ShapesConfig(tfds.core.BuilderConfig):
  """Split sizes of a `shapes` config."""

  def __init__(self, *, num_train, num_test, **kwargs):
    super().__init__(**kwargs)
    self.num_train = num_train
    self.num_test = num_test


_CHUNK = 500  # Images per generation chunk: one rng stream each.


def generate_split(split, num_examples, chunk=_CHUNK):
  """Yields (labels, images) chunks of a split, deterministically.

  Every chunk has its own rng, seeded by (SEED, split, chunk index), and
  labels balanced over the classes, so the bytes do not depend on the order
  in which chunks are made.
  """
  split_id = {'train': 0, 'test': 1}[split]
  for start in range(0, num_examples, chunk):
    n = min(chunk, num_examples - start)
    rng = np.random.default_rng([SEED, split_id, start // chunk])
    labels = rng.permutation(np.arange(n) % NUM_CLASSES)
    yield labels, render_batch(rng, labels)


class Shapes(tfds.core.GeneratorBasedBuilder):
  """Procedural upright objects on cluttered isotropic backgrounds."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
      '1.0.0': 'First release.',
      '1.1.0': 'Objects about 1.7x larger (unit 18-28 px, was 10-19) and fewer distractors '
               '(at most 2): at 32x32 the 1.0.0 objects were too small for a ResNet-50 to '
               'leave chance on rotation within a few epochs.',
  }
  BUILDER_CONFIGS = [
      ShapesConfig(name='default', num_train=45000, num_test=10000,
                   description='45k train and 10k test images.'),
      ShapesConfig(name='small', num_train=1000, num_test=300,
                   description='1000 train and 300 test images, for tests.'),
  ]

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        # Raw uint8 bytes (12 KiB an image): PNG would cost about as much
        # time as rendering to encode, and again to decode at every epoch.
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(
                shape=(SIZE, SIZE, 3), dtype=np.uint8,
                encoding=tfds.features.Encoding.BYTES),
            'label': tfds.features.ClassLabel(names=CLASS_NAMES),
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated locally: nothing to download.
    cfg = self.builder_config
    return {'train': self._generate_examples('train', cfg.num_train),
            'test': self._generate_examples('test', cfg.num_test)}

  def _generate_examples(self, split, num_examples):
    index = 0
    for labels, images in generate_split(split, num_examples):
      for label, image in zip(labels, images):
        yield index, {'image': image, 'label': int(label)}
        index += 1
