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
* The momentum family of eqs. 46-52 (`nl_jax.optim.momentum_family`): `preconditioned_momentum`,
  `feature_momentum`, `delta_momentum_p`, `nonlinear_momentum` (Newton-Schulz: Muon) and
  `deep_momentum_gd` (eq. 50 literally), on the core `scale_by_expressive_momentum`.

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
from nl_jax.optim.momentum_family import (
    DeepMomentumMemory,
    LearnedDiagonal,
    LearnedLowRank,
    Polynomial,
    ScaleByDeepMomentumGDState,
    ScaleByExpressiveMomentumState,
    ScaleByNonlinearMomentumState,
    deep_momentum_gd,
    delta_momentum_p,
    feature_momentum,
    nonlinear_momentum,
    preconditioned_momentum,
    scale_by_deep_momentum_gd,
    scale_by_expressive_momentum,
    scale_by_nonlinear_momentum,
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
    "deep_momentum_gd",
    "DeepMomentumMemory",
    "delta_momentum",
    "delta_momentum_p",
    "dgd",
    "DimensionNumbers",
    "feature_momentum",
    "LearnedDiagonal",
    "LearnedLowRank",
    "m3",
    "MUON_COEFFS",
    "nonlinear_momentum",
    "NS_PRESETS",
    "orthogonalize",
    "orthogonalize_many",
    "Polynomial",
    "preconditioned_momentum",
    "scale_by_deep_momentum",
    "scale_by_deep_momentum_gd",
    "scale_by_delta_momentum",
    "scale_by_dgd",
    "scale_by_expressive_momentum",
    "scale_by_m3",
    "scale_by_nonlinear_momentum",
    "ScaleByDeepMomentumGDState",
    "ScaleByDeepMomentumState",
    "ScaleByDeltaMomentumState",
    "ScaleByDGDState",
    "ScaleByExpressiveMomentumState",
    "ScaleByM3State",
    "ScaleByNonlinearMomentumState",
]
