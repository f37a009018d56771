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
installed by the ``data``, ``monitoring`` and ``test`` extras. The one copy of the
framing: `nl_jax.data.sources` writes, locates and checks records with it, and the TensorBoard
event reader of `nl_jax.train.metrics` reads event files with it.
"""

import struct
from collections.abc import Iterator

_MASK_DELTA = 0xA282EAD8
HEADER_BYTES = 12  # payload length (uint64) + its masked CRC
FOOTER_BYTES = 4  # the payload's masked CRC


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


def payload_length(header: bytes) -> int:
  """The payload length a record header stores (its first 8 bytes, little-endian uint64)."""
  return struct.unpack("<Q", header[:8])[0]


def read_records(path: str, *, verify: bool = True) -> Iterator[bytes]:
  """The payloads of a TFRecord file, read record by record.

  Args:
    path: the file.
    verify: check both CRCs of every record (False: only the framing, e.g. to locate a record).

  Raises:
    ValueError: naming the byte offset of a truncated record or (``verify``) a bad CRC.
  """
  with open(path, "rb") as f:
    pos = 0
    while header := f.read(HEADER_BYTES):
      if len(header) < HEADER_BYTES:
        raise ValueError(f"{path}: truncated record header at byte {pos}")
      if verify and struct.unpack("<I", header[8:])[0] != masked_crc32c(header[:8]):
        raise ValueError(f"{path}: bad length CRC at byte {pos}")
      length = payload_length(header)
      payload = f.read(length)
      stored = f.read(FOOTER_BYTES)
      if len(payload) < length or len(stored) < FOOTER_BYTES:
        raise ValueError(f"{path}: truncated record at byte {pos}")
      if verify and struct.unpack("<I", stored)[0] != masked_crc32c(payload):
        raise ValueError(f"{path}: bad data CRC at byte {pos}")
      pos += HEADER_BYTES + length + FOOTER_BYTES
      yield payload
