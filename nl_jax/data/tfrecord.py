# Copyright 2026 The nl_jax Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""TFRecord framing (length, masked CRC-32C, payload, masked CRC-32C) without TensorFlow.

The CRC comes from ``google-crc32c`` (a maintained C implementation, with its own fallback),
installed by the ``data``, ``monitoring`` and ``test`` extras. Used by
`nl_jax.data.sources.write_tfrecord` and by the TensorBoard event reader of
`nl_jax.train.metrics`.
"""

import struct
from collections.abc import Iterator

_MASK_DELTA = 0xA282EAD8


def _crc32c(data: bytes) -> int:
  try:
    import google_crc32c  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('TFRecord CRCs need google-crc32c: pip install -e ".[data]" '
                      "(or pip install google-crc32c)") from e
  return google_crc32c.value(bytes(data))


def masked_crc32c(data: bytes) -> int:
  """CRC-32C of ``data``, rotated and offset as TFRecord stores it.

  The masking keeps a CRC of data that itself holds CRCs strong.
  """
  crc = _crc32c(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
  """One TFRecord record holding ``data``."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", masked_crc32c(length)) + data
          + struct.pack("<I", masked_crc32c(data)))


def read_records(path: str) -> Iterator[bytes]:
  """The payloads of a TFRecord file; ValueError naming the byte offset on a bad CRC."""
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    header = data[pos:pos + 8]
    if len(header) < 8:
      raise ValueError(f"{path}: truncated record header at byte {pos}")
    (length,) = struct.unpack("<Q", header)
    if struct.unpack("<I", data[pos + 8:pos + 12])[0] != masked_crc32c(header):
      raise ValueError(f"{path}: bad length CRC at byte {pos}")
    payload = data[pos + 12:pos + 12 + length]
    stored = data[pos + 12 + length:pos + 16 + length]
    if len(stored) < 4 or struct.unpack("<I", stored)[0] != masked_crc32c(payload):
      raise ValueError(f"{path}: bad data CRC at byte {pos}")
    pos += 16 + length
    yield payload
