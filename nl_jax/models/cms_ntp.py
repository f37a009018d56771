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
"""The model-level driver of CMS with the next-token objective (``cms_objective="ntp"``).

Paper eq. 71 with L = the language model's next-token loss (spec 6.1, open questions 14-15):
every CMS level of every block learns in context from the gradient of the WHOLE model's
next-token loss w.r.t. its fast weights, accumulated over its chunk of C_l tokens. The model
therefore runs a call segment by segment, S = min_l C_l tokens at a time (no level changes
inside a segment), carrying every fast state::

    for each segment k (full segments in a jax.lax.scan, then a shorter remainder if S does
    not divide T; the body is jax.checkpoint'ed when the CMS config's remat is set, i.e. the
    models' ``chunk_remat``, default True):
      CMS levels of rows whose segment holds a document start -> initial weights (resets)
      loss_k(theta) = sum_{t in k} loss_mask_t * CE(logits_t(theta), targets_t)
        where logits_t runs all blocks on segment k with the carried mixer states (Hope: the
        self-modifying Titans memories and conv cache stream across segments exactly as
        across calls; Hope-Attention: a key/value buffer of the call, so segment k's queries
        see the earlier segments) and every block's CMS with fast weights theta
      loss_k, g = jax.value_and_grad(loss_k)(theta_carried)      # inside the scan
      nl_jax.layers.cms.step_levels: acc += g; levels at a boundary step

The outer loss differentiates through all of it, so the initial CMS weights (and everything
else) are trained by backprop through the in-context updates (eq. 73; second order through
the inner gradient).

Choices (documented; the paper leaves them open):

* The gradient of segment k is taken w.r.t. the weights as used in segment k only: states
  carried from earlier segments (memories, key/value buffer) are inputs of loss_k, not
  functions of theta (they were computed with the weights of their own segment).
* The loss is a sum (not a mean) of masked token cross-entropies (eq. 71 sums over the
  chunk); ``targets`` / ``loss_mask`` come from the SequenceContext: the default (tokens
  shifted left) has no target for the last token of a call, so that token teaches the CMS
  nothing unless the caller passes its target (the trainer does; token-by-token generation
  does not, so the CMS does not learn from the generated text).
* Causality: the update from segment k uses targets up to the first token after segment k
  and only changes the weights of later segments, so logits at t never see a token after t.
* Streaming: splitting a stream at a multiple of S gives exactly the one-call result when
  the caller passes the true next token as the target of each call's last token. A call that
  starts mid-segment is cut from its own first token; its levels step at the end of the
  segment that contains a boundary (nl_jax.layers.cms.step_levels).
* Cost: every segment runs a forward and a backward of the whole model (the inner gradient),
  and the outer backward is second order: roughly 3-4x the compute of objective="local".
  Hope-Attention keeps a key/value buffer of the call per block; the checkpointed scan saves
  it once per segment (memory ~ T^2 / S per block).

aux: the blocks' scalars averaged over the call's tokens (``*_min`` keys: minimum),
``block_{i}/cms/level_{l}/update_norm`` (sum over the call's steps of the Frobenius norm of
the level's step, averaged over sequences) and ``cms/ntp_loss`` (masked next-token loss per
token, the quantity the CMS learns from).
"""

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from nl_jax.layers import cms as cms_lib
from nl_jax.losses import masked_cross_entropy
from nl_jax.memory.base import check_reset_alignment
from nl_jax.models.common import (SequenceContext, advance_stream, constrain_activations,
                                  stack_trees)
from nl_jax.optim.partition import STACKED_BLOCKS


def ntp_forward_embedded(model, x_BxTxD: jax.Array, memory_state, ctx: SequenceContext,
                         cms_cfg=None):
  """Blocks -> head with the CMS learning from the next-token loss (module docstring).

  Args:
    model: a Hope or HopeAttention model: blocks with ``cms`` and the segment methods of
      their sequence mixer (``segment_kv``, ``segment_aligned``, ``mix_segment``; see
      nl_jax.models.hope.HopeBlock).
    x_BxTxD: token embeddings.
    memory_state: validated state ({"stream": ..., "block_i": {..., "cms": CMSState}}).
    ctx: the SequenceContext from ``model.prepare`` (targets / loss_mask used here).
    cms_cfg: the CMSConfig (default ``model.config.cms_config()``).

  Returns:
    (logits_BxTxV float32, new_memory_state, aux).
  """
  cfg = model.config
  cms_cfg = cms_cfg if cms_cfg is not None else cfg.cms_config()
  s = cms_cfg.segment
  b, t, _ = x_BxTxD.shape
  n_full, rem = divmod(t, s)
  blocks = model.block_list()
  n_blocks = len(blocks)
  reset_BxT = ctx.reset if ctx.reset is not None else jnp.zeros((b, t), bool)
  segment_ids_BxT = ctx.segment_ids

  block_states0 = [memory_state[f"block_{i}"] for i in range(n_blocks)]
  # A segment resets as a whole (cms.reset_levels): refuse a document start inside one.
  check_reset_alignment(f"{type(model).__name__} (cms_objective='ntp')", reset_BxT,
                        block_states0[0]["cms"].position, s, field="min(cms_chunk_sizes)",
                        fix="Start documents on multiples of it (the data pipeline's "
                            "data.alignment does) or use cms_objective='local', exact for "
                            "resets anywhere.")
  # Every block has the same chunk sizes, so one answer holds for all of them.
  aligned = ctx.start_aligned and blocks[0].segment_aligned(s)
  kv0 = [blk.segment_kv(b, t) for blk in blocks]

  # Per-block work has two layouts. Unrolled: lists with one entry per block. scan_layers: one
  # tree whose leaves are stacked on a leading block axis; the blocks of a segment run under
  # one lax.scan and the per-block reset and step are vmapped, so the program holds one block
  # whatever the depth. `each(fn, *per_block)` applies fn block by block in either layout.
  scanned = cfg.scan_layers
  if scanned:
    graphdef, stacked_params = nnx.split(getattr(model, STACKED_BLOCKS))
    cms_params = jax.vmap(lambda bp: nnx.merge(graphdef, bp).cms.params())(stacked_params)
    block_states0, kv0 = stack_trees(block_states0), stack_trees(kv0)

    def each(fn, *per_block):
      return jax.vmap(fn)(*per_block)
  else:
    cms_params = [blk.cms.params() for blk in blocks]

    def each(fn, *per_block):
      return [fn(*args) for args in zip(*per_block, strict=True)]

  def block_forward(blk, cms_p, x, state, kv_i, weights_i, seg):
    x, m_state, kv_i, m_aux = blk.mix_segment(x, state, kv_i, seg, segment_ids_BxT, aligned)
    x = constrain_activations(cms_lib.apply_levels(cms_cfg, cms_p, weights_i, x))
    return x, m_state, kv_i, m_aux

  def run_segment(carry, seg):
    """One segment: resets, value_and_grad of its loss w.r.t. the CMS weights, the step."""
    states, kv = carry
    length = seg["x"].shape[1]
    flag_B = jnp.any(seg["reset"], axis=1)
    cms_states = each(lambda p, st: cms_lib.reset_levels(p, st["cms"], flag_B),
                      cms_params, states)
    weights = cms_states.weights if scanned else tuple(st.weights for st in cms_states)

    def seg_loss(weights):
      x = constrain_activations(seg["x"])
      if scanned:
        def body(x, xs):
          block_params, cms_p, state, kv_i, weights_i = xs
          x, m_state, kv_i, m_aux = block_forward(nnx.merge(graphdef, block_params), cms_p, x,
                                                  state, kv_i, weights_i, seg)
          return x, (m_state, kv_i, m_aux)
        x, (mixer_states, new_kv, auxs) = jax.lax.scan(
            body, x, (stacked_params, cms_params, states, kv, weights))
        aux = {f"block_{i}/{k}": v[i] for i in range(n_blocks) for k, v in auxs.items()}
      else:
        mixer_states, new_kv, aux = [], [], {}
        for i, blk in enumerate(blocks):
          x, m_state, kv_i, m_aux = block_forward(blk, cms_params[i], x, states[i], kv[i],
                                                  weights[i], seg)
          mixer_states.append(m_state)
          new_kv.append(kv_i)
          aux.update({f"block_{i}/{k}": v for k, v in m_aux.items()})
      logits = model.head(x)
      loss, count = masked_cross_entropy(logits, seg["targets"], seg["loss_mask"])
      return loss, (logits, mixer_states, new_kv, aux, count)

    (loss, (logits, mixer_states, new_kv, aux, count)), grads = jax.value_and_grad(
        seg_loss, has_aux=True)(weights)
    init = cms_params.init if scanned else [p.init for p in cms_params]
    stepped = each(lambda st, g, i: cms_lib.step_levels(cms_cfg, st, g, length, i),
                   cms_states, grads, init)
    if scanned:
      new_cms, norm_NxBxK = stepped
      norms = jnp.mean(norm_NxBxK, axis=1)
      new_states = {"cms": new_cms}
      if mixer_states is not None:
        new_states["smt"] = mixer_states
    else:
      new_states = []
      for (st, _), m_state in zip(stepped, mixer_states, strict=True):
        new_states.append({"cms": st} if m_state is None else {"cms": st, "smt": m_state})
      norms = jnp.stack([jnp.mean(norm_BxK, axis=0) for _, norm_BxK in stepped])
    return (new_states, new_kv), (logits, aux, norms, loss, count)

  body = jax.checkpoint(run_segment) if cms_cfg.remat else run_segment

  def fields(lo, hi):
    return {"x": x_BxTxD[:, lo:hi], "positions": ctx.positions[:, lo:hi],
            "segment_ids": segment_ids_BxT[:, lo:hi], "reset": reset_BxT[:, lo:hi],
            "targets": ctx.targets[:, lo:hi], "loss_mask": ctx.loss_mask[:, lo:hi]}

  carry = (block_states0, kv0)
  outs = []  # (logits [B, L, V], aux {k: [n]}, norms [n, blocks, k], loss [n], count [n], L)
  if n_full:
    full = fields(0, n_full * s)
    xs = {k: jnp.moveaxis(v.reshape((b, n_full, s) + v.shape[2:]), 1, 0)
          for k, v in full.items()}
    xs["start"] = jnp.arange(n_full, dtype=jnp.int32) * s
    carry, (logits, aux, norms, loss, count) = jax.lax.scan(body, carry, xs)
    logits = jnp.moveaxis(logits, 0, 1).reshape((b, n_full * s) + logits.shape[3:])
    outs.append((logits, aux, norms, loss, count, s))
  if rem:
    seg = fields(n_full * s, t)
    seg["start"] = n_full * s
    carry, (logits, aux, norms, loss, count) = body(carry, seg)
    outs.append((logits, jax.tree.map(lambda v: v[None], aux), norms[None], loss[None],
                 count[None], rem))

  states, _ = carry
  if scanned:
    states = [jax.tree.map(lambda a, i=i: a[i], states) for i in range(n_blocks)]
  logits = jnp.concatenate([o[0] for o in outs], axis=1) if len(outs) > 1 else outs[0][0]
  new_state = {f"block_{i}": states[i] for i in range(n_blocks)}
  new_state["stream"] = advance_stream(memory_state["stream"], segment_ids_BxT)

  aux = {}
  for key in outs[0][1]:
    if key.endswith("_min"):
      aux[key] = jnp.min(jnp.concatenate([o[1][key] for o in outs]))
    else:
      total = sum(jnp.sum(o[1][key]) * o[5] for o in outs)
      aux[key] = total / t
  norms = sum(jnp.sum(o[2], axis=0) for o in outs)  # [blocks, k]
  for i in range(n_blocks):
    for lvl in range(cms_cfg.n_levels):
      aux[f"block_{i}/cms/level_{lvl}/update_norm"] = norms[i, lvl]
  total_loss = sum(jnp.sum(o[3]) for o in outs)
  total_count = sum(jnp.sum(o[4]) for o in outs)
  aux["cms/ntp_loss"] = total_loss / jnp.maximum(total_count, 1.0)
  return logits, new_state, aux
