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
"""Training that never loses or mixes work (issue 20): resume past a damaged checkpoint,
the workdir lock, config changes on resume, failed saves, metrics on resume."""

import glob
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from nl_jax.train import checkpoint as ckpt_lib
from nl_jax.train import loop
from nl_jax.train import workdir as workdir_lib
from tests.train.conftest import ROOT, tiny_config


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _flip_byte(path):
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    b = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([b[0] ^ 0x01]))


@pytest.mark.parametrize("damage", ["flipped_param_byte", "garbage_data_state"])
def test_damaged_newest_checkpoint_resumes_from_the_older_one(tmp_path, compile_cache,
                                                              damage):
  del compile_cache
  clean = loop.train_and_evaluate(tiny_config(steps=4, checkpoint_every=2),
                                  str(tmp_path / "clean"))
  work = str(tmp_path / "work")
  loop.train_and_evaluate(tiny_config(steps=4, checkpoint_every=2), work)
  step_dir = os.path.join(work, "checkpoints", "4")
  if damage == "flipped_param_byte":
    _flip_byte(max(glob.glob(os.path.join(step_dir, "params", "ocdbt.process_0", "d", "*")),
                   key=os.path.getsize))
  else:
    with open(os.path.join(step_dir, "data", "process_0-of-1.json"), "wb") as f:
      f.write(b"\xff\xfe garbage")
  again = loop.train_and_evaluate(tiny_config(steps=4, checkpoint_every=2), work)
  assert again["resumed_from"] == 2
  _assert_trees_equal(again["params"], clean["params"])  # Steps 3-4 retrained exactly.
  assert glob.glob(os.path.join(work, "checkpoints_damaged", "4-*", "params"))
  steps = [r["step"] for r in _rows(work) if r.get("split") == "train"]
  assert steps == [1, 2, 3, 4]  # The retrained steps are not duplicated.
  assert [r["step"] for r in _rows(work) if r.get("split") == "resume"] == [2]


_HOLD = """
import sys, time
from nl_jax.train import workdir
workdir.WorkdirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_second_trainer_refuses_then_takes_over_a_stale_lock(tmp_path, compile_cache,
                                                             caplog):
  del compile_cache
  work = str(tmp_path / "run")
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  holder = subprocess.Popen([sys.executable, "-c", _HOLD, work], env=env,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(workdir_lib.WorkdirLockedError,
                       match=rf"in use by another trainer \(host \S+ pid {holder.pid} "):
      loop.train_and_evaluate(tiny_config(steps=2), work)
    assert not os.path.exists(os.path.join(work, "checkpoints"))
    assert not os.path.exists(os.path.join(work, "config.json"))
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
  with caplog.at_level("WARNING"):
    result = loop.train_and_evaluate(tiny_config(steps=2), work)
  assert result["step"] == 2
  assert any("taking over the stale lock of host" in r.getMessage() and
             f"pid {holder.pid}" in r.getMessage() for r in caplog.records)
  with open(os.path.join(work, workdir_lib.LOCK_FILE)) as f:
    assert f.read() == ""  # Released on exit.


def test_changed_config_is_refused_and_config_json_kept(tmp_path, compile_cache):
  del compile_cache
  work = str(tmp_path / "run")
  loop.train_and_evaluate(tiny_config(steps=2), work)
  with open(os.path.join(work, "config.json"), "rb") as f:
    saved = f.read()
  changed = tiny_config(steps=2)
  changed.model.vocab_size = 512
  with pytest.raises(workdir_lib.ConfigChangedError,
                     match=r"changed field\(s\):\n  model.vocab_size: 259 -> 512\n"):
    loop.train_and_evaluate(changed, work)
  longer = tiny_config(steps=3)
  with pytest.raises(workdir_lib.ConfigChangedError,
                     match=r"train.steps: 2 -> 3\n.*\['train.steps'\] may change with "
                           r"--config.train.allow_config_changes=True"):
    loop.train_and_evaluate(longer, work)
  with open(os.path.join(work, "config.json"), "rb") as f:
    assert f.read() == saved
  model, config = ckpt_lib.load_for_eval(work)  # The workdir still loads for evaluation.
  assert config.model.vocab_size == 259 and model is not None
  # Fields that may change do so with the explicit flag; others never.
  result = loop.train_and_evaluate(tiny_config(steps=3, allow_config_changes=True), work)
  assert result["resumed_from"] == 2 and result["step"] == 3
  changed.train.allow_config_changes = True
  with pytest.raises(workdir_lib.ConfigChangedError, match="model.vocab_size"):
    loop.train_and_evaluate(changed, work)


def test_failed_save_stops_the_run_at_that_save(tmp_path, compile_cache, monkeypatch):
  del compile_cache
  work = str(tmp_path / "run")
  real = ckpt_lib._free_bytes  # pylint: disable=protected-access
  saves = []

  def free(path):
    saves.append(path)
    return real(path) if len(saves) == 1 else 100  # Room for the first save only.

  monkeypatch.setattr(ckpt_lib, "_free_bytes", free)
  with pytest.raises(ckpt_lib.CheckpointSaveError,
                     match=r"^checkpoint save of step 4 .*not enough free space .*newest "
                           r"good checkpoint: step 2$"):
    loop.train_and_evaluate(tiny_config(steps=8, checkpoint_every=2,
                                        async_checkpointing=True), work)
  train_steps = [r["step"] for r in _rows(work) if r.get("split") == "train"]
  assert max(train_steps) == 4  # Stopped at the failed save, not at the end of the run.
  assert ckpt_lib.Checkpointer(work).all_steps() == [2]


def test_non_finite_metrics_are_valid_json(tmp_path, compile_cache, monkeypatch):
  del compile_cache
  real = loop.global_batch

  def poisoned(setup, local):
    return real(setup, dict(local, loss_mask=np.full_like(local["loss_mask"], np.nan)))

  monkeypatch.setattr(loop, "global_batch", poisoned)
  work = str(tmp_path / "run")
  loop.train_and_evaluate(tiny_config(steps=2, nan_policy="skip"), work)
  with open(os.path.join(work, "metrics.jsonl"), encoding="utf-8") as f:
    text = f.read()
  rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
          for line in text.splitlines()]
  train = [r for r in rows if r["split"] == "train"]
  assert [r["loss"] for r in train] == ["nan", "nan"]  # Strings; float("nan") reads them.


def test_metrics_of_a_run_killed_before_its_first_checkpoint_are_not_duplicated(tmp_path):
  work = str(tmp_path)
  with open(os.path.join(work, "metrics.jsonl"), "w", encoding="utf-8") as f:
    for step in (1, 2, 3):
      f.write(json.dumps({"split": "train", "step": step, "loss": 1.0}) + "\n")
    f.write('{"split": "train", "st')  # A row cut by the kill.
  workdir_lib.prepare_metrics_for_resume(work, 0)  # What the loop does without a checkpoint.
  assert _rows(work) == [_rows(work)[0]] and _rows(work)[0]["split"] == "resume"
  assert _rows(work)[0]["step"] == 0 and _rows(work)[0]["dropped_rows"] == 4
