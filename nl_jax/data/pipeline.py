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
"""grain input pipelines for language modelling: documents -> packed, sharded LM batches.

Stages (per process)::

  documents (this process's shard)
    -> shuffle (fresh permutation every epoch; streaming sources: file order per epoch plus
       a window shuffle) -> repeat(num_epochs)
    -> tokenize: [BOS] + encode(doc) + [EOS]
    -> concat-then-split packing into rows of seq_len + 1 tokens (no token dropped,
       padding only at the very end of a finite stream)
    -> shift: inputs = row[:-1], targets = row[1:]
    -> batch(per-process batch size)

With ``alignment = A > 1`` (chunked memories: resets must fall on chunk starts) each
document is shifted first (``inputs = doc[:-1]``, ``targets = doc[1:]``) and padded with
``PAD_ID`` to a multiple of ``A`` tokens, then split into rows of exactly ``seq_len`` (a
multiple of ``A``). Every document, and every row, then starts at a position that is a
multiple of ``A``. The padding keeps its document's segment id (with ``loss_mask`` 0), so
the only segment changes, and hence the only memory resets, are aligned document starts.

Batch format (numpy, per process, ``B = batch_size // shard_count``, ``T = seq_len``):

=================  =========  ========  ======================================================
key                shape      dtype     meaning
=================  =========  ========  ======================================================
``inputs``         [B, T]     int32     token ids fed to the model
``targets``        [B, T]     int32     next token: ``targets[b, t] == row[b, t + 1]``
``segment_ids``    [B, T]     int32     0 = padding, 1, 2, ... = document fragment in the row
``positions``      [B, T]     int32     position inside its fragment; 0 at every document
                                        start and at the start of every row
``loss_mask``      [B, T]     float32   1 where ``targets`` is the true next token of the same
                                        document, 0 at document boundaries and on padding
=================  =========  ========  ======================================================

A document longer than a row continues in a later row as a new fragment (``positions``
restart at 0 there; attention should be restricted with ``segment_ids``). Because rows hold
``T + 1`` tokens, the last token of each row is a target but never an input: the prediction
of the token that follows it (first token of the next row) is not trained, in exchange for
no duplicated tokens.

Sharding: ``batch_size`` is the **global** batch size. Process ``shard_index`` of
``shard_count`` (defaults: ``jax.process_index()`` / ``jax.process_count()``) reads only its
slice of the documents (``docs[shard_index::shard_count]``; streaming sources: of the files)
and yields ``batch_size // shard_count`` rows per batch; the trainer assembles the global
array with ``jax.make_array_from_process_local_data``.

Checkpointing: `make_train_iterator` returns a grain ``DatasetIterator``; its
``get_state()`` / ``set_state()`` (a small JSON dict) restore the exact next batch, and
`nl_jax.data.checkpointing` gives the orbax args to save it next to the train state.

Worker processes: the default (``num_workers=0``) runs in-process with ``num_threads``
reader threads, which is enough for the byte tokenizer. ``num_workers > 0`` adds grain
``mp_prefetch`` worker processes (transforms are picklable top-level classes). Each worker
packs its own slice of the stream, so the batch order differs from ``num_workers=0``, but it
is deterministic and resumes exactly for a fixed ``num_workers``; close the iterator
(``it.close()``) to stop the workers. grain's workers read absl flags: run under
``absl.app.run`` or call ``flags.FLAGS.mark_as_parsed()`` first (the iterator builders do
the latter when flags are unparsed).
"""

import dataclasses
import functools
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from grain._src.python.dataset.transformations import packing_concat_then_split as _cts

from nl_jax.data import shakespeare, sources, tokenizers
from nl_jax.data.batch import BATCH_KEYS

MAP_SOURCES = ("shakespeare", "arrayrecord")
STREAM_SOURCES = ("parquet", "tfrecord")
SOURCE_NAMES = MAP_SOURCES + STREAM_SOURCES + ("seqio:<task_or_mixture>",)


class DataConfigError(ValueError):
  """A data config field is invalid; the message names every bad field."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Everything the data pipeline needs; validated by `validate_config`.

  Attributes:
    name: "shakespeare" (embedded corpus), "arrayrecord", "parquet", "tfrecord", or
      "seqio:<task or mixture>" (needs the seqio extra).
    paths: training files or globs (file sources only).
    eval_paths: evaluation files or globs (file sources; needed by `make_eval_iterator`).
    tokenizer: "byte", "spm:<path to .model>" or a path to a SentencePiece model.
    seq_len: tokens per row (T), >= 2.
    batch_size: global training batch size, divisible by ``shard_count``.
    eval_batch_size: global eval batch size (default: ``batch_size``).
    seed: seed of all shuffles.
    shuffle: shuffle documents (each epoch anew); off gives the canonical order.
    num_epochs: passes over the training data; None repeats forever.
    shard_index: this process's shard (default ``jax.process_index()``).
    shard_count: number of shards (default ``jax.process_count()``).
    add_bos: prepend BOS to every document.
    add_eos: append EOS to every document.
    record_format: "text" or "int32" (ArrayRecord/TFRecord records; see `sources`).
    decode_errors: non-UTF-8 text records: "strict" (an error naming the file and record)
      or "replace" (invalid bytes become U+FFFD).
    text_column: Parquet column with the text (or pre-tokenized id lists).
    validation_every: held-out split of the embedded corpus (see `shakespeare`).
    shuffle_window: window of the document shuffle for streaming sources.
    cycle_length: files read concurrently by streaming sources.
    num_threads: grain reader threads (in-process).
    prefetch_buffer_size: grain in-process prefetch buffer (elements).
    num_workers: grain worker processes; 0 = none (default, see module docstring).
    alignment: pad each document to a multiple of this many tokens so that every document
      starts at a row position divisible by it (see module docstring); 1 = plain packing.
      ``seq_len`` must be a multiple of it. Trainers set it to the model's ``alignment``.
  """

  name: str = "shakespeare"
  paths: tuple[str, ...] = ()
  eval_paths: tuple[str, ...] = ()
  tokenizer: str = "byte"
  seq_len: int = 256
  batch_size: int = 16
  eval_batch_size: int | None = None
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = None
  shard_index: int | None = None
  shard_count: int | None = None
  add_bos: bool = True
  add_eos: bool = True
  record_format: str = "text"
  decode_errors: str = "strict"
  text_column: str = "text"
  validation_every: int = shakespeare.DEFAULT_VALIDATION_EVERY
  shuffle_window: int = 1000
  cycle_length: int = 4
  num_threads: int = 2
  prefetch_buffer_size: int = 16
  num_workers: int = 0
  alignment: int = 1


def _default_shards(config: DataConfig) -> tuple[int, int]:
  if config.shard_index is not None and config.shard_count is not None:
    return config.shard_index, config.shard_count
  import jax  # pylint: disable=g-import-not-at-top

  index = jax.process_index() if config.shard_index is None else config.shard_index
  count = jax.process_count() if config.shard_count is None else config.shard_count
  return index, count


def default_config_dict(**overrides):
  """`DataConfig` defaults as an ``ml_collections.ConfigDict`` (for ``config.data``).

  Fields left as None (``num_epochs``, ``shard_index``, ...) accept ints later, e.g.
  ``--config.data.num_epochs=3``.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top

  fields = dataclasses.asdict(DataConfig(**overrides))
  for name, value in fields.items():
    if value is None:
      # A typed reference: a plain None field cannot be overridden from the command line.
      fields[name] = ml_collections.FieldReference(None, field_type=int)
  return ml_collections.ConfigDict(fields)


def fineweb_edu_config(paths: str | os.PathLike | Sequence[str], **overrides) -> DataConfig:
  """A `DataConfig` for FineWeb-Edu (or any Parquet dump with a ``text`` column).

  FineWeb-Edu is not downloaded here: fetch it yourself (e.g. the ``sample/10BT`` Parquet
  shards from the Hugging Face hub) and pass a glob, e.g.
  ``fineweb_edu_config("/data/fineweb-edu/sample/10BT/*.parquet", tokenizer="spm:/m.model",
  seq_len=4096, batch_size=512)``.

  Args:
    paths: a glob or a list of Parquet files/globs.
    **overrides: other `DataConfig` fields.
  """
  if isinstance(paths, (str, os.PathLike)):
    paths = (str(paths),)
  fields = {"name": "parquet", "paths": tuple(str(p) for p in paths), "text_column": "text"}
  fields.update(overrides)
  return DataConfig(**fields)


def config_from(config: Any) -> DataConfig:
  """Converts a `DataConfig`, ml_collections ``ConfigDict`` or mapping to a `DataConfig`.

  Raises:
    DataConfigError: on keys that are not `DataConfig` fields.
  """
  if isinstance(config, DataConfig):
    return config
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  if not isinstance(config, Mapping):
    raise DataConfigError(
        f"invalid data config: expected DataConfig, ConfigDict or dict, got {type(config)}")
  names = {f.name for f in dataclasses.fields(DataConfig)}
  unknown = sorted(set(config) - names)
  if unknown:
    raise DataConfigError(
        f"invalid data config: unknown field(s) {unknown}; valid fields: {sorted(names)}")
  fields = dict(config)
  for key in ("paths", "eval_paths"):
    if key in fields:
      value = fields[key]
      fields[key] = (value,) if isinstance(value, str) else tuple(value or ())
  return DataConfig(**fields)


def validate_config(config: Any) -> DataConfig:
  """Checks every field before any work is done; returns the config with shards resolved.

  Raises:
    DataConfigError: listing each invalid field by name.
  """
  config = config_from(config)
  errors = []

  def bad(field, message):
    errors.append(f"field {field!r}: {message}")

  def is_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

  name = config.name
  if not isinstance(name, str) or not (
      name in MAP_SOURCES + STREAM_SOURCES or (name.startswith("seqio:") and len(name) > 6)):
    bad("name", f"unknown source {name!r}; expected one of {list(SOURCE_NAMES)}")
  if not is_int(config.seq_len) or config.seq_len < 2:
    bad("seq_len", f"must be an int >= 2, got {config.seq_len!r}")
  shard_index, shard_count = _default_shards(config)
  if not is_int(shard_count) or shard_count < 1:
    bad("shard_count", f"must be an int >= 1, got {shard_count!r}")
    shard_count = 1
  if not is_int(shard_index) or not 0 <= shard_index < shard_count:
    bad("shard_index", f"must be in [0, shard_count={shard_count}), got {shard_index!r}")
  for field in ("batch_size", "eval_batch_size"):
    value = getattr(config, field)
    if value is None and field == "eval_batch_size":
      continue
    if not is_int(value) or value < 1:
      bad(field, f"must be an int >= 1, got {value!r}")
    elif value % shard_count:
      bad(field, f"global batch size {value} is not divisible by the {shard_count} "
          "processes (shard_count)")
  if config.num_epochs is not None and (not is_int(config.num_epochs) or config.num_epochs < 1):
    bad("num_epochs", f"must be None (repeat forever) or an int >= 1, got {config.num_epochs!r}")
  if config.record_format not in sources.RECORD_FORMATS:
    bad("record_format", f"must be one of {sources.RECORD_FORMATS}, got {config.record_format!r}")
  if config.decode_errors not in sources.DECODE_ERRORS:
    bad("decode_errors", f"must be one of {sources.DECODE_ERRORS}, got {config.decode_errors!r}")
  if not is_int(config.validation_every) or config.validation_every < 2:
    bad("validation_every", f"must be an int >= 2, got {config.validation_every!r}")
  for field in ("shuffle_window", "cycle_length"):
    if not is_int(getattr(config, field)) or getattr(config, field) < 1:
      bad(field, f"must be an int >= 1, got {getattr(config, field)!r}")
  for field in ("num_threads", "prefetch_buffer_size", "num_workers"):
    if not is_int(getattr(config, field)) or getattr(config, field) < 0:
      bad(field, f"must be an int >= 0, got {getattr(config, field)!r}")
  if not is_int(config.alignment) or config.alignment < 1:
    bad("alignment", f"must be an int >= 1, got {config.alignment!r}")
  elif is_int(config.seq_len) and config.seq_len % config.alignment:
    bad("seq_len", f"{config.seq_len} is not a multiple of alignment={config.alignment}; "
        f"use a multiple of {config.alignment} (so rows start on aligned positions)")
  elif name.startswith("seqio:") and config.alignment > 1:
    bad("alignment", "seqio sources pack with seqio's feature converter and cannot align "
        "documents; use alignment=1 or a grain source")
  if name in MAP_SOURCES[1:] + STREAM_SOURCES:
    if not config.paths:
      bad("paths", f"source {name!r} needs 'paths' (files or globs); none given")
    else:
      try:
        sources.expand_paths(config.paths, field="paths")
      except ValueError as e:
        bad("paths", str(e).split(": ", 2)[-1])
  if not name.startswith("seqio:"):
    try:
      tokenizers.get_tokenizer(config.tokenizer)
    except (ValueError, FileNotFoundError) as e:
      bad("tokenizer", str(e))
  if errors:
    raise DataConfigError("invalid data config:\n  " + "\n  ".join(errors))
  def as_tuple(paths):
    return (paths,) if isinstance(paths, str) else tuple(str(p) for p in paths or ())

  return dataclasses.replace(
      config, shard_index=int(shard_index), shard_count=int(shard_count),
      paths=as_tuple(config.paths), eval_paths=as_tuple(config.eval_paths))


def per_process_batch_size(config: Any, *, eval_batch: bool = False) -> int:
  """Rows per batch on this process: the global batch size divided by ``shard_count``."""
  config = validate_config(config)
  size = (config.eval_batch_size or config.batch_size) if eval_batch else config.batch_size
  return size // config.shard_count


def vocab_size(config: Any) -> int:
  """The vocabulary size of ``config.tokenizer`` (what the model's embedding needs)."""
  return tokenizers.get_tokenizer(config_from(config).tokenizer).vocab_size


def batch_spec(config: Any, *, global_batch: bool = True, eval_batch: bool = False
               ) -> dict[str, tuple[tuple[int, int], np.dtype]]:
  """Shapes and dtypes of a batch (global or per-process), e.g. for ``jax.eval_shape``."""
  config = validate_config(config)
  rows = per_process_batch_size(config, eval_batch=eval_batch)
  if global_batch:
    rows *= config.shard_count
  shape = (rows, config.seq_len)
  spec = {k: (shape, np.dtype(np.int32)) for k in BATCH_KEYS}
  spec["loss_mask"] = (shape, np.dtype(np.float32))
  return spec


# Transforms (top-level classes so grain workers can pickle them) -------------------------


class TokenizeDocument(grain.transforms.Map):
  """document (str or pre-tokenized ids) -> {"tokens": [BOS] + ids + [EOS]} (int32)."""

  def __init__(self, tokenizer: tokenizers.Tokenizer, add_bos: bool = True,
               add_eos: bool = True):
    self._tokenizer = tokenizer
    self._add_bos = add_bos
    self._add_eos = add_eos

  def map(self, element):
    if isinstance(element, str):
      ids_N = self._tokenizer.encode(element)
    else:
      ids_N = np.asarray(element, dtype=np.int32).reshape(-1)
    parts = [ids_N]
    # A model without BOS/EOS (id -1, e.g. T5's SentencePiece has no BOS) gets none.
    if self._add_bos and self._tokenizer.bos_id >= 0:
      parts.insert(0, np.array([self._tokenizer.bos_id], np.int32))
    if self._add_eos and self._tokenizer.eos_id >= 0:
      parts.append(np.array([self._tokenizer.eos_id], np.int32))
    return {"tokens": np.concatenate(parts).astype(np.int32)}


class NonEmpty(grain.transforms.Filter):
  """Drops documents that tokenize to nothing (packing cannot place empty sequences)."""

  def filter(self, element) -> bool:
    return element["tokens"].size > 0


class ShiftToLM(grain.transforms.Map):
  """A packed row of T + 1 tokens -> inputs/targets/segment_ids/positions/loss_mask of T."""

  def map(self, element):
    tokens_T1 = element["tokens"]
    segments_T1 = element["tokens_segment_ids"]
    segment_ids_T = segments_T1[:-1]
    same_doc_T = (segment_ids_T != 0) & (segments_T1[1:] == segment_ids_T)
    return {
        "inputs": tokens_T1[:-1].astype(np.int32),
        "targets": tokens_T1[1:].astype(np.int32),
        "segment_ids": segment_ids_T.astype(np.int32),
        "positions": element["tokens_positions"][:-1].astype(np.int32),
        "loss_mask": same_doc_T.astype(np.float32),
    }


class PadBatch(grain.transforms.Map):
  """Pads a short final batch with all-zero rows (segment 0, loss_mask 0) to a fixed size."""

  def __init__(self, batch_size: int):
    self._batch_size = batch_size

  def map(self, element):
    rows = element["inputs"].shape[0]
    if rows == self._batch_size:
      return element
    return {k: np.concatenate([v, np.zeros((self._batch_size - rows,) + v.shape[1:], v.dtype)])
            for k, v in element.items()}


class ShiftAndAlign(grain.transforms.Map):
  """Document tokens -> per-document inputs/targets/loss_mask, padded to a multiple of A."""

  def __init__(self, alignment: int, pad_id: int):
    self._alignment = alignment
    self._pad_id = pad_id

  def map(self, element):
    tokens_N = element["tokens"]
    n = tokens_N.size - 1
    padded = -(-n // self._alignment) * self._alignment
    inputs_P = np.full((padded,), self._pad_id, np.int32)
    targets_P = np.full((padded,), self._pad_id, np.int32)
    loss_mask_P = np.zeros((padded,), np.float32)
    inputs_P[:n] = tokens_N[:-1]
    targets_P[:n] = tokens_N[1:]
    loss_mask_P[:n] = 1.0
    return {"inputs": inputs_P, "targets": targets_P, "loss_mask": loss_mask_P}


class AtLeastTwoTokens(grain.transforms.Filter):
  """Drops documents without a single (input, target) pair."""

  def filter(self, element) -> bool:
    return element["tokens"].size > 1


class AlignedToLM(grain.transforms.Map):
  """A packed row of aligned documents -> the batch format of the module docstring."""

  def map(self, element):
    return {
        "inputs": element["inputs"].astype(np.int32),
        "targets": element["targets"].astype(np.int32),
        "segment_ids": element["inputs_segment_ids"].astype(np.int32),
        "positions": element["inputs_positions"].astype(np.int32),
        "loss_mask": element["loss_mask"].astype(np.float32),
    }


# Packing with a state that survives JSON -----------------------------------------------


class _ExactPackingIterator(_cts._ConcatThenSplitDatasetIterator):  # pylint: disable=protected-access
  """grain's concat-then-split iterator with an unambiguous, JSON-safe checkpoint state.

  grain 0.2.18 writes the slice ``(-1, -1)`` both for "no leftover element" and for "a
  whole, unsplit leftover element" (the document that did not fit into an exactly full
  row), and compares slices with ``!= (-1, -1)``, which is always true for the *lists* a
  JSON round trip (every checkpoint) turns them into. Restoring such a state dropped or
  emptied a document. Here a leftover element is always recorded with its explicit
  ``(start, stop)`` (a whole one as ``(0, len)``), and restored slices are turned back into
  tuples, so ``(-1, -1)`` means only "no leftover" and every step boundary resumes exactly.
  """

  def _checkpoint(self):
    state = super()._checkpoint()
    element = self._remainder_element
    if element is not None:
      slices = {}
      for key, sl in state.remainder_slices.items():
        sl = tuple(sl)
        if sl == _cts._EMPTY_SLICE:  # pylint: disable=protected-access
          feature = element.features[key]
          sl = (0, 1 if np.ndim(feature) == 0 else len(feature))
        slices[key] = sl
      state.remainder_slices = slices
    return state

  def set_state(self, state):
    state = dict(state)
    state["remainder_slices"] = {
        k: tuple(int(i) for i in v) for k, v in state["remainder_slices"].items()}
    super().set_state(state)


class ExactConcatThenSplitIterDataset(grain.experimental.ConcatThenSplitIterDataset):
  """``grain.experimental.ConcatThenSplitIterDataset`` that resumes exactly at every step.

  See `_ExactPackingIterator` for the state grain gets wrong; packing itself is grain's.
  """

  def __iter__(self):
    return _ExactPackingIterator(self._parent.__iter__(), config=self._config)


def empty_batch(batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
  """An all-padding batch (every ``loss_mask`` 0), used to even out eval across processes."""
  batch = {k: np.zeros((batch_size, seq_len), np.int32) for k in BATCH_KEYS}
  batch["loss_mask"] = np.zeros((batch_size, seq_len), np.float32)
  return batch


# Pipeline assembly ---------------------------------------------------------------------


def pack_and_batch(
    token_ds: grain.IterDataset,
    *,
    seq_len: int,
    batch_size: int,
    drop_remainder: bool = True,
    alignment: int = 1,
    pad_id: int = tokenizers.PAD_ID,
) -> grain.IterDataset:
  """Packs ``{"tokens": ids}`` documents into LM rows and batches them (see module doc).

  Args:
    token_ds: documents as ``{"tokens": int32 ids}``.
    seq_len: row length T.
    batch_size: rows per batch.
    drop_remainder: drop a short last batch (else pad it with ``loss_mask`` 0 rows).
    alignment: 1 = concat-then-split rows of T + 1 tokens; A > 1 = documents padded to a
      multiple of A (T must be a multiple of A) so every document starts at a row position
      divisible by A.
    pad_id: token id of the alignment padding.
  """
  if alignment > 1:
    if seq_len % alignment:
      raise DataConfigError(f"invalid data config:\n  field 'seq_len': {seq_len} is not a "
                            f"multiple of alignment={alignment}")
    ds = token_ds.filter(AtLeastTwoTokens()).map(ShiftAndAlign(alignment, pad_id))
    ds = ExactConcatThenSplitIterDataset(
        ds, length_struct={"inputs": seq_len, "targets": seq_len, "loss_mask": seq_len})
    ds = ds.map(AlignedToLM())
  else:
    ds = token_ds.filter(NonEmpty())
    ds = ExactConcatThenSplitIterDataset(ds, length_struct={"tokens": seq_len + 1})
    ds = ds.map(ShiftToLM())
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  if not drop_remainder:
    ds = ds.map(PadBatch(batch_size))
  return ds


@functools.lru_cache(maxsize=8)
def _embedded_documents(split: str, validation_every: int) -> tuple[str, ...]:
  return tuple(shakespeare.load_corpus(split, validation_every=validation_every))


def document_dataset(config: DataConfig, split: str) -> grain.IterDataset:
  """This process's documents for ``split`` ("train"/"validation"), shuffled and repeated.

  Training reads ``config.paths`` with ``config.shuffle`` and ``config.num_epochs``;
  validation reads ``config.eval_paths`` (embedded corpus: the held-out documents) once,
  in order.
  """
  train = split == "train"
  shuffle = config.shuffle and train
  num_epochs = config.num_epochs if train else 1
  read_options = grain.ReadOptions(
      num_threads=config.num_threads, prefetch_buffer_size=config.prefetch_buffer_size)
  if config.name in MAP_SOURCES:
    if config.name == "shakespeare":
      docs = grain.MapDataset.source(
          list(_embedded_documents("train" if train else "validation", config.validation_every)))
    else:
      paths = config.paths if train else _eval_paths(config)
      docs = sources.array_record_documents(paths, config.record_format,
                                            config.decode_errors)
    # Slice before shuffling so each process keeps one fixed document subset, and shuffle
    # before repeating: grain's shuffle then draws a new permutation for every epoch.
    docs = docs[config.shard_index::config.shard_count]
    if shuffle:
      docs = docs.shuffle(seed=config.seed)
    docs = docs.repeat(num_epochs)
    return docs.to_iter_dataset(read_options)
  paths = config.paths if train else _eval_paths(config)
  files = sources.expand_paths(paths, field="paths" if train else "eval_paths")
  if config.name == "parquet":
    sources.require_pyarrow()
    opener = sources.OpenParquet(config.text_column, config.decode_errors)
  else:
    opener = sources.OpenTFRecord(config.record_format, config.decode_errors)
  return sources.interleaved_file_documents(
      files, opener, shard_index=config.shard_index, shard_count=config.shard_count,
      shuffle=shuffle, seed=config.seed, num_epochs=num_epochs,
      cycle_length=config.cycle_length, shuffle_window=config.shuffle_window)


def _eval_paths(config: DataConfig) -> tuple[str, ...]:
  if not config.eval_paths:
    raise DataConfigError(
        f"invalid data config:\n  field 'eval_paths': source {config.name!r} needs "
        "'eval_paths' for evaluation; none given")
  return config.eval_paths


def build_dataset(config: Any, split: str = "train") -> grain.IterDataset:
  """The full grain dataset of per-process LM batches for ``split`` (not yet iterated)."""
  config = validate_config(config)
  if config.name.startswith("seqio:"):
    raise DataConfigError(
        "seqio sources have no grain dataset; use make_train_iterator/make_eval_iterator")
  train = split == "train"
  tokenizer = tokenizers.get_tokenizer(config.tokenizer)
  ds = document_dataset(config, split)
  ds = ds.map(TokenizeDocument(tokenizer, config.add_bos, config.add_eos))
  ds = pack_and_batch(
      ds, seq_len=config.seq_len,
      batch_size=per_process_batch_size(config, eval_batch=not train),
      drop_remainder=train, alignment=config.alignment, pad_id=max(tokenizer.pad_id, 0))
  if config.num_workers > 0:
    _mark_absl_flags_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.num_workers))
  return ds


def check_sources(config: Any, *, eval_split: bool = False) -> None:
  """Checks every training (and, with ``eval_split``, evaluation) file before training.

  Raises:
    sources.SourceDataError: naming an empty, unreadable or malformed file.
  """
  config = validate_config(config)
  if config.name not in MAP_SOURCES[1:] + STREAM_SOURCES:
    return
  groups = [("paths", config.paths)]
  if eval_split and config.eval_paths:
    groups.append(("eval_paths", config.eval_paths))
  for field, paths in groups:
    sources.check_files(config.name, sources.expand_paths(paths, field=field),
                        text_column=config.text_column)


def _mark_absl_flags_parsed() -> None:
  # grain workers read absl flags; outside absl.app.run they are unparsed and would raise
  # UnparsedFlagAccessError, so accept the defaults.
  from absl import flags  # pylint: disable=g-import-not-at-top

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def make_train_iterator(config: Any):
  """A checkpointable iterator over this process's training batches.

  Args:
    config: `DataConfig`, ``ConfigDict`` or dict with `DataConfig` fields.

  Returns:
    A grain ``DatasetIterator`` (``next()`` gives a batch dict, see module docstring;
    ``get_state``/``set_state`` for exact resumption). For ``name="seqio:<task>"``, a
    `nl_jax.data.seqio_adapter.SeqioBatchIterator` (same batch format; resumes by skipping).

  Raises:
    DataConfigError: before any work if a field is invalid.
  """
  config = validate_config(config)
  if config.name.startswith("seqio:"):
    from nl_jax.data import seqio_adapter  # pylint: disable=g-import-not-at-top

    return seqio_adapter.make_seqio_iterator(config, split="train")
  return iter(build_dataset(config, "train"))


def make_eval_iterator(config: Any, num_batches: int | None = None) -> Iterator[dict]:
  """An iterator over this process's evaluation batches (one pass, no shuffle).

  Every batch has exactly ``eval_batch_size // shard_count`` rows (a short last batch is
  padded with ``loss_mask == 0`` rows).

  Args:
    config: as for `make_train_iterator`; the embedded corpus uses its validation split,
      file sources use ``eval_paths``.
    num_batches: if given, yield exactly this many batches, adding all-padding batches when
      the data runs out; set it in multi-process runs so every process steps equally often.
  """
  config = validate_config(config)
  if config.name in MAP_SOURCES[1:] + STREAM_SOURCES:
    try:
      sources.expand_paths(_eval_paths(config), field="eval_paths")
    except ValueError as e:
      raise DataConfigError(str(e) if isinstance(e, DataConfigError) else
                            "invalid data config:\n  " + str(e).split(": ", 1)[-1]) from e
  if config.name.startswith("seqio:"):
    from nl_jax.data import seqio_adapter  # pylint: disable=g-import-not-at-top

    it = seqio_adapter.make_seqio_iterator(config, split="validation")
  else:
    it = iter(build_dataset(config, "validation"))
  if num_batches is None:
    return it
  return _fixed_length(it, num_batches, per_process_batch_size(config, eval_batch=True),
                       config.seq_len)


def _fixed_length(it, num_batches: int, batch_size: int, seq_len: int):
  for _ in range(num_batches):
    batch = next(it, None)
    yield batch if batch is not None else empty_batch(batch_size, seq_len)


class MultiShardIterator:
  """Concatenates the batches of several data shards read by one process.

  Lets the data stream be fixed by ``shard_count`` instead of the number of processes: a
  run on 1 process reading shards (0, 1) sees exactly the global batches of a run on 2
  processes reading one shard each, and its checkpoints record every shard's position.
  Checkpointable through `nl_jax.data.checkpointing` (``get_state`` returns JSON bytes).
  """

  def __init__(self, iterators: list):
    self._iterators = list(iterators)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batches = [next(it) for it in self._iterators]
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

  def get_state(self) -> bytes:
    import json  # pylint: disable=g-import-not-at-top

    return json.dumps([it.get_state() for it in self._iterators]).encode()

  def set_state(self, state: bytes | str | list) -> None:
    import json  # pylint: disable=g-import-not-at-top

    if isinstance(state, (bytes, str)):
      state = json.loads(state)
    if len(state) != len(self._iterators):
      raise ValueError(f"iterator state holds {len(state)} shards, this iterator reads "
                       f"{len(self._iterators)}; restore with the same data.shard_count")
    for it, s in zip(self._iterators, state, strict=True):
      it.set_state(s)

  def start_prefetch(self) -> None:
    """Called by grain's checkpoint handler after a restore."""
    for it in self._iterators:
      if hasattr(it, "start_prefetch"):
        it.start_prefetch()

  def close(self) -> None:
    for it in self._iterators:
      if hasattr(it, "close"):
        it.close()


def make_process_iterator(config: Any, process_index: int, process_count: int,
                          split: str = "train", num_batches: int | None = None):
  """This process's iterator when ``config.shard_count`` may exceed the process count.

  With ``shard_count`` None the process reads shard ``process_index`` of ``process_count``
  (the usual layout). With ``shard_count = k * process_count`` it reads shards
  ``[k * process_index, k * (process_index + 1))`` and concatenates their rows, so the
  global batch does not depend on how many processes read it.

  Args:
    config: data config (``batch_size`` is global).
    process_index: this process.
    process_count: number of processes.
    split: "train" (checkpointable, `MultiShardIterator`) or "validation" (one pass).
    num_batches: validation only: exactly this many batches (see `make_eval_iterator`).

  Raises:
    DataConfigError: if ``shard_count`` is not a multiple of ``process_count``.
  """
  config = config_from(config)
  shard_count = config.shard_count or process_count
  if shard_count % process_count:
    raise DataConfigError(
        f"invalid data config:\n  field 'shard_count': {shard_count} is not a multiple of "
        f"the {process_count} processes; use a multiple of {process_count} (or None)")
  per = shard_count // process_count
  shards = [dataclasses.replace(config, shard_index=process_index * per + i,
                                shard_count=shard_count) for i in range(per)]
  if split == "train":
    return MultiShardIterator([make_train_iterator(c) for c in shards])
  return MultiShardIterator([make_eval_iterator(c, num_batches=num_batches) for c in shards])
