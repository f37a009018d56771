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
"""Checkpoints that can be trusted (issue 20, defects 3, 5, 8): verification at restore,
fallback to the older intact step, damaged steps set aside, failed saves stop at once."""

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nl_jax import data as data_lib
from nl_jax.train import checkpoint as ckpt_lib

DATA = data_lib.DataConfig(seq_len=32, batch_size=2, shard_index=0, shard_count=1,
                           num_threads=0, prefetch_buffer_size=0)


def _iterator():
  return data_lib.make_process_iterator(DATA, 0, 1)


def _trees(value: float):
  params = {"w": jnp.full((3, 4), value), "b": jnp.arange(4.0) + value}
  state = {"step": jnp.int32(int(value)), "rng": jnp.array([1, int(value)], jnp.uint32)}
  return params, state


def _abstract(tree):
  sh = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), tree)


def _two_checkpoints(workdir):
  """Steps 1 and 2 (params filled with 1.0 / 2.0); returns the iterator states."""
  it = _iterator()
  ck = ckpt_lib.Checkpointer(str(workdir), async_save=False)
  states = {}
  for step in (1, 2):
    next(it)
    states[step] = it.get_state()
    ck.save(step, *_trees(float(step)), it)
  ck.close()
  return states


def _largest(pattern):
  return max(glob.glob(pattern), key=os.path.getsize)


TARGETS = {
    "checkpoint_metadata": lambda d: os.path.join(d, "_CHECKPOINT_METADATA"),
    "params_metadata": lambda d: os.path.join(d, "params", "_METADATA"),
    "params_ocdbt_manifest": lambda d: os.path.join(d, "params", "ocdbt.process_0",
                                                    "manifest.ocdbt"),
    "params_array_data": lambda d: _largest(os.path.join(d, "params", "ocdbt.process_0",
                                                         "d", "*")),
    "train_state_array_data": lambda d: _largest(os.path.join(d, "train_state",
                                                              "ocdbt.process_0", "d", "*")),
    "data_iterator_json": lambda d: os.path.join(d, "data", "process_0-of-1.json"),
}


def _damage(path, kind):
  if kind == "truncated":
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  elif kind == "deleted":
    os.remove(path)
  elif kind == "garbage":
    size = os.path.getsize(path)
    with open(path, "wb") as f:
      f.write(bytes((i * 37 + 11) % 256 for i in range(size)))
  elif kind == "flipped_byte":
    with open(path, "r+b") as f:
      f.seek(os.path.getsize(path) // 2)
      b = f.read(1)
      f.seek(-1, os.SEEK_CUR)
      f.write(bytes([b[0] ^ 0x01]))
  else:
    raise ValueError(kind)


CASES = [(t, k) for t in TARGETS for k in ("truncated", "deleted", "garbage")]
CASES += [("params_array_data", "flipped_byte"), ("data_iterator_json", "flipped_byte")]


@pytest.mark.parametrize("target,kind", CASES, ids=[f"{t}-{k}" for t, k in CASES])
def test_damaged_newest_checkpoint_falls_back_and_is_set_aside(tmp_path, target, kind,
                                                               caplog):
  states = _two_checkpoints(tmp_path)
  step_dir = os.path.join(tmp_path, "checkpoints", "2")
  path = TARGETS[target](step_dir)
  rel = os.path.relpath(path, step_dir)
  _damage(path, kind)
  it = _iterator()
  ck = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
  with caplog.at_level("ERROR"):
    step, params, state = ck.restore_latest(*_abstract(_trees(0.0)), it)
  ck.close()
  assert step == 1
  np.testing.assert_array_equal(params["w"], np.full((3, 4), 1.0))
  assert int(state["step"]) == 1
  assert it.get_state() == states[1]
  # Reported with step and file, set aside (renamed, not deleted), out of the step list.
  assert any("checkpoint step 2 is damaged" in r.getMessage() and rel in r.getMessage()
             for r in caplog.records), [r.getMessage() for r in caplog.records]
  assert not os.path.exists(step_dir)
  aside = glob.glob(os.path.join(tmp_path, "checkpoints_damaged", "2-*"))
  assert [p for p in aside if os.path.isdir(p)] and any(p.endswith(".reason.txt") for p in aside)
  assert ckpt_lib.Checkpointer(str(tmp_path)).all_steps() == [1]


def test_unreadable_checksums_and_extra_file_are_damage(tmp_path):
  _two_checkpoints(tmp_path)
  with open(os.path.join(tmp_path, "checkpoints", "2", ckpt_lib.CHECKSUM_FILE), "w") as f:
    f.write("{not json")
  with pytest.raises(ckpt_lib.DamagedCheckpointError, match="unreadable record of checksums"):
    ckpt_lib.verify_step(os.path.join(tmp_path, "checkpoints", "2"))
  with open(os.path.join(tmp_path, "checkpoints", "1", "params", "stray"), "w") as f:
    f.write("x")
  with pytest.raises(ckpt_lib.DamagedCheckpointError, match=r"params/stray: unexpected file"):
    ckpt_lib.verify_step(os.path.join(tmp_path, "checkpoints", "1"))
  ck = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
  assert ck.restore_latest(*_abstract(_trees(0.0)), _iterator()) is None  # Both set aside.
  ck.close()
  assert len([p for p in glob.glob(os.path.join(tmp_path, "checkpoints_damaged", "*"))
              if os.path.isdir(p)]) == 2


def test_checksums_written_for_async_saves_and_intact_steps_verify(tmp_path):
  it = _iterator()
  ck = ckpt_lib.Checkpointer(str(tmp_path), async_save=True)
  for step in (1, 2, 3):
    next(it)
    ck.save(step, *_trees(float(step)), it)
    ck.poll()
  ck.close()
  for step in (1, 2, 3):
    step_dir = os.path.join(tmp_path, "checkpoints", str(step))
    assert ckpt_lib.verify_step(step_dir) is None
    with open(os.path.join(step_dir, ckpt_lib.CHECKSUM_FILE)) as f:
      assert len(json.load(f)["files"]) > 10


def test_half_written_tmp_directories_are_removed(tmp_path):
  _two_checkpoints(tmp_path)
  tmp = os.path.join(tmp_path, "checkpoints", "3.orbax-checkpoint-tmp-1234")
  os.makedirs(os.path.join(tmp, "params"))
  ck = ckpt_lib.Checkpointer(str(tmp_path))
  assert not os.path.exists(tmp) and ck.all_steps() == [1, 2]
  ck.close()


def test_save_refuses_without_free_space(tmp_path, monkeypatch):
  _two_checkpoints(tmp_path)
  monkeypatch.setattr(ckpt_lib, "_free_bytes", lambda path: 10)
  ck = ckpt_lib.Checkpointer(str(tmp_path), async_save=True)
  with pytest.raises(ckpt_lib.CheckpointSaveError,
                     match=r"save of step 3 to .*checkpoints failed: not enough free space "
                           r"\(10 B free, the previous checkpoint takes .*\); free space 10 B; "
                           r"newest good checkpoint: step 2$"):
    ck.save(3, *_trees(3.0), _iterator())
  ck.close()


def test_failed_async_save_raises_at_the_next_poll(tmp_path, monkeypatch):
  it = _iterator()
  ck = ckpt_lib.Checkpointer(str(tmp_path), async_save=True)
  ck.save(1, *_trees(1.0), it)
  ck.wait()
  ck.save(2, *_trees(2.0), it)

  def failed():
    raise OSError(28, "No space left on device")

  # What orbax reports once the background write of step 2 has failed.
  monkeypatch.setattr(ck._mngr, "check_for_errors", failed)  # pylint: disable=protected-access
  with pytest.raises(ckpt_lib.CheckpointSaveError,
                     match=r"^checkpoint save of step 2 to .* No space left on device; free "
                           r"space .*; newest good checkpoint: step 1$"):
    while True:  # The loop polls after every step; the error comes at the first poll after.
      ck.poll()
  monkeypatch.undo()
  ck.close()  # Closing after a failed save does not raise again.


def test_load_for_eval_refuses_a_damaged_step(tmp_path):
  from nl_jax.train import loop  # pylint: disable=g-import-not-at-top
  from tests.train.conftest import tiny_config  # pylint: disable=g-import-not-at-top

  work = str(tmp_path / "run")
  loop.train_and_evaluate(tiny_config(steps=2), work)
  data_file = max(glob.glob(os.path.join(work, "checkpoints", "2", "params", "ocdbt.process_0",
                                         "d", "*")), key=os.path.getsize)
  with open(data_file, "r+b") as f:
    f.seek(os.path.getsize(data_file) // 2)
    b = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([b[0] ^ 0x01]))
  with pytest.raises(ckpt_lib.DamagedCheckpointError, match="content differs from its checksum"):
    ckpt_lib.load_for_eval(work)
