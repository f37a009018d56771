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
"""The trainer with stacked blocks (model.scan_layers): checkpoints, resumes, refusals."""

import json
import os

import jax
import numpy as np
import pytest

from nl_jax.train import config as config_lib
from nl_jax.train import loop
from nl_jax.train import workdir as workdir_lib
from tests.train.conftest import tiny_config


def _config(steps, scan_layers):
  c = tiny_config(steps=steps, n_layers=2, allow_config_changes=True)
  c.model.scan_layers = scan_layers
  return c


def test_scanned_run_resumes_from_its_checkpoint(tmp_path, compile_cache):
  del compile_cache
  work = str(tmp_path / "run")
  first = loop.train_and_evaluate(_config(2, True), work, devices=jax.devices()[:1])
  assert first["params"]["scanned_blocks"]["attn"]["wq"].shape[0] == 2
  resumed = loop.train_and_evaluate(_config(3, True), work, devices=jax.devices()[:1])
  assert resumed["resumed_from"] == 2 and resumed["step"] == 3
  whole = loop.train_and_evaluate(_config(3, True), str(tmp_path / "whole"),
                                  devices=jax.devices()[:1])
  for u, v in zip(jax.tree.leaves(resumed["params"]), jax.tree.leaves(whole["params"]),
                  strict=True):
    np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


def test_unrolled_checkpoint_is_refused_by_a_scanned_config_before_restoring(tmp_path,
                                                                             compile_cache):
  del compile_cache
  work = str(tmp_path / "run")
  loop.train_and_evaluate(_config(2, False), work, devices=jax.devices()[:1])
  # A run saved before the field existed: its config.json has no scan_layers.
  path = os.path.join(work, "config.json")
  with open(path) as f:
    saved = json.load(f)
  del saved["model"]["scan_layers"]
  with open(path, "w") as f:
    json.dump(saved, f)
  with pytest.raises(workdir_lib.ConfigChangedError,
                     match=r"changed field\(s\):\n  model.scan_layers: False -> True\n"):
    loop.train_and_evaluate(_config(3, True), work, devices=jax.devices()[:1])
  # The same old workdir resumes with the layout it was saved in.
  result = loop.train_and_evaluate(_config(3, False), work, devices=jax.devices()[:1])
  assert result["resumed_from"] == 2 and result["step"] == 3


def test_dgd_with_stacked_blocks_is_refused_naming_the_field():
  c = _config(2, True)
  c.optimizer.name = "dgd"
  with pytest.raises(config_lib.ConfigError,
                     match=r"field 'model.scan_layers': optimizer.name='dgd' "):
    config_lib.validate(c)


def test_sharded_scanned_steps_match_one_device(tmp_path, compile_cache):
  """FSDP x tensor over 8 devices: the stacked parameters keep the layer axis whole and shard
  the rest as the unrolled blocks do; the losses and parameters match one device."""
  del compile_cache
  c8 = _config(2, True)
  c8.mesh.update(data=2, fsdp=2, tensor=2)
  r8 = loop.train_and_evaluate(c8, str(tmp_path / "w8"))
  c1 = _config(2, True)
  c1.mesh.data = 1
  r1 = loop.train_and_evaluate(c1, str(tmp_path / "w1"), devices=jax.devices()[:1])
  wq = r8["params"]["scanned_blocks"]["attn"]["wq"]
  assert tuple(wq.sharding.spec)[:3] == (None, "fsdp", "tensor"), wq.sharding.spec
  np.testing.assert_allclose(r8["train_loss"], r1["train_loss"], rtol=2e-6)
  for x, y in zip(jax.tree.leaves(r8["params"]), jax.tree.leaves(r1["params"]), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=2e-6)
