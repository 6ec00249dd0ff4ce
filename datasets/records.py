"""Parts of TFRecord files read without the rest: where each record lies (from the frames
alone), one int64 feature of a stored tf.train.Example without its other features' bytes, and
the bytes of chosen records.

TFDS stores a split as TFRecord files of serialised tf.train.Example protos. A TFRecord file
is a sequence of frames: the data's length (uint64, little-endian), a checksum of the length
(uint32), the data, a checksum of the data (uint32). So the records' positions follow from the
12-byte heads alone. A tf.train.Example in protobuf's wire format is its `features` (field 1),
whose `feature` map is a list of entries (field 1), each a key (field 1) and a Feature (field
2), every part preceded by its length; a Feature's int64_list is its field 3, whose values are
field 1 (packed or not). A label is found by reading each entry's head and key and skipping the
entries of other keys (the image) by their length.

Checksums are not verified here: these readers serve listings (labels) and subsets whose
records TensorFlow's own parser then reads.
"""

import os
import struct
from typing import List, Sequence, Tuple

import numpy as np
import tensorflow as tf

FRAME_HEAD = 12  # uint64 length + uint32 masked CRC of the length.
FRAME_TAIL = 4  # uint32 masked CRC of the data.
_LEN = 2  # Protobuf wire type of length-delimited fields.
_VARINT = 0
# The most bytes of an entry's head before its key: tag (1), length (<= 5), key tag (1), key
# length (1, keys are short).
_ENTRY_HEAD = 8


class RangeReader:
  """Reads byte ranges of one file: os.pread on local paths, tf.io.gfile elsewhere (gs://, ...).
  `bytes_read` counts what was asked for."""

  def __init__(self, path: str):
    self.path = path
    self.bytes_read = 0
    self._local = "://" not in path
    self._file = os.open(path, os.O_RDONLY) if self._local else tf.io.gfile.GFile(path, "rb")

  def read(self, offset: int, size: int) -> bytes:
    if self._local:
      data = os.pread(self._file, size, offset)
    else:
      self._file.seek(offset)
      data = self._file.read(size)
    self.bytes_read += len(data)
    return data

  def close(self) -> None:
    if self._local:
      os.close(self._file)
    else:
      self._file.close()

  def __enter__(self) -> "RangeReader":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def record_spans(reader: RangeReader, size: int) -> np.ndarray:
  """[N, 2] int64: each record's data offset and length, in file order, for a file of `size`
  bytes; reads the frames' heads only."""
  spans: List[Tuple[int, int]] = []
  pos = 0
  while pos < size:
    head = reader.read(pos, FRAME_HEAD)
    if len(head) < FRAME_HEAD:
      raise ValueError(f"{reader.path}: a TFRecord frame cut short at byte {pos} of {size}")
    (length,) = struct.unpack("<Q", head[:8])
    spans.append((pos + FRAME_HEAD, length))
    pos += FRAME_HEAD + length + FRAME_TAIL
  if pos != size:
    raise ValueError(f"{reader.path}: its last TFRecord frame ends at byte {pos}, past the "
                     f"file's {size} bytes")
  return np.array(spans, np.int64).reshape([-1, 2])


def _varint(data: bytes, pos: int) -> Tuple[int, int]:
  """(value, position after it) of the varint at `pos`."""
  value = shift = 0
  while True:
    if pos >= len(data):
      raise ValueError("a protobuf varint runs past the bytes read")
    byte = data[pos]
    value |= (byte & 0x7F) << shift
    pos += 1
    if not byte & 0x80:
      return value, pos
    shift += 7


def _field(data: bytes, pos: int, field: int, wire: int) -> Tuple[int, int]:
  """(length or value, position after it) of the field at `pos`, which must be `field`."""
  tag, pos = _varint(data, pos)
  if tag != (field << 3 | wire):
    raise ValueError(f"expected protobuf field {field} of wire type {wire}, found tag {tag}")
  return _varint(data, pos)


def int64_feature(reader: RangeReader, offset: int, length: int, key: str) -> int:
  """The first value of the int64 feature `key` of the tf.train.Example at [offset, offset +
  length), reading the heads and keys of its entries and `key`'s entry only."""
  want = key.encode()
  head = reader.read(offset, min(length, 6))  # Tag (1) and length (<= 5).
  features_length, pos = _field(head, 0, 1, _LEN)
  pos, end = offset + pos, offset + pos + features_length
  while pos < end:
    head = reader.read(pos, min(_ENTRY_HEAD, end - pos))
    entry_length, p = _field(head, 0, 1, _LEN)
    entry_end = pos + p + entry_length
    key_length, p = _field(head, p, 1, _LEN)
    name = reader.read(pos + p, key_length)
    if name == want:
      value = reader.read(pos + p + key_length, entry_end - pos - p - key_length)
      _, q = _field(value, 0, 2, _LEN)  # The Feature.
      _, q = _field(value, q, 3, _LEN)  # Its int64_list.
      tag, q = _varint(value, q)
      if tag == (1 << 3 | _LEN):  # Packed values.
        _, q = _varint(value, q)
      elif tag != (1 << 3 | _VARINT):
        raise ValueError(f"feature {key!r} has no int64 values (tag {tag})")
      number, _ = _varint(value, q)
      return number - (1 << 64) if number >= 1 << 63 else number
    pos = entry_end
  raise KeyError(f"no feature {key!r} in the record at byte {offset} of {reader.path}")


def file_spans(path: str, skip: int = 0, take: int = -1) -> np.ndarray:
  """`record_spans` of the records skip .. skip + take of `path` (take -1: to the end)."""
  with RangeReader(path) as reader:
    spans = record_spans(reader, tf.io.gfile.stat(path).length)
  return spans[skip:] if take < 0 else spans[skip:skip + take]


def int64_features(path: str, spans: np.ndarray, key: str) -> np.ndarray:
  """The int64 feature `key` of each record of `path` at `spans` ([N, 2])."""
  with RangeReader(path) as reader:
    return np.array([int64_feature(reader, int(o), int(n), key) for o, n in spans], np.int64)


def read_records(paths: Sequence[str], files: np.ndarray, spans: np.ndarray) -> tf.data.Dataset:
  """The serialised records at `spans` ([N, 2] offset, length) of `paths[files[i]]`, in that
  order, reading those bytes only."""
  readers = {}

  def read(file_index, offset, length):
    index = int(file_index)
    if index not in readers:
      readers[index] = RangeReader(paths[index])
    return readers[index].read(int(offset), int(length))

  ds = tf.data.Dataset.from_tensor_slices((np.asarray(files, np.int64), spans[:, 0], spans[:, 1]))
  return ds.map(lambda i, o, n: tf.ensure_shape(
      tf.numpy_function(read, [i, o, n], tf.string, stateful=False), []),
                num_parallel_calls=tf.data.AUTOTUNE)
