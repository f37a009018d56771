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
"""Tests for the seqio adapter (needs the seqio extra; skipped without it).

Run in an environment with seqio installed, e.g.
``PYTHONPATH=. /tmp/seqio_venv/bin/python -m pytest tests/data -m seqio``.
"""

import dataclasses

import numpy as np
import pytest

from nl_jax import data
from nl_jax.data import shakespeare

pytestmark = pytest.mark.seqio

CONFIG = data.DataConfig(name="seqio:nl_jax_shakespeare_lines", seq_len=64, batch_size=4,
                         shard_index=0, shard_count=1, seed=5)


@pytest.fixture(scope="module")
def seqio_adapter():
  pytest.importorskip("seqio")
  from nl_jax.data import seqio_adapter as adapter  # pylint: disable=g-import-not-at-top

  return adapter


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_batches_have_the_grain_format(seqio_adapter):
  batch = next(data.make_train_iterator(CONFIG))
  assert set(batch) == set(data.BATCH_KEYS)
  for k, v in batch.items():
    assert v.shape == (4, 64), k
    assert v.dtype == (np.float32 if k == "loss_mask" else np.int32), k
  seg, targets, inputs = batch["segment_ids"], batch["targets"], batch["inputs"]
  np.testing.assert_array_equal(batch["loss_mask"], (targets != 0).astype(np.float32))
  same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0)
  # seqio shifts targets right inside each segment: input t+1 is target t.
  np.testing.assert_array_equal(inputs[:, 1:][same], targets[:, :-1][same])
  lines = {line for doc in shakespeare.load_corpus("train") for line in doc.splitlines()}
  tok = data.ByteTokenizer()
  row = targets[0][seg[0] == 1]
  assert row[-1] == tok.eos_id
  assert tok.decode(row) in lines


def test_resume_by_skipping(seqio_adapter):
  it = data.make_train_iterator(CONFIG)
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 2)
  fresh = data.make_train_iterator(CONFIG)
  fresh.set_state(state)
  for a, b in zip(expected, _take(fresh, 2), strict=True):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_orbax_round_trip(seqio_adapter, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  it = data.make_train_iterator(CONFIG)
  _take(it, 2)
  with ocp.CheckpointManager(tmp_path, item_names=("data",)) as mngr:
    mngr.save(2, args=data.checkpointing.composite_save_args(it))
    mngr.wait_until_finished()
  expected = next(it)
  fresh = data.make_train_iterator(CONFIG)
  with ocp.CheckpointManager(tmp_path, item_names=("data",)) as mngr:
    mngr.restore(2, args=data.checkpointing.composite_restore_args(fresh))
  assert fresh.step == 2
  np.testing.assert_array_equal(next(fresh)["targets"], expected["targets"])


def test_sentencepiece_task_and_eval(seqio_adapter, tmp_path):
  model = data.train_sentencepiece(shakespeare.load_corpus("train"), 512, tmp_path / "spm")
  seqio_adapter.register_text_task("nl_jax_test_spm_lines", tokenizer=f"spm:{model}")
  config = dataclasses.replace(CONFIG, name="seqio:nl_jax_test_spm_lines",
                               tokenizer=f"spm:{model}", eval_batch_size=8)
  batch = next(data.make_train_iterator(config))
  assert batch["targets"].max() < 512
  evals = list(data.make_eval_iterator(config, num_batches=3))
  assert len(evals) == 3 and evals[0]["inputs"].shape == (8, 64)


def test_unregistered_task_is_a_clear_error(seqio_adapter):
  with pytest.raises(ValueError, match="not registered"):
    next(data.make_train_iterator(dataclasses.replace(CONFIG, name="seqio:no_such_task")))
