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
"""Watching the in-context memories during training: console summary and growth warnings.

The quantities are the ones the stability diagnosis (experiments/stability/README.md) found to
move before a divergence: per layer, the self-modifying Titans inner loss, the RMS of its
values ``v`` and self-generated targets ``vhat``, and the CMS levels' in-context drift from
their initial weights; the console line also shows the output memory's weight norm. Models report them in ``aux``; the
trainer logs them as ``aux/block_<i>/...``.

``GrowthGuard`` remembers each watched quantity's first logged value and warns once per
quantity, naming the layer, when it exceeds ``factor`` times that reference: in the diagnosed
failure the values grew 3-4x over ~200 steps before the memory overflowed.
"""

import math
import re
from collections.abc import Mapping

from absl import logging

# aux/<layer path>/<quantity>; the layer path is e.g. block_1/smt or block_0/cms/level_1.
WATCHED = re.compile(
    r"^aux/(?P<layer>.+)/(?P<name>inner_loss|v_rms|vhat_rms|drift)$")
# Shown on the console line but not watched: the memories' weight norms also reflect their
# meta-learned initial weights, which grow 4x in healthy runs (output memory |W1| 0.29 -> 1.37
# over 550 steps of Hope tiny); the inner loss is the signal that moved first in the failure.
SHOWN = re.compile(r"^aux/(?P<layer>.+)/(?P<name>inner_loss|out_w1_norm|drift)$")

# Reference values below this are treated as this (a quantity that starts at ~0 is not
# "growing by a factor" when it reaches 1e-3).
_FLOOR = 1e-2


def watched(metrics: Mapping[str, float], pattern: re.Pattern = WATCHED
            ) -> dict[tuple[str, str], float]:
  """{(layer, quantity): value} for the keys of a metrics row that ``pattern`` matches."""
  out = {}
  for key, value in metrics.items():
    m = pattern.match(key)
    if m:
      out[(m["layer"], m["name"])] = float(value)
  return out


def console_fields(metrics: Mapping[str, float]) -> list[str]:
  """Short per-layer memory fields for the console line (empty for memoryless models).

  ``inner`` lists the self-modifying Titans inner loss of each block, ``|W1|`` the largest
  output-memory weight norm, ``drift`` the largest CMS level drift of each block.
  """
  inner, w1, drift = {}, {}, {}
  for (layer, name), value in sorted(watched(metrics, SHOWN).items()):
    block = layer.split("/")[0].replace("block_", "b")
    if name == "inner_loss":
      inner[block] = value
    elif name == "out_w1_norm":
      w1[block] = value
    elif name == "drift":
      drift[block] = max(drift.get(block, value), value)
  fields = []
  for label, values in (("inner", inner), ("|W1|", w1), ("drift", drift)):
    if values:
      fields.append(f"{label} " + " ".join(f"{v:.3g}" for v in values.values()))
  return fields


class GrowthGuard:
  """Warns once per (layer, quantity) that grows past ``factor`` x its first logged value."""

  def __init__(self, factor: float = 4.0):
    if not factor > 1.0:
      raise ValueError(f"train.growth_warn_factor must be > 1, got {factor}")
    self.factor = factor
    self.reference: dict[tuple[str, str], float] = {}
    self.warned: set[tuple[str, str]] = set()

  def update(self, step: int, metrics: Mapping[str, float]) -> list[str]:
    """Records a logged metrics row; returns (and logs) the warnings it raises."""
    messages = []
    for key, value in watched(metrics).items():
      if not math.isfinite(value):
        continue
      ref = self.reference.setdefault(key, value)
      if key in self.warned or abs(value) <= self.factor * max(abs(ref), _FLOOR):
        continue
      self.warned.add(key)
      layer, name = key
      msg = (f"memory warning: {layer} {name} grew from {ref:.4g} to {value:.4g} "
             f"(>{self.factor:g}x) by step {step}; a growing memory precedes a non-finite "
             "loss (see experiments/stability/README.md)")
      logging.warning(msg)
      messages.append(msg)
    return messages
