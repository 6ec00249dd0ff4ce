"""Measures how hard the embedded `shapes` dataset is for shortcuts.

Prepares the `default` config into a temporary directory (timed), then trains
on its train split and reports test accuracy of:
  * linear classifiers (multinomial logistic regression, standardised inputs,
    L2; the best of a few L2 strengths) on raw pixels, on colour features
    (mean/std RGB and colour histograms), and on raw pixels to predict the
    rotation of rotated test images (4-way, the pretext task);
  * a small CNN trained for a few epochs (the classes are learnable).
Also prints per-class mean object area, colour and position from the
renderer, and saves a grid of examples (classes x examples) as a PNG.

  .venv/bin/python bench/shapes_pixel_probe.py [--cnn_epochs 3] [--grid out.png]
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from core import runtime  # pylint: disable=g-import-not-at-top

runtime.set_defaults()

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

from datasets import shapes  # pylint: disable=g-import-not-at-top


def prepare(data_dir, config):
  """Prepares a config: (builder, wall seconds, CPU seconds)."""
  t, c = time.time(), time.process_time()
  builder = shapes.Shapes(data_dir=data_dir, config=config)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder, time.time() - t, time.process_time() - c


def load(builder, split):
  ds = builder.as_dataset(split=split, batch_size=4096)
  xs, ys = [], []
  for ex in ds.as_numpy_iterator():
    xs.append(ex['image'])
    ys.append(ex['label'])
  return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


def colour_features(images, chunk=5000):
  """Mean and std RGB, 4x4x4 joint and 16-bin per-channel histograms."""
  out = []
  for i in range(0, len(images), chunk):
    x = images[i:i + chunk].reshape(-1, shapes.SIZE * shapes.SIZE, 3)
    n = len(x)
    xf = x.astype(np.float32) / 255.0
    q = (x // 64).astype(np.int64)
    joint = q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]
    off = np.arange(n)[:, None] * 64
    hist = np.bincount((joint + off).ravel(), minlength=64 * n).reshape(n, 64)
    marg = []
    for c in range(3):
      b = (x[..., c] // 16).astype(np.int64) + np.arange(n)[:, None] * 16
      marg.append(np.bincount(b.ravel(), minlength=16 * n).reshape(n, 16))
    px = float(x.shape[1])
    out.append(np.concatenate(
        [xf.mean(1), xf.std(1), hist / px] + [m / px for m in marg], axis=1))
  return np.concatenate(out).astype(np.float32)


def linear_probe(x_train, y_train, x_test, y_test, num_classes, l2s,
                 epochs=10, batch_size=512, seed=0):
  """Best test accuracy (and its train accuracy, L2) of softmax regression."""
  x_train = x_train.reshape(len(x_train), -1)
  x_test = x_test.reshape(len(x_test), -1)
  mean = x_train.mean(0, dtype=np.float64).astype(np.float32)
  std = x_train.std(0, dtype=np.float64).astype(np.float32) + 1e-3

  def dataset(x, y, shuffle):
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
      ds = ds.shuffle(len(x), seed=seed)
    return ds.batch(batch_size).map(
        lambda a, b: ((tf.cast(a, tf.float32) - mean) / std, b)).prefetch(2)

  best = None
  for l2 in l2s:
    tf.keras.utils.set_random_seed(seed)
    model = tf.keras.Sequential([
        tf.keras.Input((x_train.shape[1],)),
        tf.keras.layers.Dense(num_classes,
                              kernel_regularizer=tf.keras.regularizers.L2(l2)),
    ])
    model.compile(
        optimizer=tf.keras.optimizers.Adam(1e-3),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=['accuracy'])
    model.fit(dataset(x_train, y_train, True), epochs=epochs, verbose=0,
              shuffle=False)
    train_acc = model.evaluate(dataset(x_train, y_train, False), verbose=0)[1]
    test_acc = model.evaluate(dataset(x_test, y_test, False), verbose=0)[1]
    print(f'    l2={l2:g}: train {train_acc:.3f} test {test_acc:.3f}', flush=True)
    if best is None or test_acc > best[0]:
      best = (test_acc, train_acc, l2)
  return best


def rotate_all(images, seed=0):
  """Each image rotated by a random multiple of 90 degrees: (images, k)."""
  k = np.random.default_rng(seed).integers(0, 4, len(images))
  out = np.empty_like(images)
  for r in range(4):
    sel = k == r
    out[sel] = np.rot90(images[sel], r, axes=(1, 2))
  return out, k


def small_cnn(num_classes):
  layers = tf.keras.layers

  def block(x, f, stride=1):
    x = layers.Conv2D(f, 3, stride, padding='same', use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x)

  inp = tf.keras.Input((shapes.SIZE, shapes.SIZE, 3))
  x = layers.Rescaling(1 / 127.5, offset=-1.0)(inp)
  x = block(x, 32, 2)                           # 32x32
  x = layers.MaxPool2D()(x)                     # 16x16
  x = block(x, 64)
  x = block(x, 64)
  x = layers.MaxPool2D()(x)                     # 8x8
  x = block(x, 128)
  x = layers.GlobalAveragePooling2D()(x)
  return tf.keras.Model(inp, layers.Dense(num_classes)(x))


def cnn_probe(x_train, y_train, x_test, y_test, num_classes, epochs,
              batch_size=32, lr=2e-3, seed=0):
  tf.keras.utils.set_random_seed(seed)
  model = small_cnn(num_classes)
  steps = epochs * (len(x_train) // batch_size)
  lr = tf.keras.optimizers.schedules.CosineDecay(0.0, steps, warmup_target=lr,
                                                 warmup_steps=steps // 20)
  model.compile(
      optimizer=tf.keras.optimizers.Adam(lr),
      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=['accuracy'])
  train = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(
      len(x_train), seed=seed).batch(batch_size, drop_remainder=True)
  t = time.time()
  model.fit(train.prefetch(2), epochs=epochs, verbose=2, shuffle=False)
  test_acc = model.evaluate(x_test, y_test, batch_size=512, verbose=0)[1]
  return test_acc, time.time() - t


def renderer_stats(n_per_class=300, seed=0):
  """Per-class mean object area (pixels), centre and image mean RGB."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(shapes.NUM_CLASSES), n_per_class)
  images, masks = shapes.render_batch(rng, labels, return_masks=True)
  yy, xx = np.mgrid[:shapes.SIZE, :shapes.SIZE] + 0.5
  rows = []
  for c in range(shapes.NUM_CLASSES):
    m = masks[labels == c]
    area = m.sum((1, 2))
    cy = (m * yy).sum((1, 2)) / area
    cx = (m * xx).sum((1, 2)) / area
    rgb = images[labels == c].reshape(-1, 3).mean(0)
    rows.append((shapes.CLASS_NAMES[c], area.mean(), area.std(), cx.mean(),
                 cy.mean(), rgb))
  return rows, images, labels


def save_grid(path, images, labels, per_class=8):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rows = [np.concatenate(list(images[labels == c][:per_class]), axis=1)
          for c in range(shapes.NUM_CLASSES)]
  grid = np.concatenate(rows, axis=0)
  Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2),
                               Image.NEAREST).save(path)


def linear_probes(x_train, y_train, x_test, y_test):
  """[(name, (test acc, train acc, l2), chance)] of the linear probes."""
  k = shapes.NUM_CLASSES
  results = []
  print('\nlinear, raw pixels -> class', flush=True)
  results.append(('linear, raw pixels -> class', linear_probe(
      x_train, y_train, x_test, y_test, k, (1e-3, 1e-2, 1e-1)), 1 / k))
  print('linear, colour features -> class', flush=True)
  f_train, f_test = colour_features(x_train), colour_features(x_test)
  results.append(('linear, colour features -> class', linear_probe(
      f_train, y_train, f_test, y_test, k, (1e-4, 1e-2), epochs=30), 1 / k))
  print('linear, raw pixels -> rotation', flush=True)
  r_train, k_train = rotate_all(x_train, seed=1)
  r_test, k_test = rotate_all(x_test, seed=2)
  results.append(('linear, raw pixels -> rotation', linear_probe(
      r_train, k_train, r_test, k_test, 4, (1e-3, 1e-2, 1e-1)), 1 / 4))
  del r_train, r_test
  return results


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='default')
  p.add_argument('--data_dir', default=None,
                 help='prepare here (default: a fresh temporary directory)')
  p.add_argument('--cnn_epochs', type=int, default=3)
  p.add_argument('--cnn_batch', type=int, default=32)
  p.add_argument('--cnn_lr', type=float, default=2e-3)
  p.add_argument('--cnn_train', type=int, default=20000,
                 help='train the CNN on this many images (0: all)')
  p.add_argument('--linear', action=argparse.BooleanOptionalAction,
                 default=True, help='run the linear probes')
  p.add_argument('--cnn_rotation', action=argparse.BooleanOptionalAction,
                 default=True,
                 help='also train the CNN on rotation prediction (pretext)')
  p.add_argument('--grid', default='/tmp/shapes_grid.png')
  args = p.parse_args()
  tf.config.threading.set_inter_op_parallelism_threads(2)

  data_dir = args.data_dir or tempfile.mkdtemp(prefix='shapes_probe_')
  builder, prep_s, prep_cpu = prepare(data_dir, args.config)
  load_avg = os.getloadavg()[0]
  x_train, y_train = load(builder, 'train')
  x_test, y_test = load(builder, 'test')
  k = shapes.NUM_CLASSES
  print(f'prepared {args.config} in {prep_s:.1f} s ({prep_cpu:.1f} CPU s, '
        f'load average {load_avg:.1f}): train {len(x_train)}, '
        f'test {len(x_test)} images, {k} classes', flush=True)

  rows, images, labels = renderer_stats()
  print('\nper class (renderer, 300 each): object area px (mean/std), '
        'object centre x/y, image mean RGB')
  for name, am, asd, cx, cy, rgb in rows:
    print(f'  {name:9s} area {am:6.1f} / {asd:5.1f}  centre {cx:5.1f} '
          f'{cy:5.1f}  rgb {rgb[0]:6.1f} {rgb[1]:6.1f} {rgb[2]:6.1f}')
  save_grid(args.grid, images, labels)
  print(f'example grid: {args.grid}')

  results = []
  if args.linear:
    results = linear_probes(x_train, y_train, x_test, y_test)
  n_cnn = args.cnn_train or len(x_train)
  cnn = []
  print(f'small CNN, {args.cnn_epochs} epochs on {n_cnn} images -> class',
        flush=True)
  cnn.append(('small CNN -> class', 1 / k, *cnn_probe(
      x_train[:n_cnn], y_train[:n_cnn], x_test, y_test, k, args.cnn_epochs,
      args.cnn_batch, args.cnn_lr)))
  if args.cnn_rotation:
    print(f'small CNN, {args.cnn_epochs} epochs on {n_cnn} images -> rotation',
          flush=True)
    r_train, k_train = rotate_all(x_train[:n_cnn], seed=1)
    r_test, k_test = rotate_all(x_test, seed=2)
    cnn.append(('small CNN -> rotation', 1 / 4, *cnn_probe(
        r_train, k_train, r_test, k_test, 4, args.cnn_epochs, args.cnn_batch,
        args.cnn_lr)))

  print(f'\n| probe ({args.config}: {len(x_train)} train / {len(x_test)} test)'
        ' | test acc | train acc | chance |')
  print('|---|---|---|---|')
  for name, (test_acc, train_acc, l2), chance in results:
    print(f'| {name} (best L2 {l2:g}) | {test_acc:.3f} | {train_acc:.3f} '
          f'| {chance:.3f} |')
  for name, chance, acc, secs in cnn:
    print(f'| {name}, {args.cnn_epochs} epochs on {n_cnn} images '
          f'({secs:.0f} s) | {acc:.3f} | - | {chance:.3f} |')
  print(f'\nprepare time ({args.config}): {prep_s:.1f} s wall, '
        f'{prep_cpu:.1f} s CPU (load average {load_avg:.1f})')


if __name__ == '__main__':
  main()
