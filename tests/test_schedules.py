import numpy as np
import pytest

from training import schedules


def test_scaled_lr():
  assert schedules.scaled_lr(0.1, 1024, 256) == pytest.approx(0.4)
  with pytest.raises(ValueError, match="lr_scale_batch_size"):
    schedules.scaled_lr(0.1, 1024, 0)


def test_warmup_then_piecewise_decay():
  # 10 steps per epoch, warm-up over 2 epochs, decays at epochs 4 and 6.
  s = schedules.WarmupPiecewiseDecay(0.4, 10, warmup_epochs=2, decay_epochs=(4, 6),
                                     decay_factor=0.1)
  steps = [0, 5, 10, 20, 39, 40, 59, 60, 100]
  expected = [0.0, 0.1, 0.2, 0.4, 0.4, 0.04, 0.04, 0.004, 0.004]
  np.testing.assert_allclose([float(s(x)) for x in steps], expected, rtol=1e-5, atol=1e-7)


def test_no_warmup_starts_at_base_rate():
  s = schedules.WarmupPiecewiseDecay(0.1, 3.5)
  assert float(s(0)) == pytest.approx(0.1)


def test_decreasing_boundaries_rejected():
  with pytest.raises(ValueError, match="increasing"):
    schedules.WarmupPiecewiseDecay(0.1, 10, decay_epochs=(5, 3))
