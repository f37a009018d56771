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
"""Document alignment (memory resets on chunk starts) and multi-shard iterators."""

import json

import numpy as np
import pytest

from nl_jax import data
from nl_jax.data import pipeline, tokenizers


@pytest.mark.parametrize("alignment", [8, 16])
def test_aligned_rows_put_every_document_start_on_a_multiple(alignment):
  config = data.DataConfig(seq_len=64, batch_size=4, alignment=alignment, shard_index=0,
                           shard_count=1, shuffle=False, num_epochs=1)
  it = data.make_train_iterator(config)
  batches = [next(it) for _ in range(6)]
  for batch in batches:
    seg_BxT = batch["segment_ids"]
    starts_BxT = np.ones_like(seg_BxT, bool)
    starts_BxT[:, 1:] = seg_BxT[:, 1:] != seg_BxT[:, :-1]
    starts_BxT &= seg_BxT != 0
    _, t_idx = np.nonzero(starts_BxT)
    assert np.all(t_idx % alignment == 0), t_idx  # every reset on a chunk start
    # Targets are the next input inside a document; padding is masked out.
    mask_BxT = batch["loss_mask"].astype(bool)
    same_BxT = mask_BxT[:, :-1] & mask_BxT[:, 1:] & (seg_BxT[:, :-1] == seg_BxT[:, 1:])
    np.testing.assert_array_equal(batch["targets"][:, :-1][same_BxT],
                                  batch["inputs"][:, 1:][same_BxT])
    assert np.all(batch["inputs"][~mask_BxT & (seg_BxT != 0)] == tokenizers.PAD_ID)
    assert set(batch) == set(data.BATCH_KEYS)


def test_aligned_packing_keeps_every_token_of_every_document():
  tok = tokenizers.ByteTokenizer()
  texts = ["a" * n + "b" for n in (1, 5, 7, 30, 70, 2)]
  import grain  # pylint: disable=g-import-not-at-top

  ds = grain.MapDataset.source(texts).to_iter_dataset().map(pipeline.TokenizeDocument(tok))
  ds = pipeline.pack_and_batch(ds, seq_len=16, batch_size=2, drop_remainder=False,
                               alignment=8)
  batches = list(ds)
  # Rows keep stream order: dropping the end-of-stream padding (segment 0) from the
  # flattened rows leaves exactly the aligned documents, back to back.
  flat = {k: np.concatenate([b[k].reshape(-1) for b in batches]) for k in data.BATCH_KEYS}
  keep = flat["segment_ids"] != 0
  inputs, targets, mask = flat["inputs"][keep], flat["targets"][keep], flat["loss_mask"][keep]
  exp_inputs, exp_targets, exp_mask = [], [], []
  for text in texts:
    ids = [tok.bos_id] + list(tok.encode(text)) + [tok.eos_id]
    n = len(ids) - 1
    pad = -(-n // 8) * 8 - n
    exp_inputs += ids[:-1] + [tokenizers.PAD_ID] * pad
    exp_targets += ids[1:] + [tokenizers.PAD_ID] * pad
    exp_mask += [1.0] * n + [0.0] * pad
  np.testing.assert_array_equal(inputs, exp_inputs)
  np.testing.assert_array_equal(targets, exp_targets)
  np.testing.assert_array_equal(mask, exp_mask)


def test_alignment_validation():
  with pytest.raises(data.DataConfigError, match="'seq_len'.*multiple of alignment=16"):
    data.validate_config(data.DataConfig(seq_len=40, alignment=16, shard_index=0,
                                         shard_count=1))
  with pytest.raises(data.DataConfigError, match="'alignment'"):
    data.validate_config(data.DataConfig(alignment=0, shard_index=0, shard_count=1))


def test_multi_shard_iterator_equals_concatenated_shards_and_resumes():
  base = data.DataConfig(seq_len=32, batch_size=4, shard_count=2, seed=3)
  it = data.make_process_iterator(base, 0, 1)  # one process reading both shards
  shard_its = [data.make_train_iterator(data.DataConfig(seq_len=32, batch_size=4, seed=3,
                                                        shard_index=i, shard_count=2))
               for i in range(2)]
  for _ in range(2):
    batch = next(it)
    parts = [next(s) for s in shard_its]
    for k in data.BATCH_KEYS:
      np.testing.assert_array_equal(batch[k], np.concatenate([p[k] for p in parts]))
  state = it.get_state()
  assert len(json.loads(state)) == 2
  expected = next(it)
  fresh = data.make_process_iterator(base, 0, 1)
  fresh.set_state(state)
  np.testing.assert_array_equal(next(fresh)["inputs"], expected["inputs"])
  # Process 1 of 2 reads shard 1 only.
  other = data.make_process_iterator(base, 1, 2)
  shard1 = data.make_train_iterator(data.DataConfig(seq_len=32, batch_size=4, seed=3,
                                                    shard_index=1, shard_count=2))
  np.testing.assert_array_equal(next(other)["inputs"], next(shard1)["inputs"])
  with pytest.raises(data.DataConfigError, match="'shard_count'.*multiple of the 2"):
    data.make_process_iterator(data.DataConfig(shard_count=3), 0, 2)
  with pytest.raises(ValueError, match="same data.shard_count"):
    fresh.set_state(json.dumps([{}]))
