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
"""Config bounds (issue 20, defect 8): seq_len vs positions and memory, chunk fields."""

import os

import jax
import pytest

from nl_jax.train import config as config_lib
from nl_jax.train import loop
from tests.train.conftest import tiny_config


def _bad(c) -> str:
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c, num_devices=8, process_count=1)
  return str(e.value)


def test_chunk_size_names_its_own_field():
  c = config_lib.default_config("hope", "tiny", seq_len=64, batch_size=8)
  c.model.smt.chunk_size = 24
  msg = _bad(c)
  assert "field 'model.smt.chunk_size': 24: [24] do not divide data.seq_len=64" in msg
  assert "data.seq_len'" not in msg
  c = config_lib.default_config("hope", "tiny", seq_len=64, batch_size=8)
  c.model.cms.chunk_sizes = (8, 48)
  msg = _bad(c)
  assert "field 'model.cms.chunk_sizes': (8, 48): [48] do not divide" in msg


def test_seq_len_above_the_position_range_is_refused():
  c = config_lib.default_config("transformer_pp", "tiny", seq_len=1 << 25, batch_size=8)
  msg = _bad(c)
  assert "field 'data.seq_len': 33554432 exceeds the position range 16777216" in msg


def test_seq_len_that_cannot_fit_is_refused_before_any_work(tmp_path, monkeypatch):
  monkeypatch.setattr(config_lib, "_device_memory", lambda device: 1 << 30)
  c = tiny_config(seq_len=1 << 20)
  resolved = config_lib.validate(c, num_devices=8, process_count=1)  # Shapes are valid ...
  with pytest.raises(config_lib.ConfigError,
                     match=r"field 'data.seq_len': 1048576 needs at least .* GiB per device "
                           r"for one train step .* more than the 1.0 GiB"):
    config_lib.check_step_memory(resolved, jax.devices()[0])  # ... but do not fit.
  with pytest.raises(config_lib.ConfigError, match="data.seq_len"):
    loop.train_and_evaluate(c, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")
  # The default tiny run fits.
  config_lib.check_step_memory(config_lib.validate(tiny_config(), num_devices=8,
                                                   process_count=1), jax.devices()[0])
