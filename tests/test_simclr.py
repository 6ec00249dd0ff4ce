"""SimCLR: NT-Xent against NumPy, the pairs in the order the backbone sees the views, the loss
and gradients over two replicas against one device, the views op, training and export."""

import textwrap

import numpy as np
import pytest
import tensorflow as tf

from core.config import Config
from core.errors import ConfigError
from datasets import PreprocessConfig, get_preprocess_fn
from datasets import copies
from datasets import preprocess
from methods import base
from methods import simclr
from tests import replicas
import train_and_eval
from training import export as export_lib


def numpy_nt_xent(z, temperature):
  """Row i's positive is its other view (i xor 1); its negatives every other row but itself.
  Also each image's hit of its first view (row 2k) among the second views (rows 2j + 1)."""
  z = np.asarray(z, np.float64)
  n = len(z)
  sim = z @ z.T / temperature
  losses, hits = [], []
  for i in range(n):
    others = [j for j in range(n) if j != i]
    logits = sim[i, others]
    positive = others.index(i ^ 1)
    m = logits.max()
    losses.append(-(logits[positive] - m - np.log(np.sum(np.exp(logits - m)))))
    hits.append(float(np.argmax(logits) == positive))
  firsts = [float(np.argmax(sim[2 * k, 1::2]) == k) for k in range(n // 2)]
  return np.array(losses), np.array(hits), np.array(firsts)


def reference_code_loss(z, temperature):
  """The loss of SimCLR's released code (google-research/simclr, tf2/objective.py,
  add_contrastive_loss), from its formula: the first views `a` and the second views `b` of the N
  images; a's row k classifies its pair among [a b^T, a a^T less the diagonal] (N + N - 1
  candidates), b's likewise among [b a^T, b b^T less the diagonal]; the loss is the mean of a's
  cross-entropies plus the mean of b's. Its contrast_acc: a's row k most similar to b's row k."""
  z = np.asarray(z, np.float64)
  a, b = z[0::2], z[1::2]
  count = len(a)

  def mean_cross_entropy(across, within):
    within = within - 1e9 * np.eye(count)
    logits = np.concatenate([across, within], axis=1) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -np.mean(log_softmax[np.arange(count), np.arange(count)])

  loss = mean_cross_entropy(a @ b.T, a @ a.T) + mean_cross_entropy(b @ a.T, b @ b.T)
  return loss, np.mean(np.argmax(a @ b.T, axis=1) == np.arange(count))


def _normalised(rng, n, dim):
  z = rng.normal(size=(n, dim))
  return (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("seed,images,dim,temperature", [(0, 2, 4, 0.1), (1, 5, 8, 0.5),
                                                          (2, 16, 3, 1.0), (3, 7, 32, 0.2)])
def test_nt_xent_matches_numpy(seed, images, dim, temperature):
  z = _normalised(np.random.default_rng(seed), 2 * images, dim)
  expected_loss, expected_hits, expected_firsts = numpy_nt_xent(z, temperature)
  loss, hits, firsts = simclr.nt_xent(tf.constant(z), temperature)
  np.testing.assert_allclose(loss.numpy(), expected_loss, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(hits.numpy(), expected_hits)
  np.testing.assert_array_equal(firsts.numpy(), expected_firsts)


class _FixedEmbeddings:
  """A stand-in model whose projection of the batch's views is given."""

  def __init__(self, z):
    self.z = tf.constant(z)

  def __call__(self, images, training=False):
    return {"logits": self.z}


@pytest.mark.parametrize("seed,images,dim,temperature", [(0, 2, 4, 0.1), (4, 9, 16, 0.2),
                                                          (5, 32, 128, 0.1)])
def test_the_loss_and_contrast_acc_are_those_of_the_reference_code(seed, images, dim,
                                                                    temperature):
  """model_fn's loss (what the optimiser minimises) equals the released code's
  add_contrastive_loss on the same embeddings, twice the mean over the views; its contrast_acc
  equals the code's."""
  z = _normalised(np.random.default_rng(seed), 2 * images, dim)
  config = Config(task="simclr", workdir="/unused", preprocessing="simclr_views",
                  temperature=temperature)
  batch = {"image": tf.zeros([images, 2, 4, 4, 3])}
  spec = simclr.model_fn(_FixedEmbeddings(z), batch, base.TRAIN, config)
  expected_loss, expected_acc = reference_code_loss(z, temperature)
  np.testing.assert_allclose(float(spec.loss), expected_loss, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(float(spec.loss), 2 * numpy_nt_xent(z, temperature)[0].mean(),
                             rtol=1e-5, atol=1e-5)
  assert spec.metrics["loss"].shape == [images]  # Per image, the mean of which is the loss.
  np.testing.assert_allclose(float(np.mean(spec.metrics["loss"])), float(spec.loss), rtol=1e-6)
  assert float(np.mean(spec.metrics["contrast_acc"])) == pytest.approx(expected_acc)


class _ContentModel:
  """A stand-in backbone whose embedding of a view is a function of the image it was made from
  (each view is filled with its source image's index) and nothing else."""

  def __call__(self, images, training=False):
    index = images[:, 0, 0, 0]
    angle = index * 0.7
    return {"logits": tf.stack([tf.cos(angle), tf.sin(angle), 0.1 * index], axis=1)}


def test_each_view_is_paired_with_the_other_view_of_its_image():
  """model_fn pairs the rows as the backbone sees them: two views of one image are positives,
  views of other images negatives. A backbone that recognises the source image scores every
  pair (accuracy 1); a wrong pairing (e.g. row i with row i + B) would score 0."""
  num_images = 6
  views = np.repeat(np.arange(num_images, dtype=np.float32)[:, None], 2, axis=1)  # [B, 2]
  images = np.broadcast_to(views[:, :, None, None, None], (num_images, 2, 4, 4, 3))
  config = Config(task="simclr", workdir="/unused", preprocessing="simclr_views",
                  temperature=0.05)
  spec = simclr.model_fn(_ContentModel(), {"image": tf.constant(images)}, base.TRAIN, config)
  np.testing.assert_array_equal(spec.metrics["accuracy"].numpy(), np.ones(2 * num_images))
  np.testing.assert_array_equal(spec.metrics["contrast_acc"].numpy(), np.ones(num_images))
  assert float(spec.loss) < 0.1
  # The same views, but the second view of every image replaced by the next image's: no row's
  # nearest view is its pair any more.
  shifted = images.copy()
  shifted[:, 1] = np.roll(images[:, 1], 1, axis=0)
  spec = simclr.model_fn(_ContentModel(), {"image": tf.constant(shifted)}, base.TRAIN, config)
  assert float(np.mean(spec.metrics["accuracy"].numpy())) == 0.0
  assert float(np.mean(spec.metrics["contrast_acc"].numpy())) == 0.0


_TWO_REPLICAS = textwrap.dedent("""
    from tests import replicas
    strategy = replicas.two_cpus()
    import tensorflow as tf
    from methods import simclr
    temperature = 0.3

    def loss_and_grad(local):
      with tf.GradientTape() as tape:
        tape.watch(local)
        loss, hits, firsts = simclr.nt_xent(local, temperature)
        # The trainer's scaling: each replica's mean over the number of replicas.
        scaled = tf.reduce_mean(loss) / tf.distribute.get_replica_context().num_replicas_in_sync
      return scaled, tape.gradient(scaled, local), hits, firsts

    replicas.compare(strategy, loss_and_grad, *replicas.inputs())
    """)


def test_loss_and_gradients_over_two_replicas_match_one_device():
  """On 2 logical CPUs each replica holds half the views: the negatives are still those of the
  global batch, so the summed loss, every view's gradient and the hits equal one device's."""
  z = _normalised(np.random.default_rng(7), 12, 5)
  (loss_one, grad_one, hits_one, firsts_one), (loss_two, grad_two, hits_two, firsts_two) = (
      replicas.run(_TWO_REPLICAS, z))
  expected_loss, _, expected_firsts = numpy_nt_xent(z, 0.3)
  np.testing.assert_allclose(loss_one, expected_loss.mean(), rtol=1e-5)
  np.testing.assert_allclose(loss_two, loss_one, rtol=1e-5)
  np.testing.assert_allclose(np.array(grad_two), np.array(grad_one), rtol=1e-4, atol=1e-6)
  assert np.abs(np.array(grad_one)).max() > 1e-3  # The gradients are not trivially zero.
  np.testing.assert_array_equal(hits_two, hits_one)
  np.testing.assert_array_equal(firsts_two, firsts_one)
  np.testing.assert_array_equal(firsts_one, expected_firsts)


def test_views_op():
  tf.random.set_seed(0)
  image = tf.random.uniform([40, 48, 3])
  config = PreprocessConfig(crop_size=24, grayscale_probability=0.5, blur_probability=0.5,
                            color_jitter_strength=1.0)
  fn = get_preprocess_fn("simclr_views", True, config)
  out = fn({"image": image, "label": tf.constant(3)})
  assert out["image"].shape == (2, 24, 24, 3)
  assert int(out["label"]) == 3
  views = out["image"].numpy()
  assert views.min() >= 0.0 and views.max() <= 1.0
  assert np.abs(views[0] - views[1]).mean() > 0.01  # Two independent augmentations.
  # With no jitter, grayscale or blur, a view is a resized crop of the image, possibly flipped:
  # its values stay those of the image's range, and the spec validates without other params.
  plain = PreprocessConfig(crop_size=24, color_jitter_strength=0.0, blur_probability=0.0)
  views = get_preprocess_fn("simclr_views", True, plain)({"image": image})["image"].numpy()
  assert views.shape == (2, 24, 24, 3) and views.min() >= image.numpy().min() - 1e-6
  with pytest.raises(ValueError, match="crop_size"):
    preprocess.validate_spec("simclr_views", PreprocessConfig())
  with pytest.raises(ValueError, match="blur_probability"):
    PreprocessConfig(crop_size=24, blur_probability=1.5)


def test_gaussian_blur():
  """The blur keeps a constant image, moves no mass (an impulse's sum), and spreads an impulse
  as the separable Gaussian of its sigma."""
  constant = tf.fill([9, 9, 3], 0.25)
  np.testing.assert_allclose(copies.gaussian_blur(constant, 5, 1.0).numpy(), 0.25, atol=1e-6)
  impulse = np.zeros([9, 9, 1], np.float32)
  impulse[4, 4, 0] = 1.0
  out = copies.gaussian_blur(tf.constant(impulse), 5, 1.0).numpy()[..., 0]
  g = np.exp(-np.arange(-2, 3) ** 2 / 2.0)
  g /= g.sum()
  np.testing.assert_allclose(out[2:7, 2:7], np.outer(g, g), atol=1e-6)
  np.testing.assert_allclose(out.sum(), 1.0, atol=1e-6)
  assert copies.blur_kernel_size(224) == 23 and copies.blur_kernel_size(32) == 3


def test_validation():
  with pytest.raises(ConfigError, match="needs the 'simclr_views' op"):
    simclr.validate(Config(task="simclr", workdir="/unused", preprocessing="resize,-1_to_1"))
  with pytest.raises(ConfigError, match="--batch_size=1"):
    simclr.validate(Config(task="simclr", workdir="/unused", preprocessing="simclr_views",
                           batch_size=1))


def simclr_config(workdir, data_dir, **overrides) -> Config:
  settings = dict(
      task="simclr", workdir=str(workdir), dataset="shapes_small", data_dir=data_dir,
      architecture="resnet50", filters_factor=1, preprocessing="resize,simclr_views,-1_to_1",
      resize_size=(32, 32), crop_size=(32, 32), blur_probability=0.0, proj_out_dim=16,
      temperature=0.2, batch_size=16, eval_batch_size=32, optimizer="adam", lr=0.002,
      lr_scale_batch_size=16, epochs=1, train_split="train[:64]", val_split="test[:64]",
      log_every_steps=1, save_checkpoints_secs=None, run_eval=True)
  settings.update(overrides)
  return Config(**settings)


def test_simclr_trains_and_exports_the_representation_of_every_method(tmp_path, shapes_data_dir):
  """A few steps: a finite loss, the contrastive accuracy logged like the other methods'
  accuracy, and an export with every backbone end point plus the projection as `logits`."""
  lines = []
  results = train_and_eval.run(simclr_config(tmp_path / "wd", shapes_data_dir),
                               print_fn=lines.append)
  assert results["step"] == 4
  assert 0.0 <= results["eval_metrics"]["accuracy"] <= 1.0
  assert np.isfinite(results["eval_metrics"]["loss"])
  assert any(l.startswith("step 4/4") and " accuracy " in l for l in lines)
  info = export_lib.load_export_info(results["export_dir"])
  assert info["eval_preprocessing"] == "resize,-1_to_1"
  assert info["end_points"][-2:] == ["pre_logits", "logits"]
  loaded = tf.saved_model.load(results["export_dir"])
  out = loaded.signatures["representation"](images=tf.zeros([3, 32, 32, 3]))
  assert out["logits"].shape == (3, 16) and out["pre_logits"].shape == (3, 512)
