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
"""The memory watch: console fields and growth warnings (nl_jax.train.guards)."""

import pytest

from nl_jax.train import guards


def _row(inner1, w1=0.5, drift=1.0):
  return {"loss": 2.0, "aux/block_0/smt/inner_loss": 0.9, "aux/block_1/smt/inner_loss": inner1,
          "aux/block_1/smt/out_w1_norm": w1, "aux/block_0/cms/level_0/drift": drift,
          "aux/block_0/cms/level_1/drift": 2 * drift, "aux/block_0/smt/eta_mean": 0.1}


def test_growth_warns_once_naming_layer_and_quantity():
  guard = guards.GrowthGuard(factor=4.0)
  assert guard.update(10, _row(1.0)) == []
  assert guard.update(20, _row(3.9)) == []          # below 4x the first value
  msgs = guard.update(30, _row(4.5))
  assert len(msgs) == 1 and "block_1/smt inner_loss" in msgs[0] and "1 to 4.5" in msgs[0]
  assert guard.update(40, _row(40.0)) == []         # once per (layer, quantity)
  assert guard.update(50, _row(float("nan"))) == []  # non-finite is the NaN policy's job
  assert guard.update(60, _row(40.0, w1=5.0)) == []  # weight norms are shown, not watched
  msgs = guard.update(70, _row(40.0, drift=4.5))
  assert sorted(m.split(" grew")[0] for m in msgs) == [
      "memory warning: block_0/cms/level_0 drift", "memory warning: block_0/cms/level_1 drift"]


def test_console_fields_per_block():
  fields = guards.console_fields(_row(1.5))
  assert fields == ["inner 0.9 1.5", "|W1| 0.5", "drift 2"]
  assert guards.console_fields({"loss": 1.0, "aux/block_0/attn/x": 1.0}) == []


def test_factor_validated():
  with pytest.raises(ValueError, match="growth_warn_factor"):
    guards.GrowthGuard(factor=1.0)
