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
"""Titans long-term memory (LMM) as a sequence layer: a deep fast memory written in context.

Per head h and token t (Titans section 4.4 conventions, spec 5.5; NL notation: eta = step,
alpha = retention, mu = momentum decay)::

    q, k, v = silu(conv4(x W_q)), silu(conv4(x W_k)), silu(conv4(x W_v))   (per head)
    q, k    = q / ||q||, k / ||k||
    v       = v / ||v||                                    (value_norm="l2", the default)
    eta     = eta_max * sigmoid(x w_eta + b_eta)           in (0, eta_max]
    alpha   = alpha_min + (1 - alpha_min) sigmoid(x w_alpha + b_alpha)   in [alpha_min, 1]
    mu      = mu_max * sigmoid(x w_mu + b_mu)              in [0, mu_max]   (momentum=True)
    M_t     = write(M_{t-1}; k_t -> v_t, eta_t, alpha_t, mu_t)   inner loss 0.5||M(k) - v||^2
    o_t     = M_t(q_t)                                     (read after the write, as Titans)
    y       = W_o (RMSNorm(o) * silu(x W_g))               (output norm + gate + projection)

value_norm departs from Titans (only q and k are normalised there): with v unnormalised its
scale is free (the read goes through an RMSNorm), grows with training, and the inner gradient
steps, proportional to ||M(k) - v||, eventually blow the memory's weights up (x10^4 in 30
steps, then NaN: experiments/stability/README.md, "Titans"). ``value_norm="none"`` restores
the published form.

The memory is ``nl_jax.memory.MLPMemory`` (memory_depth=2: residual two-layer MLP
M(x) = x + W1 act(W2 x), anchored semantics, chunk-parallel with chunk size ``chunk_size``)
or ``nl_jax.memory.MatrixMemory`` (memory_depth=1: a d_k x d_k matrix, exact semantics,
chunk-parallel). The inner rule defaults to ``gd`` (Titans' plain gradient step with forget
gate); ``dgd`` and ``paper_l2`` are selectable. One memory per head and per sequence; the
meta-learned initial state is an outer parameter (``memory_init``: ``w1``/``w2`` for the MLP,
one matrix for depth 1).

State across calls: ``{"memory": MemoryState [B, H, ...], "conv": ConvState [B, ...]}``. The
memory goes back to its initial state at every token where ``reset`` is True (a new segment);
in the chunked paths this is exact when resets fall on multiples of ``chunk_size`` (the
model's ``alignment``).

aux (scalars, no gradient): ``inner_loss`` = mean over this call's tokens of
0.5 ||M_end(k_t) - v_t||^2 at the call's final memory (how well the memory holds what it was
written), ``eta_mean``, ``alpha_mean`` and ``momentum_mean`` (gate statistics), ``v_rms``
(RMS norm of the values) and ``w1_norm`` / ``w2_norm`` (``m_norm`` for the matrix memory:
largest Frobenius norm of the final fast weights).

``memory_kernel`` (memory_depth=1 only): "xla" uses ``MatrixMemory.scan``; "auto" calls
``pallas_kernels.memory_scan.memory_scan`` with its own dispatch (the Pallas kernel on TPU/GPU
where it applies, its XLA reference elsewhere); "pallas" forces the kernel (TPU/GPU only).
Calls with segment resets (packed documents) always use ``MatrixMemory.scan``, which
applies them; the kernel has no resets.
"""

import dataclasses
import logging
from typing import ClassVar

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from nl_jax import config_tree
from nl_jax.layers import diagnostics
from nl_jax.layers.conv import CausalConv
from nl_jax.layers.mlp import dense_init
from nl_jax.layers.norms import l2_normalize, rms_norm
from nl_jax.layers.projection import project, record_input
from nl_jax.memory import (
    MatrixMemory,
    MatrixMemoryParams,
    MemoryInputs,
    MemoryState,
    MLPMemory,
    MLPMemoryParams,
    MLPWeights,
    alpha_from_logits,
    eta_from_logits,
    momentum_from_logits,
)
from nl_jax.memory.mlp import ANCHORED_STEPS as MLP_ANCHORED_STEPS
from nl_jax.memory.mlp import CHUNK_BACKWARDS

MEMORY_KERNELS = ("auto", "xla", "pallas")
VALUE_NORMS = ("none", "l2")
_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TitansLayerConfig:
  """Shapes and options of TitansLayer (see the module docstring for the equations).

  Attributes:
    d_model: input/output width.
    n_heads: number of heads (one memory per head).
    head_dim: key/value width per head.
    memory_depth: 2 (residual MLP memory) or 1 (matrix memory).
    memory_expansion: hidden width of the MLP memory = memory_expansion * head_dim.
    memory_activation: activation of the MLP memory (see nl_jax.memory.mlp.ACTIVATIONS).
    inner_rule: "gd" (Titans), "dgd" or "paper_l2" (see nl_jax.memory.rule_coefficients).
    memory_semantics: "auto" (anchored for depth 2, exact for depth 1), "anchored" or "exact".
    chunk_size: chunk of the parallel memory path (and the anchor period of anchored); also
      the alignment that document boundaries need for exact resets.
    momentum: Titans momentum on the inner gradient (data-dependent decay).
    eta_max, alpha_min, mu_max: gate ranges (see nl_jax.memory.gates).
    conv_width: width of the causal depthwise conv on q, k, v.
    memory_implementation: "auto" | "chunked" | "sequential" (the token loop; reference).
    memory_kernel: "auto" | "xla" | "pallas" (see the module docstring).
    first_order: stop gradients through the memory writes.
    value_norm: "l2" (default: v is L2-normalised like q and k) or "none" (Titans as
      published: only q and k are). See the module docstring.
    anchored_step: "mean" (default), "sum" (Titans' eqs. 16-18) or "mean_all": the MLP
      memory's anchored step per token, divided by chunk_size or not, and its erase too under
      "mean_all" (nl_jax.memory.MLPMemory).
    chunk_backward: "autodiff" (default) or "manual" (MLPMemory.chunk_backward; memory_depth=2).
    eta_bias_init, alpha_bias_init, mu_bias_init: initial logits of the eta / alpha / mu gates
      (-2, 8, 0: eta ~ 0.12 eta_max, alpha ~ 0.9997 of the way from alpha_min to 1, mu ~
      mu_max / 2). Titans gives no values. The earlier alpha logit 4 (0.982 per token) kept
      31% of a state over 64 tokens and 1e-4 over 512, and the trained memory's writes went
      unused (experiments/in_context/README.md, "The Titans baseline's gate").
    norm_eps: epsilon of the output RMSNorm.
    dtype: activation dtype (the memory state is float32).
    param_dtype: parameter dtype.
  """
  # Set by the model that owns the layer (None inside a model config; nl_jax.config_tree).
  DERIVED: ClassVar[tuple[str, ...]] = ("d_model", "n_heads", "head_dim", "norm_eps", "dtype",
                                        "param_dtype")

  d_model: int | None = None
  n_heads: int | None = None
  head_dim: int | None = None
  memory_depth: int = 2
  memory_expansion: int = 2
  memory_activation: str = "silu"
  inner_rule: str = "gd"
  memory_semantics: str = "auto"
  chunk_size: int = 64
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
  norm_eps: float | None = 1e-6
  dtype: str | None = "float32"
  param_dtype: str | None = "float32"

  def __post_init__(self):
    name = type(self).__name__
    config_tree.check_positive_ints(self, ("d_model", "n_heads", "head_dim", "chunk_size",
                                           "memory_expansion", "conv_width"))
    config_tree.check_choices(self, {
        "memory_depth": (1, 2), "memory_kernel": MEMORY_KERNELS, "value_norm": VALUE_NORMS,
        "memory_semantics": ("auto", "anchored", "exact"),
        "inner_rule": ("gd", "dgd", "paper_l2"), "chunk_backward": CHUNK_BACKWARDS,
        "anchored_step": MLP_ANCHORED_STEPS,
        "memory_implementation": ("auto", "chunked", "sequential")})
    if self.memory_kernel == "pallas" and self.memory_depth != 1:
      raise ValueError(f"{name}.memory_kernel='pallas' needs memory_depth=1 (the kernel "
                       "computes the matrix-memory scan); use 'auto' or 'xla'")
    # The same ranges nl_jax.memory.gates enforces at trace time, checked at construction.
    if not self.eta_max > 0:
      raise ValueError(f"{name}.eta_max must be > 0, got {self.eta_max}")
    if not 0.0 <= self.alpha_min <= 1.0:
      raise ValueError(f"{name}.alpha_min must lie in [0, 1], got {self.alpha_min}")
    if self.momentum and not 0.0 <= self.mu_max < 1.0:
      raise ValueError(f"{name}.mu_max must lie in [0, 1), got {self.mu_max}")


class TitansLayer(nnx.Module):
  """Titans LMM layer; see the module docstring for the equations and TitansLayerConfig for
  the options."""

  def __init__(self, cfg: TitansLayerConfig, *, rngs: nnx.Rngs):
    config_tree.check_bound(cfg)
    self.cfg = cfg
    d_model, n_heads, head_dim = cfg.d_model, cfg.n_heads, cfg.head_dim
    param_dtype = jnp.dtype(cfg.param_dtype)
    self.n_heads, self.head_dim = n_heads, head_dim
    self.memory_depth = cfg.memory_depth
    self.memory_kernel = cfg.memory_kernel
    self.eta_max, self.alpha_min, self.mu_max = cfg.eta_max, cfg.alpha_min, cfg.mu_max
    self.norm_eps = cfg.norm_eps
    self.value_norm = cfg.value_norm
    self.dtype = jnp.dtype(cfg.dtype)
    semantics = cfg.memory_semantics
    if semantics == "auto":
      semantics = "anchored" if cfg.memory_depth == 2 else "exact"
    common = dict(rule=cfg.inner_rule, semantics=semantics, chunk_size=cfg.chunk_size,
                  momentum=cfg.momentum, first_order=cfg.first_order,
                  implementation=cfg.memory_implementation)
    hk = n_heads * head_dim
    if cfg.memory_depth == 2:
      self.memory = MLPMemory(in_dim=head_dim, hidden_dim=cfg.memory_expansion * head_dim,
                              activation=cfg.memory_activation, residual=True,
                              anchored_step=cfg.anchored_step,
                              chunk_backward=cfg.chunk_backward, **common)
      init = self.memory.init_params(rngs.params(), head_shape=(n_heads,), dtype=param_dtype)
      self.memory_init_w1 = nnx.Param(init.initial.w1)
      self.memory_init_w2 = nnx.Param(init.initial.w2)
    else:
      self.memory = MatrixMemory(key_dim=head_dim, value_dim=head_dim, **common)
      init = self.memory.init_params(rngs.params(), head_shape=(n_heads,), dtype=param_dtype)
      self.memory_init = nnx.Param(init.initial)
    shape_in = (d_model, n_heads, head_dim)
    self.wq = nnx.Param(dense_init(rngs.params(), shape_in, d_model, param_dtype))
    self.wk = nnx.Param(dense_init(rngs.params(), shape_in, d_model, param_dtype))
    self.wv = nnx.Param(dense_init(rngs.params(), shape_in, d_model, param_dtype))
    self.w_gate = nnx.Param(dense_init(rngs.params(), shape_in, d_model, param_dtype))
    self.wo = nnx.Param(dense_init(rngs.params(), (n_heads, head_dim, d_model), hk, param_dtype))
    self.qkv_conv = CausalConv(3 * hk, cfg.conv_width, activation="silu",
                               param_dtype=param_dtype, rngs=rngs)
    self.out_norm_scale = nnx.Param(jnp.ones((n_heads, head_dim), param_dtype))
    n_gates = 3 if cfg.momentum else 2
    # Small gate weights: the gates start near their biases whatever the input.
    self.w_gates = nnx.Param(0.1 * dense_init(rngs.params(), (d_model, n_gates, n_heads),
                                              d_model, param_dtype))
    bias = jnp.array([cfg.eta_bias_init, cfg.alpha_bias_init, cfg.mu_bias_init][:n_gates],
                     param_dtype)
    self.b_gates = nnx.Param(jnp.broadcast_to(bias[:, None], (n_gates, n_heads)))

  def memory_params(self):
    """The pure memory's outer parameters (initial state), from the nnx parameters."""
    if self.memory_depth == 2:
      return MLPMemoryParams(MLPWeights(self.memory_init_w1[...], self.memory_init_w2[...]))
    return MatrixMemoryParams(self.memory_init[...])

  def init_memory(self, batch_size: int):
    """{"memory": MemoryState with batch axes [B, H], "conv": ConvState [B, W-1, 3 H K]}."""
    return {"memory": self.memory.init_state(self.memory_params(), (batch_size, self.n_heads)),
            "conv": self.qkv_conv.init_state(batch_size)}

  def _memory_weights(self, mem_state: MemoryState):
    """(names, weights) of the fast memory, for the aux statistics."""
    if self.memory_depth == 2:
      return ("w1", "w2"), (mem_state.memory.w1, mem_state.memory.w2)
    return ("m",), (mem_state.memory,)

  def _kernel_implementation(self, reset):
    """The memory_scan implementation to use, or None for MatrixMemory.scan."""
    if self.memory_depth != 1 or self.memory_kernel == "xla":
      return None
    backend = jax.default_backend()
    if reset is not None:
      # The kernel has no resets; MatrixMemory.scan applies them at this layer's chunk starts.
      if self.memory_kernel == "pallas":
        raise ValueError("TitansLayer: memory_kernel='pallas' cannot apply segment resets "
                         "(packed documents); use memory_kernel='auto' or 'xla'")
      _LOG.debug("TitansLayer: segment resets in this call; using MatrixMemory.scan")
      return None
    if self.memory_kernel == "pallas":
      if backend not in ("tpu", "gpu"):
        raise ValueError(f"TitansLayer: memory_kernel='pallas' needs a TPU or GPU backend, got "
                         f"{backend!r}; use 'auto' (XLA on CPU) or 'xla'")
      return backend
    return "auto"  # memory_scan picks the kernel on TPU/GPU and its XLA reference elsewhere

  def _scan(self, state: MemoryState, inputs: MemoryInputs, reset, start_aligned: bool):
    params = self.memory_params()
    impl = self._kernel_implementation(reset)
    if impl is None:
      if reset is not None:
        inputs = inputs._replace(reset=reset)
      return self.memory.scan(params, state, inputs, start_aligned=start_aligned)
    from pallas_kernels.memory_scan import memory_scan  # pylint: disable=g-import-not-at-top
    mem = self.memory
    out = memory_scan(inputs.keys, inputs.values, inputs.queries, inputs.eta, state.memory,
                      alpha=inputs.alpha, momentum=inputs.momentum,
                      initial_momentum=state.momentum, rule=mem.rule,
                      retention_order=mem.retention_order, semantics=mem.semantics,
                      implementation=None if impl == "auto" else impl)
    t = inputs.keys.shape[-2]
    momentum = out.momentum if mem.momentum else None
    return out.outputs, MemoryState(out.state.astype(state.memory.dtype), momentum,
                                    state.anchor, state.position + t)

  def __call__(self, x_BxTxD: jax.Array, state, reset_BxT: jax.Array | None,
               segment_ids_BxT: jax.Array, start_aligned: bool = False):
    """Returns (y_BxTxD, new_state, aux) with aux = flat dict of scalar statistics.

    Args:
      x_BxTxD: normalised input.
      state: from init_memory or a previous call.
      reset_BxT: bool, True where the memory restarts from its initial state, or None (no
        resets in this call: the pallas kernel can then be used).
      segment_ids_BxT: int, the conv never mixes segments.
      start_aligned: the caller created ``state`` for this call (position 0): the chunked
        scan runs no front-padded chunk (FastLevel.scan).
    """
    b, t, _ = x_BxTxD.shape
    h, k = self.n_heads, self.head_dim
    x = x_BxTxD.astype(self.dtype)
    w = lambda p: p[...].astype(self.dtype)  # noqa: E731
    wqkv = jnp.concatenate([w(self.wq), w(self.wk), w(self.wv)], axis=1)  # [D, 3H, K]
    qkv_BxTxC = jnp.einsum("btd,dhk->bthk", record_input(x, self.wq, self.wk, self.wv),
                           wqkv).reshape(b, t, 3 * h * k)
    # The conv, then SiLU (fused in the conv's backward).
    qkv_BxTxC, conv_state = self.qkv_conv(qkv_BxTxC, segment_ids_BxT, state["conv"])
    q, kk, v = jnp.split(qkv_BxTxC.reshape(b, t, 3 * h, k), 3, axis=2)
    q, kk = l2_normalize(q), l2_normalize(kk)
    if self.value_norm == "l2":
      v = l2_normalize(v)
    to_heads = lambda a: jnp.moveaxis(a, 1, 2)  # noqa: E731  [B,T,H,K] -> [B,H,T,K]
    logits_BxTxGxH = (project("btd,dgh->btgh", x, self.w_gates, jnp.float32)
                      + self.b_gates[...].astype(jnp.float32))
    logits_GxBxHxT = jnp.moveaxis(logits_BxTxGxH, (2, 3), (0, 2))
    eta = eta_from_logits(logits_GxBxHxT[0], self.eta_max)
    alpha = alpha_from_logits(logits_GxBxHxT[1], self.alpha_min)
    mu = (momentum_from_logits(logits_GxBxHxT[2], self.mu_max) if self.memory.momentum
          else None)
    mem_dtype = jax.tree.leaves(state["memory"].memory)[0].dtype
    cast = lambda a: a.astype(mem_dtype)  # noqa: E731
    inputs = MemoryInputs(keys=cast(to_heads(kk)), values=cast(to_heads(v)), eta=cast(eta),
                          queries=cast(to_heads(q)), alpha=cast(alpha),
                          momentum=None if mu is None else cast(mu))
    reset = None if reset_BxT is None else jnp.broadcast_to(reset_BxT[:, None, :], (b, h, t))
    o_BxHxTxK, mem_state = self._scan(state["memory"], inputs, reset, start_aligned)
    o_BxTxHxK = rms_norm(jnp.moveaxis(o_BxHxTxK, 1, 2).astype(self.dtype),
                         self.out_norm_scale[...], self.norm_eps)
    gate_BxTxHxK = jax.nn.silu(project("btd,dhk->bthk", x, self.w_gate, self.dtype))
    y_BxTxD = project("bthk,hkd->btd", o_BxTxHxK * gate_BxTxHxK, self.wo, self.dtype)
    # Statistics only (no gradient): how well the final memory stores this call's pairs.
    fit = jax.lax.stop_gradient(self.memory.read(None, mem_state, inputs.keys) - inputs.values)
    aux = {
        "inner_loss": 0.5 * jnp.mean(jnp.sum(fit.astype(jnp.float32) ** 2, axis=-1)),
        "eta_mean": jnp.mean(eta),
        "alpha_mean": jnp.mean(alpha),
    }
    if mu is not None:
      aux["momentum_mean"] = jnp.mean(mu)
    aux["v_rms"] = diagnostics.rms(v)
    for name, w in zip(*self._memory_weights(mem_state)):
      aux[f"{name}_norm"] = diagnostics.max_weight_norm(w)
    return y_BxTxD, {"memory": mem_state, "conv": conv_state}, aux
