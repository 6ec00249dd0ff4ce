"""core/runtime.py: a machine with GPUs that TensorFlow does not see is told why."""

from core import runtime


def test_a_gpu_that_tensorflow_does_not_see_is_named_with_the_fix(tmp_path):
  devices = str(tmp_path / "nvidia[0-9]*")
  assert runtime.unseen_gpu_note(0, devices) == ""  # No GPU here.
  for name in ("nvidia0", "nvidia1", "nvidiactl"):
    (tmp_path / name).write_text("")
  note = runtime.unseen_gpu_note(0, devices)
  assert note == (f"this machine has 2 NVIDIA GPU(s) ({tmp_path}/nvidia0, {tmp_path}/nvidia1) "
                  "but TensorFlow sees none and runs on the CPU: the CPU build of TensorFlow "
                  "(tensorflow-cpu) is installed: `make venv GPU=1` installs the GPU build of "
                  "the same version")
  assert runtime.unseen_gpu_note(2, devices) == ""  # It sees them.
