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
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

SIZE = 64
SEED = 20190125
CLASS_NAMES = ('house', 'tree', 'person', 'mushroom', 'lamp', 'sailboat',
               'car', 'rocket', 'snowman', 'chair')
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


# ----------------------------------------------------------------- geometry
# Object frame: u to the right, v up, objects roughly within [-1, 1]^2.
# Parts: ('box', x0, x1, y0, y1), ('poly', x1, y1, ..., x4, y4) (convex),
# ('tri', x1, y1, x2, y2, x3, y3), ('ell', cx, cy, rx, ry),
# ('half', cx, cy, rx, ry, side): upper (side=1) or lower (-1) half ellipse,
# ('cap', x0, y0, x1, y1, r): a thick segment with round ends.
# A class is three colour groups (lists of parts); a group has one colour, so
# the number of colours does not tell the class.
_CLASSES = {
    'house': [
        [('box', -0.55, 0.55, -0.9, 0.1)],
        [('tri', -0.76, 0.05, 0.76, 0.05, 0.0, 0.88)],
        [('box', -0.4, -0.12, -0.9, -0.35), ('box', 0.12, 0.4, -0.5, -0.2)],
    ],
    'tree': [
        [('box', -0.13, 0.13, -1.0, -0.5)],
        [('tri', -0.76, -0.62, 0.76, -0.62, 0.0, 0.1),
         ('tri', -0.6, -0.22, 0.6, -0.22, 0.0, 0.52),
         ('tri', -0.45, 0.18, 0.45, 0.18, 0.0, 0.96)],
        [('ell', -0.3, -0.44, 0.1, 0.1), ('ell', 0.26, -0.08, 0.1, 0.1),
         ('ell', -0.08, 0.36, 0.1, 0.1)],
    ],
    'person': [
        [('ell', 0.0, 0.72, 0.21, 0.21)],
        [('poly', -0.3, -0.2, 0.3, -0.2, 0.33, 0.48, -0.33, 0.48),
         ('cap', -0.33, 0.42, -0.62, -0.05, 0.1),
         ('cap', 0.33, 0.42, 0.62, -0.05, 0.1)],
        [('cap', -0.15, -0.15, -0.25, -0.88, 0.12),
         ('cap', 0.15, -0.15, 0.25, -0.88, 0.12)],
    ],
    'mushroom': [
        [('half', 0.0, 0.0, 0.92, 0.75, 1)],
        [('poly', -0.28, -0.95, 0.28, -0.95, 0.2, 0.02, -0.2, 0.02)],
        [('ell', -0.42, 0.28, 0.14, 0.1), ('ell', 0.08, 0.52, 0.14, 0.1),
         ('ell', 0.5, 0.22, 0.14, 0.1)],
    ],
    'lamp': [
        [('poly', -0.62, 0.15, 0.62, 0.15, 0.32, 0.92, -0.32, 0.92)],
        [('box', -0.07, 0.07, -0.75, 0.15)],
        [('half', 0.0, -0.95, 0.52, 0.3, 1)],
    ],
    'sailboat': [
        [('poly', -0.92, -0.5, -0.6, -0.9, 0.6, -0.9, 0.92, -0.5)],
        [('box', -0.05, 0.05, -0.5, 0.98)],
        [('tri', 0.1, -0.4, 0.78, -0.4, 0.1, 0.92),
         ('tri', -0.1, -0.4, -0.1, 0.7, -0.6, -0.4)],
    ],
    'car': [
        [('box', -0.95, 0.95, -0.45, 0.08)],
        [('poly', -0.55, 0.06, 0.6, 0.06, 0.38, 0.52, -0.38, 0.52)],
        [('ell', -0.55, -0.5, 0.25, 0.25), ('ell', 0.55, -0.5, 0.25, 0.25)],
    ],
    'rocket': [
        [('box', -0.3, 0.3, -0.55, 0.42)],
        [('tri', -0.3, 0.4, 0.3, 0.4, 0.0, 0.98),
         ('tri', -0.62, -0.75, -0.3, -0.55, -0.3, -0.05),
         ('tri', 0.3, -0.55, 0.62, -0.75, 0.3, -0.05)],
        [('tri', -0.2, -0.53, 0.2, -0.53, 0.0, -1.0)],
    ],
    'snowman': [
        [('ell', 0.0, -0.5, 0.46, 0.44), ('ell', 0.0, 0.12, 0.33, 0.31)],
        [('ell', 0.0, 0.57, 0.22, 0.21)],
        [('box', -0.3, 0.3, 0.72, 0.8), ('box', -0.17, 0.17, 0.78, 1.0),
         ('ell', 0.0, 0.15, 0.07, 0.07), ('ell', 0.0, -0.35, 0.08, 0.08)],
    ],
    'chair': [
        [('box', -0.58, -0.32, -0.05, 0.98)],
        [('box', -0.58, 0.58, -0.2, 0.05)],
        [('box', -0.56, -0.38, -0.95, -0.2), ('box', 0.38, 0.56, -0.95, -0.2)],
    ],
}
assert tuple(_CLASSES) == CLASS_NAMES



class _Parts(NamedTuple):
  """Parts of shapes as arrays; a leading axis may index shapes."""
  poly: np.ndarray   # (..., n_poly, 4, 2) convex, counter-clockwise
  tri: np.ndarray    # (..., n_poly) bool: triangle (vertex 3 repeats 2)
  ell: np.ndarray    # (..., n_ell, 5) cx, cy, rx, ry, side (0: whole)
  cap: np.ndarray    # (..., n_cap, 5) x0, y0, x1, y1, r
  group: np.ndarray  # (n_poly + n_ell + n_cap,) colour group of each part


def _compile(groups):
  """Colour groups of part tuples -> _Parts (no leading axis)."""
  poly, tri, ell, cap, gp, ge, gc = [], [], [], [], [], [], []
  for g, parts in enumerate(groups):
    for kind, *p in parts:
      if kind in ('box', 'poly', 'tri'):
        if kind == 'box':
          x0, x1, y0, y1 = p
          p = [x0, y0, x1, y0, x1, y1, x0, y1]
        v = np.asarray(p, np.float64).reshape(-1, 2)
        area = np.sum(v[:, 0] * np.roll(v[:, 1], -1)
                      - np.roll(v[:, 0], -1) * v[:, 1])
        v = v if area > 0 else v[::-1]
        tri.append(len(v) == 3)
        poly.append(np.concatenate([v, v[-1:]])[:4])
        gp.append(g)
      elif kind in ('ell', 'half'):
        ell.append(list(p) + [0.0] * (5 - len(p)))
        ge.append(g)
      elif kind == 'cap':
        cap.append(p)
        gc.append(g)
      else:
        raise ValueError(f'Unknown part kind {kind!r}.')
  return _Parts(np.reshape(poly, (-1, 4, 2)), np.asarray(tri, bool),
                np.reshape(np.asarray(ell, np.float64), (-1, 5)),
                np.reshape(np.asarray(cap, np.float64), (-1, 5)),
                np.asarray(gp + ge + gc, np.int64))


_TEMPLATES = [_compile(_CLASSES[name]) for name in CLASS_NAMES]


def _jittered(p, rng, n, amount):
  """n jittered copies of p (no leading axis): parts and vertices move."""
  n_p, n_e, n_c = len(p.poly), len(p.ell), len(p.cap)
  poly = p.poly + amount * (rng.uniform(-1, 1, (n, n_p, 1, 2))
                            + 0.5 * rng.uniform(-1, 1, (n, n_p, 4, 2)))
  tri = np.broadcast_to(p.tri, (n, n_p))
  poly[tri, 3] = poly[tri, 2]
  ell = np.repeat(p.ell[None], n, axis=0)
  ell[..., :2] += amount * rng.uniform(-1, 1, (n, n_e, 2))
  ell[..., 2:4] *= 1.0 + 0.15 * rng.uniform(-1, 1, (n, n_e, 2))
  cap = np.repeat(p.cap[None], n, axis=0)
  cap[..., :4] += amount * rng.uniform(-1, 1, (n, n_c, 4))
  cap[..., 4] *= 1.0 + 0.15 * rng.uniform(-1, 1, (n, n_c))
  return _Parts(poly, tri, ell, cap, p.group)


def _frames(cx, cy, scale, tilt, flip, aspect):
  """(n, 2, 3) affine maps from pixel (x, y, 1) to object frames (u, v).

  The object's origin sits at pixel (cx, cy), one unit is `scale` pixels
  (times `aspect` along u, divided along v), the object is turned by `tilt`
  (counter-clockwise) and mirrored left-right where `flip`.
  """
  c, s = np.cos(tilt), np.sin(tilt)
  fu = np.where(flip, -1.0, 1.0) / (scale * aspect)
  fv = aspect / scale
  m = np.empty(np.shape(cx) + (2, 3))
  m[..., 0, 0], m[..., 0, 1] = fu * c, -fu * s
  m[..., 0, 2] = fu * (s * cy - c * cx)
  m[..., 1, 0], m[..., 1, 1] = -fv * s, -fv * c
  m[..., 1, 2] = fv * (s * cx + c * cy)
  return m


def _lin(rows, xs, ys):
  """Linear functions of pixels over windows: rows (n, k, 3), xs (n, w),
  ys (n, h) pixel centres -> (n, k, h, w) = r0 * x + r1 * y + r2."""
  rows = rows.astype(np.float32)
  a = rows[..., 0:1] * xs[:, None, :]
  b = rows[..., 1:2] * ys[:, None, :] + rows[..., 2:3]
  return b[..., :, None] + a[..., None, :]


def _halfplanes(alpha, beta, gamma, m):
  """Rows (..., 3): signed pixel distance to alpha * u + beta * v = gamma."""
  rows = alpha[..., None] * m[..., 0, :] + beta[..., None] * m[..., 1, :]
  rows[..., 2] -= gamma
  norm = np.sqrt(rows[..., 0] ** 2 + rows[..., 1] ** 2)
  bad = norm < 1e-9
  rows /= np.where(bad, 1.0, norm)[..., None]
  rows[bad] = (0.0, 0.0, -1e6)  # Degenerate edge: no constraint.
  return rows


def _part_distances(p, m, xs, ys):
  """Signed pixel distances (n, n_parts, h, w), negative inside.

  p: _Parts with leading axis n; m: (n, 2, 3) pixel -> object maps;
  xs (n, w), ys (n, h): pixel centres of each shape's window.
  """
  n = len(m)
  ds = []
  if p.poly.shape[1]:
    v = p.poly
    k = v.shape[1]
    e = np.roll(v, -1, axis=2) - v
    rows = _halfplanes(e[..., 1], -e[..., 0],
                       v[..., 0] * e[..., 1] - v[..., 1] * e[..., 0],
                       m[:, None, None])
    d = _lin(rows.reshape(n, 4 * k, 3), xs, ys)
    d = d.reshape((n, k, 4) + d.shape[-2:])
    ds.append(np.maximum(np.maximum(d[:, :, 0], d[:, :, 1]),
                         np.maximum(d[:, :, 2], d[:, :, 3])))
  if p.ell.shape[1]:
    el = p.ell
    l1 = np.repeat(m[:, None, 0], el.shape[1], axis=1)
    l1[..., 2] -= el[..., 0]
    l1 /= el[..., 2:3]
    l2 = np.repeat(m[:, None, 1], el.shape[1], axis=1)
    l2[..., 2] -= el[..., 1]
    l2 /= el[..., 3:4]
    a1, a2 = _lin(l1, xs, ys), _lin(l2, xs, ys)
    q = np.sqrt(a1 * a1 + a2 * a2 + 1e-12)
    f = l1.astype(np.float32)[..., None, None]
    g = l2.astype(np.float32)[..., None, None]
    gx = f[:, :, 0] * a1 + g[:, :, 0] * a2
    gy = f[:, :, 1] * a1 + g[:, :, 1] * a2
    d = (q - 1.0) * q / np.sqrt(gx * gx + gy * gy + 1e-12)
    if np.any(el[..., 4] != 0):
      side = el[..., 4]
      rows = _halfplanes(np.zeros_like(side), -side, -side * el[..., 1],
                         m[:, None])
      d = np.maximum(d, _lin(rows, xs, ys))
    ds.append(d)
  if p.cap.shape[1]:
    cp = p.cap
    a, t = m[:, None, :, :2], m[:, None, :, 2]
    det = a[..., 0, 0] * a[..., 1, 1] - a[..., 0, 1] * a[..., 1, 0]

    def to_pixels(uv):
      w = uv - t
      return np.stack([a[..., 1, 1] * w[..., 0] - a[..., 0, 1] * w[..., 1],
                       a[..., 0, 0] * w[..., 1] - a[..., 1, 0] * w[..., 0]],
                      -1) / det[..., None]

    p0, p1 = to_pixels(cp[..., 0:2]), to_pixels(cp[..., 2:4])
    r = (cp[..., 4] / np.sqrt(np.abs(det))).astype(np.float32)
    w = p1 - p0
    ww = np.maximum((w * w).sum(-1), 1e-9)
    rows = np.concatenate([w, -(p0 * w).sum(-1, keepdims=True)], -1)
    s = np.clip(_lin(rows / ww[..., None], xs, ys), 0.0, 1.0)
    p0, w = p0.astype(np.float32), w.astype(np.float32)
    p0, w = p0[..., None, None], w[..., None, None]
    dx = xs[:, None, None, :] - p0[..., 0, :, :] - s * w[..., 0, :, :]
    dy = ys[:, None, :, None] - p0[..., 1, :, :] - s * w[..., 1, :, :]
    ds.append(np.sqrt(dx * dx + dy * dy) - r[..., None, None])
  return np.concatenate(ds, axis=1) if len(ds) > 1 else ds[0]


def _group_distances(d, group):
  """Min over the parts of each colour group: list of (n, h, w)."""
  return [d[:, group == g].min(axis=1) for g in range(group.max() + 1)]


@functools.lru_cache(maxsize=None)
def _class_stats():
  """Per class, object frame: area, bbox centre (u, v), bbox half (u, v)."""
  n, lim = 256, 1.3
  px = n / (2 * lim)
  xs = (np.arange(n, dtype=np.float32) + 0.5)[None]
  m = _frames(np.array([n / 2]), np.array([n / 2]), np.array([px]),
              np.zeros(1), np.zeros(1, bool), np.ones(1))
  u = (xs[0] - n / 2) / px
  v = (n / 2 - xs[0]) / px
  stats = []
  for t in _TEMPLATES:
    p = _Parts(t.poly[None], t.tri[None], t.ell[None], t.cap[None], t.group)
    inside = _part_distances(p, m, xs, xs)[0].min(axis=0) < 0
    us, vs = u[inside.any(axis=0)], v[inside.any(axis=1)]
    stats.append((inside.mean() * (2 * lim) ** 2, (us.max() + us.min()) / 2,
                  (vs.max() + vs.min()) / 2, np.ptp(us) / 2, np.ptp(vs) / 2))
  return np.asarray(stats)


def _class_scale():
  """Per-class factor on the scale that equalises mean object area."""
  area = _class_stats()[:, 0]
  return np.sqrt(area.mean() / area)


@functools.lru_cache(maxsize=None)
def _part_bank():
  """Every part of every class, centred on itself: (parts, radius) by kind."""
  allp = _compile([[q] for name in CLASS_NAMES for grp in _CLASSES[name]
                   for q in grp])
  poly = allp.poly - allp.poly.mean(axis=1, keepdims=True)
  rp = np.sqrt((poly ** 2).sum(-1)).max(-1)
  ell = allp.ell.copy()
  ell[:, :2] = 0.0
  # A half ellipse is centred on its full ellipse: the radius still holds.
  re = ell[:, 2:4].max(-1)
  cap = allp.cap.copy()
  mid = (cap[:, 0:2] + cap[:, 2:4]) / 2
  cap[:, 0:2] -= mid
  cap[:, 2:4] -= mid
  rc = np.sqrt((cap[:, 0:2] ** 2).sum(-1)) + cap[:, 4]
  return (poly, allp.tri, rp), (ell, re), (cap, rc)


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
  bank = _part_bank()
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
      empty = _Parts(np.zeros((n, 0, 4, 2)), np.zeros((n, 0), bool),
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
      m = _frames(cx, cy, target / radius, 2 * np.pi * r[:, 4], r[:, 5] < 0.5,
                  aspect)
      reach = 1.25 * target * np.maximum(aspect, 1 / aspect) + 1.5
      x0, y0, h, w, xs, ys = _windows(cx, cy, reach, reach)
      d = _part_distances(parts, m, xs, ys)[:, 0]
      view = _window_view(canvas, h, w)
      win = view[img, :, y0, x0]
      _composite(win, [d], _colours(rng, (n, 1)).astype(np.float32))
      view[img, :, y0, x0] = win


def _draw_objects(rng, canvas, labels, masks=None):
  """Draws one object of class labels[i] on image i (and its coverage into
  masks[i] if given)."""
  n = len(labels)
  stats = _class_stats()[labels]
  cu, cv, hu, hv = stats[:, 1], stats[:, 2], stats[:, 3], stats[:, 4]
  r = rng.random((n, 6))
  lo, hi = np.log(_SCALE_RANGE)
  scale = np.exp(lo + r[:, 0] * (hi - lo)) * _class_scale()[labels]
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
  m = _frames(bx - (c * ou - s * ov), by + (s * ou + c * ov), scale, tilt,
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
    parts = _jittered(_TEMPLATES[label], rng, len(sel), _PART_JITTER)
    # Two window sizes per class, so that small objects get small windows,
    # and outlines drawn only where there are.
    order = np.argsort(ex[sel] * ey[sel], kind='stable')
    halves = np.array_split(order, 2)
    for chunk in [c[has_outline[sel[c]] == o] for c in halves for o in (0, 1)]:
      if not len(chunk):
        continue
      i = sel[chunk]
      x0, y0, h, w, xs, ys = _windows(bx[i], by[i], ex[i], ey[i])
      sub = _Parts(parts.poly[chunk], parts.tri[chunk], parts.ell[chunk],
                   parts.cap[chunk], parts.group)
      d = _group_distances(_part_distances(sub, m[i], xs, ys), parts.group)
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
