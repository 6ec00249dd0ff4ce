"""The parts of the embedded dataset's objects: each class's template (three colour groups of
parts in the object frame) and the geometry that turns a template, placed and jittered, into
per-pixel distances (datasets/shapes.py draws them)."""

import functools
from typing import NamedTuple

import numpy as np

CLASS_NAMES = ('house', 'tree', 'person', 'mushroom', 'lamp', 'sailboat',
               'car', 'rocket', 'snowman', 'chair')


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



class Parts(NamedTuple):
  """Parts of shapes as arrays; a leading axis may index shapes."""
  poly: np.ndarray   # (..., n_poly, 4, 2) convex, counter-clockwise
  tri: np.ndarray    # (..., n_poly) bool: triangle (vertex 3 repeats 2)
  ell: np.ndarray    # (..., n_ell, 5) cx, cy, rx, ry, side (0: whole)
  cap: np.ndarray    # (..., n_cap, 5) x0, y0, x1, y1, r
  group: np.ndarray  # (n_poly + n_ell + n_cap,) colour group of each part


def _compile(groups):
  """Colour groups of part tuples -> Parts (no leading axis)."""
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
  return Parts(np.reshape(poly, (-1, 4, 2)), np.asarray(tri, bool),
                np.reshape(np.asarray(ell, np.float64), (-1, 5)),
                np.reshape(np.asarray(cap, np.float64), (-1, 5)),
                np.asarray(gp + ge + gc, np.int64))


TEMPLATES = [_compile(_CLASSES[name]) for name in CLASS_NAMES]


def jittered(p, rng, n, amount):
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
  return Parts(poly, tri, ell, cap, p.group)


def frames(cx, cy, scale, tilt, flip, aspect):
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


def part_distances(p, m, xs, ys):
  """Signed pixel distances (n, n_parts, h, w), negative inside.

  p: Parts with leading axis n; m: (n, 2, 3) pixel -> object maps;
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


def group_distances(d, group):
  """Min over the parts of each colour group: list of (n, h, w)."""
  return [d[:, group == g].min(axis=1) for g in range(group.max() + 1)]


@functools.lru_cache(maxsize=None)
def class_stats():
  """Per class, object frame: area, bbox centre (u, v), bbox half (u, v)."""
  n, lim = 256, 1.3
  px = n / (2 * lim)
  xs = (np.arange(n, dtype=np.float32) + 0.5)[None]
  m = frames(np.array([n / 2]), np.array([n / 2]), np.array([px]),
              np.zeros(1), np.zeros(1, bool), np.ones(1))
  u = (xs[0] - n / 2) / px
  v = (n / 2 - xs[0]) / px
  stats = []
  for t in TEMPLATES:
    p = Parts(t.poly[None], t.tri[None], t.ell[None], t.cap[None], t.group)
    inside = part_distances(p, m, xs, xs)[0].min(axis=0) < 0
    us, vs = u[inside.any(axis=0)], v[inside.any(axis=1)]
    stats.append((inside.mean() * (2 * lim) ** 2, (us.max() + us.min()) / 2,
                  (vs.max() + vs.min()) / 2, np.ptp(us) / 2, np.ptp(vs) / 2))
  return np.asarray(stats)


def class_scale():
  """Per-class factor on the scale that equalises mean object area."""
  area = class_stats()[:, 0]
  return np.sqrt(area.mean() / area)


@functools.lru_cache(maxsize=None)
def part_bank():
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
