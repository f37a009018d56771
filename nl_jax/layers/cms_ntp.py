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

``variant="nested"`` (eq. 72; the reading, with its choices, is nl_jax.layers.cms's): level
l < k - 1 also holds phi_l, the start that level l + 1 learns for it, and macc_l, the sum of
level l's gradients since level l + 1's last step. Level l's own step retains toward phi_l
(theta_l <- phi_l + gamma_l (theta_l - phi_l) - s_l acc_l) and, when the segment reaches the
end of level l's context (a chunk end of level l + 1)::

    phi_l <- phi0_l + gamma_{l+1} (phi_l - phi0_l) - s_{l+1}(macc_l) macc_l
    theta_l <- phi_l ;  acc_l, macc_l <- 0

the same rule as the local objective's, with the next-token gradients in place of the local
ones.

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
  the level's last step; position [B] int32: stream tokens seen (sets the chunk boundaries);
  meta_init / meta_acc (variant="nested" only, else empty): per level l < k - 1 phi_l and
  macc_l (module docstring).
  """
  weights: tuple[SwiGLUWeights, ...]
  acc: tuple[SwiGLUWeights, ...]
  position: jax.Array
  meta_init: tuple[SwiGLUWeights, ...] = ()
  meta_acc: tuple[SwiGLUWeights, ...] = ()


def init_ntp_state(cfg: CMSConfig, params: CMSParams, batch_size: int) -> NTPState:
  """Initial weights broadcast to one copy per sequence, zero accumulators, position 0."""
  dt = state_dtype(params.init[0].w_gate.dtype)
  weights = tuple(jax.tree.map(lambda a: jnp.broadcast_to(a.astype(dt), (batch_size,) + a.shape),
                               w) for w in params.init)
  acc = tuple(jax.tree.map(jnp.zeros_like, w) for w in weights)
  n_meta = _n_meta(cfg)
  return NTPState(weights, acc, jnp.zeros((batch_size,), jnp.int32),
                  meta_init=weights[:n_meta], meta_acc=acc[:n_meta])


def _n_meta(cfg: CMSConfig) -> int:
  """Levels whose start is learned by the next slower level (nested: all but the slowest)."""
  return cfg.n_levels - 1 if cfg.variant == "nested" else 0


def apply_levels(cfg: CMSConfig, params: CMSParams, weights: tuple[SwiGLUWeights, ...],
                 x_BxSxD: jax.Array) -> jax.Array:
  """The CMS chain with frozen fast weights, residuals included (variants as in cms.py).

  Computed in the fast weights' dtype (float32 under bf16 activations), cast back to x's.
  """
  dt = weights[0].w_gate.dtype
  x = x_BxSxD.astype(dt)
  if cfg.variant in ("sequential", "nested"):
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
  """Rows with flag_B True go back to the initial weights with empty accumulators (nested:
  phi_l back to the initial weights, macc_l emptied)."""
  def to_init(states):
    return tuple(jax.tree.map(
        lambda i, w: _where_B(flag_B, jnp.broadcast_to(i.astype(w.dtype), w.shape), w), init, w)
                 for init, w in zip(params.init, states, strict=False))

  def to_zero(states):
    return tuple(jax.tree.map(lambda a: _where_B(flag_B, jnp.zeros_like(a), a), a)
                 for a in states)

  return st._replace(weights=to_init(st.weights), acc=to_zero(st.acc),
                     meta_init=to_init(st.meta_init), meta_acc=to_zero(st.meta_acc))


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
  n_meta = len(st.meta_init)
  if init is None and any(cfg.gammas[lvl] != 1.0 for lvl in range(cfg.n_levels)):
    raise ValueError("cms_ntp.step_levels: CMSConfig.retention needs the initial weights "
                     "(init=params.init)")

  def crossed(c):
    return (end_B // c) > (start_B // c)

  def minus(base, a, scale_B):
    return jax.tree.map(lambda b, g: b - scale_B.reshape((-1,) + (1,) * (g.ndim - 1)) * g,
                        base, a)

  def where(flag_B, new, old):
    return jax.tree.map(lambda n, o: _where_B(flag_B, n, o), new, old)

  weights, acc, meta_init, meta_acc, norms = [], [], [], [], []
  for lvl, c in enumerate(cfg.chunk_sizes):
    a = jax.tree.map(lambda x, g: x + g.astype(x.dtype), st.acc[lvl], grads[lvl])
    nested = lvl < n_meta
    # The level's own step retains toward its start: phi_l when nested, else its init.
    if nested:
      base = retain(cfg.gammas[lvl], st.meta_init[lvl], st.weights[lvl], batched=True)
    else:
      base = st.weights[lvl] if init is None else retain(cfg.gammas[lvl], init[lvl],
                                                         st.weights[lvl])
    w_new = where(crossed(c), minus(base, a, _step_scale(cfg, cfg.lrs[lvl], a)), st.weights[lvl])
    a_new = where(crossed(c), jax.tree.map(jnp.zeros_like, a), a)
    if nested:  # the end of level l's context: level l + 1 steps phi_l, level l restarts
      parent = lvl + 1
      macc = jax.tree.map(lambda x, g: x + g.astype(x.dtype), st.meta_acc[lvl], grads[lvl])
      phi = st.meta_init[lvl]
      if init is not None:
        phi = retain(cfg.gammas[parent], init[lvl], phi)
      meta_B = crossed(cfg.chunk_sizes[parent])
      phi_new = where(meta_B, minus(phi, macc, _step_scale(cfg, cfg.lrs[parent], macc)),
                      st.meta_init[lvl])
      meta_init.append(phi_new)
      meta_acc.append(where(meta_B, jax.tree.map(jnp.zeros_like, macc), macc))
      w_new = where(meta_B, phi_new, w_new)
      a_new = where(meta_B, jax.tree.map(jnp.zeros_like, a), a_new)
    weights.append(w_new)
    acc.append(a_new)
    norms.append(jnp.sqrt(sum(jnp.sum((n - o) ** 2, axis=tuple(range(1, n.ndim)))
                              for n, o in zip(w_new, st.weights[lvl], strict=True))))
  return (NTPState(tuple(weights), tuple(acc), end_B, tuple(meta_init), tuple(meta_acc)),
          jnp.stack(norms, axis=1))
