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
"""Fast levels as pure functions over explicit, per-sequence state.

Every memory is a frozen (hashable) configuration object whose methods are pure functions::

    mem = MatrixMemory(key_dim=64, value_dim=64, rule="dgd", chunk_size=64)
    params = mem.init_params(rng, head_shape=(H,))          # outer (slow) parameters
    state = mem.init_state(params, batch_shape=(B, H))      # one copy per sequence
    y_BxHxTxV, state = mem.scan(params, state, MemoryInputs(keys, values, eta, queries, alpha))

Nothing here imports orbax, grain, TensorFlow or seqio.
"""

from nl_jax.memory.base import FastLevel
from nl_jax.memory.gates import alpha_from_logits, eta_from_logits, momentum_from_logits
from nl_jax.memory.matrix import MatrixMemory, MatrixMemoryParams
from nl_jax.memory.mlp import MLPMemory, MLPMemoryParams, MLPWeights
from nl_jax.memory.types import (
    READS,
    RETENTION_ORDERS,
    RULES,
    SEMANTICS,
    MemoryInputs,
    MemoryState,
    rule_coefficients,
)
from nl_jax.memory.windowed import WINDOWED_RULES, WindowedMatrixMemory

__all__ = [
    "FastLevel",
    "MatrixMemory",
    "MatrixMemoryParams",
    "MLPMemory",
    "MLPMemoryParams",
    "MLPWeights",
    "MemoryInputs",
    "MemoryState",
    "READS",
    "RETENTION_ORDERS",
    "RULES",
    "SEMANTICS",
    "WINDOWED_RULES",
    "WindowedMatrixMemory",
    "alpha_from_logits",
    "eta_from_logits",
    "momentum_from_logits",
    "rule_coefficients",
]
