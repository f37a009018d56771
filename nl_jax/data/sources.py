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
"""Document sources for paper-scale data: ArrayRecord, Parquet (FineWeb-Edu), TFRecord.

Every source yields *documents*: either a ``str`` (tokenized by the pipeline) or a 1-D
int32 array of token ids (already tokenized; the pipeline only adds BOS/EOS). The pipeline
(`nl_jax.data.pipeline`) then packs, batches and shards them the same way as the embedded
corpus.

Record formats for ArrayRecord and TFRecord (one document per record):

* ``"text"``: the UTF-8 bytes of the document.
* ``"int32"``: little-endian int32 token ids (pre-tokenized; no BOS/EOS inside).

Which source to use at scale:

* **ArrayRecord** (recommended; ``array_record`` ships with grain): random access, so the
  pipeline shuffles *globally* per epoch and resumes exactly. Convert once with
  `write_array_record` (e.g. one file per 1-2 GB shard).
* **Parquet** (FineWeb-Edu ships as Parquet with a ``text`` column; needs ``pyarrow``):
  streamed file by file, interleaved, and shuffled within a window
  (``DataConfig.shuffle_window``). Files are sharded across processes, so use at least
  ``shard_count`` files. `nl_jax.data.fineweb_edu_config` builds the config for a
  user-supplied glob, e.g. ``fineweb_edu_config("/data/fineweb-edu/sample/10BT/*.parquet")``.
* **TFRecord**: streamed like Parquet through grain's TF-free reader. Records must be raw
  bytes in one of the record formats above (not ``tf.train.Example`` protos).
"""

import glob
import importlib.util
import os
from collections.abc import Iterable, Sequence
from typing import Any, Callable

import grain
import numpy as np

from nl_jax.data import tfrecord

RECORD_FORMATS = ("text", "int32")
DECODE_ERRORS = ("strict", "replace")

Document = str | np.ndarray


def expand_paths(paths: str | Sequence[str], *, field: str = "paths") -> list[str]:
  """Expands files and glob patterns into a sorted, de-duplicated list of files.

  Raises:
    ValueError: if ``paths`` is empty or a pattern matches no file; the message names
      ``field`` (the config field the paths came from).
  """
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
  paths = [str(p) for p in paths]
  if not paths:
    raise ValueError(f"invalid data config: field {field!r} is empty; give files or globs")
  files = []
  for pattern in paths:
    matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else (
        [pattern] if os.path.isfile(pattern) else [])
    if not matches:
      raise ValueError(f"invalid data config: field {field!r}: no file matches {pattern!r}")
    files.extend(matches)
  return list(dict.fromkeys(files))


def encode_record(document: Document, record_format: str = "text") -> bytes:
  """Serializes one document for ArrayRecord/TFRecord."""
  if record_format == "text":
    if not isinstance(document, str):
      raise TypeError(f"record_format='text' needs str documents, got {type(document)}")
    return document.encode("utf-8")
  if record_format == "int32":
    return np.asarray(document, dtype="<i4").tobytes()
  raise ValueError(f"unknown record_format {record_format!r}; expected one of {RECORD_FORMATS}")


def decode_record(record: bytes, record_format: str = "text",
                  decode_errors: str = "strict") -> Document:
  """Inverse of `encode_record`.

  Args:
    record: the record bytes.
    record_format: "text" or "int32".
    decode_errors: "strict" (non-UTF-8 text raises ``UnicodeDecodeError``) or "replace"
      (invalid bytes become U+FFFD).
  """
  if record_format == "text":
    return bytes(record).decode("utf-8", errors=decode_errors)
  if record_format == "int32":
    return np.frombuffer(record, dtype="<i4").astype(np.int32)
  raise ValueError(f"unknown record_format {record_format!r}; expected one of {RECORD_FORMATS}")


class SourceDataError(ValueError):
  """A data file is empty, unreadable or holds a record that cannot be decoded."""


def _undecodable(path: str, record: str, e: UnicodeDecodeError) -> SourceDataError:
  return SourceDataError(
      f"data file {path}: {record} is not valid UTF-8 ({e.reason} at byte {e.start}); fix "
      "the file or set --config.data.decode_errors=replace (invalid bytes become U+FFFD)")


def _tfrecord_index(path: str, record: bytes) -> str:
  """'record <i>' of the first record of a TFRecord file equal to ``record`` (error path)."""
  try:
    for i, payload in enumerate(tfrecord.read_records(path, verify=False)):
      if payload == bytes(record):
        return f"record {i}"
  except ValueError:  # a truncated tail: the record is not numbered
    pass
  return "a record"


class DecodeRecord(grain.transforms.Map):
  """grain map: record bytes -> document (a top-level class so workers can pickle it).

  Args:
    record_format: see `decode_record`.
    decode_errors: see `decode_record`.
    path: the file the records come from (named by a decoding error).
  """

  def __init__(self, record_format: str, decode_errors: str = "strict", path: str = ""):
    self._record_format = record_format
    self._decode_errors = decode_errors
    self._path = path

  def map(self, element):
    try:
      return decode_record(element, self._record_format, self._decode_errors)
    except UnicodeDecodeError as e:
      record = _tfrecord_index(self._path, element) if self._path else "a record"
      raise _undecodable(self._path or "?", record, e) from None


class DecodeIndexedRecord(grain.transforms.MapWithIndex):
  """grain map with the global record index -> document; errors name file and record."""

  def __init__(self, files: Sequence[str], counts: Sequence[int], record_format: str,
               decode_errors: str = "strict"):
    self._files = list(files)
    self._starts = np.cumsum([0] + list(counts))
    self._record_format = record_format
    self._decode_errors = decode_errors

  def map_with_index(self, index, element):
    try:
      return decode_record(element, self._record_format, self._decode_errors)
    except UnicodeDecodeError as e:
      f = int(np.searchsorted(self._starts, index, side="right")) - 1
      raise _undecodable(self._files[f], f"record {index - self._starts[f]}", e) from None


# ArrayRecord ----------------------------------------------------------------------------


def write_array_record(
    path: str | os.PathLike, documents: Iterable[Document], record_format: str = "text"
) -> str:
  """Writes one document per record to an ArrayRecord file; returns the path.

  ``group_size:1`` keeps every record individually seekable, which random-access reads
  (global shuffling) need.
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
  try:
    for doc in documents:
      writer.write(encode_record(doc, record_format))
  finally:
    writer.close()
  return str(path)


def array_record_count(path: str) -> int:
  """Records in one ArrayRecord file; an unreadable or empty file raises naming it."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  _check_file(path)
  try:
    reader = array_record_module.ArrayRecordReader(str(path))
    try:
      n = int(reader.num_records())
    finally:
      reader.close()
  except Exception as e:  # pylint: disable=broad-except
    raise SourceDataError(f"data file {path}: not a readable ArrayRecord file ({e})") from e
  if n == 0:
    raise SourceDataError(f"data file {path}: holds no records; remove it from the paths")
  return n


def array_record_documents(
    paths: str | Sequence[str], record_format: str = "text", decode_errors: str = "strict"
) -> grain.MapDataset:
  """A random-access dataset of the documents in ArrayRecord files (globs allowed)."""
  files = expand_paths(paths)
  counts = [array_record_count(f) for f in files]
  source = grain.sources.ArrayRecordDataSource(files)
  return grain.MapDataset.source(source).map_with_index(
      DecodeIndexedRecord(files, counts, record_format, decode_errors))


# TFRecord -------------------------------------------------------------------------------


def write_tfrecord(
    path: str | os.PathLike, documents: Iterable[Document], record_format: str = "text"
) -> str:
  """Writes a TFRecord file (valid CRCs, readable by TensorFlow too) without TensorFlow.

  The CRCs come from ``google-crc32c`` (the ``data`` extra).
  """
  with open(path, "wb") as f:
    for doc in documents:
      f.write(tfrecord.frame(encode_record(doc, record_format)))
  return str(path)


class OpenTFRecord(grain.transforms.Map):
  """grain map: file path -> IterDataset of its documents."""

  def __init__(self, record_format: str, decode_errors: str = "strict"):
    self._record_format = record_format
    self._decode_errors = decode_errors

  def map(self, element):
    return grain.experimental.TFRecordIterDataset(element).map(
        DecodeRecord(self._record_format, self._decode_errors, str(element)))


def tfrecord_check(path: str) -> None:
  """Raises naming ``path`` unless it starts with a complete TFRecord record."""
  _check_file(path)
  with open(path, "rb") as f:
    header = f.read(tfrecord.HEADER_BYTES)
  if len(header) < tfrecord.HEADER_BYTES:
    raise SourceDataError(f"data file {path}: not a TFRecord file (only {len(header)} "
                          f"bytes, a record header takes {tfrecord.HEADER_BYTES})")
  n = tfrecord.payload_length(header)
  if n > os.path.getsize(path) - tfrecord.HEADER_BYTES - tfrecord.FOOTER_BYTES:
    raise SourceDataError(f"data file {path}: not a TFRecord file (its first record "
                          f"claims {n} bytes, the file has {os.path.getsize(path)})")


# Parquet --------------------------------------------------------------------------------


def require_pyarrow() -> None:
  """Raises a clear ImportError when ``pyarrow`` (needed for Parquet) is missing."""
  if importlib.util.find_spec("pyarrow") is None:
    raise ImportError('Parquet sources need pyarrow: pip install -e ".[data]" (or pip install '
                      "pyarrow)")


class ParquetRowToDocument(grain.transforms.Map):
  """grain map: a Parquet row (dict of column values) -> document."""

  def __init__(self, text_column: str, decode_errors: str = "strict", path: str = ""):
    self._text_column = text_column
    self._decode_errors = decode_errors
    self._path = path

  def map(self, element):
    if self._text_column not in element:
      raise KeyError(
          f"parquet row has no column {self._text_column!r} (columns: {sorted(element)}); "
          "set DataConfig.text_column"
      )
    value = element[self._text_column]
    if isinstance(value, bytes):
      try:
        return value.decode("utf-8", errors=self._decode_errors)
      except UnicodeDecodeError as e:
        raise _undecodable(self._path or "?", f"a row of column {self._text_column!r}",
                           e) from None
    if isinstance(value, str):
      return value
    # A list column holds pre-tokenized ids.
    return np.asarray(value, dtype=np.int32)


class OpenParquet(grain.transforms.Map):
  """grain map: file path -> IterDataset of its documents (one per row)."""

  def __init__(self, text_column: str, decode_errors: str = "strict"):
    self._text_column = text_column
    self._decode_errors = decode_errors

  def map(self, element):
    return grain.experimental.ParquetIterDataset(element).map(
        ParquetRowToDocument(self._text_column, self._decode_errors, str(element)))


def parquet_check(path: str, text_column: str) -> None:
  """Raises naming ``path`` when it is not Parquet, has no rows or lacks ``text_column``."""
  _check_file(path)
  require_pyarrow()
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

  try:
    meta = pq.ParquetFile(path)
  except Exception as e:  # pylint: disable=broad-except
    raise SourceDataError(f"data file {path}: not a readable Parquet file ({e})") from e
  if meta.metadata.num_rows == 0:
    raise SourceDataError(f"data file {path}: holds no rows; remove it from the paths")
  names = meta.schema_arrow.names
  if text_column not in names:
    raise SourceDataError(f"data file {path}: no column {text_column!r} (columns: {names}); "
                          "set --config.data.text_column")


def _check_file(path: str) -> None:
  try:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      f.read(1)
  except OSError as e:
    raise SourceDataError(f"data file {path}: cannot be read ({e.strerror or e})") from e
  if size == 0:
    raise SourceDataError(f"data file {path}: is empty (0 bytes); remove it from the paths")


def check_files(name: str, files: Sequence[str], *, text_column: str = "text") -> None:
  """Validates every file of a file source before training (see `SourceDataError`).

  Every file must be readable and hold at least one document, so a run never starts on
  input that would hang (an endless repeat of nothing) or fail late.
  """
  for path in files:
    if name == "arrayrecord":
      array_record_count(path)
    elif name == "parquet":
      parquet_check(path, text_column)
    elif name == "tfrecord":
      tfrecord_check(path)


def write_parquet(
    path: str | os.PathLike, texts: Sequence[str], text_column: str = "text",
    row_group_size: int | None = None,
) -> str:
  """Writes a Parquet file with one ``text_column`` (for tests and small conversions)."""
  require_pyarrow()
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

  pq.write_table(pa.table({text_column: list(texts)}), str(path), row_group_size=row_group_size)
  return str(path)


# Streaming (file-sharded) sources ---------------------------------------------------------


def interleaved_file_documents(
    files: Sequence[str],
    open_file: Callable[[str], Any],
    *,
    shard_index: int = 0,
    shard_count: int = 1,
    shuffle: bool = True,
    seed: int = 0,
    num_epochs: int | None = None,
    cycle_length: int = 4,
    shuffle_window: int = 1000,
) -> grain.IterDataset:
  """Streams documents from many files: file-level sharding, interleave, window shuffle.

  Each process reads the files ``files[shard_index::shard_count]``; each epoch visits its
  files in a fresh order; ``cycle_length`` files are read concurrently (interleaved) and
  the result is shuffled within a window of ``shuffle_window`` documents. The returned
  iterator is checkpointable (file position + offsets inside the open files).

  Raises:
    ValueError: if there are fewer files than processes.
  """
  if len(files) < shard_count:
    raise ValueError(
        f"invalid data config: field 'paths' matches {len(files)} file(s) but there are "
        f"{shard_count} processes; streaming sources shard by file, so give at least "
        "shard_count files (or convert to ArrayRecord, which shards by record)"
    )
  files_ds = grain.MapDataset.source(list(files))[shard_index::shard_count]
  if shuffle:
    files_ds = files_ds.shuffle(seed=seed)
  files_ds = files_ds.repeat(num_epochs)
  datasets = files_ds.map(open_file)
  ds = grain.experimental.InterleaveIterDataset(
      datasets, cycle_length=max(1, min(cycle_length, len(files) // shard_count)))
  if shuffle and shuffle_window > 1:
    ds = grain.experimental.WindowShuffleIterDataset(ds, window_size=shuffle_window, seed=seed)
  return ds

