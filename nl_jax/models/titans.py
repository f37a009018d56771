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
"""Titans language model: blocks of a Titans (LMM) layer and a SwiGLU MLP, pre-norm residual.

Block: x + TitansLayer(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)). The long-term memory of every
layer is carried across calls (``init_memory`` / the returned state), so the model keeps
writing its memory while it reads or generates; it is reset at the first token of each new
segment (packed documents).
"""

import dataclasses
from typing import Any, ClassVar

import flax.nnx as nnx
import jax

from nl_jax import config_tree
from nl_jax.layers.mlp import SwiGLU
from nl_jax.layers.norms import RMSNorm
from nl_jax.layers.titans import TitansLayer, TitansLayerConfig
from nl_jax.models.common import CausalLM, LMConfig, SequenceContext


@dataclasses.dataclass(frozen=True, kw_only=True)
class TitansConfig(LMConfig):
  """Config of the Titans LM (LMConfig fields plus the memory options of TitansLayer).

  Presets (size-matched to TransformerPP's: the Titans layer has one more D x HK projection
  (the output gate) and the memory's initial weights, paid for with a narrower SwiGLU):

  * tiny: 2 layers, d=64, 4 heads x 16, SwiGLU 160, chunk 16, byte vocab 259 (0.13M).
  * small: 6 layers, d=512, 8 heads x 64, SwiGLU 1152, chunk 64, byte vocab 259 (19.52M).
  * 760m: 24 layers, d=1536, 12 heads x 128, SwiGLU 3392, chunk 64, vocab 32000, untied
    (777.3M, +2.3%).
  * 1_3b: 24 layers, d=2048, 16 heads x 128, SwiGLU 4736, chunk 64, vocab 32000, tied
    (1295.5M, -0.3%).

  (counts from ``registry.count_params``, within 5% of the name and of TransformerPP's; the
  registry tests check both.) Memory MLP hidden width = 2 x head_dim.

  Attributes:
    titans: the memory layer (nl_jax.layers.titans.TitansLayerConfig; its widths, norm epsilon
      and dtypes come from this config): ``memory_depth`` (2: residual MLP memory, anchored,
      chunk-parallel; 1: matrix memory), ``memory_expansion``, ``memory_activation``,
      ``inner_rule`` ("gd", Titans; "dgd"; "paper_l2"), ``memory_semantics``, ``chunk_size``
      (also the alignment that document boundaries need, and seq_len must be a multiple of
      it), ``momentum``, ``eta_max`` / ``alpha_min`` / ``mu_max`` (gate ranges),
      ``conv_width``, ``memory_implementation``, ``memory_kernel`` (memory_depth=1),
      ``first_order``, ``value_norm`` ("l2" by default: v L2-normalised like q and k; departs
      from Titans, where it is not: without it seed 1 of the in-context LM run diverged at step
      151, experiments/stability/README.md; "none" is Titans as published),
      ``anchored_step`` ("mean" by default: each token's step at the chunk's anchor divided by
      chunk_size; "sum" is Titans' eqs. 16-18; departs from Titans, see nl_jax.memory.mlp),
      ``chunk_backward``, ``eta_bias_init`` / ``alpha_bias_init`` / ``mu_bias_init`` (initial
      gate logits; alpha_bias_init=8 since 2026-12-06, it was 4, which emptied the memory
      within a 512-token call: experiments/in_context/README.md, "The Titans baseline's
      gate"; runs saved before the field existed keep 4, SAVED_BEFORE).
  """
  PRESETS = {
      "tiny": dict(vocab_size=259, d_model=64, n_layers=2, n_heads=4, head_dim=16,
                   mlp_hidden=160, titans=dict(chunk_size=16)),
      "small": dict(vocab_size=259, d_model=512, n_layers=6, n_heads=8, head_dim=64,
                    mlp_hidden=1152, titans=dict(chunk_size=64)),
      "760m": dict(vocab_size=32000, d_model=1536, n_layers=24, n_heads=12, head_dim=128,
                   mlp_hidden=3392, titans=dict(chunk_size=64), tie_embeddings=False,
                   remat=True, scan_layers=True, dtype="bfloat16"),
      "1_3b": dict(vocab_size=32000, d_model=2048, n_layers=24, n_heads=16, head_dim=128,
                   mlp_hidden=4736, titans=dict(chunk_size=64), tie_embeddings=True,
                   remat=True, scan_layers=True, dtype="bfloat16"),
  }
  # Runs saved before these fields existed: v not normalised, the retention gate's old logit.
  SAVED_BEFORE: ClassVar[dict[str, Any]] = {"titans.value_norm": "none",
                                            "titans.alpha_bias_init": 4.0}
  # Flat names of the fields before the configs were nested (registry.migrate_saved).
  RENAMED: ClassVar[dict[str, str]] = {
      f: f"titans.{f}" for f in (
          "memory_depth", "memory_expansion", "memory_activation", "inner_rule",
          "memory_semantics", "chunk_size", "momentum", "eta_max", "alpha_min", "mu_max",
          "conv_width", "memory_implementation", "memory_kernel", "first_order", "value_norm",
          "anchored_step", "chunk_backward", "eta_bias_init", "alpha_bias_init",
          "mu_bias_init")}

  titans: TitansLayerConfig = dataclasses.field(
      default_factory=lambda: config_tree.unbound(TitansLayerConfig, chunk_size=16))

  def __post_init__(self):
    super().__post_init__()
    self.layer_config("titans")  # validates the layer's fields against this config's shapes

  def derived(self, layer: str) -> dict[str, Any]:
    if layer != "titans":
      return super().derived(layer)
    return dict(d_model=self.d_model, n_heads=self.n_heads, head_dim=self.head_dim,
                norm_eps=self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)

  @property
  def alignment(self) -> int:
    return self.titans.chunk_size

  def validate_seq_len(self, seq_len: int) -> None:
    super().validate_seq_len(seq_len)
    if seq_len % self.titans.chunk_size:
      raise ValueError(f"{type(self).__name__}: seq_len={seq_len} is not a multiple of "
                       f"titans.chunk_size={self.titans.chunk_size}; set "
                       "model.titans.chunk_size to a divisor of the sequence length or change "
                       "seq_len (chunks must tile the sequence)")


class TitansBlock(nnx.Module):
  """x + TitansLayer(RMSNorm(x)), then x + SwiGLU(RMSNorm(x))."""

  def __init__(self, config: TitansConfig, *, rngs: nnx.Rngs):
    dt, pdt = config.jnp_dtype, config.jnp_param_dtype
    self.titans_norm = RMSNorm(config.d_model, eps=config.norm_eps, param_dtype=pdt)
    self.titans = TitansLayer(config.layer_config("titans"), rngs=rngs)
    self.mlp_norm = RMSNorm(config.d_model, eps=config.norm_eps, param_dtype=pdt)
    self.mlp = SwiGLU(config.d_model, config.mlp_hidden, dtype=dt, param_dtype=pdt, rngs=rngs)

  def init_memory(self, batch_size: int):
    return {"titans": self.titans.init_memory(batch_size)}

  def __call__(self, x_BxTxD: jax.Array, state, ctx: SequenceContext):
    y, titans_state, aux = self.titans(self.titans_norm(x_BxTxD), state["titans"], ctx.reset,
                                       ctx.segment_ids, start_aligned=ctx.start_aligned)
    x_BxTxD = x_BxTxD + y.astype(x_BxTxD.dtype)
    x_BxTxD = x_BxTxD + self.mlp(self.mlp_norm(x_BxTxD))
    return x_BxTxD, {"titans": titans_state}, {f"titans/{k}": v for k, v in aux.items()}


class Titans(CausalLM):
  """Titans LM with the nl_jax model interface (see nl_jax.models.common)."""
  stateful = True

  def make_block(self, index: int, rngs: nnx.Rngs) -> nnx.Module:
    del index
    return TitansBlock(self.config, rngs=rngs)
