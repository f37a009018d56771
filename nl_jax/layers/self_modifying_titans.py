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
    M_box <- one inner step on 0.5 ||M_box(k_t) - vhat_{box,t}||^2 (rule, momentum: below)
    o_t = M_out(q_t)      y_t = W_o (rmsnorm(o_t) * silu(x_t W_g))

Every memory M is nl_jax.memory.MLPMemory's residual two-layer fast weight
``M(x) = x + W1 act(W2 x)`` (eq. 89) with a meta-learned initial state (outer parameters
``<name>_init``: ``k_init``, ``v_init``, ``q_init``, ``eta_init``, ``alpha_init``,
``out_init``), one copy per head and per sequence.

Choices the paper leaves open (spec 9A), each a field of SelfModifyingTitansConfig:

* rule (9.1): ``dgd`` (default: step and rank-1 erase of the input-side weight both use
  c = eta / (1 + eta ||k||^2)), ``paper_l2`` (eq. 93 literally: eta for both) or ``gd`` (no
  erase, the "w/o DGD" ablation). The erase applies to W2 (the weight whose input is k), the
  retention alpha to both weights (9.4, first option), as in MLPMemory.
* scalar memories (9.5): M_eta and M_alpha are two-layer memories with the same input width
  as the others but a one-dimensional output and no residual (the residual form needs
  in == out): ``M(x) = W1 act(W2 x)`` is a per-head logit, squashed by nl_jax.memory.gates
  after adding a static per-head bias (b_eta, b_alpha; outer parameters that set the initial
  gates). Their target is their own prediction at v, exactly like the vector memories.
* momentum (9.7): optional Titans-style momentum on the gradient term of every memory,
  S <- mu S - lr G, W <- decay(W) + S, with a data-dependent decay mu_t = mu_max sigmoid(x_t
  W_mu) per head (a static gate: the momentum of the inner optimizer is part of the slowest
  level).
* adaptive q (9.6): ``adaptive_q=False`` (default, "q is the only non-adaptive projection")
  or True (q = M_q(xq_t), a fifth memory trained like M_k).
* stop_target_grad (9.8): vhat is always a constant of the inner gradient (it enters the
  memories as their regression value); with stop_target_grad=True the OUTER loss also does
  not differentiate through vhat (cheaper, first-order targets). Default False: the outer
  loss differentiates through the whole unrolled chunked update (Titans-style
  meta-learning of the initial states, projections and gates).
* value_norm (not in the paper's equations; default departs from them): ``"l2"`` (default)
  L2-normalises v_t = M_v(xv_t) like k_t, ``"none"`` keeps the equations' v_t. Why: with v
  unnormalised, training grows ||v|| without bound (the read M_out(q) goes through an
  RMSNorm, so a larger memory content costs nothing and beats the unit-norm residual q), and
  every memory's self-generated target vhat = M(v) = v + W1 act(W2 v) then amplifies W1 by
  ||act(W2 v)|| / ||act(W2 k)|| > 1 at each write: the memories chase their own targets
  geometrically and Hope tiny overflowed at step ~300 (diagnosis with the measurements:
  experiments/stability/README.md). With ||v|| = ||k|| = 1 that loop gain stays near 1.
* read_at (eqs. 83 / 90 / Titans): ``pre`` (default, eq. 83/94: o_t = M_{out,t-1}(q_t)),
  ``post`` (Titans: the state after token t's write) or ``anchor`` (eq. 90: the state at
  the end of the previous chunk).
* static projections (Table 6's "static k" / "static v" ablations): ``static_projections``
  names projections that skip their memory, k_t = l2norm(xk_t) or v_t = xv_t (the static
  input projection, conv and SiLU stay). The skipped memory keeps its place in the state and
  still writes (so state shapes and checkpoints do not depend on the option) but nothing
  reads it, and its initial weights get no gradient.
* targets (eqs. 79-82 vs 84-85): ``"self"`` (default, the self-modifying Titans of Hope:
  each memory regresses onto its own prediction at v, vhat = M(v)) or ``"shared"`` (the
  fully adaptive memory of eqs. 79-82, the paper's "simple version": k, v, q, eta and alpha
  are still fast memories, but the vector memories and the output memory all regress onto
  the shared value v_t; nothing generates its own target). The paper writes the shared
  target for every memory, which a one-dimensional eta / alpha memory cannot regress onto
  (v_t is a head_dim vector); under ``"shared"`` these two keep their own prediction at v as
  target, the one reading that keeps every memory adaptive (spec 5.2, an open choice).
  stop_target_grad then stops the outer gradient through that shared copy of v.
* Two chunk sizes (9.9): ``chunk_size`` for the output memory, ``proj_chunk_size`` for the
  k, v, (q,) eta and alpha memories.
* anchored_step (eq. 90 has no 1/C): ``"mean"`` (default) divides the anchored gradient step
  of every token by its memory's chunk size (a chunk's C gradients, all taken at the same
  anchor, are averaged like a TTT / Titans mini-batch), ``"sum"`` takes eq. 90's step
  literally (each token's full step; C identical tokens then move the weights C times as far
  as one exact step, see nl_jax.memory.mlp), ``"mean_all"`` divides the DGD erase by C too
  (the chunk is one mini-batch step in both terms; under "mean", C identical tokens erase
  C times and write once, see nl_jax.memory.mlp). The retention decay is never scaled.
* output_error: ``"anchor"`` (default) takes every memory's output-side weight (w1) error at
  the chunk's anchor like its other gradients; ``"current"`` takes it at w1's current value,
  the delta rule on the features h = act(w2 k) (MLPMemory.output_error): sequential inside
  the chunk, in closed form, and without the 1/C, since the delta step cannot overshoot on
  repeated tokens. What keeps a trained Hope's writes from counting is measured in
  experiments/in_context/README.md ("Why the self-modifying Titans' writes went unused").

Chunk-parallel anchored semantics (spec 5.4): inside a chunk every k, v, eta, alpha and vhat
comes from the memories' anchor (the state at the end of the previous chunk, a causal reading
of eq. 90's index), and so do the inner gradients; the decays (alpha and the rank-1 erase)
and momentum stay per token and are solved in closed form by MLPMemory's chunk algebra. The
projection memories do not depend on the output memory, so the layer runs two scans: one over
proj_chunk_size chunks that produces k, v, (q,) eta, alpha and updates the projection
memories, then one over chunk_size chunks for the output memory. ``implementation=
"sequential"`` is the executable spec: a token loop in which every memory takes
MLPMemory.token_step (eq. 88: jax.grad of the inner loss at the anchor, decay, momentum; the
rule is written once, there, and tested against its closed-form chunks in nl_jax.memory) with
the same anchoring; with both chunk sizes 1 it is the per-token recurrence of eqs. 83-88.

Chunks are aligned to global stream positions (state.position), so a stream split across calls
at any point gives the same result as one call (a call that starts mid-chunk is front-padded
with no-op tokens). Resets (True at the first token of a new packed document): the memories,
anchors and momenta go back to the initial state. The sequential path resets exactly at the
token; the chunked path is exact when documents start on multiples of both chunk sizes (the
model's ``alignment``, which the data pipeline guarantees) and refuses a concrete reset
anywhere else with a ValueError naming the chunk size (as MatrixMemory does); under jit the
resets are not concrete and cannot be checked.
"""

import dataclasses
from typing import ClassVar, NamedTuple

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from nl_jax import config_tree
from nl_jax.layers import diagnostics
from nl_jax.layers.conv import CausalConv, ConvState
from nl_jax.layers.mlp import dense_init
from nl_jax.layers.norms import rms_norm
from nl_jax.layers.projection import project, record_input
from nl_jax.memory import aligned_chunks, gates
from nl_jax.memory.base import check_reset_alignment
from nl_jax.memory.mlp import ACTIVATIONS, MLPMemory, MLPWeights
from nl_jax.memory.mlp import ANCHORED_STEPS as MLP_ANCHORED_STEPS
from nl_jax.memory.mlp import CHUNK_BACKWARDS, OUTPUT_ERRORS
from nl_jax.memory.types import MemoryInputs, MemoryState

SMT_RULES = ("dgd", "paper_l2", "gd")
SMT_READS = ("pre", "post", "anchor")
VALUE_NORMS = ("l2", "none")
ANCHORED_STEPS = MLP_ANCHORED_STEPS
TARGETS = ("self", "shared")
IMPLEMENTATIONS = ("auto", "chunked", "sequential")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SelfModifyingTitansConfig:
  """Shapes and options of SelfModifyingTitans (see the module docstring for each choice).

  Attributes:
    d_model: input / output width.
    n_heads: number of heads (one set of memories per head).
    head_dim: width of each head's memories.
    memory_hidden: hidden width of the vector memories (default head_dim).
    gate_hidden: hidden width of the scalar (eta, alpha) memories (default head_dim // 2).
    activation: sigma of eq. 89 (a key of nl_jax.memory.mlp.ACTIVATIONS).
    rule: inner rule, dgd | paper_l2 | gd.
    momentum: Titans-style momentum in every memory.
    mu_max: momentum decay bound (mu in [0, mu_max]).
    adaptive_q: q is a fast memory too.
    static_projections: subset of ("k", "v") computed without their memory (ablation).
    chunk_size: chunk of the output memory.
    proj_chunk_size: chunk of the k, v, (q,) eta, alpha memories.
    read_at: pre | post | anchor (output memory read).
    eta_max: learning-rate bound, eta in (0, eta_max].
    alpha_min: retention bound, alpha in [alpha_min, 1].
    eta_bias_init, alpha_bias_init: initial logits of the gates (b_eta, b_alpha); the paper
      gives no initialisation. alpha_bias_init=8 (default) starts the retention at 0.9998 per
      token (with alpha_min 0.5): the memories keep ~92% of their state over a 512-token
      call. At 4 (the earlier default, 0.991 per token) a 512-token call multiplied every
      fast weight by ~0.01, the 1/C-divided writes could not refill it and the trained
      memories' writes went unused (experiments/in_context/README.md, "Why the
      self-modifying Titans' writes went unused").
    stop_target_grad: no outer gradient through vhat.
    value_norm: "l2" (default: v_t is L2-normalised like k_t) or "none" (the paper's
      equations: only q and k are normalised). See the module docstring.
    anchored_step: "mean" (default: each anchored gradient step divided by the memory's chunk
      size), "sum" (eq. 90 literally, no 1/C) or "mean_all" (the erase divided by C too).
      See the module docstring.
    output_error: "anchor" (default) or "current" (w1's delta-rule step at its current value,
      no 1/C). See the module docstring.
    targets: "self" (default: vhat = M(v), eqs. 84-85) or "shared" (the fully adaptive
      memory of eqs. 79-82: the vector memories regress onto v). See the module docstring.
    chunk_backward: "manual" (default: the memories' chunks use nl_jax.memory.mlp_chunk's
      hand-written backward where it applies, see MLPMemory) or "autodiff" (the reference).
    conv_width: width of the causal depthwise conv on the q/k/v branch.
    implementation: auto (chunked when the call has at least one full chunk) | chunked |
      sequential.
    remat: jax.checkpoint each chunk (memory grows with chunks, not tokens).
    dtype: activation dtype (memory states stay float32).
    param_dtype: parameter dtype.
  """
  # Set by the model that owns the layer (None inside a model config; nl_jax.models.config_tree).
  DERIVED: ClassVar[tuple[str, ...]] = ("d_model", "n_heads", "head_dim", "remat", "dtype",
                                        "param_dtype")
  # The model's profile may leave these None until it builds the layer (HopeConfig.PROFILES).
  PROFILE_FIELDS: ClassVar[tuple[str, ...]] = ("rule", "momentum", "adaptive_q", "value_norm",
                                               "anchored_step")

  d_model: int | None = None
  n_heads: int | None = None
  head_dim: int | None = None
  memory_hidden: int | None = None
  gate_hidden: int | None = None
  activation: str = "silu"
  rule: str | None = "dgd"
  momentum: bool | None = False
  mu_max: float = 0.9
  adaptive_q: bool | None = False
  static_projections: tuple[str, ...] = ()
  chunk_size: int = 16
  proj_chunk_size: int = 16
  read_at: str = "pre"
  eta_max: float = 1.0
  alpha_min: float = 0.5
  eta_bias_init: float = -2.0
  alpha_bias_init: float = 8.0
  stop_target_grad: bool = False
  value_norm: str | None = "l2"
  anchored_step: str | None = "mean"
  output_error: str = "anchor"
  targets: str = "self"
  chunk_backward: str = "autodiff"
  conv_width: int = 4
  implementation: str = "auto"
  remat: bool | None = True
  dtype: str | None = "float32"
  param_dtype: str | None = "float32"

  def __post_init__(self):
    name = type(self).__name__
    config_tree.check_positive_ints(self, ("d_model", "n_heads", "head_dim", "chunk_size",
                                           "proj_chunk_size", "conv_width"))
    for f in ("memory_hidden", "gate_hidden"):
      v = getattr(self, f)
      if v is not None and (not isinstance(v, int) or v < 1):
        raise ValueError(f"{name}.{f} must be None or a positive int, got {v!r}")
    config_tree.check_choices(self, {
        "rule": SMT_RULES, "read_at": SMT_READS, "implementation": IMPLEMENTATIONS,
        "activation": tuple(ACTIVATIONS), "value_norm": VALUE_NORMS,
        "anchored_step": ANCHORED_STEPS, "targets": TARGETS, "output_error": OUTPUT_ERRORS,
        "chunk_backward": CHUNK_BACKWARDS}, may_be_unset=self.PROFILE_FIELDS)
    object.__setattr__(self, "static_projections", tuple(self.static_projections))
    bad = [p for p in self.static_projections if p not in ("k", "v")]
    if bad:
      raise ValueError(f"{name}.static_projections={self.static_projections!r}: entries must be "
                       "'k' or 'v' (a static q is adaptive_q=False)")
    if not self.eta_max > 0:
      raise ValueError(f"{name}.eta_max must be > 0, got {self.eta_max}")
    if not 0.0 <= self.alpha_min <= 1.0:
      raise ValueError(f"{name}.alpha_min must lie in [0, 1], got {self.alpha_min}")
    if not 0.0 <= self.mu_max < 1.0:
      raise ValueError(f"{name}.mu_max must lie in [0, 1), got {self.mu_max}")

  @property
  def hidden(self) -> int:
    return self.memory_hidden or self.head_dim

  @property
  def ghidden(self) -> int:
    return self.gate_hidden or max(1, self.head_dim // 2)

  @property
  def proj_names(self) -> tuple[str, ...]:
    """The vector projection memories, stacked in this order on the state's axis 1."""
    return ("k", "v", "q") if self.adaptive_q else ("k", "v")

  def _mem(self, chunk, out_dim=None, residual=True, read_at="post") -> MLPMemory:
    return MLPMemory(in_dim=self.head_dim, hidden_dim=self.hidden if residual else self.ghidden,
                     out_dim=out_dim, activation=self.activation, residual=residual,
                     rule=self.rule, semantics="anchored", chunk_size=chunk,
                     momentum=self.momentum, read_at=read_at, remat=False,
                     implementation="chunked", anchored_step=self.anchored_step,
                     output_error=self.output_error, chunk_backward=self.chunk_backward)

  @property
  def proj_memory(self) -> MLPMemory:
    return self._mem(self.proj_chunk_size)

  @property
  def gate_memory(self) -> MLPMemory:
    return self._mem(self.proj_chunk_size, out_dim=1, residual=False)

  @property
  def out_memory(self) -> MLPMemory:
    return self._mem(self.chunk_size, read_at=self.read_at)


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


def _apply(w: MLPWeights, x, act, residual: bool):
  """M(x) for stacked weights: w leaves [..., out, hid] / [..., hid, in], x [..., T, in]."""
  h = act(jnp.einsum("...ti,...hi->...th", x, w.w2))
  y = jnp.einsum("...th,...oh->...to", h, w.w1)
  return y + x if residual else y


def _l2norm(x, eps=1e-6):
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def init_memory_state(cfg: SelfModifyingTitansConfig, params: SMTParams,
                      batch_size: int) -> SMTMemoryState:
  """Initial fast state: the meta-learned initial weights, one copy per sequence."""
  h, p = cfg.n_heads, len(cfg.proj_names)
  return SMTMemoryState(
      proj=cfg.proj_memory.init_state(MemoryParams(params.proj_init), (batch_size, p, h)),
      gates=cfg.gate_memory.init_state(MemoryParams(params.gate_init), (batch_size, 2, h)),
      out=cfg.out_memory.init_state(MemoryParams(params.out_init), (batch_size, h)),
      position=jnp.zeros((batch_size,), jnp.int32))


class MemoryParams(NamedTuple):
  """Adapter with the field name MLPMemory.init_state reads (params.initial)."""
  initial: MLPWeights


def _bcast_init(init: MLPWeights, like: MLPWeights) -> MLPWeights:
  return jax.tree.map(lambda i, x: jnp.broadcast_to(i.astype(x.dtype), x.shape), init, like)


def _reset_state(st: MemoryState, init: MLPWeights, flag_B: jax.Array) -> MemoryState:
  """Sets memory (and anchor) back to init and momentum to zero where flag_B."""
  def sel(new, old):
    f = flag_B.reshape(flag_B.shape + (1,) * (old.ndim - 1))
    return jnp.where(f, new, old)
  init_b = _bcast_init(init, st.memory)
  memory = jax.tree.map(sel, init_b, st.memory)
  anchor = None if st.anchor is None else jax.tree.map(sel, init_b, st.anchor)
  momentum = None if st.momentum is None else jax.tree.map(
      lambda s: sel(jnp.zeros_like(s), s), st.momentum)
  return st._replace(memory=memory, anchor=anchor, momentum=momentum)


def _gates(cfg, logits_2xC, bias_2):
  """(eta, alpha) from the scalar memories' logits plus the static biases."""
  eta = gates.eta_from_logits(logits_2xC[..., 0, :, :] + bias_2[0][..., None], cfg.eta_max)
  alpha = gates.alpha_from_logits(logits_2xC[..., 1, :, :] + bias_2[1][..., None],
                                  cfg.alpha_min)
  return eta, alpha


def _projections(cfg, params, proj_anchor, gate_anchor, xk, xv, xq):
  """k, v, q, eta, alpha and the targets, all from the anchors (eqs. 83-84, 90).

  Shapes: x* [..., H, C, d] with anchors [..., P|2, H, ...]; returns k, v, q [..., H, C, d],
  eta, alpha [..., H, C], vhat_proj [..., P, H, C, d], vhat_gate [..., 2, H, C, 1].
  """
  act = ACTIVATIONS[cfg.activation]
  xs = [xk, xv] + ([xq] if cfg.adaptive_q else [])
  y = _apply(proj_anchor, jnp.stack(xs, axis=-4), act, True)
  k = _l2norm(xk if "k" in cfg.static_projections else y[..., 0, :, :, :])
  v = xv if "v" in cfg.static_projections else y[..., 1, :, :, :]
  if cfg.value_norm == "l2":
    v = _l2norm(v)
  q = _l2norm(y[..., 2, :, :, :] if cfg.adaptive_q else xq)
  logits = _apply(gate_anchor, jnp.stack([xk, xk], axis=-4), act, False)[..., 0]
  eta, alpha = _gates(cfg, logits, params.gate_bias)
  p = len(cfg.proj_names)
  if cfg.targets == "shared":
    vhat_proj = jnp.stack([v] * p, axis=-4)
  else:
    vhat_proj = _apply(proj_anchor, jnp.stack([v] * p, axis=-4), act, True)
  vhat_gate = _apply(gate_anchor, jnp.stack([v, v], axis=-4), act, False)
  if cfg.stop_target_grad:
    vhat_proj, vhat_gate = jax.lax.stop_gradient((vhat_proj, vhat_gate))
  return k, v, q, eta, alpha, vhat_proj, vhat_gate


def _out_target(cfg, anchor, v):
  """The output memory's regression target: M_out(v) at the anchor, or v ("shared")."""
  if cfg.targets == "shared":
    return v
  return _apply(anchor, v, ACTIVATIONS[cfg.activation], True)


# ----------------------------------------------------------------------------------------
# Chunk-parallel path
# ----------------------------------------------------------------------------------------

def _write_chunk(mem: MLPMemory, st: MemoryState, k, v, eta, alpha, mu, q, valid):
  """One anchored chunk of a memory group (state leaves [B, G, H, ...]) via MLPMemory's algebra.

  v [B, G, H, C, d] (one target per memory); k, q [B, H, C, d] and eta, alpha, mu [B, H, C]
  are shared by the G memories of the group; valid [B, C]. The group is vmapped with the
  shared inputs unmapped, so what depends on them only (the rule coefficients, the decay
  kernels, the keys' Gram matrix and the chunk's triangular inverse) is computed once per chunk
  and head, not once per memory. Invalid (padding) tokens come with eta = 0, alpha = mu = 1,
  so they leave the state exactly unchanged. Returns (reads [B, G, H, C, d_out] or None, new
  MemoryState).
  """
  inputs = MemoryInputs(keys=k, values=v, eta=eta, queries=q, alpha=alpha, momentum=mu)
  tok = mem.chunk_tokens(inputs, jax.tree.leaves(st.memory)[0].dtype)
  tok["valid"] = jnp.broadcast_to(valid[:, None, :], eta.shape).astype(eta.dtype)
  fn = jax.vmap(mem.chunk_step)  # heads
  fn = jax.vmap(fn, in_axes=(0, {name: 0 if name == "v" else None for name in tok}))  # group
  fn = jax.vmap(fn)  # batch
  grouped = v.ndim == jax.tree.leaves(st.memory)[0].ndim
  lift = (lambda z: z) if grouped else (lambda z: jax.tree.map(lambda a: a[:, None], z))
  drop = (lambda z: z) if grouped else (lambda z: jax.tree.map(lambda a: a[:, 0], z))
  out, (memory, momentum) = fn(lift((st.memory, st.momentum, st.anchor)), tok)
  memory, momentum = drop((memory, momentum))
  complete = valid[:, -1] > 0
  anchor = jax.tree.map(
      lambda m, a: jnp.where(complete.reshape((-1,) + (1,) * (m.ndim - 1)), m, a),
      memory, st.anchor)
  return out, MemoryState(memory, momentum, anchor, st.position)


def _mask_gates(valid_BxC, eta, alpha, mu):
  vm = valid_BxC[:, None, :] > 0
  eta = jnp.where(vm, eta, 0.0)
  alpha = jnp.where(vm, alpha, 1.0)
  mu = None if mu is None else jnp.where(vm, mu, 1.0)
  return eta, alpha, mu


class _Chunker(NamedTuple):
  """One chunk size's aligned layout of a call (nl_jax.memory.aligned_chunks) for [B, H, T, ...]
  per-head inputs ([B, T] with time_axis=1), with the chunk axis first for the scan."""
  offset: jax.Array | None
  n: int
  c: int
  t: int

  @classmethod
  def make(cls, c: int, t: int, position_B, start_aligned: bool) -> "_Chunker":
    offset, n = aligned_chunks.layout(t, c, position_B, start_aligned)
    return cls(offset, n, c, t)

  def split(self, x, fill=0.0, time_axis=2):
    x = jnp.moveaxis(x, time_axis, 1)  # [B, T, ...]
    y = aligned_chunks.to_chunks(x, self.offset, self.n, self.c, fill)  # [B, n, c, ...]
    return jnp.moveaxis(jnp.moveaxis(y, 2, time_axis + 1), 1, 0)  # [n, B, ..., c, ...]

  def join(self, x, time_axis=2):
    x = jnp.moveaxis(x, 0, 1)  # [B, n, H, C, ...]
    x = jnp.moveaxis(x, time_axis + 1, 2)  # [B, n, C, H, ...]
    y = aligned_chunks.from_chunks(x, self.offset, self.t)  # [B, T, H, ...]
    return jnp.moveaxis(y, 1, time_axis)


def _proj_pass(cfg, params, state: SMTMemoryState, inp: SMTInputs, chunker: _Chunker, dtype):
  """Scan 1 (chunks of proj_chunk_size): k, v, q, eta, alpha [B, H, T, ...] from the projection
  and gate memories' anchors, and those memories' new states."""
  valid_BxT = jnp.ones(inp.reset.shape, dtype)
  xs = dict(xk=chunker.split(inp.xk.astype(dtype)), xv=chunker.split(inp.xv.astype(dtype)),
            xq=chunker.split(inp.xq.astype(dtype)), valid=chunker.split(valid_BxT, time_axis=1),
            reset=chunker.split(inp.reset, False, time_axis=1))
  if cfg.momentum:
    xs["mu"] = chunker.split(inp.mu.astype(dtype), 1.0)
  pmem, gmem = cfg.proj_memory, cfg.gate_memory

  def body(carry, ch):
    pst, gst = carry
    flag = jnp.any(ch["reset"] & (ch["valid"] > 0), axis=1)
    pst = _reset_state(pst, params.proj_init, flag)
    gst = _reset_state(gst, params.gate_init, flag)
    k, v, q, eta, alpha, vhat_p, vhat_g = _projections(
        cfg, params, pst.anchor, gst.anchor, ch["xk"], ch["xv"], ch["xq"])
    eta, alpha, mu = _mask_gates(ch["valid"], eta, alpha, ch.get("mu"))
    k = jnp.where(ch["valid"][:, None, :, None] > 0, k, 0.0)
    _, pst = _write_chunk(pmem, pst, k, vhat_p, eta, alpha, mu, None, ch["valid"])
    _, gst = _write_chunk(gmem, gst, k, vhat_g, eta, alpha, mu, None, ch["valid"])
    return (pst, gst), (k, v, q, eta, alpha)

  body = jax.checkpoint(body) if cfg.remat else body
  (pst, gst), per_token = jax.lax.scan(body, (state.proj, state.gates), xs)
  return pst, gst, tuple(chunker.join(z) for z in per_token)


def _out_pass(cfg, params, state: SMTMemoryState, inp: SMTInputs, chunker: _Chunker, k, v, q,
              eta, alpha, dtype):
  """Scan 2 (chunks of chunk_size): the output memory's reads o [B, H, T, d], its new state,
  its inner loss (summed) and the squared norm of its targets."""
  valid_BxT = jnp.ones(inp.reset.shape, dtype)
  ys = dict(k=chunker.split(k), v=chunker.split(v), q=chunker.split(q),
            eta=chunker.split(eta), alpha=chunker.split(alpha, 1.0),
            valid=chunker.split(valid_BxT, time_axis=1),
            reset=chunker.split(inp.reset, False, time_axis=1))
  if cfg.momentum:
    ys["mu"] = chunker.split(inp.mu.astype(dtype), 1.0)
  omem = cfg.out_memory
  act = ACTIVATIONS[cfg.activation]

  def body(ost, ch):
    flag = jnp.any(ch["reset"] & (ch["valid"] > 0), axis=1)
    ost = _reset_state(ost, params.out_init, flag)
    vhat = _out_target(cfg, ost.anchor, ch["v"])
    if cfg.stop_target_grad:
      vhat = jax.lax.stop_gradient(vhat)
    err = _apply(ost.anchor, ch["k"], act, True) - vhat
    loss_BxHxC = 0.5 * jnp.sum(err * err, axis=-1) * ch["valid"][:, None, :]
    eta_c, alpha_c, mu_c = _mask_gates(ch["valid"], ch["eta"], ch["alpha"], ch.get("mu"))
    add = lambda z: None if z is None else z[:, None]  # noqa: E731  # group axis G = 1
    out, ost = _write_chunk(omem, ost, ch["k"], add(vhat), eta_c, alpha_c, mu_c, ch["q"],
                            ch["valid"])
    vhat_sq = jnp.sum(jax.lax.stop_gradient(vhat) ** 2 * ch["valid"][:, None, :, None])
    return ost, (out[:, 0], jnp.sum(loss_BxHxC, axis=(1, 2)), vhat_sq)

  body = jax.checkpoint(body) if cfg.remat else body
  ost, (o, loss, vhat_sq) = jax.lax.scan(body, state.out, ys)
  return chunker.join(o), ost, jnp.sum(loss), jnp.sum(vhat_sq)


def _chunked(cfg, params, state: SMTMemoryState, inp: SMTInputs, start_aligned: bool = False):
  t = inp.xk.shape[2]
  dtype = jax.tree.leaves(state.out.memory)[0].dtype
  chunker = lambda c: _Chunker.make(c, t, state.position, start_aligned)  # noqa: E731
  pst, gst, (k, v, q, eta, alpha) = _proj_pass(cfg, params, state, inp,
                                               chunker(cfg.proj_chunk_size), dtype)
  o, ost, loss, vhat_sq = _out_pass(cfg, params, state, inp, chunker(cfg.chunk_size), k, v, q,
                                    eta, alpha, dtype)
  stats = dict(inner_loss_sum=loss, eta=eta, alpha=alpha,
               v_sq_sum=jnp.sum(jax.lax.stop_gradient(v) ** 2), vhat_sq_sum=vhat_sq)
  new = SMTMemoryState(pst._replace(position=pst.position + t),
                       gst._replace(position=gst.position + t),
                       ost._replace(position=ost.position + t), state.position + t)
  return o, new, stats


# ----------------------------------------------------------------------------------------
# Sequential reference (token by token, each memory through MLPMemory.token_step)
# ----------------------------------------------------------------------------------------

def _token_reset(r, w, s, a, init):
  """Weights and anchor back to init, momentum to zero, where the token's reset r is set."""
  w = jax.tree.map(lambda n, o: jnp.where(r, n.astype(o.dtype), o), init, w)
  a = jax.tree.map(lambda n, o: jnp.where(r, n.astype(o.dtype), o), init, a)
  s = None if s is None else jax.tree.map(lambda o: jnp.where(r, 0.0, o), s)
  return w, s, a


def _token_write_group(mem, w, s, a, k, vhat, eta, alpha, mu):
  """One token's write of a group of memories (leaves [G, H, ...]) that share k, eta, alpha
  and mu ([H, ...]), each with its own target vhat [G, H, d_out]."""
  fn = lambda w_, s_, a_, k_, vh_, e_, al_, m_: mem.token_step(  # noqa: E731
      (w_, s_, a_), k_, vh_, e_, al_, m_)
  s_axis = 0 if s is not None else None
  per_head = jax.vmap(fn, in_axes=(0, s_axis, 0, 0, 0, 0, 0, 0))
  per_group = jax.vmap(per_head, in_axes=(0, s_axis, 0, None, 0, None, None, None))
  return per_group(w, s, a, k, vhat, eta, alpha, mu)


def _sequential(cfg, params, state: SMTMemoryState, inp: SMTInputs):
  act = ACTIVATIONS[cfg.activation]
  b, h, t, d = inp.xk.shape
  dtype = jax.tree.leaves(state.out.memory)[0].dtype
  cp, co = cfg.proj_chunk_size, cfg.chunk_size
  init = (params.proj_init, params.gate_init, params.out_init)

  def row(pst, gst, ost, pos0, xk, xv, xq, mu, reset):
    """One sequence: memories [P|2|., H, ...], inputs [H, T, d]."""
    def step(carry, x):
      (pw, ps, pa), (gw, gs, ga), (ow, os_, oa), pos = carry
      xk_t, xv_t, xq_t, mu_t, r = x

      pw, ps, pa = _token_reset(r, pw, ps, pa, init[0])
      gw, gs, ga = _token_reset(r, gw, gs, ga, init[1])
      ow, os_, oa = _token_reset(r, ow, os_, oa, init[2])
      k, v, q, eta, alpha, vhat_p, vhat_g = _projections(
          cfg, params, pa, ga, xk_t[:, None], xv_t[:, None], xq_t[:, None])
      k, v, q = k[:, 0], v[:, 0], q[:, 0]            # [H, d]
      eta, alpha = eta[:, 0], alpha[:, 0]            # [H]
      vhat_p, vhat_g = vhat_p[:, :, 0], vhat_g[:, :, 0]  # [P, H, d], [2, H, 1]
      mu_h = jnp.ones_like(eta) if mu_t is None else mu_t

      write_group = lambda mem, w, s, a, vhat: _token_write_group(  # noqa: E731
          mem, w, s, a, k, vhat, eta, alpha, mu_h)
      pw, ps = write_group(cfg.proj_memory, pw, ps, pa, vhat_p)
      gw, gs = write_group(cfg.gate_memory, gw, gs, ga, vhat_g)
      o_pre = _apply(ow, q[:, None], act, True)[:, 0]
      o_anchor = _apply(oa, q[:, None], act, True)[:, 0]
      vhat_o = _out_target(cfg, oa, v[:, None])[:, 0]
      if cfg.stop_target_grad:
        vhat_o = jax.lax.stop_gradient(vhat_o)
      err = _apply(oa, k[:, None], act, True)[:, 0] - vhat_o
      loss = 0.5 * jnp.sum(err * err)
      (ow, os_) = write_group(cfg.out_memory, jax.tree.map(lambda z: z[None], ow),
                              None if os_ is None else jax.tree.map(lambda z: z[None], os_),
                              jax.tree.map(lambda z: z[None], oa), vhat_o[None])
      ow = jax.tree.map(lambda z: z[0], ow)
      os_ = None if os_ is None else jax.tree.map(lambda z: z[0], os_)
      o_post = _apply(ow, q[:, None], act, True)[:, 0]
      o = {"pre": o_pre, "post": o_post, "anchor": o_anchor}[cfg.read_at]
      bp = (pos + 1) % cp == 0
      bo = (pos + 1) % co == 0
      pa = jax.tree.map(lambda m, a: jnp.where(bp, m, a), pw, pa)
      ga = jax.tree.map(lambda m, a: jnp.where(bp, m, a), gw, ga)
      oa = jax.tree.map(lambda m, a: jnp.where(bo, m, a), ow, oa)
      carry = ((pw, ps, pa), (gw, gs, ga), (ow, os_, oa), pos + 1)
      sq = jax.lax.stop_gradient(jnp.stack([jnp.sum(v * v), jnp.sum(vhat_o * vhat_o)]))
      return carry, (o, loss, eta, alpha, sq)

    xs = (jnp.moveaxis(xk, 1, 0), jnp.moveaxis(xv, 1, 0), jnp.moveaxis(xq, 1, 0),
          None if mu is None else jnp.moveaxis(mu, 1, 0), reset)
    carry = ((pst.memory, pst.momentum, pst.anchor), (gst.memory, gst.momentum, gst.anchor),
             (ost.memory, ost.momentum, ost.anchor), pos0)
    step_fn = jax.checkpoint(step) if cfg.remat else step
    carry, (o, loss, eta, alpha, sq) = jax.lax.scan(step_fn, carry, xs)
    return carry, (jnp.moveaxis(o, 0, 1), jnp.sum(loss), jnp.moveaxis(eta, 0, 1),
                   jnp.moveaxis(alpha, 0, 1), jnp.sum(sq, axis=0))

  strip = lambda st: st._replace(position=None)  # noqa: E731
  mu = None if inp.mu is None else inp.mu.astype(dtype)
  carry, (o, loss, eta, alpha, sq) = jax.vmap(row)(
      strip(state.proj), strip(state.gates), strip(state.out), state.position,
      inp.xk.astype(dtype), inp.xv.astype(dtype), inp.xq.astype(dtype), mu, inp.reset)
  (pw, ps, pa), (gw, gs, ga), (ow, os_, oa), _ = carry
  new = SMTMemoryState(MemoryState(pw, ps, pa, state.proj.position + t),
                       MemoryState(gw, gs, ga, state.gates.position + t),
                       MemoryState(ow, os_, oa, state.out.position + t), state.position + t)
  return o, new, dict(inner_loss_sum=jnp.sum(loss), eta=eta, alpha=alpha,
                      v_sq_sum=jnp.sum(sq[:, 0]), vhat_sq_sum=jnp.sum(sq[:, 1]))


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
  if impl == "chunked":
    for field in ("proj_chunk_size", "chunk_size"):
      check_reset_alignment("SelfModifyingTitans", inp.reset, state.position,
                            getattr(cfg, field), field)
  if impl == "chunked":
    return _chunked(cfg, params, state, inp, start_aligned)
  return _sequential(cfg, params, state, inp)


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
    self.wq = nnx.Param(dense_init(rngs.params(), (d, hk), d, pdt))
    self.wk = nnx.Param(dense_init(rngs.params(), (d, hk), d, pdt))
    self.wv = nnx.Param(dense_init(rngs.params(), (d, hk), d, pdt))
    self.wg = nnx.Param(dense_init(rngs.params(), (d, hk), d, pdt))
    self.wo = nnx.Param(dense_init(rngs.params(), (hk, d), hk, pdt))
    self.conv = CausalConv(3 * hk, cfg.conv_width, param_dtype=pdt, rngs=rngs)
    # Small output-side weights: every memory starts near the identity (residual) or near
    # zero logits (scalar), so the initial gates are the biases.
    vec = cfg.proj_memory
    for name in cfg.proj_names + ("out",):
      setattr(self, f"{name}_init",
              MemoryInit(vec.init_params(rngs.params(), (h,), out_scale=0.1, dtype=pdt).initial))
    gm = cfg.gate_memory
    self.eta_init = MemoryInit(gm.init_params(rngs.params(), (h,), out_scale=0.1,
                                              dtype=pdt).initial)
    self.alpha_init = MemoryInit(gm.init_params(rngs.params(), (h,), out_scale=0.1,
                                                dtype=pdt).initial)
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
                              segment_ids_BxT, ConvState(*state["conv"]))
    u = jax.nn.silu(u)
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
           "update_norm": _update_norm(state["memory"].out.memory, mem.out.memory),
           "v_rms": jnp.sqrt(stats["v_sq_sum"] / n_tok),
           "vhat_rms": jnp.sqrt(stats["vhat_sq_sum"] / n_tok),
           "out_w1_norm": diagnostics.max_weight_norm(mem.out.memory.w1),
           "out_w2_norm": diagnostics.max_weight_norm(mem.out.memory.w2),
           "proj_w1_norm": diagnostics.max_weight_norm(mem.proj.memory.w1),
           "gate_w1_norm": diagnostics.max_weight_norm(mem.gates.memory.w1)}
    return y.astype(x_BxTxD.dtype), {"memory": mem, "conv": conv_state}, aux


def _update_norm(before: MLPWeights, after: MLPWeights) -> jax.Array:
  """RMS over sequences and heads of the Frobenius change of the output memory in this call."""
  sq = sum(jnp.sum((a - b) ** 2, axis=(-2, -1))
           for a, b in zip(after, before, strict=True))
  return jax.lax.stop_gradient(jnp.sqrt(jnp.mean(sq)))  # diagnostic only
