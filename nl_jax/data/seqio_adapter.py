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
"""seqio adapter: a registered seqio Task/Mixture -> the nl_jax batch format.

Needs the ``seqio`` extra (``pip install 'nl_jax[seqio]'``, ~2.4 GB of TensorFlow). seqio
and TensorFlow are imported only inside the functions here, so ``import nl_jax.data``
stays light.

Batches come from ``seqio.DecoderFeatureConverter(pack=True)`` and are renamed to the grain
path's keys (``inputs``, ``targets``, ``segment_ids``, ``positions``, ``loss_mask``; shapes
``[B, T]``, B = per-process batch). One difference in convention: seqio shifts targets right
to build inputs, so each packed segment starts with input 0 and its first token is a
trained target, while the grain path prepends BOS and masks the boundary.

Resumption: `SeqioBatchIterator` resumes by rebuilding the dataset from the same seed and
skipping ``step`` batches (t5x's fallback; costs time linear in ``step``). It is exact
only as far as tf.data is deterministic for the task; **exact iterator-state resumption
is guaranteed on the grain path** (`nl_jax.data.make_train_iterator` with a grain source).

Example::

  from nl_jax.data import seqio_adapter
  seqio_adapter.register_text_task("shakespeare_lines", tokenizer="spm:/tmp/spm.model")
  it = make_train_iterator(DataConfig(name="seqio:shakespeare_lines", ...))
"""

import json
from typing import Any

import numpy as np

# Registered on demand by `make_seqio_iterator` if the config names it.
DEFAULT_TASK = "nl_jax_shakespeare_lines"

_FEATURE_MAP = {
    "inputs": "decoder_input_tokens",
    "targets": "decoder_target_tokens",
    "segment_ids": "decoder_segment_ids",
    "positions": "decoder_positions",
    "loss_mask": "decoder_loss_weights",
}


def _import_seqio():
  try:
    import seqio  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "seqio sources need the seqio extra: pip install 'nl_jax[seqio]' (pulls TensorFlow)"
    ) from e
  return seqio


def make_vocabulary(tokenizer: str = "byte"):
  """A seqio vocabulary with the same ids as `nl_jax.data.get_tokenizer(tokenizer)`.

  ``"byte"`` maps to ``seqio.ByteVocabulary`` (same layout: pad 0, eos 1, byte b -> b + 3);
  a SentencePiece path (``"spm:<path>"`` or ``<path>.model``) to
  ``seqio.SentencePieceVocabulary``.
  """
  seqio = _import_seqio()
  from nl_jax.data import tokenizers  # pylint: disable=g-import-not-at-top

  tok = tokenizers.get_tokenizer(tokenizer)
  if isinstance(tok, tokenizers.ByteTokenizer):
    return seqio.ByteVocabulary()
  if isinstance(tok, tokenizers.SentencePieceTokenizer):
    return seqio.SentencePieceVocabulary(tok.model_path)
  raise ValueError(f"no seqio vocabulary for tokenizer {tokenizer!r}")


def _corpus_lines(split: str, validation_every: int) -> list[str]:
  from nl_jax.data import shakespeare  # pylint: disable=g-import-not-at-top

  lines = []
  for doc in shakespeare.load_corpus(split, validation_every=validation_every):
    lines.extend(line for line in doc.splitlines() if line.strip())
  return lines


def register_text_task(
    name: str = DEFAULT_TASK,
    *,
    tokenizer: str = "byte",
    validation_every: int | None = None,
    overwrite: bool = True,
):
  """Registers a text-line LM task over the embedded corpus (one example per line).

  Splits "train" and "validation" are the embedded corpus splits (`load_corpus`), cut into
  non-empty lines; lines are short, so seqio's packing rarely has to trim them.

  Args:
    name: the seqio task name.
    tokenizer: "byte" or a SentencePiece model ("spm:<path>" / path).
    validation_every: held-out split, as in `load_corpus`.
    overwrite: replace an existing task of the same name.

  Returns:
    The registered ``seqio.Task``.
  """
  seqio = _import_seqio()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from nl_jax.data import shakespeare  # pylint: disable=g-import-not-at-top

  every = validation_every or shakespeare.DEFAULT_VALIDATION_EVERY

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed  # One in-memory "file"; example shuffling is seqio's job.
    return tf.data.Dataset.from_tensor_slices(_corpus_lines(split, every))

  def to_features(ds):
    return ds.map(lambda line: {"targets": line}, num_parallel_calls=tf.data.AUTOTUNE)

  if overwrite and name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(dataset_fn, splits=["train", "validation"]),
      preprocessors=[
          to_features,
          seqio.preprocessors.tokenize,
          seqio.preprocessors.append_eos_after_trim,
      ],
      output_features={
          "targets": seqio.Feature(make_vocabulary(tokenizer), add_eos=True, dtype=tf.int32)},
  )


def to_batch_format(seqio_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Renames a packed DecoderFeatureConverter batch to the nl_jax keys and dtypes."""
  batch = {k: np.asarray(seqio_batch[v], np.int32) for k, v in _FEATURE_MAP.items()}
  batch["loss_mask"] = np.asarray(seqio_batch[_FEATURE_MAP["loss_mask"]], np.float32)
  return batch


class SeqioBatchIterator:
  """Iterates nl_jax-format batches of a seqio task; resumes by seed + skip.

  ``get_state()`` returns JSON bytes ``{"step": n, ...}`` and ``set_state()`` takes them
  back, so grain's orbax handler (`nl_jax.data.checkpointing`) can save it like a grain
  iterator.
  """

  def __init__(
      self,
      task_or_mixture: Any,
      *,
      seq_len: int,
      batch_size: int,
      split: str = "train",
      seed: int = 0,
      shuffle: bool = True,
      num_epochs: int | None = None,
      shard_index: int = 0,
      shard_count: int = 1,
      start_step: int = 0,
      drop_remainder: bool = True,
  ):
    self._kwargs = dict(
        task_or_mixture=task_or_mixture, seq_len=seq_len, batch_size=batch_size, split=split,
        seed=seed, shuffle=shuffle, num_epochs=num_epochs, shard_index=shard_index,
        shard_count=shard_count, drop_remainder=drop_remainder)
    self._step = start_step
    self._it = None

  def _build(self):
    seqio = _import_seqio()
    k = self._kwargs
    ds = seqio.get_dataset(
        k["task_or_mixture"],
        task_feature_lengths={"targets": k["seq_len"]},
        feature_converter=seqio.DecoderFeatureConverter(pack=True),
        dataset_split=k["split"],
        shuffle=k["shuffle"],
        num_epochs=k["num_epochs"],
        shard_info=seqio.ShardInfo(index=k["shard_index"], num_shards=k["shard_count"]),
        seed=k["seed"],
        use_cached=False,
        verbose=False,
    )
    ds = ds.batch(k["batch_size"], drop_remainder=k["drop_remainder"])
    if self._step:
      ds = ds.skip(self._step)
    return ds.as_numpy_iterator()

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._it is None:
      self._it = self._build()
    batch = to_batch_format(next(self._it))
    self._step += 1
    return batch

  @property
  def step(self) -> int:
    return self._step

  def get_state(self) -> bytes:
    task = self._kwargs["task_or_mixture"]
    name = task if isinstance(task, str) else getattr(task, "name", str(task))
    return json.dumps({"step": self._step, "task": name, "seed": self._kwargs["seed"]}).encode()

  def set_state(self, state: bytes | str | dict) -> None:
    if isinstance(state, (bytes, str)):
      state = json.loads(state)
    self._step = int(state["step"])
    self._it = None

  def start_prefetch(self) -> None:
    """No-op; grain's orbax handler calls it after `set_state`."""


def seqio_batches(task_or_mixture: Any, **kwargs) -> SeqioBatchIterator:
  """Shorthand for ``SeqioBatchIterator(task_or_mixture, **kwargs)``."""
  return SeqioBatchIterator(task_or_mixture, **kwargs)


def make_seqio_iterator(config, split: str = "train") -> SeqioBatchIterator:
  """The seqio branch of `make_train_iterator` / `make_eval_iterator`.

  ``config.name`` is ``"seqio:<task or mixture>"``. The task must be registered (import
  the module that registers it), except `DEFAULT_TASK`, which is registered here with
  ``config.tokenizer`` if missing.
  """
  seqio = _import_seqio()
  name = config.name[len("seqio:"):]
  if name == DEFAULT_TASK and name not in seqio.TaskRegistry.names():
    register_text_task(name, tokenizer=config.tokenizer,
                       validation_every=config.validation_every)
  if name not in seqio.TaskRegistry.names() and name not in seqio.MixtureRegistry.names():
    raise ValueError(
        f"invalid data config: field 'name': seqio task or mixture {name!r} is not "
        "registered; import the module that registers it or call "
        "nl_jax.data.seqio_adapter.register_text_task")
  train = split == "train"
  batch = config.batch_size if train else (config.eval_batch_size or config.batch_size)
  return SeqioBatchIterator(
      name, seq_len=config.seq_len, batch_size=batch // config.shard_count, split=split,
      seed=config.seed, shuffle=config.shuffle and train,
      num_epochs=config.num_epochs if train else 1, shard_index=config.shard_index,
      shard_count=config.shard_count, drop_remainder=train)
