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
"""CMS levels under the paper's next-token objective (``objective="ntp"``): the pure pieces.

With ``objective="ntp"`` (paper eq. 71 with "the objective of choice for the task at hand, e.g.
next token prediction"; spec 6.1 and open question 14) a CMS level does not update itself
inside the layer: its gradient is the gradient of the WHOLE model's next-token loss, which only
the model can compute. The model (nl_jax.models.cms_ntp) therefore runs the call segment by
segment and, per segment, calls the functions here:

1. ``reset_levels``: a packed document starts in the segment -> every level goes back to its
   initial weights and drops its accumulated gradient (as for ``objective="local"``; exact
   when documents start on multiples of the segment, the model's ``alignment``).
2. ``apply_levels``: the frozen-weight chain (same variants and residuals as
   nl_jax.layers.cms) with the fast weights of the state; the model differentiates its
   segment loss w.r.t. these weights.
3. ``step_levels``: adds the segment's gradient to each level's accumulator and, for every
   level whose chunk boundary the segment reaches, steps (eq. 71, summed over the chunk, the
   same convention as the local objective)::

       acc_l <- acc_l + grad_{theta_l} sum_{t in segment} mask_t CE(logits_t, target_t)
       if the segment contains the last token of a chunk of C_l stream tokens:
         theta_l <- theta_l - s_l * acc_l ;  acc_l <- 0
       s_l = lr_l * min(1, max_step_norm / ||lr_l * acc_l||)   (per sequence; the local
                                                              objective's clip, cms._step_scale)

   Boundaries are global stream positions (``NTPState.position``), so a stream split across
   calls at multiples of the segment gives the same steps as one call. A segment that is not
   aligned (a call that starts mid-segment) steps at its end when it contains a boundary.

State: ``NTPState`` (every leaf [B, ...]; fast weights and accumulators in float32, or
float64 when the initial weights are float64).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from nl_jax.layers.cms import CMSConfig, CMSParams, SwiGLUWeights, _mlp, _step_scale, retain
from nl_jax.layers.norms import rms_norm
from nl_jax.memory.types import state_dtype


class NTPState(NamedTuple):
  """Per-sequence CMS state under the next-token objective (every leaf [B, ...]).

  weights: per level the current fast weights; acc: per level the gradient accumulated since
  the level's last step; position [B] int32: stream tokens seen (sets the chunk boundaries).
  """
  weights: tuple[SwiGLUWeights, ...]
  acc: tuple[SwiGLUWeights, ...]
  position: jax.Array


def init_ntp_state(cfg: CMSConfig, params: CMSParams, batch_size: int) -> NTPState:
  """Initial weights broadcast to one copy per sequence, zero accumulators, position 0."""
  del cfg
  dt = state_dtype(params.init[0].w_gate.dtype)
  weights = tuple(jax.tree.map(lambda a: jnp.broadcast_to(a.astype(dt), (batch_size,) + a.shape),
                               w) for w in params.init)
  acc = tuple(jax.tree.map(jnp.zeros_like, w) for w in weights)
  return NTPState(weights, acc, jnp.zeros((batch_size,), jnp.int32))


def apply_levels(cfg: CMSConfig, params: CMSParams, weights: tuple[SwiGLUWeights, ...],
                 x_BxSxD: jax.Array) -> jax.Array:
  """The CMS chain with frozen fast weights, residuals included (variants as in cms.py).

  Computed in the fast weights' dtype (float32 under bf16 activations), cast back to x's.
  """
  dt = weights[0].w_gate.dtype
  x = x_BxSxD.astype(dt)
  if cfg.variant == "sequential":
    for lvl in range(cfg.n_levels):
      x = x + _mlp(weights[lvl], rms_norm(x, params.norm[lvl], cfg.norm_eps))
    y = x
  else:
    h = rms_norm(x, params.norm[0], cfg.norm_eps)
    y = x + sum(params.agg[lvl] * _mlp(weights[lvl], h) for lvl in range(cfg.n_levels))
  return y.astype(x_BxSxD.dtype)


def _where_B(flag_B, new, old):
  return jnp.where(flag_B.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)


def reset_levels(params: CMSParams, st: NTPState, flag_B: jax.Array) -> NTPState:
  """Rows with flag_B True go back to the initial weights with empty accumulators."""
  weights = tuple(
      jax.tree.map(lambda i, w: _where_B(flag_B, jnp.broadcast_to(i.astype(w.dtype), w.shape), w),
                   init, w) for init, w in zip(params.init, st.weights, strict=True))
  acc = tuple(jax.tree.map(lambda a: _where_B(flag_B, jnp.zeros_like(a), a), a) for a in st.acc)
  return st._replace(weights=weights, acc=acc)


def step_levels(cfg: CMSConfig, st: NTPState, grads: tuple[SwiGLUWeights, ...],
                length: int, init: tuple[SwiGLUWeights, ...] | None = None
                ) -> tuple[NTPState, jax.Array]:
  """Accumulates a segment's gradient and steps the levels whose boundary it reaches.

  Args:
    cfg: the CMS config (chunk_sizes, lrs).
    st: the state the segment ran with (position = stream index of its first token).
    grads: per level the gradient of the segment's loss w.r.t. st.weights.
    length: number of tokens in the segment (static).
    init: per level the initial weights (needed when cfg.retention is set).

  Returns:
    (state after the segment, update_norm [B, k]: Frobenius norm of each level's step).
  """
  start_B = st.position
  end_B = start_B + length
  weights, acc, norms = [], [], []
  for lvl, c in enumerate(cfg.chunk_sizes):
    a = jax.tree.map(lambda x, g: x + g.astype(x.dtype), st.acc[lvl], grads[lvl])
    crossed_B = (end_B // c) > (start_B // c)
    scale_B = _step_scale(cfg, cfg.lrs[lvl], a)
    if cfg.gammas[lvl] != 1.0 and init is None:
      raise ValueError("cms_ntp.step_levels: CMSConfig.retention needs the initial weights "
                       "(init=params.init)")
    base = st.weights[lvl] if init is None else retain(cfg.gammas[lvl], init[lvl],
                                                       st.weights[lvl])
    w_new = jax.tree.map(
        lambda b, w, g, f=crossed_B, s=scale_B: _where_B(
            f, b - s.reshape((-1,) + (1,) * (g.ndim - 1)) * g, w), base, st.weights[lvl], a)
    acc.append(jax.tree.map(lambda g, f=crossed_B: _where_B(f, jnp.zeros_like(g), g), a))
    weights.append(w_new)
    norms.append(jnp.sqrt(sum(jnp.sum((n - o) ** 2, axis=tuple(range(1, n.ndim)))
                              for n, o in zip(w_new, st.weights[lvl], strict=True))))
  return NTPState(tuple(weights), tuple(acc), end_B), jnp.stack(norms, axis=1)
