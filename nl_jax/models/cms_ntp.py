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
"""The model-level driver of CMS with the next-token objective (``cms.objective="ntp"``).

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
from nl_jax.memory.aligned_chunks import reset_flags
from nl_jax.memory.base import check_reset_alignment
from nl_jax.models.common import (SequenceContext, advance_stream, constrain_activations,
                                  stack_trees)
from nl_jax.optim.partition import STACKED_BLOCKS


class _Blocks:
  """The model's blocks in one of two layouts, with the per-block work of a segment.

  Unrolled: lists with one entry per block. scan_layers: one tree whose leaves are stacked on
  a leading block axis; the blocks of a segment run under one lax.scan and the per-block reset
  and step are vmapped, so the program holds one block whatever the depth. ``each(fn, *xs)``
  applies fn block by block in either layout.
  """

  def __init__(self, model, cms_cfg, segment_ids_BxT, aligned: bool):
    self.model, self.cms_cfg = model, cms_cfg
    self.segment_ids_BxT, self.aligned = segment_ids_BxT, aligned
    self.blocks = model.block_list()
    self.n = len(self.blocks)
    self.scanned = model.config.scan_layers
    if self.scanned:
      self.graphdef, self.stacked = nnx.split(getattr(model, STACKED_BLOCKS))
      self.cms_params = jax.vmap(
          lambda bp: nnx.merge(self.graphdef, bp).cms.params())(self.stacked)
    else:
      self.cms_params = [blk.cms.params() for blk in self.blocks]

  def layout(self, per_block: list):
    return stack_trees(per_block) if self.scanned else per_block

  def unlayout(self, tree) -> list:
    if not self.scanned:
      return tree
    return [jax.tree.map(lambda a, i=i: a[i], tree) for i in range(self.n)]

  def each(self, fn, *per_block):
    if self.scanned:
      return jax.vmap(fn)(*per_block)
    return [fn(*args) for args in zip(*per_block, strict=True)]

  def weights(self, cms_states):
    return cms_states.weights if self.scanned else tuple(st.weights for st in cms_states)

  def inits(self):
    return self.cms_params.init if self.scanned else [p.init for p in self.cms_params]

  def _one(self, blk, cms_p, x, state, kv_i, weights_i, seg):
    x, m_state, kv_i, m_aux = blk.mix_segment(x, state, kv_i, seg, self.segment_ids_BxT,
                                              self.aligned)
    x = constrain_activations(cms_lib.apply_levels(self.cms_cfg, cms_p, weights_i, x))
    return x, m_state, kv_i, m_aux

  def forward(self, x, states, kv, weights, seg):
    """Every block on one segment: (x, mixer states, key/value buffers, aux)."""
    if self.scanned:
      def body(x, xs):
        block_params, cms_p, state, kv_i, weights_i = xs
        x, m_state, kv_i, m_aux = self._one(nnx.merge(self.graphdef, block_params), cms_p, x,
                                            state, kv_i, weights_i, seg)
        return x, (m_state, kv_i, m_aux)
      x, (mixer_states, new_kv, auxs) = jax.lax.scan(
          body, x, (self.stacked, self.cms_params, states, kv, weights))
      return x, mixer_states, new_kv, {f"block_{i}/{k}": v[i] for i in range(self.n)
                                       for k, v in auxs.items()}
    mixer_states, new_kv, aux = [], [], {}
    for i, blk in enumerate(self.blocks):
      x, m_state, kv_i, m_aux = self._one(blk, self.cms_params[i], x, states[i], kv[i],
                                          weights[i], seg)
      mixer_states.append(m_state)
      new_kv.append(kv_i)
      aux.update({f"block_{i}/{k}": v for k, v in m_aux.items()})
    return x, mixer_states, new_kv, aux

  def new_states(self, stepped, mixer_states):
    """(block states after a segment, update norms [blocks, k] averaged over sequences)."""
    if self.scanned:
      new_cms, norm_NxBxK = stepped
      states = {"cms": new_cms}
      if mixer_states is not None:
        states["smt"] = mixer_states
      return states, jnp.mean(norm_NxBxK, axis=1)
    states = [{"cms": st} if m is None else {"cms": st, "smt": m}
              for (st, _), m in zip(stepped, mixer_states, strict=True)]
    return states, jnp.stack([jnp.mean(norm_BxK, axis=0) for _, norm_BxK in stepped])


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
  cms_cfg = cms_cfg if cms_cfg is not None else model.config.cms_config()
  s = cms_cfg.segment
  b, t, _ = x_BxTxD.shape
  reset_BxT = ctx.reset if ctx.reset is not None else jnp.zeros((b, t), bool)
  # A segment resets as a whole (cms.reset_levels): refuse a document start inside one.
  check_reset_alignment(f"{type(model).__name__} (cms.objective='ntp')", reset_BxT,
                        memory_state["block_0"]["cms"].position, s,
                        field="min(cms.chunk_sizes)",
                        fix="Start documents on multiples of it (the data pipeline's "
                            "data.alignment does) or use cms.objective='local', exact for "
                            "resets anywhere.")
  # Every block has the same chunk sizes, so one answer holds for all of them.
  aligned = ctx.start_aligned and model.block_list()[0].segment_aligned(s)
  blocks = _Blocks(model, cms_cfg, ctx.segment_ids, aligned)
  n_blocks = blocks.n
  block_states0 = [memory_state[f"block_{i}"] for i in range(n_blocks)]

  def run_segment(carry, seg):
    """One segment: resets, value_and_grad of its loss w.r.t. the CMS weights, the step."""
    states, kv = carry
    # A document at the segment's first token restarts the levels before the segment; one
    # inside it (off the grid, under jit) after it, never before the tokens that precede it.
    at_start, inside = reset_flags(seg["reset"], jnp.ones(seg["reset"].shape, jnp.float32))
    cms_states = blocks.each(lambda p, st: cms_lib.reset_levels(p, st["cms"], at_start),
                             blocks.cms_params, states)

    def seg_loss(weights):
      x, mixer_states, new_kv, aux = blocks.forward(constrain_activations(seg["x"]), states,
                                                    kv, weights, seg)
      logits = model.head(x)
      loss, count = masked_cross_entropy(logits, seg["targets"], seg["loss_mask"])
      return loss, (logits, mixer_states, new_kv, aux, count)

    (loss, (logits, mixer_states, new_kv, aux, count)), grads = jax.value_and_grad(
        seg_loss, has_aux=True)(blocks.weights(cms_states))
    length = seg["x"].shape[1]
    stepped = blocks.each(lambda st, g, i: cms_lib.step_levels(cms_cfg, st, g, length, i),
                          cms_states, grads, blocks.inits())
    stepped = blocks.each(lambda p, st: (cms_lib.reset_levels(p, st[0], inside),) + st[1:],
                          blocks.cms_params, stepped)
    new_states, norms = blocks.new_states(stepped, mixer_states)
    return (new_states, new_kv), (logits, aux, norms, loss, count)

  body = jax.checkpoint(run_segment) if cms_cfg.remat else run_segment
  fields = {"x": x_BxTxD, "positions": ctx.positions, "segment_ids": ctx.segment_ids,
            "reset": reset_BxT, "targets": ctx.targets, "loss_mask": ctx.loss_mask}
  kv0 = [blk.segment_kv(b, t) for blk in blocks.blocks]
  carry = (blocks.layout(block_states0), blocks.layout(kv0))
  carry, outs = _scan_segments(body, carry, fields, s)
  states = blocks.unlayout(carry[0])
  new_state = {f"block_{i}": states[i] for i in range(n_blocks)}
  new_state["stream"] = advance_stream(memory_state["stream"], ctx.segment_ids)
  logits, aux = _merge_segments(outs, t, n_blocks, cms_cfg.n_levels)
  return logits, new_state, aux


def _scan_segments(body, carry, fields, s: int):
  """body over the call's full segments of s tokens (one lax.scan), then its remainder.

  Returns (carry, outs): per run, (logits [B, L, V], aux {k: [n]}, norms [n, blocks, k],
  loss [n], count [n], segment length).
  """
  b, t = fields["x"].shape[:2]
  n_full, rem = divmod(t, s)
  outs = []
  if n_full:
    xs = {k: jnp.moveaxis(v[:, :n_full * s].reshape((b, n_full, s) + v.shape[2:]), 1, 0)
          for k, v in fields.items()}
    xs["start"] = jnp.arange(n_full, dtype=jnp.int32) * s
    carry, (logits, aux, norms, loss, count) = jax.lax.scan(body, carry, xs)
    logits = jnp.moveaxis(logits, 0, 1).reshape((b, n_full * s) + logits.shape[3:])
    outs.append((logits, aux, norms, loss, count, s))
  if rem:
    seg = {k: v[:, n_full * s:] for k, v in fields.items()}
    seg["start"] = n_full * s
    carry, (logits, aux, norms, loss, count) = body(carry, seg)
    outs.append((logits, jax.tree.map(lambda v: v[None], aux), norms[None], loss[None],
                 count[None], rem))
  return carry, outs


def _merge_segments(outs, t: int, n_blocks: int, n_levels: int):
  """The call's logits and aux from _scan_segments' outputs (module docstring's aux)."""
  logits = jnp.concatenate([o[0] for o in outs], axis=1) if len(outs) > 1 else outs[0][0]
  aux = {}
  for key in outs[0][1]:
    if key.endswith("_min"):
      aux[key] = jnp.min(jnp.concatenate([o[1][key] for o in outs]))
    else:
      aux[key] = sum(jnp.sum(o[1][key]) * o[5] for o in outs) / t
  norms = sum(jnp.sum(o[2], axis=0) for o in outs)  # [blocks, k]
  for i in range(n_blocks):
    for lvl in range(n_levels):
      aux[f"block_{i}/cms/level_{lvl}/update_norm"] = norms[i, lvl]
  total_loss = sum(jnp.sum(o[3]) for o in outs)
  total_count = sum(jnp.sum(o[4]) for o in outs)
  aux["cms/ntp_loss"] = total_loss / jnp.maximum(total_count, 1.0)
  return logits, aux
