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

from nl_jax.layers.mlp import SwiGLU
from nl_jax.layers.norms import RMSNorm
from nl_jax.layers.titans import MEMORY_KERNELS, TitansLayer
from nl_jax.memory.mlp import ANCHORED_STEPS as MLP_ANCHORED_STEPS
from nl_jax.memory.mlp import CHUNK_BACKWARDS
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
    memory_depth: 2 (residual MLP memory, anchored, chunk-parallel) or 1 (matrix memory).
    memory_expansion: hidden width of the MLP memory in units of head_dim.
    memory_activation: activation inside the MLP memory.
    inner_rule: "gd" (Titans), "dgd" or "paper_l2".
    memory_semantics: "auto" (anchored for depth 2, exact for depth 1), "anchored", "exact".
    chunk_size: chunk of the parallel memory path; also the alignment that document
      boundaries need for exact resets, and seq_len must be a multiple of it.
    momentum: Titans momentum on the inner gradient.
    eta_max, alpha_min, mu_max: gate ranges (nl_jax.memory.gates).
    conv_width: causal depthwise conv width on q, k, v.
    memory_implementation: "auto" | "chunked" | "sequential".
    memory_kernel: "auto" | "xla" | "pallas" (matrix memory scan kernel, memory_depth=1).
    first_order: stop gradients through the memory writes.
    value_norm: "l2" (default: v L2-normalised like q and k; departs from Titans, where v is
      not normalised: without it seed 1 of the in-context LM run diverged at step 151, see
      experiments/stability/README.md) or "none" (Titans as published).
    anchored_step: the MLP memory's chunk-parallel step (memory_depth=2): "mean" (default:
      each token's gradient step, taken at the chunk's anchor, divided by chunk_size, as a
      mini-batch average), "sum" (Titans' eqs. 16-18: every token's full step) or "mean_all"
      (the DGD erase divided by chunk_size too). Departs from Titans by default; see nl_jax.memory.mlp and experiments/in_context/README.md.
    chunk_backward: "autodiff" (default) or "manual": the MLP memory's hand-written chunk
      backward (nl_jax.memory.mlp_chunk; the same values; it covers memories without momentum,
      so momentum=False).
    eta_bias_init, alpha_bias_init, mu_bias_init: initial logits of the memory's gates (see
      nl_jax.layers.titans.TitansLayer; Titans gives no values). alpha_bias_init=8 (since
      2026-12-06; it was 4) starts the retention at 0.9997 per token instead of 0.982, which
      emptied the memory within a 512-token call: switching the trained memory's writes off
      then cost +0.0001, against +0.0053 at 8, and the held-out loss was 0.008 worse over 3
      seeds (experiments/in_context/README.md, "The Titans baseline's gate"). Runs saved
      before the field existed keep 4 (SAVED_BEFORE).
  """
  PRESETS = {
      "tiny": dict(vocab_size=259, d_model=64, n_layers=2, n_heads=4, head_dim=16,
                   mlp_hidden=160, chunk_size=16),
      "small": dict(vocab_size=259, d_model=512, n_layers=6, n_heads=8, head_dim=64,
                    mlp_hidden=1152, chunk_size=64),
      "760m": dict(vocab_size=32000, d_model=1536, n_layers=24, n_heads=12, head_dim=128,
                   mlp_hidden=3392, chunk_size=64, tie_embeddings=False, remat=True,
                   scan_layers=True, dtype="bfloat16"),
      "1_3b": dict(vocab_size=32000, d_model=2048, n_layers=24, n_heads=16, head_dim=128,
                   mlp_hidden=4736, chunk_size=64, tie_embeddings=True, remat=True,
                   scan_layers=True, dtype="bfloat16"),
  }

  memory_depth: int = 2
  memory_expansion: int = 2
  memory_activation: str = "silu"
  inner_rule: str = "gd"
  memory_semantics: str = "auto"
  chunk_size: int = 16
  momentum: bool = True
  eta_max: float = 1.0
  alpha_min: float = 0.0
  mu_max: float = 0.9
  conv_width: int = 4
  memory_implementation: str = "auto"
  memory_kernel: str = "auto"
  first_order: bool = False
  value_norm: str = "l2"
  anchored_step: str = "mean"
  chunk_backward: str = "autodiff"
  eta_bias_init: float = -2.0
  alpha_bias_init: float = 8.0
  mu_bias_init: float = 0.0
  # Runs saved before these fields existed: v not normalised, the retention gate's old logit.
  SAVED_BEFORE: ClassVar[dict[str, Any]] = {"value_norm": "none", "alpha_bias_init": 4.0}

  def __post_init__(self):
    super().__post_init__()
    name = type(self).__name__
    if self.memory_depth not in (1, 2):
      raise ValueError(f"{name}.memory_depth must be 1 or 2, got {self.memory_depth}")
    if self.memory_kernel not in MEMORY_KERNELS:
      raise ValueError(f"{name}.memory_kernel={self.memory_kernel!r} is not one of "
                       f"{MEMORY_KERNELS}")
    if self.memory_kernel == "pallas" and self.memory_depth != 1:
      raise ValueError(f"{name}.memory_kernel='pallas' needs memory_depth=1 (the kernel computes "
                       "the matrix-memory scan); use memory_kernel='auto' or 'xla'")
    if self.chunk_backward not in CHUNK_BACKWARDS:
      raise ValueError(f"{name}.chunk_backward={self.chunk_backward!r} is not one of "
                       f"{CHUNK_BACKWARDS}")
    if self.anchored_step not in MLP_ANCHORED_STEPS:
      raise ValueError(f"{name}.anchored_step={self.anchored_step!r} is not one of "
                       f"{MLP_ANCHORED_STEPS}")
    for f in ("chunk_size", "memory_expansion", "conv_width"):
      v = getattr(self, f)
      if not isinstance(v, int) or v < 1:
        raise ValueError(f"{name}.{f} must be a positive int, got {v!r}")

  @property
  def alignment(self) -> int:
    return self.chunk_size

  def validate_seq_len(self, seq_len: int) -> None:
    super().validate_seq_len(seq_len)
    if seq_len % self.chunk_size:
      raise ValueError(f"{type(self).__name__}: seq_len={seq_len} is not a multiple of "
                       f"chunk_size={self.chunk_size}; set model.chunk_size to a divisor of the "
                       "sequence length or change seq_len (chunks must tile the sequence)")

  def layer_kwargs(self) -> dict:
    return dict(memory_depth=self.memory_depth, memory_expansion=self.memory_expansion,
                memory_activation=self.memory_activation, inner_rule=self.inner_rule,
                memory_semantics=self.memory_semantics, chunk_size=self.chunk_size,
                momentum=self.momentum, eta_max=self.eta_max, alpha_min=self.alpha_min,
                mu_max=self.mu_max, conv_width=self.conv_width,
                memory_implementation=self.memory_implementation,
                memory_kernel=self.memory_kernel, first_order=self.first_order,
                norm_eps=self.norm_eps, value_norm=self.value_norm,
                anchored_step=self.anchored_step, chunk_backward=self.chunk_backward,
                eta_bias_init=self.eta_bias_init,
                alpha_bias_init=self.alpha_bias_init, mu_bias_init=self.mu_bias_init)


class TitansBlock(nnx.Module):
  """x + TitansLayer(RMSNorm(x)), then x + SwiGLU(RMSNorm(x))."""

  def __init__(self, config: TitansConfig, *, rngs: nnx.Rngs):
    dt, pdt = config.jnp_dtype, config.jnp_param_dtype
    self.titans_norm = RMSNorm(config.d_model, eps=config.norm_eps, param_dtype=pdt)
    self.titans = TitansLayer(config.d_model, config.n_heads, config.head_dim, dtype=dt,
                              param_dtype=pdt, rngs=rngs, **config.layer_kwargs())
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
