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
"""TransformerPP: the Llama-style Transformer baseline (Transformer++ in the Titans papers).

Block: pre-norm residual, x + Attention(RMSNorm(x)) then x + SwiGLU(RMSNorm(x)); RoPE; no
biases; final RMSNorm; tied or untied head. It carries no state across calls
(``init_memory`` returns ``{}``); ``generate`` re-runs the context window for each token.
"""

import dataclasses

import flax.nnx as nnx
import jax

from nl_jax.layers.attention import Attention
from nl_jax.layers.conv import CausalConv
from nl_jax.layers.mlp import SwiGLU
from nl_jax.layers.norms import RMSNorm
from nl_jax.models.common import CausalLM, LMConfig, SequenceContext


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerPPConfig(LMConfig):
  """Config of TransformerPP (fields of LMConfig plus the attention options).

  Presets (parameter counts from ``registry.count_params``, checked by a test):

  * tiny: 2 layers, d=64, 4 heads x 16, SwiGLU 192, byte vocab 259, tied (0.12M; CPU, seconds).
  * small: 6 layers, d=512, 8 heads x 64, SwiGLU 1408, byte vocab 259, tied (19.41M).
  * 760m: 24 layers, d=1536, 12 heads x 128, SwiGLU 4096, vocab 32000, untied (777.9M, +2.4%).
  * 1_3b: 24 layers, d=2048, 16 heads x 128, SwiGLU 5632, vocab 32000, tied (1298.8M, -0.1%).

  (spec 7.3's suggested 24 x 1536 and 24 x 2048 with a 32K vocabulary; the large presets use
  bfloat16 activations, per-block remat and the blocks under one scan (`scan_layers`).)

  Attributes:
    sliding_window: attend to at most this many most recent tokens, or None (global).
    conv_width: 0 (default: Transformer++ as published) or the width of a causal depthwise
      conv on each block's normalised attention input (a "short conv", as in H3 / Based, and as
      the q/k/v branches of Hope's and Titans' layers have). It hands every token its
      predecessors' features, the first half of an induction head, which plain attention must
      learn as a previous-token head (experiments/in_context/README.md, MQAR).
    attention_block_size: query rows per rematerialised block of the attention (None: one
      block; memory then grows as T^2).
  """
  PRESETS = {
      "tiny": dict(vocab_size=259, d_model=64, n_layers=2, n_heads=4, head_dim=16,
                   mlp_hidden=192),
      "small": dict(vocab_size=259, d_model=512, n_layers=6, n_heads=8, head_dim=64,
                    mlp_hidden=1408),
      "760m": dict(vocab_size=32000, d_model=1536, n_layers=24, n_heads=12, head_dim=128,
                   mlp_hidden=4096, tie_embeddings=False, remat=True, scan_layers=True,
                   dtype="bfloat16"),
      "1_3b": dict(vocab_size=32000, d_model=2048, n_layers=24, n_heads=16, head_dim=128,
                   mlp_hidden=5632, tie_embeddings=True, remat=True, scan_layers=True,
                   dtype="bfloat16"),
  }

  sliding_window: int | None = None
  attention_block_size: int | None = 512
  conv_width: int = 0

  def __post_init__(self):
    super().__post_init__()
    if self.sliding_window is not None and self.sliding_window < 1:
      raise ValueError(f"TransformerPPConfig.sliding_window must be >= 1 or None, got "
                       f"{self.sliding_window}")
    if not isinstance(self.conv_width, int) or self.conv_width < 0:
      raise ValueError(f"TransformerPPConfig.conv_width must be an int >= 0 (0 = no conv), got "
                       f"{self.conv_width!r}")
    if self.attention_block_size is not None and self.attention_block_size < 1:
      raise ValueError(f"TransformerPPConfig.attention_block_size must be >= 1 or None, got "
                       f"{self.attention_block_size}")


class TransformerBlock(nnx.Module):
  """x + Attention(RMSNorm(x)) (with conv_width: Attention(Conv(RMSNorm(x)))), then
  x + SwiGLU(RMSNorm(x)). Stateless."""

  def __init__(self, config: TransformerPPConfig, *, rngs: nnx.Rngs):
    dt, pdt = config.jnp_dtype, config.jnp_param_dtype
    self.attn_norm = RMSNorm(config.d_model, eps=config.norm_eps, param_dtype=pdt)
    self.attn = Attention(config.d_model, config.n_heads, config.head_dim,
                          rope_theta=config.rope_theta, sliding_window=config.sliding_window,
                          block_size=config.attention_block_size, dtype=dt, param_dtype=pdt,
                          rngs=rngs)
    self.mlp_norm = RMSNorm(config.d_model, eps=config.norm_eps, param_dtype=pdt)
    self.mlp = SwiGLU(config.d_model, config.mlp_hidden, dtype=dt, param_dtype=pdt, rngs=rngs)
    self.conv = (CausalConv(config.d_model, config.conv_width, param_dtype=pdt, rngs=rngs)
                 if config.conv_width else None)

  def init_memory(self, batch_size: int):
    del batch_size
    return {}

  def __call__(self, x_BxTxD: jax.Array, state, ctx: SequenceContext):
    h_BxTxD = self.attn_norm(x_BxTxD)
    if self.conv is not None:
      # Stateless like the rest of the block: a call always holds the whole context.
      h_BxTxD = self.conv(h_BxTxD, ctx.segment_ids)[0].astype(h_BxTxD.dtype)
    x_BxTxD = x_BxTxD + self.attn(h_BxTxD, ctx.positions, ctx.segment_ids)
    x_BxTxD = x_BxTxD + self.mlp(self.mlp_norm(x_BxTxD))
    return x_BxTxD, state, {}


class TransformerPP(CausalLM):
  """Llama-style Transformer LM with the nl_jax model interface (see nl_jax.models.common)."""
  stateful = False

  def make_block(self, index: int, rngs: nnx.Rngs) -> nnx.Module:
    del index
    return TransformerBlock(self.config, rngs=rngs)
