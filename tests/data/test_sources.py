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
"""Tests for the paper-scale sources: ArrayRecord, TFRecord and Parquet files."""

import dataclasses
import importlib.util

import numpy as np
import pytest

from nl_jax import data
from nl_jax.data import sources, tfrecord, tokenizers

DOCS = [f"Document {i}: " + "word " * (i % 7 + 1) + "é\n" for i in range(40)]


def _all_tokens(batches):
  rows = [np.concatenate([b["inputs"], b["targets"][:, -1:]], axis=1) for b in batches]
  rows = np.concatenate(rows)
  return rows[rows != tokenizers.PAD_ID]


def _expected_tokens(docs):
  tok = tokenizers.ByteTokenizer()
  return np.concatenate([np.concatenate([[tok.bos_id], tok.encode(d), [tok.eos_id]])
                         for d in docs])


def _config(name, paths, **kw):
  fields = dict(name=name, paths=tuple(paths), eval_paths=tuple(paths), seq_len=16,
                batch_size=2, shard_index=0, shard_count=1, seed=1, shuffle_window=8)
  fields.update(kw)
  return data.DataConfig(**fields)


def test_record_codecs():
  assert sources.decode_record(sources.encode_record("héllo")) == "héllo"
  ids = np.array([5, 70000, 3], np.int32)
  np.testing.assert_array_equal(
      sources.decode_record(sources.encode_record(ids, "int32"), "int32"), ids)
  with pytest.raises(ValueError, match="record_format"):
    sources.encode_record("x", "json")


def test_expand_paths(tmp_path):
  for name in ("b.rec", "a.rec"):
    (tmp_path / name).write_bytes(b"")
  assert sources.expand_paths(str(tmp_path / "*.rec")) == [
      str(tmp_path / "a.rec"), str(tmp_path / "b.rec")]
  with pytest.raises(ValueError, match="field 'eval_paths'"):
    sources.expand_paths([str(tmp_path / "missing.rec")], field="eval_paths")


@pytest.mark.parametrize("record_format", ["text", "int32"])
def test_array_record_through_pipeline(tmp_path, record_format):
  tok = tokenizers.ByteTokenizer()
  docs = DOCS if record_format == "text" else [tok.encode(d) for d in DOCS]
  path = sources.write_array_record(tmp_path / "docs.arrayrecord", docs, record_format)
  read = list(sources.array_record_documents(path, record_format))
  assert len(read) == len(DOCS)
  # Eval = one ordered pass: every token comes back, in order.
  config = _config("arrayrecord", [path], record_format=record_format)
  np.testing.assert_array_equal(_all_tokens(data.make_eval_iterator(config)),
                                _expected_tokens(DOCS))
  # Train: shuffled, repeated, checkpointable.
  it = data.make_train_iterator(config)
  [next(it) for _ in range(3)]
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  fresh = data.make_train_iterator(config)
  fresh.set_state(state)
  for a, b in zip(expected, [next(fresh) for _ in range(3)], strict=True):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])


def test_tfrecord_crc_matches_reference():
  # CRC-32C check value from RFC 3720 (iSCSI): crc32c(b"123456789") = 0xE3069283.
  crc = 0xE3069283
  masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
  assert tfrecord.masked_crc32c(b"123456789") == masked


def test_tfrecord_framing_round_trip_and_errors(tmp_path):
  records = [b"", b"one", b"\x00\xff" * 300]
  path = tmp_path / "r.tfrecord"
  path.write_bytes(b"".join(tfrecord.frame(r) for r in records))
  assert list(tfrecord.read_records(str(path))) == records
  data_bytes = bytearray(path.read_bytes())
  data_bytes[-1] ^= 1  # the last record's data CRC
  path.write_bytes(bytes(data_bytes))
  second = 2 * tfrecord.HEADER_BYTES + 2 * tfrecord.FOOTER_BYTES + len(b"one")
  with pytest.raises(ValueError, match=f"bad data CRC at byte {second}"):
    list(tfrecord.read_records(str(path)))
  assert list(tfrecord.read_records(str(path), verify=False)) == records
  path.write_bytes(bytes(data_bytes[:-2]))
  with pytest.raises(ValueError, match=f"truncated record at byte {second}"):
    list(tfrecord.read_records(str(path), verify=False))


def test_tfrecord_files_through_pipeline(tmp_path):
  paths = [sources.write_tfrecord(tmp_path / f"part-{i}.tfrecord", DOCS[i::3])
           for i in range(3)]
  config = _config("tfrecord", [str(tmp_path / "part-*.tfrecord")], num_epochs=1,
                   eval_batch_size=2)
  # An ordered pass reads the files interleaved: same multiset of documents.
  docs = list(data.pipeline.document_dataset(
      data.validate_config(dataclasses.replace(config, shuffle=False)), "train"))
  assert sorted(docs) == sorted(DOCS)
  assert len(_all_tokens(data.make_eval_iterator(config))) == len(_expected_tokens(DOCS))
  # Shuffled, repeated training stream resumes exactly from a saved state.
  config = dataclasses.replace(config, num_epochs=None)
  it = data.make_train_iterator(config)
  [next(it) for _ in range(4)]
  state = it.get_state()
  expected = [next(it) for _ in range(5)]
  fresh = data.make_train_iterator(config)
  fresh.set_state(state)
  for a, b in zip(expected, [next(fresh) for _ in range(5)], strict=True):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  # Streaming sources shard by file.
  with pytest.raises(ValueError, match="at least"):
    next(data.make_train_iterator(dataclasses.replace(
        config, paths=(paths[0],), shard_count=2, shard_index=1)))


def test_parquet_through_pipeline(tmp_path):
  pytest.importorskip("pyarrow")
  for i in range(2):
    sources.write_parquet(tmp_path / f"fw-{i}.parquet", DOCS[i::2], row_group_size=5)
  config = data.fineweb_edu_config(str(tmp_path / "fw-*.parquet"), seq_len=16,
                                   batch_size=2, shard_index=0, shard_count=1,
                                   eval_paths=(str(tmp_path / "fw-*.parquet"),))
  assert config.name == "parquet" and config.text_column == "text"
  docs = list(data.pipeline.document_dataset(
      data.validate_config(dataclasses.replace(config, shuffle=False, num_epochs=1)), "train"))
  assert sorted(docs) == sorted(DOCS)
  assert len(_all_tokens(data.make_eval_iterator(config))) == len(_expected_tokens(DOCS))
  it = data.make_train_iterator(config)
  [next(it) for _ in range(3)]
  state = it.get_state()
  expected = next(it)
  fresh = data.make_train_iterator(config)
  fresh.set_state(state)
  np.testing.assert_array_equal(next(fresh)["inputs"], expected["inputs"])


def test_parquet_without_pyarrow_names_the_package(tmp_path):
  if importlib.util.find_spec("pyarrow") is not None:
    pytest.skip("pyarrow is installed")
  (tmp_path / "x.parquet").write_bytes(b"")
  config = _config("parquet", [str(tmp_path / "x.parquet")])
  with pytest.raises(ImportError, match="pip install pyarrow"):
    data.make_train_iterator(config)


def test_fineweb_edu_config_validates(tmp_path):
  config = data.fineweb_edu_config(str(tmp_path / "none-*.parquet"))
  with pytest.raises(data.DataConfigError, match="field 'paths'"):
    data.validate_config(config)
