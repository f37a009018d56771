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
"""Tests for the grain LM pipeline: packing, sharding, epochs, checkpointing, config."""

import dataclasses

import grain
import numpy as np
import pytest

from nl_jax import data
from nl_jax.data import pipeline, shakespeare, tokenizers

SMALL = data.DataConfig(seq_len=64, batch_size=4, shard_index=0, shard_count=1, seed=3)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _full_rows(batch):
  """The packed rows of T + 1 tokens that a batch was cut from."""
  return np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)


def _check_row_invariants(batch, bos_id=tokenizers.BOS_ID):
  """Segment ids, positions, targets and loss mask agree with each other in every row."""
  inputs, targets = batch["inputs"], batch["targets"]
  seg, pos, mask = batch["segment_ids"], batch["positions"], batch["loss_mask"]
  for b in range(inputs.shape[0]):
    s = seg[b]
    np.testing.assert_array_equal(inputs[b, 1:], targets[b, :-1])  # Targets are next tokens.
    nonpad = s != 0
    # Padding only at the tail; ids 1, 2, ... consecutive.
    assert nonpad.sum() == 0 or (nonpad[: nonpad.sum()].all() and s[0] == 1)
    assert np.all(np.diff(s[nonpad]) >= 0) and np.all(np.diff(s[nonpad]) <= 1)
    np.testing.assert_array_equal(inputs[b, ~nonpad], 0)
    for segment in np.unique(s[nonpad]):
      idx = np.flatnonzero(s == segment)
      np.testing.assert_array_equal(pos[b, idx], np.arange(len(idx)))  # Resets per segment.
      if segment > 1:
        assert inputs[b, idx[0]] == bos_id  # A new segment inside a row is a new document.
    # The loss counts a target iff it continues the same document.
    same = nonpad & np.append(s[1:] == s[:-1], False)
    np.testing.assert_array_equal(mask[b, :-1], same[:-1].astype(np.float32))
    assert mask[b, -1] == float(nonpad[-1])  # The row's last target belongs to its segment.
    assert not np.any(mask[b][targets[b] == bos_id])  # Never predict a BOS across documents.


def test_batch_format():
  batch = next(data.make_train_iterator(SMALL))
  assert set(batch) == set(data.BATCH_KEYS)
  for k, v in batch.items():
    assert v.shape == (4, 64), k
    assert v.dtype == (np.float32 if k == "loss_mask" else np.int32), k
  spec = data.batch_spec(SMALL)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == spec
  _check_row_invariants(batch)
  assert batch["loss_mask"].mean() > 0.9  # Packing leaves almost no boundary or padding.


def test_pack_and_batch_exact_small_example():
  docs = [np.arange(10, 10 + n, dtype=np.int32) for n in (3, 6, 2)]
  ds = grain.MapDataset.source(docs).map(lambda x: {"tokens": x}).to_iter_dataset()
  batches = list(data.pack_and_batch(ds, seq_len=4, batch_size=2, drop_remainder=False))
  assert len(batches) == 2
  rows = np.concatenate([_full_rows(b) for b in batches])
  np.testing.assert_array_equal(rows, [[10, 11, 12, 10, 11], [12, 13, 14, 15, 10],
                                       [11, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
  b0 = batches[0]
  np.testing.assert_array_equal(b0["segment_ids"], [[1, 1, 1, 2], [1, 1, 1, 1]])
  np.testing.assert_array_equal(b0["positions"], [[0, 1, 2, 0], [0, 1, 2, 3]])
  np.testing.assert_array_equal(b0["loss_mask"], [[1, 1, 0, 1], [1, 1, 1, 0]])
  b1 = batches[1]
  np.testing.assert_array_equal(b1["segment_ids"], [[1, 0, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(b1["loss_mask"], np.zeros((2, 4)))


def test_packing_loses_and_duplicates_no_token():
  # One ordered pass over the held-out documents, padded at the end: the packed rows,
  # padding removed, must be exactly [BOS] + doc + [EOS] for every document in order.
  config = dataclasses.replace(SMALL, seq_len=128, eval_batch_size=8)
  tok = tokenizers.ByteTokenizer()
  expected = np.concatenate([
      np.concatenate([[tok.bos_id], tok.encode(doc), [tok.eos_id]])
      for doc in shakespeare.load_corpus("validation")])
  stream, num_tokens = [], 0
  for batch in data.make_eval_iterator(config):
    assert batch["inputs"].shape == (8, 128)
    _check_row_invariants(batch)
    rows = _full_rows(batch)
    stream.append(rows[rows != tok.pad_id])
    num_tokens += int(batch["loss_mask"].sum())
  stream = np.concatenate(stream)
  np.testing.assert_array_equal(stream, expected)
  num_docs = len(shakespeare.load_corpus("validation"))
  # Every next-token pair is trained except document boundaries and each row's last token.
  assert num_tokens >= len(expected) - num_docs - len(expected) // 128 - 1


def test_epochs_cover_every_document_with_a_fresh_shuffle():
  config = dataclasses.replace(SMALL, name="shakespeare", num_epochs=2)
  docs = list(pipeline.document_dataset(pipeline.validate_config(config), "train"))
  train = shakespeare.load_corpus("train")
  epoch1, epoch2 = docs[: len(train)], docs[len(train):]
  assert len(docs) == 2 * len(train)
  assert sorted(epoch1) == sorted(train) == sorted(epoch2)
  assert epoch1 != train  # Shuffled,
  assert epoch1 != epoch2  # anew each epoch.
  unshuffled = dataclasses.replace(config, shuffle=False, num_epochs=1)
  assert list(pipeline.document_dataset(pipeline.validate_config(unshuffled), "train")) == train


def test_finite_epochs_end():
  config = dataclasses.replace(SMALL, seq_len=1024, batch_size=64, num_epochs=1)
  batches = list(data.make_train_iterator(config))
  num_tokens = sum(len(d.encode()) + 2 for d in shakespeare.load_corpus("train"))
  assert len(batches) == num_tokens // (1025 * 64)  # Drops only the partial last batch.


def test_determinism_and_seed():
  a = _take(data.make_train_iterator(SMALL), 3)
  b = _take(data.make_train_iterator(SMALL), 3)
  _assert_batches_equal(a, b)
  c = next(data.make_train_iterator(dataclasses.replace(SMALL, seed=4)))
  assert not np.array_equal(a[0]["inputs"], c["inputs"])


def test_shards_split_documents_and_batch():
  config = dataclasses.replace(SMALL, batch_size=8, shard_count=2, shuffle=False, num_epochs=1)
  shard_docs = []
  for index in range(2):
    shard = pipeline.validate_config(dataclasses.replace(config, shard_index=index))
    shard_docs.append(list(pipeline.document_dataset(shard, "train")))
    batch = next(data.make_train_iterator(shard))
    assert batch["inputs"].shape == (4, 64)  # Global batch 8 over 2 processes.
  assert not set(shard_docs[0]) & set(shard_docs[1])
  assert sorted(shard_docs[0] + shard_docs[1]) == sorted(shakespeare.load_corpus("train"))
  assert data.per_process_batch_size(config) == 4
  assert data.vocab_size(config) == 259


def test_default_shards_come_from_jax():
  config = data.validate_config(data.DataConfig())
  assert (config.shard_index, config.shard_count) == (0, 1)


def test_iterator_state_resumes_exactly():
  it = data.make_train_iterator(SMALL)
  _take(it, 5)
  state = it.get_state()
  expected = _take(it, 4)
  fresh = data.make_train_iterator(SMALL)
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 4), expected)


def test_orbax_checkpoint_manager_resumes_exactly(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  from nl_jax.data import checkpointing  # pylint: disable=g-import-not-at-top

  it = data.make_train_iterator(SMALL)
  _take(it, 7)
  with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as mngr:
    mngr.save(7, args=ocp.args.Composite(data=checkpointing.save_args(it)))
    mngr.wait_until_finished()
  expected = _take(it, 3)
  assert (tmp_path / "ckpt" / "7" / "data" / "process_0-of-1.json").is_file()

  fresh = data.make_train_iterator(SMALL)
  with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as mngr:
    assert mngr.latest_step() == 7
    mngr.restore(7, args=checkpointing.composite_restore_args(fresh))
  _assert_batches_equal(_take(fresh, 3), expected)


def test_eval_iterator_pads_and_fixes_length():
  config = dataclasses.replace(SMALL, seq_len=256, eval_batch_size=16)
  batches = list(data.make_eval_iterator(config))
  last = batches[-1]
  assert last["inputs"].shape == (16, 256)
  assert last["segment_ids"][-1].sum() == 0 and last["loss_mask"][-1].sum() == 0
  fixed = list(data.make_eval_iterator(config, num_batches=len(batches) + 2))
  assert len(fixed) == len(batches) + 2
  assert fixed[-1]["loss_mask"].sum() == 0 and fixed[-1]["inputs"].shape == (16, 256)
  _assert_batches_equal(fixed[: len(batches)], batches)
  assert len(list(data.make_eval_iterator(config, num_batches=2))) == 2


def test_sentencepiece_pipeline(tmp_path):
  pytest.importorskip("sentencepiece")
  model = data.train_sentencepiece(shakespeare.load_corpus("train"), 512, tmp_path / "spm")
  config = dataclasses.replace(SMALL, tokenizer=f"spm:{model}")
  batch = next(data.make_train_iterator(config))
  _check_row_invariants(batch, bos_id=2)
  assert batch["inputs"].max() < 512
  tok = data.get_tokenizer(config.tokenizer)
  text = tok.decode(batch["inputs"][0][batch["segment_ids"][0] == 1])
  assert len(text) > 64  # Subword ids decode to real text.


def test_config_from_configdict_and_dict():
  ml_collections = pytest.importorskip("ml_collections")
  cd = ml_collections.ConfigDict({"name": "shakespeare", "seq_len": 32, "batch_size": 2,
                                  "paths": [], "shard_index": 0, "shard_count": 1})
  batch = next(data.make_train_iterator(cd))
  assert batch["inputs"].shape == (2, 32)
  assert data.config_from({"paths": "a.arrayrecord"}).paths == ("a.arrayrecord",)
  defaults = data.default_config_dict(seq_len=32)
  defaults.num_epochs = 2  # None-valued fields take ints later (CLI overrides).
  defaults.paths = ("x",)
  assert data.config_from(defaults) == data.DataConfig(seq_len=32, num_epochs=2, paths=("x",))
  with pytest.raises(data.DataConfigError, match="unknown field.*'seqlen'"):
    data.config_from({"seqlen": 3})


@pytest.mark.parametrize("fields,match", [
    ({"name": "c4"}, "field 'name': unknown source 'c4'"),
    ({"name": "seqio:"}, "field 'name'"),
    ({"seq_len": 1}, "field 'seq_len': must be an int >= 2"),
    ({"batch_size": 6, "shard_count": 4, "shard_index": 0}, "field 'batch_size'.*not divisible"),
    ({"eval_batch_size": 3, "shard_count": 2, "shard_index": 1}, "field 'eval_batch_size'"),
    ({"shard_index": 2, "shard_count": 2}, "field 'shard_index'"),
    ({"name": "arrayrecord"}, "field 'paths': source 'arrayrecord' needs 'paths'"),
    ({"name": "tfrecord", "paths": ("/nonexistent/*.tfrecord",)}, "field 'paths'.*no file"),
    ({"tokenizer": "spm:/nonexistent.model"}, "field 'tokenizer'"),
    ({"num_epochs": 0}, "field 'num_epochs'"),
    ({"record_format": "json"}, "field 'record_format'"),
])
def test_config_validation_names_the_field(fields, match):
  with pytest.raises(data.DataConfigError, match=match):
    data.make_train_iterator(dataclasses.replace(data.DataConfig(), **fields))


def test_validation_reports_all_bad_fields():
  with pytest.raises(data.DataConfigError) as e:
    data.validate_config(data.DataConfig(seq_len=0, batch_size=0))
  assert "'seq_len'" in str(e.value) and "'batch_size'" in str(e.value)


def test_eval_needs_eval_paths_for_file_sources(tmp_path):
  path = data.sources.write_array_record(tmp_path / "a.arrayrecord", ["some text"] * 3)
  config = data.DataConfig(name="arrayrecord", paths=(path,), seq_len=8, batch_size=1,
                           shard_index=0, shard_count=1)
  with pytest.raises(data.DataConfigError, match="field 'eval_paths'.*none given"):
    data.make_eval_iterator(config)
  missing = dataclasses.replace(config, eval_paths=(str(tmp_path / "val-*.arrayrecord"),))
  with pytest.raises(data.DataConfigError, match="field 'eval_paths'.*no file matches"):
    data.make_eval_iterator(missing)


def test_byte_pipeline_is_fast():
  import time  # pylint: disable=g-import-not-at-top

  config = data.DataConfig(seq_len=256, batch_size=16, shard_index=0, shard_count=1)
  it = data.make_train_iterator(config)
  start = time.perf_counter()
  _take(it, 50)
  assert time.perf_counter() - start < 10.0  # ~0.1 s here; generous for shared CI cores.


@pytest.mark.slow
def test_worker_processes_resume_exactly():
  config = dataclasses.replace(SMALL, num_workers=2)
  it = data.make_train_iterator(config)
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 3)
  fresh = data.make_train_iterator(config)
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 3), expected)
  for batch in expected:
    _check_row_invariants(batch)
  # Shut the worker processes down now rather than at interpreter exit.
  it.close()
  fresh.close()
