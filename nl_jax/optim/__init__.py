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
"""Optimizers of Nested Learning as optax transformations.

* `orthogonalize`: Newton-Schulz (XLA reference for the Pallas kernel).
* `m3` / `scale_by_m3`: Multi-scale Momentum Muon (Algorithm 1).
* `dgd` / `scale_by_dgd`: Delta Gradient Descent for linear layers (+ `capture_linear_inputs`).
* `delta_momentum`, `deep_momentum`: the expressive momenta of section 4.4.

Importing this package pulls in jax, numpy and optax only (flax is imported lazily by
`capture_linear_inputs`).
"""

from nl_jax.optim.dgd import ScaleByDGDState, capture_linear_inputs, dgd, scale_by_dgd
from nl_jax.optim.m3 import ScaleByM3State, m3, scale_by_m3
from nl_jax.optim.momentum import (
    ScaleByDeepMomentumState,
    ScaleByDeltaMomentumState,
    deep_momentum,
    delta_momentum,
    scale_by_deep_momentum,
    scale_by_delta_momentum,
)
from nl_jax.optim.newton_schulz import (
    MUON_COEFFS,
    NS_PRESETS,
    DimensionNumbers,
    cubic_coeffs,
    orthogonalize,
    orthogonalize_many,
)

__all__ = [
    "capture_linear_inputs",
    "cubic_coeffs",
    "deep_momentum",
    "delta_momentum",
    "dgd",
    "DimensionNumbers",
    "m3",
    "MUON_COEFFS",
    "NS_PRESETS",
    "orthogonalize",
    "orthogonalize_many",
    "scale_by_deep_momentum",
    "scale_by_delta_momentum",
    "scale_by_dgd",
    "scale_by_m3",
    "ScaleByDeepMomentumState",
    "ScaleByDeltaMomentumState",
    "ScaleByDGDState",
    "ScaleByM3State",
]
