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
"""Self-modifying Titans (paper eqs. 83-97, spec 5): every projection is a fast memory.

Per head h and token t (x_t the block input, after the static input projections, the causal
depthwise conv of width 4 and SiLU, i.e. the "lowest-frequency level" of each projection)::

    k_t = l2norm(M_k(xk_t))    v_t = M_v(xv_t)    q_t = l2norm(xq_t)  (or M_q(xq_t), adaptive_q)
    eta_t = eta_max * sigmoid(M_eta(xk_t) + b_eta)          in (0, eta_max]
    alpha_t = alpha_min + (1 - alpha_min) sigmoid(M_alpha(xk_t) + b_alpha)   in [alpha_min, 1]
    vhat_{box,t} = M_box(v_t)                                (each memory makes its own target)
    M_box <- one inner step on 0.5 ||M_box(k_t) - vhat_{box,t}||^2 (rule, momentum: config)
    o_t = M_out(q_t)      y_t = W_o (rmsnorm(o_t) * silu(x_t W_g))

Every memory M is nl_jax.memory.MLPMemory's residual two-layer fast weight
``M(x) = x + W1 act(W2 x)`` (eq. 89) with a meta-learned initial state (outer parameters
``<name>_init``: ``k_init``, ``v_init``, ``q_init``, ``eta_init``, ``alpha_init``,
``out_init``), one copy per head and per sequence.

The options (the paper's open choices and where the defaults depart from it) are the fields
of SelfModifyingTitansConfig, each documented in nl_jax.layers.smt_config. The memories of
one kind share k, eta, alpha and mu and run as groups (nl_jax.memory.groups): the k, v, (q)
memories, the two scalar (eta, alpha) memories, and the output memory. All five share the
keys and gates too, so a chunk's decay kernels and erase system (the keys' Gram matrix and the
triangular inverse) are computed once per chunk and head for the three groups
(groups.shared_chunk; the output memory's only in one scan, where its chunks are the same).

Chunk-parallel anchored semantics (spec 5.4): inside a chunk every k, v, eta, alpha and vhat
comes from the memories' anchor (the state at the end of the previous chunk, a causal reading
of eq. 90's index), and so do the inner gradients; the decays (alpha and the rank-1 erase)
and momentum stay per token and are solved in closed form by MLPMemory's chunk algebra. The
projection memories do not depend on the output memory, so with two chunk sizes the layer
runs two scans: one over proj_chunk_size chunks that produces k, v, (q,) eta, alpha and
updates the projection memories, then one over chunk_size chunks for the output memory. With
one chunk size (every preset) both run in one scan, chunk by chunk (``one_scan``): the same
operations, without stacking k, v, q over the sequence between the scans (nor their
cotangents in the backward), 97 MiB less step memory at ``small``, T=2048, for up to 1.24x
the compile time (experiments/BENCHMARKS.md). ``implementation="sequential"`` is the executable
spec: a token loop in which every memory takes MLPMemory.token_step (eq. 88: jax.grad of the
inner loss at the anchor, decay, momentum; the rule is written once, there, and tested
against its closed-form chunks in nl_jax.memory) with the same anchoring; with both chunk
sizes 1 it is the per-token recurrence of eqs. 83-88.

Chunks are aligned to global stream positions (state.position), so a stream split across calls
at any point gives the same result as one call (a call that starts mid-chunk is front-padded
with no-op tokens). Resets (True at the first token of a new packed document): the memories,
anchors and momenta go back to the initial state. The sequential path resets exactly at the
token; the chunked path is exact when documents start on multiples of both chunk sizes (the
model's ``alignment``, which the data pipeline guarantees) and refuses a concrete reset
anywhere else with a ValueError naming the chunk size (as MatrixMemory does); under jit the
resets are not concrete and cannot be checked, and one inside a chunk takes effect at the
chunk's end, never before it (``aligned_chunks.reset_flags``: causal; the new document's first
tokens in that chunk read the old memories). Until 2026-12-06 such a reset emptied the memories from
the chunk's start, so the padding after a task example (a new segment) wiped what the
example's last chunk read (experiments/in_context/README.md, "The reset that wiped the SMT").
"""

from typing import NamedTuple

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from nl_jax import config_tree
from nl_jax.layers import diagnostics
from nl_jax.layers.conv import CausalConv, ConvState
from nl_jax.layers.mlp import dense_init
from nl_jax.layers.norms import l2_normalize, rms_norm
from nl_jax.layers.projection import project, record_input
from nl_jax.layers.smt_config import IMPLEMENTATIONS, SelfModifyingTitansConfig
from nl_jax.memory import gates, groups, remat_scan
from nl_jax.memory.aligned_chunks import ScanChunks, reset_flags
from nl_jax.memory.base import check_reset_alignment
from nl_jax.memory.mlp import ACTIVATIONS, MLPMemoryParams, MLPWeights, apply_weights
from nl_jax.memory.types import MemoryState

__all__ = ["SMTInputs", "SMTMemoryState", "SMTParams", "SelfModifyingTitans",
           "SelfModifyingTitansConfig", "init_memory_state", "memory_scan"]


class SMTParams(NamedTuple):
  """Outer parameters the pure core needs (the nnx module builds them from its Params).

  proj_init: MLPWeights, leaves [P, H, ...] (P = len(proj_names)); gate_init [2, H, ...]
  (eta, alpha); out_init [H, ...]; gate_bias [2, H] (b_eta, b_alpha).
  """
  proj_init: MLPWeights
  gate_init: MLPWeights
  out_init: MLPWeights
  gate_bias: jax.Array


class SMTInputs(NamedTuple):
  """Per-token inputs of the memory core, after projections, conv and SiLU.

  xk, xv, xq: [B, H, T, head_dim]; mu: [B, H, T] momentum decay (or None); reset: [B, T] bool.
  """
  xk: jax.Array
  xv: jax.Array
  xq: jax.Array
  mu: jax.Array | None
  reset: jax.Array


class SMTMemoryState(NamedTuple):
  """Fast state of the memories; every leaf has leading axis B.

  proj / gates / out are MemoryStates with batch axes [B, P, H], [B, 2, H] and [B, H];
  position: [B] tokens written so far (aligns the chunks across calls).
  """
  proj: MemoryState
  gates: MemoryState
  out: MemoryState
  position: jax.Array


def init_memory_state(cfg: SelfModifyingTitansConfig, params: SMTParams,
                      batch_size: int) -> SMTMemoryState:
  """Initial fast state: the meta-learned initial weights, one copy per sequence."""
  h, p = cfg.n_heads, len(cfg.proj_names)
  return SMTMemoryState(
      proj=cfg.proj_memory.init_state(MLPMemoryParams(params.proj_init), (batch_size, p, h)),
      gates=cfg.gate_memory.init_state(MLPMemoryParams(params.gate_init), (batch_size, 2, h)),
      out=cfg.out_memory.init_state(MLPMemoryParams(params.out_init), (batch_size, h)),
      position=jnp.zeros((batch_size,), jnp.int32))


def _projections(cfg, params, proj_anchor, gate_anchor, xk, xv, xq):
  """k, v, q, eta, alpha and the targets, all from the anchors (eqs. 83-84, 90).

  Shapes: x* [..., H, C, d] with anchors [..., P|2, H, ...]; returns k, v, q [..., H, C, d],
  eta, alpha [..., H, C], vhat_proj [..., P, H, C, d], vhat_gate [..., 2, H, C, 1].
  """
  act = ACTIVATIONS[cfg.activation]
  vector = lambda w, x: apply_weights(w, x, act, True)  # noqa: E731
  scalar = lambda w, x: apply_weights(w, x, act, False)  # noqa: E731
  y = vector(proj_anchor, jnp.stack([xk, xv] + ([xq] if cfg.adaptive_q else []), axis=-4))
  k = l2_normalize(xk if "k" in cfg.static_projections else y[..., 0, :, :, :])
  v = xv if "v" in cfg.static_projections else y[..., 1, :, :, :]
  if cfg.value_norm == "l2":
    v = l2_normalize(v)
  q = l2_normalize(y[..., 2, :, :, :] if cfg.adaptive_q else xq)
  gate_w = params.gate_init if "gates" in cfg.static_projections else gate_anchor
  logits = scalar(gate_w, jnp.stack([xk, xk], axis=-4))[..., 0] + params.gate_bias[..., None]
  eta = gates.eta_from_logits(logits[..., 0, :, :], cfg.eta_max)
  alpha = gates.alpha_from_logits(logits[..., 1, :, :], cfg.alpha_min)
  v_p = jnp.stack([v] * len(cfg.proj_names), axis=-4)
  vhat_proj = v_p if cfg.targets == "shared" else vector(proj_anchor, v_p)
  vhat_gate = scalar(gate_anchor, jnp.stack([v, v], axis=-4))
  if cfg.stop_target_grad:
    vhat_proj, vhat_gate = jax.lax.stop_gradient((vhat_proj, vhat_gate))
  return k, v, q, eta, alpha, vhat_proj, vhat_gate


def _out_target(cfg, anchor, v):
  """The output memory's regression target: M_out(v) at the anchor, or v ("shared")."""
  if cfg.targets == "shared":
    vhat = v
  else:
    vhat = apply_weights(anchor, v, ACTIVATIONS[cfg.activation], True)
  return jax.lax.stop_gradient(vhat) if cfg.stop_target_grad else vhat


def _out_loss(cfg, anchor, k, vhat):
  """The output memory's inner loss at its anchor, 0.5 ||M(k) - vhat||^2 per token."""
  err = apply_weights(anchor, k, ACTIVATIONS[cfg.activation], True) - vhat
  return 0.5 * jnp.sum(err * err, axis=-1)


# ----------------------------------------------------------------------------------------
# Chunk-parallel path
# ----------------------------------------------------------------------------------------

def _proj_xs(cfg, inp: SMTInputs, chunks: ScanChunks, dtype):
  """The projection scan's per-chunk inputs: xk, xv, xq, valid, reset (and mu)."""
  xs = dict(xk=chunks.split(inp.xk.astype(dtype)), xv=chunks.split(inp.xv.astype(dtype)),
            xq=chunks.split(inp.xq.astype(dtype)),
            valid=chunks.split(jnp.ones(inp.reset.shape, dtype), time_axis=1),
            reset=chunks.split(inp.reset, False, time_axis=1))
  if cfg.momentum:
    xs["mu"] = chunks.split(inp.mu.astype(dtype), 1.0)
  return xs


def _proj_chunk(cfg, params, anchors0, carried, ch, i):
  """One chunk of the projection and gate memories: their new states and the chunk's k, v, q,
  eta, alpha (gates of padded slots already no-op writes, padded keys zero)."""
  carry = tuple(groups.scan_anchor(st, a0, i == 0) for st, a0 in zip(carried, anchors0,
                                                                     strict=True))
  at_start, inside = reset_flags(ch["reset"], ch["valid"])
  pst = groups.reset_rows(carry[0], params.proj_init, at_start)
  gst = groups.reset_rows(carry[1], params.gate_init, at_start)
  k, v, q, eta, alpha, vhat_p, vhat_g = _projections(
      cfg, params, pst.anchor, gst.anchor, ch["xk"], ch["xv"], ch["xq"])
  eta, alpha, mu = groups.mask_padding(ch["valid"], eta, alpha, ch.get("mu"))
  k = jnp.where(ch["valid"][:, None, :, None] > 0, k, 0.0)
  # The decay kernels and erase system once for both groups (and the output memory's chunk
  # in one scan): they share k, the gates and the rule.
  shared = groups.shared_chunk(cfg.proj_memory, k, eta, alpha, mu, ch["valid"],
                               jax.tree.leaves(pst.memory)[0].dtype)
  _, pst = groups.write_chunk(cfg.proj_memory, pst, k, vhat_p, eta, alpha, mu, None,
                              ch["valid"], shared)
  _, gst = groups.write_chunk(cfg.gate_memory, gst, k, vhat_g, eta, alpha, mu, None,
                              ch["valid"], shared)
  pst = groups.reset_rows(pst, params.proj_init, inside)
  gst = groups.reset_rows(gst, params.gate_init, inside)
  new = tuple(groups.keep_anchor_if_empty(n, c, ch["valid"])
              for n, c in zip((pst, gst), carried, strict=True))
  return new, (k, v, q, eta, alpha), shared


def _out_chunk(cfg, params, anchor0, carried, ch, i, shared=None):
  """One chunk of the output memory (ch: k, v, q, eta, alpha, valid, reset, mu): its new state
  and the chunk's reads o, inner loss (summed) and squared norm of its targets. shared: the
  projection chunk's decay kernels and erase system, when the chunk sizes agree (one scan)."""
  at_start, inside = reset_flags(ch["reset"], ch["valid"])
  ost = groups.scan_anchor(carried, anchor0, i == 0)
  ost = groups.reset_rows(ost, params.out_init, at_start)
  vhat = _out_target(cfg, ost.anchor, ch["v"])
  loss = jnp.sum(_out_loss(cfg, ost.anchor, ch["k"], vhat) * ch["valid"][:, None, :])
  eta_c, alpha_c, mu_c = groups.mask_padding(ch["valid"], ch["eta"], ch["alpha"], ch.get("mu"))
  out, ost = groups.write_chunk(cfg.out_memory, ost, ch["k"], vhat[:, None], eta_c, alpha_c,
                                mu_c, ch["q"], ch["valid"], shared)
  vhat_sq = jnp.sum(jax.lax.stop_gradient(vhat) ** 2 * ch["valid"][:, None, :, None])
  ost = groups.reset_rows(ost, params.out_init, inside)
  return groups.keep_anchor_if_empty(ost, carried, ch["valid"]), (out[:, 0], loss, vhat_sq)


def _proj_pass(cfg, params, state: SMTMemoryState, inp: SMTInputs, chunks: ScanChunks, dtype):
  """Scan 1 (chunks of proj_chunk_size): k, v, q, eta, alpha [B, H, T, ...] from the projection
  and gate memories' anchors, and those memories' new states."""
  anchors0 = (state.proj.anchor, state.gates.anchor)
  body = lambda carried, inp: _proj_chunk(cfg, params, anchors0, carried, *inp)[:2]  # noqa: E731
  (pst, gst), per_token = remat_scan.remat_scan(
      body, (state.proj, state.gates), (_proj_xs(cfg, inp, chunks, dtype), jnp.arange(chunks.n)),
      remat=cfg.remat, group=cfg.remat_group)
  return pst, gst, tuple(chunks.join(z) for z in per_token)


def _out_pass(cfg, params, state: SMTMemoryState, inp: SMTInputs, chunks: ScanChunks, k, v, q,
              eta, alpha, dtype):
  """Scan 2 (chunks of chunk_size): the output memory's reads o [B, H, T, d], its new state,
  its inner loss (summed) and the squared norm of its targets."""
  ys = dict(k=chunks.split(k), v=chunks.split(v), q=chunks.split(q), eta=chunks.split(eta),
            alpha=chunks.split(alpha, 1.0),
            valid=chunks.split(jnp.ones(inp.reset.shape, dtype), time_axis=1),
            reset=chunks.split(inp.reset, False, time_axis=1))
  if cfg.momentum:
    ys["mu"] = chunks.split(inp.mu.astype(dtype), 1.0)
  body = lambda carried, inp: _out_chunk(cfg, params, state.out.anchor, carried, *inp)  # noqa: E731
  ost, (o, loss, vhat_sq) = remat_scan.remat_scan(body, state.out, (ys, jnp.arange(chunks.n)),
                                                  remat=cfg.remat, group=cfg.remat_group)
  return chunks.join(o), ost, jnp.sum(loss), jnp.sum(vhat_sq)


def _one_scan(cfg, params, state: SMTMemoryState, inp: SMTInputs, chunks: ScanChunks, dtype):
  """Both scans as one, for chunk_size == proj_chunk_size: chunk i's k, v, q, eta, alpha go
  from the projection memories straight to the output memory's write, so they are never
  stacked over the sequence, nor are their cotangents in the backward. The same chunks and
  operations as the two scans; the padded slots' v and q (zeros there) are the projections
  of padded inputs here, which the output memory's write ignores (eta 0, k 0) and whose reads
  are dropped. Returns o, the three new states, eta, alpha [B, H, T], the output memory's
  inner loss and target norm (summed) and the squared norm of v over the tokens."""
  anchors0 = (state.proj.anchor, state.gates.anchor)

  def body(carried, inp):
    ch, i = inp
    pg, ost = carried
    pg, (k, v, q, eta, alpha), shared = _proj_chunk(cfg, params, anchors0, pg, ch, i)
    och = dict(k=k, v=v, q=q, eta=eta, alpha=alpha, valid=ch["valid"], reset=ch["reset"])
    if "mu" in ch:
      och["mu"] = ch["mu"]
    ost, (o, loss, vhat_sq) = _out_chunk(cfg, params, state.out.anchor, ost, och, i, shared)
    v_sq = jnp.sum(jax.lax.stop_gradient(v) ** 2 * ch["valid"][:, None, :, None])
    return (pg, ost), (o, eta, alpha, loss, vhat_sq, v_sq)

  ((pst, gst), ost), (o, eta, alpha, loss, vhat_sq, v_sq) = remat_scan.remat_scan(
      body, ((state.proj, state.gates), state.out),
      (_proj_xs(cfg, inp, chunks, dtype), jnp.arange(chunks.n)),
      remat=cfg.remat, group=cfg.remat_group)
  return (chunks.join(o), pst, gst, ost, chunks.join(eta), chunks.join(alpha), jnp.sum(loss),
          jnp.sum(vhat_sq), jnp.sum(v_sq))


def _chunked(cfg, params, state: SMTMemoryState, inp: SMTInputs, start_aligned: bool = False):
  t = inp.xk.shape[2]
  dtype = jax.tree.leaves(state.out.memory)[0].dtype
  chunks = lambda c: ScanChunks.make(c, t, state.position, start_aligned)  # noqa: E731
  if cfg.one_scan and cfg.chunk_size == cfg.proj_chunk_size:
    o, pst, gst, ost, eta, alpha, loss, vhat_sq, v_sq = _one_scan(
        cfg, params, state, inp, chunks(cfg.chunk_size), dtype)
  else:
    pst, gst, (k, v, q, eta, alpha) = _proj_pass(cfg, params, state, inp,
                                                 chunks(cfg.proj_chunk_size), dtype)
    o, ost, loss, vhat_sq = _out_pass(cfg, params, state, inp, chunks(cfg.chunk_size), k, v,
                                      q, eta, alpha, dtype)
    v_sq = jnp.sum(jax.lax.stop_gradient(v) ** 2)
  stats = dict(inner_loss_sum=loss, eta=eta, alpha=alpha, v_sq_sum=v_sq, vhat_sq_sum=vhat_sq)
  advance = lambda st: st._replace(position=st.position + t)  # noqa: E731
  return o, SMTMemoryState(advance(pst), advance(gst), advance(ost), state.position + t), stats


# ----------------------------------------------------------------------------------------
# Sequential reference (token by token, each memory through MLPMemory.token_step)
# ----------------------------------------------------------------------------------------

def _token_row(cfg, params, mems, pos0, xs):
  """One sequence's token loop: mems = ((weights, momentum, anchor) per group, leaves
  [G, H, ...]: projections, gates, output with G = 1); xs = (xk, xv, xq [T, H, d], mu [T, H]
  or None, reset [T]). Returns the final mems and (o [T, H, d], loss, eta, alpha [T, H],
  squared norms [T, 2])."""
  act = ACTIVATIONS[cfg.activation]
  memories = (cfg.proj_memory, cfg.gate_memory, cfg.out_memory)
  inits = (params.proj_init, params.gate_init, jax.tree.map(lambda w: w[None], params.out_init))
  period = (cfg.proj_chunk_size, cfg.proj_chunk_size, cfg.chunk_size)

  def step(carry, x):
    mems, pos = carry
    xk, xv, xq, mu, r = x
    mems = tuple(groups.token_reset(r, m, i) for m, i in zip(mems, inits, strict=True))
    k, v, q, eta, alpha, vhat_p, vhat_g = _projections(
        cfg, params, mems[0][2], mems[1][2], xk[:, None], xv[:, None], xq[:, None])
    k, v, q, eta, alpha = k[:, 0], v[:, 0], q[:, 0], eta[:, 0], alpha[:, 0]  # one token
    vhat_p, vhat_g = vhat_p[:, :, 0], vhat_g[:, :, 0]
    out_anchor = jax.tree.map(lambda w: w[0], mems[2][2])
    vhat_o = _out_target(cfg, out_anchor, v[:, None])
    loss = jnp.sum(_out_loss(cfg, out_anchor, k[:, None], vhat_o))
    mu = jnp.ones_like(eta) if mu is None else mu
    new = [groups.token_write(mem, m, k, vhat, eta, alpha, mu)
           for mem, m, vhat in zip(memories, mems, (vhat_p, vhat_g, vhat_o[None, :, 0]),
                                   strict=True)]
    read = {"pre": mems[2][0], "post": new[2][0], "anchor": mems[2][2]}[cfg.read_at]
    o = apply_weights(jax.tree.map(lambda w: w[0], read), q[:, None], act, True)[:, 0]
    mems = tuple((w, s, jax.tree.map(lambda m, a, c=c: jnp.where((pos + 1) % c == 0, m, a),
                                     w, old[2]))
                 for (w, s), old, c in zip(new, mems, period, strict=True))
    sq = jax.lax.stop_gradient(jnp.stack([jnp.sum(v * v), jnp.sum(vhat_o * vhat_o)]))
    return (mems, pos + 1), (o, loss, eta, alpha, sq)

  step = jax.checkpoint(step) if cfg.remat else step
  (mems, _), per_token = jax.lax.scan(step, (mems, pos0), xs)
  return mems, per_token


def _sequential(cfg, params, state: SMTMemoryState, inp: SMTInputs):
  t = inp.xk.shape[2]
  dtype = jax.tree.leaves(state.out.memory)[0].dtype
  lift = lambda z: None if z is None else jax.tree.map(lambda a: a[:, None], z)  # noqa: E731
  drop = lambda z: None if z is None else jax.tree.map(lambda a: a[:, 0], z)  # noqa: E731
  mems = tuple((st.memory, st.momentum, st.anchor) for st in (state.proj, state.gates))
  mems += ((lift(state.out.memory), lift(state.out.momentum), lift(state.out.anchor)),)
  time_first = lambda z: None if z is None else jnp.moveaxis(z.astype(dtype), 2, 0)  # noqa: E731
  xs = (time_first(inp.xk), time_first(inp.xv), time_first(inp.xq), time_first(inp.mu),
        jnp.moveaxis(inp.reset, 1, 0))
  row = lambda m, p, x: _token_row(cfg, params, m, p, x)  # noqa: E731
  x_axes = (1, 1, 1, None if inp.mu is None else 1, 1)
  mems, (o, loss, eta, alpha, sq) = jax.vmap(row, in_axes=(0, 0, x_axes))(
      mems, state.position, xs)
  (pw, ps, pa), (gw, gs, ga), (ow, os_, oa) = mems
  new = SMTMemoryState(MemoryState(pw, ps, pa, state.proj.position + t),
                       MemoryState(gw, gs, ga, state.gates.position + t),
                       MemoryState(drop(ow), drop(os_), drop(oa), state.out.position + t),
                       state.position + t)
  return jnp.moveaxis(o, 1, 2), new, dict(
      inner_loss_sum=jnp.sum(loss), eta=jnp.moveaxis(eta, 1, 2), alpha=jnp.moveaxis(alpha, 1, 2),
      v_sq_sum=jnp.sum(sq[..., 0]), vhat_sq_sum=jnp.sum(sq[..., 1]))


def memory_scan(cfg: SelfModifyingTitansConfig, params: SMTParams, state: SMTMemoryState,
                inp: SMTInputs, implementation: str | None = None, start_aligned: bool = False):
  """The memory core: (o [B, H, T, head_dim], new state, stats).

  stats: inner_loss_sum (output memory's inner loss at its anchors, summed over tokens and
  heads), eta and alpha [B, H, T]. start_aligned: the caller created the state for this call
  (position 0), so the chunked path runs no front-padded chunk (nl_jax.memory.aligned_chunks).
  """
  impl = implementation or cfg.implementation
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"SelfModifyingTitans: implementation={impl!r} is not one of "
                     f"{IMPLEMENTATIONS}")
  t = inp.xk.shape[2]
  if impl == "auto":
    impl = "chunked" if t >= max(cfg.chunk_size, cfg.proj_chunk_size) else "sequential"
  if impl == "sequential":
    return _sequential(cfg, params, state, inp)
  for field in ("proj_chunk_size", "chunk_size"):
    check_reset_alignment("SelfModifyingTitans", inp.reset, state.position,
                          getattr(cfg, field), field)
  return _chunked(cfg, params, state, inp, start_aligned)


# ----------------------------------------------------------------------------------------
# The layer
# ----------------------------------------------------------------------------------------

class MemoryInit(nnx.Module):
  """Meta-learned initial weights of one memory: w1 [*lead, out, hidden], w2 [*lead, hidden,
  in] (MLPMemory's layout)."""

  def __init__(self, w: MLPWeights):
    self.w1 = nnx.Param(w.w1)
    self.w2 = nnx.Param(w.w2)

  def weights(self) -> MLPWeights:
    return MLPWeights(self.w1[...], self.w2[...])


class SelfModifyingTitans(nnx.Module):
  """The self-modifying Titans sequence layer (see the module docstring).

  Parameters: ``wq wk wv`` [d_model, H * head_dim] (static input projections), ``conv``
  (causal depthwise, width conv_width, over the concatenated q/k/v branch), ``*_init``
  (initial memory weights), ``gate_bias`` [2, H], ``w_mu`` [d_model, H] (momentum only),
  ``out_norm`` scale [head_dim], ``wg`` [d_model, H * head_dim] (output gate), ``wo``
  [H * head_dim, d_model].

  State (``init_memory``): {"memory": SMTMemoryState, "conv": ConvState}; every leaf [B, ...].
  """

  def __init__(self, cfg: SelfModifyingTitansConfig, *, rngs: nnx.Rngs):
    config_tree.check_bound(cfg)
    self.cfg = cfg
    d, h, k = cfg.d_model, cfg.n_heads, cfg.head_dim
    pdt = jnp.dtype(cfg.param_dtype)
    hk = h * k
    for name in ("wq", "wk", "wv", "wg"):
      setattr(self, name, nnx.Param(dense_init(rngs.params(), (d, hk), d, pdt)))
    self.wo = nnx.Param(dense_init(rngs.params(), (hk, d), hk, pdt))
    self.conv = CausalConv(3 * hk, cfg.conv_width, activation="silu", param_dtype=pdt,
                           rngs=rngs)
    # Small output-side weights: every memory starts near the identity (residual,
    # memory_init_scale) or near zero logits (scalar), so the initial gates are the biases.
    memories = [(n, cfg.proj_memory, cfg.memory_init_scale) for n in cfg.proj_names + ("out",)]
    for name, mem, scale in memories + [("eta", cfg.gate_memory, 0.1),
                                        ("alpha", cfg.gate_memory, 0.1)]:
      init = mem.init_params(rngs.params(), (h,), out_scale=scale, dtype=pdt).initial
      setattr(self, f"{name}_init", MemoryInit(init))
    self.gate_bias = nnx.Param(jnp.stack([jnp.full((h,), cfg.eta_bias_init, pdt),
                                          jnp.full((h,), cfg.alpha_bias_init, pdt)]))
    if cfg.momentum:
      self.w_mu = nnx.Param(dense_init(rngs.params(), (d, h), d, pdt))
    self.out_norm = nnx.Param(jnp.ones((k,), pdt))

  def params(self) -> SMTParams:
    cfg = self.cfg
    stack = lambda ws: jax.tree.map(lambda *a: jnp.stack(a), *ws)  # noqa: E731
    proj = stack([getattr(self, f"{n}_init").weights() for n in cfg.proj_names])
    gate = stack([self.eta_init.weights(), self.alpha_init.weights()])
    return SMTParams(proj, gate, self.out_init.weights(), self.gate_bias[...])

  def init_memory(self, batch_size: int):
    return {"memory": init_memory_state(self.cfg, self.params(), batch_size),
            "conv": self.conv.init_state(batch_size)}

  def __call__(self, x_BxTxD: jax.Array, state, segment_ids_BxT: jax.Array,
               reset_BxT: jax.Array, implementation: str | None = None,
               start_aligned: bool = False):
    """Returns (y [B, T, d_model], new state, aux dict of scalars).

    start_aligned: the caller created ``state`` for this call (see memory_scan).
    """
    cfg = self.cfg
    b, t, _ = x_BxTxD.shape
    h, k = cfg.n_heads, cfg.head_dim
    dt = jnp.dtype(cfg.dtype)
    x = x_BxTxD.astype(dt)
    w_qkv = jnp.concatenate([self.wq[...], self.wk[...], self.wv[...]], axis=1).astype(dt)
    u, conv_state = self.conv(record_input(x, self.wq, self.wk, self.wv) @ w_qkv,
                              segment_ids_BxT, ConvState(*state["conv"]))  # conv, then SiLU
    heads = lambda z: jnp.moveaxis(z.reshape(b, t, h, k), 2, 1)  # noqa: E731  # [B, H, T, K]
    xq, xk, xv = (heads(z) for z in jnp.split(u, 3, axis=-1))
    mu = None
    if cfg.momentum:
      mu = jnp.moveaxis(gates.momentum_from_logits(
          project("...d,dh->...h", x, self.w_mu, dt).astype(jnp.float32), cfg.mu_max), 2, 1)
    inp = SMTInputs(xk, xv, xq, mu, reset_BxT)
    o, mem, stats = memory_scan(cfg, self.params(), state["memory"], inp, implementation,
                                start_aligned)
    o = jnp.moveaxis(o, 1, 2)  # [B, T, H, K]
    o = rms_norm(o, self.out_norm[...]).astype(dt)
    gate = jax.nn.silu(project("...d,df->...f", x, self.wg, dt)).reshape(b, t, h, k)
    y = project("...f,fd->...d", (o * gate).reshape(b, t, h * k), self.wo, dt)
    n_tok = jnp.asarray(b * t * h, jnp.float32)
    aux = {"inner_loss": stats["inner_loss_sum"] / n_tok,
           "eta_mean": jnp.mean(stats["eta"]), "alpha_mean": jnp.mean(stats["alpha"]),
           "alpha_min": jnp.min(stats["alpha"]),
           "update_norm": diagnostics.update_norm(state["memory"].out.memory, mem.out.memory),
           "v_rms": jnp.sqrt(stats["v_sq_sum"] / n_tok),
           "vhat_rms": jnp.sqrt(stats["vhat_sq_sum"] / n_tok),
           "out_w1_norm": diagnostics.max_weight_norm(mem.out.memory.w1),
           "out_w2_norm": diagnostics.max_weight_norm(mem.out.memory.w2),
           "proj_w1_norm": diagnostics.max_weight_norm(mem.proj.memory.w1),
           "gate_w1_norm": diagnostics.max_weight_norm(mem.gates.memory.w1)}
    return y.astype(x_BxTxD.dtype), {"memory": mem, "conv": conv_state}, aux

