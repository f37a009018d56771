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
"""Flax NNX layers that own the slow parameters and call the pure memories of nl_jax.memory."""

from nl_jax.layers.attention import Attention, causal_attention, rope
from nl_jax.layers.cms import CMSConfig, ContinuumMemorySystem
from nl_jax.layers.conv import CausalConv, ConvState, causal_conv
from nl_jax.layers.embed import Embed
from nl_jax.layers.mlp import SwiGLU
from nl_jax.layers.norms import RMSNorm, rms_norm
from nl_jax.layers.self_modifying_titans import SelfModifyingTitans, SelfModifyingTitansConfig
from nl_jax.layers.titans import TitansLayer

__all__ = [
    "Attention",
    "CMSConfig",
    "ContinuumMemorySystem",
    "CausalConv",
    "ConvState",
    "Embed",
    "RMSNorm",
    "SelfModifyingTitans",
    "SelfModifyingTitansConfig",
    "SwiGLU",
    "TitansLayer",
    "causal_attention",
    "causal_conv",
    "rms_norm",
    "rope",
]
