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
"""Data files validated before the first step (issue 20, defect 7): empty, unreadable and
malformed files name themselves; non-UTF-8 records name file and record, with a policy."""

import importlib.util
import os
import re

import pytest

from nl_jax import data
from nl_jax.data import sources, tfrecord

needs_pyarrow = pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None,
                                   reason="needs pyarrow")


def _config(name, paths, **kw):
  fields = dict(name=name, paths=tuple(paths), seq_len=16, batch_size=2, shard_index=0,
                shard_count=1, seed=1, shuffle_window=8, num_threads=0)
  fields.update(kw)
  return data.DataConfig(**fields)


def _empty(path):
  open(path, "wb").close()
  return str(path)


def _parquet_no_rows(path):
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

  pq.write_table(pa.table({"text": pa.array([], pa.string())}), str(path))
  return str(path)


@pytest.mark.parametrize("name,make,match", [
    ("arrayrecord", lambda p: _empty(p / "e.array_record"), r"is empty \(0 bytes\)"),
    ("arrayrecord", lambda p: sources.write_array_record(p / "n.array_record", []),
     "holds no records"),
    ("arrayrecord", lambda p: (p / "g.array_record").write_bytes(b"garbage" * 50) and str(
        p / "g.array_record"), "not a readable ArrayRecord file"),
    ("tfrecord", lambda p: _empty(p / "e.tfrecord"), r"is empty \(0 bytes\)"),
    ("tfrecord", lambda p: (p / "g.tfrecord").write_bytes(b"\xff" * 40) and str(
        p / "g.tfrecord"), "not a TFRecord file"),
    pytest.param("parquet", lambda p: _empty(p / "e.parquet"), r"is empty \(0 bytes\)",
                 marks=needs_pyarrow),
    pytest.param("parquet", lambda p: _parquet_no_rows(p / "n.parquet"), "holds no rows",
                 marks=needs_pyarrow),
    pytest.param("parquet", lambda p: (p / "g.parquet").write_bytes(b"x" * 64) and str(
        p / "g.parquet"), "not a readable Parquet file", marks=needs_pyarrow),
])
def test_bad_file_is_an_error_naming_it(tmp_path, name, make, match):
  good = {"arrayrecord": sources.write_array_record,
          "tfrecord": sources.write_tfrecord,
          "parquet": sources.write_parquet}[name](tmp_path / f"ok.{name}", ["a document"])
  bad = make(tmp_path)
  with pytest.raises(sources.SourceDataError,
                     match=rf"^data file {re.escape(str(bad))}: {match}"):
    data.check_sources(_config(name, [good, bad]))
  data.check_sources(_config(name, [good]))


def test_unreadable_file_is_named(tmp_path):
  path = sources.write_tfrecord(tmp_path / "a.tfrecord", ["doc"])
  os.chmod(path, 0)
  if os.access(path, os.R_OK):  # root reads anything
    pytest.skip("running as root: file permissions do not apply")
  with pytest.raises(sources.SourceDataError, match=rf"data file {re.escape(path)}: cannot"):
    data.check_sources(_config("tfrecord", [path]))


def test_empty_array_record_fails_at_build_not_late(tmp_path):
  path = sources.write_array_record(tmp_path / "n.array_record", [])
  with pytest.raises(sources.SourceDataError, match="holds no records"):
    data.make_train_iterator(_config("arrayrecord", [path]))


def _write_raw_array_record(path, records):
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  w = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
  for r in records:
    w.write(r)
  w.close()
  return str(path)


def _write_raw_tfrecord(path, records):
  with open(path, "wb") as f:
    for r in records:
      f.write(tfrecord.frame(r))
  return str(path)


@pytest.mark.parametrize("name", ["arrayrecord", "tfrecord"])
def test_non_utf8_record_names_file_and_record_and_replace_policy(tmp_path, name):
  records = [b"first document", b"second document", b"bad \xff\xfe bytes", b"last one"]
  write = _write_raw_array_record if name == "arrayrecord" else _write_raw_tfrecord
  ok = write(tmp_path / f"a.{name}", [b"only good text"])
  path = write(tmp_path / f"b.{name}", records)
  cfg = _config(name, [ok, path], shuffle=False, num_epochs=1, seq_len=8, batch_size=1)
  with pytest.raises(sources.SourceDataError,
                     match=rf"data file {re.escape(path)}: record 2 is not valid UTF-8 .*"
                           r"decode_errors=replace"):
    list(data.make_train_iterator(cfg))
  replaced = data.DataConfig(**{**cfg.__dict__, "decode_errors": "replace"})
  batches = list(data.make_train_iterator(replaced))
  assert batches
  with pytest.raises(data.DataConfigError, match="decode_errors"):
    data.validate_config(data.DataConfig(**{**cfg.__dict__, "decode_errors": "ignore"}))
