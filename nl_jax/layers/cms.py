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
"""Continuum Memory System (paper section 7, eqs. 70-74; spec 6): MLP levels that keep learning.

k SwiGLU levels; level l has chunk size C_l and learning rate lr_l. Its weights theta_l are fast
weights, one copy per sequence: within a chunk they are frozen, every token's gradient of the
level's objective is accumulated, and at the end of each chunk of C_l tokens (global stream
positions) the level steps (eq. 71, summed over the chunk)::

    theta_l <- theta_l - lr_l * sum_{t in chunk} grad_theta L_l(theta_l; t)

The initial weights theta_l^0 (parameters ``level_{l}_init``) are outer parameters trained by
backprop through the whole unrolled in-context learning (the sequential variant, eq. 73).

variant:
* ``sequential`` (eq. 70 / 97, Hope's chain): x <- x + MLP_l(rmsnorm_l(x)) for l = 1..k (pre-norm
  residual sub-blocks, spec 7.2's recommended reading; the residuals are our choice).
* ``independent`` (eq. 74, head-wise): y = x + sum_l a_l MLP_l(rmsnorm(x)) with learned
  aggregation weights ``agg`` [k] (init 1 / k).
* ``nested`` (eq. 72, spec 6.2): the chain of ``sequential``, but the initial state of each
  level but the slowest is learned in context by the next slower level, which re-initialises
  it from that state at the end of each of its own chunks. Levels are listed fastest first,
  each C_{l+1} a multiple of C_l; both objectives. Our reading of eq. 72 below.

Nested CMS, our reading of eq. 72, theta^(f_{s+1})_0 = argmin_Phi E_{T ~ C^(s)} [l(Theta, T;
Phi)]: "level s meta-learns the initial state of level s+1, which is re-initialised at the end
of its context, after ceil(C^(s) / C^(s+1)) steps". The paper numbers levels slowest first;
its levels s, s+1 are our levels l+1 (parent), l (child). Per level l < k - 1::

    phi_l <- phi0_l = level_{l}_init         (stream start, document start)
    level l's own steps (eq. 71), every C_l tokens:
      theta_l <- phi_l + gamma_l (theta_l - phi_l) - s(lr_l, acc_l) acc_l
    at each end of level l's context (every C_{l+1} tokens = C_{l+1} / C_l of its steps):
      phi_l <- phi0_l + gamma_{l+1} (phi_l - phi0_l) - s(lr_{l+1}, macc_l) macc_l
      theta_l <- phi_l;  acc_l, macc_l <- 0
    macc_l = sum over the context of grad L_l(theta_{l,t}; t) (the gradients of level l's own
    steps), s(lr, a) = lr clipped so that ||s a|| <= max_step_norm (_step_scale)

* What the parent learns is a state of its own, phi_l (``CMSState.meta_init``, level l's
  shapes), not its own fast weights theta_{l+1}: those are another MLP at another place of the
  chain. (Restarting level l from theta_{l+1} would make the two levels the same function
  after every re-initialisation and leave every ``level_{l}_init`` but the slowest unused.)
  Level l+1 thus holds two fast states: theta_{l+1}, its MLP in the chain (eq. 71), and phi_l
  (the per-sequence state grows by phi_l and macc_l, two copies of each level but the slowest).
* Its objective is level l's loss over the context as a function of level l's starting point
  (l(Theta, T; Phi) with T the C_{l+1} tokens of the context). The gradient is taken to first
  order (first-order MAML: d theta_{l,t} / d phi_l ~ I through level l's own steps), which is
  the sum macc_l of level l's gradients over the context; the exact second-order
  meta-gradient (an inner differentiation through each context) is not implemented.
* The step is level l+1's: its learning rate, clip and retention (gamma_{l+1}, toward
  phi0_l); level l's own retention pulls toward phi_l, the weights it restarts from. Level l's
  own step at the end of the context is superseded by the re-initialisation.
* Consequences (tested): with lr_{l+1} = lr_l, no clip and no retention, phi_l after a context
  is exactly where level l's own steps took it, so re-initialising is a no-op and nested equals
  sequential; the variant differs from sequential when the parent moves the start more slowly
  than the child adapts (lr_{l+1} < lr_l: the child adapts within each context, its start keeps
  what is common to all contexts) or with the clip. lr_{l+1} = 0 restarts level l from
  ``level_{l}_init`` every C_{l+1} tokens. One level: nested is sequential.
* The slowest level has no parent: its initial state is the outer parameter, trained by
  backprop as in ``sequential`` (eq. 73). The outer gradient flows through everything (the
  chain, the levels' steps, phi's steps and the re-initialisations), so every
  ``level_{l}_init`` learns as the starting value of phi_l and theta_l.
* Contexts are windows of global stream positions, [m C_{l+1}, (m + 1) C_{l+1}): after a
  document start inside one, level l's first context is its rest (as a level's first chunk is
  in the other variants). A stream split across calls carries phi_l and macc_l in the state.

objective="local" (implemented in this module; documented exactly): level l is an associative
memory that predicts, from the input of its MLP at the previous token, the input of its MLP at
the current token::

    L_l(theta; t) = 0.5 || MLP_theta(h_{l,t-1}) - stop_gradient(h_{l,t}) ||^2,
    h_{l,t} = rmsnorm_l(x_{l,t}) (the level's normalised input),

counted only when t-1 and t belong to the same packed document (no pair across a reset). The
previous token's h is carried in the state so a stream split across calls gives the same pairs.
It is causal (t-1 and t are both seen at t) and cheap (one extra MLP forward and backward per
level on the tokens of the call).

objective="ntp" (the paper's: the next-token loss of the whole model, eq. 71): the gradient
needs the whole model, so the model runs the call segment by segment (S = min C_l) and drives
the levels (nl_jax.models.cms_ntp) through the functions of this module: ``reset_levels``,
then its segment loss through ``apply_levels`` differentiated w.r.t. the fast weights, then
``step_levels``. Calling the layer itself with "ntp" raises a ValueError.

One state (``CMSState``) and one step rule (``step_level``, with the boundary rule
``closes_chunk``) serve both objectives: a level steps when the tokens it has taken in reach a
multiple of C_l in stream positions, on everything accumulated since its last step. The
local objective's chunks are aligned to those multiples; an "ntp" segment that straddles one
(a call that starts mid-segment) steps at the segment's end, its tokens after the boundary
included.

Chunk-parallel path (``cms_scan``): each level runs on its own clock, a scan over its own chunks
of C_l tokens aligned to global stream positions, carrying only its own state (fast weights,
accumulator, previous input; phi_l and macc_l when nested); the chain feeds level l's output
sequence to level l + 1. Within a chunk a level's weights are frozen, so one MLP pass over
[h_{t-1}, h_t ...] gives both its outputs and its in-context gradient. A call that starts
mid-chunk is front-padded with masked tokens; a call whose state was created for it
(``start_aligned``: position 0, e.g. the trainer's step) needs no front padding and runs
ceil(T / C_l) chunks. A level whose chunk is longer than the call acts as a plain MLP during
the call and keeps its accumulated gradient and position in the state (streaming).
``sequential_reference`` is the token loop (executable spec; for ``nested``,
``nested_reference``, written from the equations above); neither shares stepping code with
``cms_scan``. The nested re-initialisations fall on the parent's chunk ends, which are ends of
the child's chunks.

Resets (True at the first token of a new document): every level goes back to its initial
weights and drops its accumulated gradient (nested: phi_l and macc_l too). Exact anywhere, in
the token loop and in the chunked path: a level's weights change only at its chunk ends and at
resets, so within a chunk the tokens before its first reset read the carried weights, those
from it on the initial weights, and only the gradient after the last reset is kept. Under
"ntp" a segment resets as a whole: a document must start on a multiple of S (the model's
``alignment``; the data pipeline's ``data.alignment`` sees to it), and the model refuses a
concrete reset elsewhere.

meta_gradient (CMSConfig): "exact" (default) differentiates the outer loss through the
in-context gradients (second order); "first_order" treats them as constants: the same forward,
0.53-0.60x the layer's forward+backward time at the small widths (experiments/BENCHMARKS.md),
and 0.061 nats/byte worse held-out loss on the tiny LM at 300 steps over 3 seeds
(experiments/in_context/README.md). chunk_backward (CMSConfig): "autodiff" (default) or
"manual", the hand-written backward of a level's chunk (nl_jax.layers.cms_chunk) for the exact
meta-gradient.

A level can start from a pretrained SwiGLU (spec 6.3):
``ContinuumMemorySystem.load_pretrained``.
"""

import dataclasses
import math
from typing import ClassVar, NamedTuple

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from nl_jax import config_tree
from nl_jax.layers import cms_chunk
from nl_jax.layers.mlp import dense_init
from nl_jax.layers.norms import rms_norm
from nl_jax.memory import remat_scan
from nl_jax.memory.aligned_chunks import ScanChunks, as_rows, broadcast_like, where_rows
from nl_jax.memory.types import state_dtype

VARIANTS = ("sequential", "independent", "nested")
OBJECTIVES = ("local", "ntp")
META_GRADIENTS = ("exact", "first_order")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CMSConfig:
  """Shapes and options of the continuum memory system (see the module docstring).

  Attributes:
    d_model: width.
    hidden: hidden width of every level's SwiGLU.
    chunk_sizes: C_l per level (each a multiple of the smallest).
    learning_rates: lr_l per level (>= 0; 0 keeps a level at its initial weights).
    variant: sequential | independent | nested (see the module docstring).
    max_step_norm: per sequence and level, the norm of an in-context step lr_l * acc_l is
      clipped to this (None or inf: no clip; see _step_scale).
    retention: gamma_l per level in (0, 1] (None: 1 each, eq. 71 as written). At each of its
      steps level l first pulls its weights back toward its initial weights,
      theta <- theta_0 + gamma_l (theta - theta_0) - lr_l acc_l, so that its in-context drift
      stays bounded (by about max_step_norm / (1 - gamma_l)) however long the stream.
    objective: local | ntp (see the module docstring).
    meta_gradient: exact | first_order. How the outer gradient (of the model's loss w.r.t.
      the initial weights, norms and inputs) treats the in-context gradients that step the
      levels: "exact" differentiates through them (second order, eq. 73); "first_order"
      treats each in-context gradient as a constant (stop_gradient; first-order MAML), which
      skips the backward of the inner gradient. The outputs are the same; only the outer
      gradient differs. objective "local" only.
    chunk_backward: autodiff | manual. How the outer backward goes through a level's chunk
      (its SwiGLU pass and in-context gradient, nl_jax.layers.cms_chunk): "autodiff"
      (default) transposes the pass that takes the gradient; "manual" is the hand-written
      backward of cms_chunk (the same values to float64 rounding). meta_gradient "exact" and
      objective "local" only (first order never differentiates the gradient; "ntp" takes it
      through the whole model, nl_jax.models.cms_ntp).
    remat: jax.checkpoint each chunk of each level's scan.
    remat_group: with remat, the backward keeps a level's fast state every this many chunks
      (1: every chunk; 0: about sqrt(chunks) per scan) and runs the chunks between forward
      again (nl_jax.memory.remat_scan): less memory, one more forward of the chunk loop.
    norm_eps: RMSNorm epsilon.
    dtype: activation dtype (fast weights and their gradients stay float32).
  """
  # Set by the model that owns the layer (None inside a model config; nl_jax.config_tree).
  DERIVED: ClassVar[tuple[str, ...]] = ("d_model", "hidden", "remat", "remat_group", "norm_eps",
                                        "dtype")
  # The model's profile may leave it None until it builds the layer (HopeConfig.PROFILES;
  # max_step_norm is a profile field too, resolved by the model: None here means no clip).
  PROFILE_FIELDS: ClassVar[tuple[str, ...]] = ("objective",)

  d_model: int | None = None
  hidden: int | None = None
  chunk_sizes: tuple[int, ...] = (16, 64)
  learning_rates: tuple[float, ...] | None = None
  variant: str = "sequential"
  objective: str | None = "local"
  max_step_norm: float | None = 1.0
  retention: tuple[float, ...] | None = None
  meta_gradient: str = "exact"
  chunk_backward: str = "autodiff"
  remat: bool | None = True
  remat_group: int | None = 1
  norm_eps: float | None = 1e-6
  dtype: str | None = "float32"

  def __post_init__(self):
    name = type(self).__name__
    # One level may be given as a scalar (command-line overrides such as "chunk_sizes=16").
    for f in ("chunk_sizes", "learning_rates", "retention"):
      v = getattr(self, f)
      if v is not None:
        object.__setattr__(self, f, (v,) if isinstance(v, (int, float)) else tuple(v))
    cs = tuple(self.chunk_sizes)
    if not cs or any(not isinstance(c, int) or c < 1 for c in cs):
      raise ValueError(f"{name}.chunk_sizes must be a non-empty tuple of positive ints, got "
                       f"{self.chunk_sizes!r}")
    if any(c % min(cs) for c in cs):
      raise ValueError(f"{name}.chunk_sizes={cs}: every chunk size must be a multiple of the "
                       f"smallest ({min(cs)})")
    if self.learning_rates is not None:
      if len(self.learning_rates) != len(cs):
        raise ValueError(f"{name}.learning_rates has {len(self.learning_rates)} entries, "
                         f"expected one per level ({len(cs)})")
      if any(lr < 0 for lr in self.learning_rates):
        raise ValueError(f"{name}.learning_rates must be >= 0, got {self.learning_rates}")
    if self.retention is not None:
      if len(self.retention) != len(cs):
        raise ValueError(f"{name}.retention has {len(self.retention)} entries, expected one "
                         f"per level ({len(cs)})")
      if any(not 0.0 < g <= 1.0 for g in self.retention):
        raise ValueError(f"{name}.retention entries must lie in (0, 1], got {self.retention}")
    if self.variant not in VARIANTS:
      raise ValueError(f"{name}.variant={self.variant!r} is not one of {VARIANTS}")
    if self.objective not in OBJECTIVES and self.objective is not None:
      raise ValueError(f"{name}.objective={self.objective!r} is not one of {OBJECTIVES}")
    if self.meta_gradient not in META_GRADIENTS:
      raise ValueError(f"{name}.meta_gradient={self.meta_gradient!r} is not one of "
                       f"{META_GRADIENTS}")
    if self.meta_gradient != "exact" and self.objective not in ("local", None):
      raise ValueError(f"{name}.meta_gradient={self.meta_gradient!r} is implemented for "
                       "objective='local' only; use meta_gradient='exact' with objective='ntp'")
    if self.chunk_backward not in cms_chunk.BACKWARDS:
      raise ValueError(f"{name}.chunk_backward={self.chunk_backward!r} is not one of "
                       f"{cms_chunk.BACKWARDS}")
    if self.chunk_backward == "manual" and (self.meta_gradient != "exact"
                                            or self.objective not in ("local", None)):
      raise ValueError(f"{name}.chunk_backward='manual' is the backward of the exact "
                       "meta-gradient of objective='local'; use chunk_backward='autodiff' with "
                       f"meta_gradient={self.meta_gradient!r}, objective={self.objective!r}")
    if self.variant == "nested":
      if any(b % a for a, b in zip(cs, cs[1:], strict=False)):
        raise ValueError(f"{name}.chunk_sizes={cs}: variant='nested' lists its levels fastest "
                         "first, each chunk size a multiple of the one before (level l+1 "
                         "re-initialises level l at the end of each of its chunks, eq. 72)")
    if self.max_step_norm is not None and not self.max_step_norm > 0:
      raise ValueError(f"{name}.max_step_norm must be > 0 (inf: no clip), got "
                       f"{self.max_step_norm}")
    if self.remat_group is not None:  # None: set by the model (DERIVED)
      remat_scan.check_group(f"{name}.remat_group", self.remat_group)
    config_tree.check_positive_ints(self, ("d_model", "hidden"))

  @property
  def n_levels(self) -> int:
    return len(self.chunk_sizes)

  @property
  def segment(self) -> int:
    return min(self.chunk_sizes)

  @property
  def gammas(self) -> tuple[float, ...]:
    return tuple(self.retention) if self.retention is not None else (1.0,) * self.n_levels

  @property
  def lrs(self) -> tuple[float, ...]:
    return tuple(self.learning_rates) if self.learning_rates is not None else (1e-3,) * len(
        self.chunk_sizes)


class SwiGLUWeights(NamedTuple):
  """w_gate, w_up [*lead, d, f], w_down [*lead, f, d]."""
  w_gate: jax.Array
  w_up: jax.Array
  w_down: jax.Array


class CMSParams(NamedTuple):
  """Outer parameters: initial weights per level, norm scales [k, d] and agg [k]."""
  init: tuple[SwiGLUWeights, ...]
  norm: jax.Array
  agg: jax.Array


class CMSState(NamedTuple):
  """Per-sequence state (every leaf [B, ...]).

  weights / acc: per level the fast weights and the gradient accumulated since its last step;
  prev_h [k, ...]: per level the last token's normalised input ([B, k, d]); prev_valid [B]:
  prev_h holds a token of the current document (both for objective "local" only, where a
  level predicts h_t from h_{t-1}; zeros under "ntp"); position [B]: tokens seen (sets the
  chunk boundaries).
  meta_init / meta_acc (variant="nested" only, else empty): per level l < k - 1 its
  meta-learned initial weights phi_l (learned by level l + 1) and the sum of level l's
  gradients since level l + 1's last step.
  """
  weights: tuple[SwiGLUWeights, ...]
  acc: tuple[SwiGLUWeights, ...]
  prev_h: jax.Array
  prev_valid: jax.Array
  position: jax.Array
  meta_init: tuple[SwiGLUWeights, ...] = ()
  meta_acc: tuple[SwiGLUWeights, ...] = ()


_mlp = cms_chunk.swiglu  # per-sequence SwiGLU: weights [B, ...]


def init_state(cfg: CMSConfig, params: CMSParams, batch_size: int) -> CMSState:
  """Initial weights, one copy per sequence (float32, or float64 when the initial weights
  are), empty accumulators, position 0; both objectives."""
  b = batch_size
  dt = state_dtype(params.init[0].w_gate.dtype)
  weights = tuple(jax.tree.map(lambda a: jnp.broadcast_to(a.astype(dt),
                                                          (b,) + a.shape), w)
                  for w in params.init)
  acc = tuple(jax.tree.map(jnp.zeros_like, w) for w in weights)
  n_meta = cfg.n_levels - 1 if cfg.variant == "nested" else 0
  return CMSState(weights, acc, jnp.zeros((b, cfg.n_levels, cfg.d_model), dt),
                  jnp.zeros((b,), bool), jnp.zeros((b,), jnp.int32),
                  meta_init=weights[:n_meta], meta_acc=acc[:n_meta])


def _inner(cfg, grads):
  """An in-context gradient as the outer gradient sees it (CMSConfig.meta_gradient)."""
  return jax.lax.stop_gradient(grads) if cfg.meta_gradient == "first_order" else grads


def _step_scale(cfg, lr, acc):
  """lr, shrunk per sequence so that the step lr * acc has norm <= cfg.max_step_norm.

  The accumulated gradient of a chunk grows with C_l and with repeated inputs (a run of one
  token gives C_l identical gradients), and a raw step of that size makes the fast MLP diverge
  within a few chunks; the clip keeps each in-context step bounded whatever the data.
  """
  sq = sum(jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim))) for x in jax.tree.leaves(acc))
  # sqrt has an infinite derivative at 0 (an empty accumulator, e.g. right after a reset):
  # 0 * inf would put NaN into the outer gradient even where the step is not taken.
  nonzero = sq > 0
  norm = jnp.where(nonzero, lr * jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)
  if cfg.max_step_norm is None or cfg.max_step_norm == math.inf:
    return jnp.full_like(norm, lr)
  # Double where: max / norm only where it is used, so a tiny or zero norm (lr 0, an empty
  # accumulator) puts no inf derivative into the second-order gradient of objective="ntp".
  clip = norm > cfg.max_step_norm
  return lr * jnp.where(clip, cfg.max_step_norm / jnp.where(clip, norm, 1.0), 1.0)


def retain(gamma: float, init: SwiGLUWeights, w: SwiGLUWeights,
           batched: bool = False) -> SwiGLUWeights:
  """theta_0 + gamma (theta - theta_0) (CMSConfig.retention); w leaves [B, ...], init leaves
  without the batch axis (or [B, ...] when batched)."""
  if gamma == 1.0:
    return w
  def one(i, x):
    i = (i if batched else i[None]).astype(x.dtype)
    return i + gamma * (x - i)
  return jax.tree.map(one, init, w)


def closes_chunk(start_B: jax.Array, end_B: jax.Array, c: int) -> jax.Array:
  """The boundary rule of every CMS level, both objectives: the tokens at stream positions
  [start, end) end a chunk of c tokens (a level steps after its stream position p with
  (p + 1) % C_l == 0, on everything accumulated since its last step)."""
  return (end_B // c) > (start_B // c)


def step_level(cfg: CMSConfig, lvl: int, init: SwiGLUWeights, w: SwiGLUWeights,
               acc: SwiGLUWeights, phi: SwiGLUWeights | None, macc: SwiGLUWeights | None,
               start_B: jax.Array, end_B: jax.Array):
  """Level lvl's step (eq. 71) and, nested, its parent's step of phi_l (eq. 72); both
  objectives.

  Applies the steps whose boundary (``closes_chunk``) the tokens [start_B, end_B) reach, per
  sequence::

    at a chunk end of C_l:     w <- base + gamma_l (w - base) - s(lr_l, acc) acc;  acc <- 0
                               (base: phi_l when nested, else the level's initial weights)
    nested, at a chunk end of C_{l+1} (the end of level l's context):
      phi <- init + gamma_{l+1} (phi - init) - s(lr_{l+1}, macc) macc;  w <- phi;
      acc, macc <- 0

  Args:
    cfg, lvl: the config and the level.
    init: the level's initial weights (leaves without the batch axis).
    w: the fast weights the tokens read ([B, ...]).
    acc: the gradient accumulated since the last step, these tokens' included.
    phi, macc: nested levels (l < k - 1): the meta-learned start and the gradients of the
      current context; None otherwise.
    start_B, end_B: the stream positions of the tokens, [start, end).

  Returns:
    (w, acc, phi, macc) after the steps (phi, macc None when not nested).
  """
  nested = phi is not None
  base = retain(cfg.gammas[lvl], phi if nested else init, w, batched=nested)
  scale = _step_scale(cfg, cfg.lrs[lvl], acc)
  step_B = closes_chunk(start_B, end_B, cfg.chunk_sizes[lvl])
  w_new = where_rows(step_B, jax.tree.map(lambda b, a: b - as_rows(scale, a) * a, base, acc), w)
  acc = where_rows(step_B, jax.tree.map(jnp.zeros_like, acc), acc)
  if not nested:
    return w_new, acc, None, None
  parent = lvl + 1
  meta_B = closes_chunk(start_B, end_B, cfg.chunk_sizes[parent])
  mscale = _step_scale(cfg, cfg.lrs[parent], macc)
  new_phi = jax.tree.map(lambda p, a: p - as_rows(mscale, a) * a,
                         retain(cfg.gammas[parent], init, phi), macc)
  phi = where_rows(meta_B, new_phi, phi)
  macc = where_rows(meta_B, jax.tree.map(jnp.zeros_like, macc), macc)
  w_new = where_rows(meta_B, phi, w_new)
  acc = where_rows(meta_B, jax.tree.map(jnp.zeros_like, acc), acc)
  return w_new, acc, phi, macc


class _LevelCarry(NamedTuple):
  """One level's part of CMSState during its scan (meta_*: None unless nested, l < k - 1)."""
  weights: SwiGLUWeights
  acc: SwiGLUWeights
  prev_h: jax.Array
  prev_valid: jax.Array
  meta_init: SwiGLUWeights | None
  meta_acc: SwiGLUWeights | None


def _level_chunk(cfg, lvl, init, carry: _LevelCarry, ch, end_pos_B):
  """One chunk of level lvl: (new carry, (output [B, C, D], update norm)).

  The level's weights change only at its own chunk ends and at resets (back to the initial
  weights), so within a chunk a token uses the carried weights before the chunk's first reset
  and the initial weights from it on, and the gradient that survives to the chunk end is the
  one taken after the last reset (at the initial weights): exact for resets anywhere.
  """
  h, vmask, reset = ch["h"], ch["valid"] > 0, ch["reset"] & (ch["valid"] > 0)
  c = h.shape[1]
  j = jnp.arange(c)[None]
  any_reset = jnp.any(reset, axis=1)
  first = jnp.min(jnp.where(reset, j, c), axis=1)
  last = jnp.max(jnp.where(reset, j, -1), axis=1)
  init_b = broadcast_like(init, carry.weights)
  w_eff = where_rows(any_reset, init_b, carry.weights)
  left_valid = jnp.concatenate([jnp.zeros_like(vmask[:, :1]), vmask[:, :-1]], axis=1)
  pair = vmask & (left_valid | carry.prev_valid[:, None]) & ~reset
  counted = pair & (j >= last[:, None])
  # One MLP pass over [prev_h, h_0 .. h_{C-1}] gives both the predictions of the pairs
  # (MLP(h_{j-1}), rows 0..C-1) and the outputs (MLP(h_j), rows 1..C). Padding slots hold
  # prev_h, so a first token after front padding pairs with the carried previous token.
  h_in = jnp.where(vmask[:, :, None], h, carry.prev_h[:, None])
  h_cat = jnp.concatenate([carry.prev_h[:, None], h_in], axis=1)
  # g = grad_w 0.5 sum_j counted_j ||MLP_w(h_{j-1}) - h_j||^2 at w_eff
  z, g = cms_chunk.mlp_and_grad(w_eff, h_cat, h, counted, cfg.chunk_backward)
  g = SwiGLUWeights(*g)
  if cfg.meta_gradient == "first_order":
    g = jax.lax.stop_gradient(g)  # no differentiation through the in-context gradient
  out = z[:, 1:]
  # A reset strictly inside the chunk: the tokens before it still read the carried weights.
  mid = any_reset & (first > 0)
  before = (j < first[:, None]) & mid[:, None]
  out = jax.lax.cond(jnp.any(mid),
                     lambda: jnp.where(before[:, :, None], _mlp(carry.weights, h), out),
                     lambda: out)

  acc = jax.tree.map(lambda a, gg: jnp.where(as_rows(any_reset, a), 0.0, a) + gg, carry.acc, g)
  nested = carry.meta_init is not None
  phi = macc = None
  if nested:
    phi = where_rows(any_reset, init_b, carry.meta_init)
    macc = jax.tree.map(lambda a, gg: jnp.where(as_rows(any_reset, a), 0.0, a) + gg,
                        carry.meta_acc, g)
  # The chunk's tokens are stream positions [end - C_l, end - C_l + idx + 1) (idx: its last
  # valid slot, -1 for none): the boundary rule decides whether they close a chunk of this
  # level (and one of its parent).
  idx = jnp.max(jnp.where(vmask, j, -1), axis=1)
  weights, acc, meta_init, meta_acc = step_level(cfg, lvl, init, w_eff, acc, phi, macc,
                                                 end_pos_B - c, end_pos_B - c + idx + 1)
  # Diagnostics only: no gradient (sqrt has an infinite derivative at an unchanged level).
  moved = jax.lax.stop_gradient(jnp.sum(jnp.sqrt(sum(
      jnp.sum((a - w) ** 2, axis=(1, 2)) for a, w in zip(weights, w_eff, strict=True)))))
  picked = jnp.take_along_axis(h, jnp.maximum(idx, 0)[:, None, None], axis=1)[:, 0]
  prev_h = jnp.where((idx >= 0)[:, None], picked, carry.prev_h)
  prev_valid = carry.prev_valid | (idx >= 0)
  return _LevelCarry(weights, acc, prev_h, prev_valid, meta_init, meta_acc), (out, moved)


def _level_scan(cfg, lvl, params, st: CMSState, h_BxTxD, reset_BxT, start_aligned):
  """Level lvl over the call on its own clock: a scan over its own chunks of C_l tokens."""
  b, t, _ = h_BxTxD.shape
  c = cfg.chunk_sizes[lvl]
  chunks = ScanChunks.make(c, t, st.position, start_aligned)
  start = st.position if chunks.offset is None else st.position - chunks.offset
  xs = {"h": chunks.split(h_BxTxD, 0.0, time_axis=1),
        "valid": chunks.split(jnp.ones((b, t), h_BxTxD.dtype), 0.0, time_axis=1),
        "reset": chunks.split(reset_BxT, False, time_axis=1)}
  nested = lvl < len(st.meta_init)
  carry = _LevelCarry(st.weights[lvl], st.acc[lvl], st.prev_h[:, lvl], st.prev_valid,
                      st.meta_init[lvl] if nested else None,
                      st.meta_acc[lvl] if nested else None)
  init = params.init[lvl]
  acc0 = st.acc[lvl]

  def body(carry, inp):
    ch, i = inp
    # The call's tokens are contiguous and chunks end on multiples of C_l (ScanChunks' grid),
    # so a chunk after the first that holds a token follows a full chunk, whose end stepped the
    # level and emptied its accumulator (step_level): it starts from acc = 0. Such chunks read
    # zeros and the first chunk the state's acc (loop-invariant), and an empty chunk (the
    # padded ones at the end) passes the carried acc on untouched, so the carried acc is never
    # read by a chunk's computation and the backward does not save it per chunk (it was half
    # of what the per-chunk remat saved).
    acc_in = jax.tree.map(lambda a: jnp.where(i == 0, a, jnp.zeros_like(a)), acc0)
    new, ys = _level_chunk(cfg, lvl, init, carry._replace(acc=acc_in), ch,
                           start + (i + 1) * c)
    live_B = jnp.any(ch["valid"] > 0, axis=1)
    return new._replace(acc=where_rows(live_B, new.acc, carry.acc)), ys

  carry, (out, moved) = remat_scan.remat_scan(body, carry, (xs, jnp.arange(chunks.n)),
                                              remat=cfg.remat, group=cfg.remat_group)
  out = chunks.join(out, time_axis=1)
  return out, carry, jnp.sum(moved) / b


def cms_scan(cfg: CMSConfig, params: CMSParams, st: CMSState, x_BxTxD, reset_BxT,
             start_aligned: bool = False):
  """Chunk-parallel CMS over a call: (y [B, T, D], new state, stats).

  Each level runs its own scan over its own chunks of C_l tokens (its own clock), carrying
  only its own state; the chain of the sequential and nested variants feeds level l's output
  sequence to level l + 1. start_aligned: the state starts at position 0 (a fresh state):
  no front padding, ceil(T / C_l) chunks per level.
  """
  dt = st.prev_h.dtype
  x = x_BxTxD.astype(dt)
  carries, outs, upd = [], [], {}
  for lvl in range(cfg.n_levels):
    norm = params.norm[lvl] if cfg.variant != "independent" else params.norm[0]
    h = rms_norm(x if cfg.variant != "independent" else x_BxTxD.astype(dt), norm, cfg.norm_eps)
    out, carry, moved = _level_scan(cfg, lvl, params, st, h, reset_BxT, start_aligned)
    carries.append(carry)
    upd[f"level_{lvl}/update_norm"] = moved
    if cfg.variant == "independent":
      outs.append(params.agg[lvl] * out)
    else:
      x = x + out
  y = x + sum(outs) if outs else x
  meta = [cr for cr in carries if cr.meta_init is not None]
  new = CMSState(tuple(cr.weights for cr in carries), tuple(cr.acc for cr in carries),
                 jnp.stack([cr.prev_h for cr in carries], axis=1), carries[-1].prev_valid,
                 st.position + x_BxTxD.shape[1], tuple(cr.meta_init for cr in meta),
                 tuple(cr.meta_acc for cr in meta))
  upd.update(level_drift(params, new.weights))
  return y.astype(x_BxTxD.dtype), new, upd


def level_drift(params: CMSParams, weights) -> dict:
  """Per level, the largest (over sequences) norm of fast weights minus initial weights.

  Diagnostic only: how far in-context learning has moved each level from its meta-learned
  initial state by the end of the call.
  """
  out = {}
  params, weights = jax.lax.stop_gradient((params, weights))
  for lvl, (init, w) in enumerate(zip(params.init, weights, strict=True)):
    sq = sum(jnp.sum((a - i[None].astype(a.dtype)) ** 2, axis=tuple(range(1, a.ndim)))
             for a, i in zip(w, init, strict=True))
    out[f"level_{lvl}/drift"] = jnp.sqrt(jnp.max(sq))
  return out

# objective="ntp": the pieces the model's segment driver (nl_jax.models.cms_ntp) calls for each
# segment of S = min(C_l) tokens: reset_levels, then the model's loss through apply_levels
# differentiated w.r.t. the fast weights, then step_levels with that gradient.


def apply_levels(cfg: CMSConfig, params: CMSParams, weights: tuple[SwiGLUWeights, ...],
                 x_BxSxD: jax.Array) -> jax.Array:
  """The CMS chain with frozen fast weights, residuals included (the variants of cms_scan).

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


def reset_levels(params: CMSParams, st: CMSState, flag_B: jax.Array) -> CMSState:
  """Rows with flag_B True go back to the initial weights with empty accumulators (nested:
  phi_l back to the initial weights, macc_l emptied). A reset applies to the whole segment,
  so it is exact only at a segment's first token; the driver refuses a concrete document
  start anywhere else (nl_jax.memory.base.check_reset_alignment)."""
  def to_init(states):
    return tuple(where_rows(flag_B, broadcast_like(init, w), w)
                 for init, w in zip(params.init, states, strict=False))

  def to_zero(states):
    return tuple(where_rows(flag_B, _zeros_like(a), a) for a in states)

  return st._replace(weights=to_init(st.weights), acc=to_zero(st.acc),
                     meta_init=to_init(st.meta_init), meta_acc=to_zero(st.meta_acc))


def step_levels(cfg: CMSConfig, st: CMSState, grads: tuple[SwiGLUWeights, ...], length: int,
                init: tuple[SwiGLUWeights, ...]) -> tuple[CMSState, jax.Array]:
  """Adds a segment's next-token gradient to every level and applies ``step_level``.

  Args:
    cfg: the CMS config (chunk_sizes, lrs).
    st: the state the segment ran with (position = stream index of its first token).
    grads: per level the gradient of the segment's loss w.r.t. st.weights.
    length: number of tokens in the segment (static).
    init: per level the initial weights (``params.init``).

  Returns:
    (state after the segment, update_norm [B, k]: Frobenius norm of each level's step).
  """
  start_B = st.position
  end_B = start_B + length
  n_meta = len(st.meta_init)
  weights, acc, meta_init, meta_acc, norms = [], [], [], [], []
  for lvl in range(cfg.n_levels):
    add = lambda x, g: x + g.astype(x.dtype)  # noqa: E731
    a = jax.tree.map(add, st.acc[lvl], grads[lvl])
    phi = macc = None
    if lvl < n_meta:
      phi, macc = st.meta_init[lvl], jax.tree.map(add, st.meta_acc[lvl], grads[lvl])
    w_new, a_new, phi, macc = step_level(cfg, lvl, init[lvl], st.weights[lvl], a, phi, macc,
                                         start_B, end_B)
    weights.append(w_new)
    acc.append(a_new)
    if lvl < n_meta:
      meta_init.append(phi)
      meta_acc.append(macc)
    norms.append(jnp.sqrt(sum(jnp.sum((n - o) ** 2, axis=tuple(range(1, n.ndim)))
                              for n, o in zip(w_new, st.weights[lvl], strict=True))))
  return (st._replace(weights=tuple(weights), acc=tuple(acc), position=end_B,
                      meta_init=tuple(meta_init), meta_acc=tuple(meta_acc)),
          jnp.stack(norms, axis=1))


def _per_row_init(params: CMSParams, b: int, dt) -> tuple:
  """Every level's initial weights, one copy per sequence (the token loops' reset value)."""
  return tuple(jax.tree.map(lambda a: jnp.broadcast_to(a.astype(dt), (b,) + a.shape), w)
               for w in params.init)


def _zeros_like(tree):
  return jax.tree.map(jnp.zeros_like, tree)


def _mlp_rows(w, h_BxD):
  """One token's level MLP for every sequence (per-sequence weights ``w``)."""
  return _mlp(w, h_BxD[:, None])[:, 0]


def sequential_reference(cfg: CMSConfig, params: CMSParams, st: CMSState, x_BxTxD, reset_BxT):
  """Token loop of the sequential and independent variants (executable spec; variant="nested":
  nested_reference). It shares no stepping code with cms_scan. Per token (p = stream position
  after it; theta0_l = ``level_{l}_init``)::

    a document starts here -> theta_l <- theta0_l, acc_l <- 0, no pair with the previous token
    y from the current weights (the chain of eq. 70, or eq. 74's weighted sum)
    g_l = grad_theta 0.5 ||MLP_{theta_l}(h_l at the previous token) - h_l||^2  (0 without a pair)
    acc_l += g_l; for every l with p % C_l == 0:                                   (eq. 71)
      theta_l <- theta0_l + gamma_l (theta_l - theta0_l) - s(lr_l, acc_l) acc_l;  acc_l <- 0
  with s(lr, a) = lr clipped so that ||s a|| <= max_step_norm (_step_scale).
  """
  if cfg.variant == "nested":
    return nested_reference(cfg, params, st, x_BxTxD, reset_BxT)
  b = x_BxTxD.shape[0]
  k = cfg.n_levels
  dt = st.prev_h.dtype
  outer = _per_row_init(params, b, dt)
  zeros = _zeros_like
  mlp = _mlp_rows

  def token(st, inp):
    x, r_B = inp
    theta = where_rows(r_B, outer, st.weights)
    acc = where_rows(r_B, zeros(st.acc), st.acc)
    paired = st.prev_valid & ~r_B
    if cfg.variant == "independent":
      hs = [rms_norm(x, params.norm[0], cfg.norm_eps)] * k
      y = x + sum(params.agg[lvl] * mlp(theta[lvl], hs[lvl]) for lvl in range(k))
    else:
      hs = []
      for lvl in range(k):
        hs.append(rms_norm(x, params.norm[lvl], cfg.norm_eps))
        x = x + mlp(theta[lvl], hs[lvl])
      y = x
    p = st.position + 1
    new_theta, new_acc = [], []
    for lvl, c in enumerate(cfg.chunk_sizes):

      def loss(w, h_prev=st.prev_h[:, lvl], h=hs[lvl]):
        err = mlp(w, h_prev) - jax.lax.stop_gradient(h)
        return 0.5 * jnp.sum(jnp.sum(err * err, axis=-1) * paired)

      a = jax.tree.map(jnp.add, acc[lvl], _inner(cfg, jax.grad(loss)(theta[lvl])))
      s = _step_scale(cfg, cfg.lrs[lvl], a)
      stepped = jax.tree.map(lambda w, g, s=s: w - as_rows(s, g) * g,
                             retain(cfg.gammas[lvl], params.init[lvl], theta[lvl]), a)
      new_theta.append(where_rows(p % c == 0, stepped, theta[lvl]))
      new_acc.append(where_rows(p % c == 0, zeros(a), a))
    new = CMSState(tuple(new_theta), tuple(new_acc), jnp.stack(hs, axis=1),
                   jnp.ones((b,), bool), p)
    return new, y

  xs = (jnp.moveaxis(x_BxTxD.astype(dt), 1, 0), jnp.moveaxis(reset_BxT, 1, 0))
  st, y = jax.lax.scan(token, st, xs)
  return jnp.moveaxis(y, 0, 1).astype(x_BxTxD.dtype), st


def nested_reference(cfg: CMSConfig, params: CMSParams, st: CMSState, x_BxTxD, reset_BxT):
  """Token loop of variant="nested", written from eqs. 70-72 (executable spec).

  It shares no stepping code with cms_scan. Per token (p = stream position after it; phi_l the
  meta-learned initial weights of level l, phi0_l = ``level_{l}_init``, the top level's phi
  is its phi0)::

    a document starts here -> theta_l, phi_l <- phi0_l, accumulators <- 0 (every level)
    h_l = rmsnorm_l(x_l);  x_{l+1} = x_l + MLP_{theta_l}(h_l);  y = x_k           (eq. 70)
    g_l = grad_theta 0.5 ||MLP_{theta_l}(h_l at the previous token) - h_l||^2
          (0 when the previous token is not of this document)
    acc_l += g_l;  macc_l += g_l (l < k - 1)
    for every l with p % C_l == 0:                                                 (eq. 71)
      theta_l <- phi_l + gamma_l (theta_l - phi_l) - s(lr_l, acc_l) acc_l;  acc_l <- 0
    for every l < k - 1 with p % C_{l+1} == 0 (the end of level l's context):     (eq. 72)
      phi_l <- phi0_l + gamma_{l+1} (phi_l - phi0_l) - s(lr_{l+1}, macc_l) macc_l;  macc_l <- 0
      theta_l <- phi_l;  acc_l <- 0
  with s(lr, a) = lr clipped so that ||s a|| <= max_step_norm (_step_scale).
  """
  b = x_BxTxD.shape[0]
  k = cfg.n_levels
  dt = st.prev_h.dtype
  outer = _per_row_init(params, b, dt)
  zeros = _zeros_like
  mlp = _mlp_rows

  def token(st, inp):
    x, r_B = inp
    fresh = CMSState(outer, zeros(outer), st.prev_h, jnp.zeros((b,), bool), st.position,
                     outer[:k - 1], zeros(outer[:k - 1]))
    st = where_rows(r_B, fresh, st)
    hs, grads = [], []
    for lvl in range(k):
      h = rms_norm(x, params.norm[lvl], cfg.norm_eps)

      def loss(w, h_prev=st.prev_h[:, lvl], h=h):
        err = mlp(w, h_prev) - jax.lax.stop_gradient(h)
        return 0.5 * jnp.sum(jnp.sum(err * err, axis=-1) * st.prev_valid)

      grads.append(_inner(cfg, jax.grad(loss)(st.weights[lvl])))
      hs.append(h)
      x = x + mlp(st.weights[lvl], h)
    p = st.position + 1
    theta, acc = list(st.weights), []
    phi = list(st.meta_init) + [outer[k - 1]]
    for lvl, c in enumerate(cfg.chunk_sizes):
      a = jax.tree.map(jnp.add, st.acc[lvl], grads[lvl])
      s = _step_scale(cfg, cfg.lrs[lvl], a)
      gamma = cfg.gammas[lvl]
      stepped = jax.tree.map(lambda th, ph, g, s=s, gamma=gamma: ph + gamma * (th - ph)
                             - as_rows(s, g) * g, theta[lvl], phi[lvl], a)
      theta[lvl] = where_rows(p % c == 0, stepped, theta[lvl])
      acc.append(where_rows(p % c == 0, zeros(a), a))
    meta_init, meta_acc = [], []
    for lvl in range(k - 1):
      m = jax.tree.map(jnp.add, st.meta_acc[lvl], grads[lvl])
      s = _step_scale(cfg, cfg.lrs[lvl + 1], m)
      gamma = cfg.gammas[lvl + 1]
      new_phi = jax.tree.map(lambda ph, ph0, g, s=s, gamma=gamma: ph0 + gamma * (ph - ph0)
                             - as_rows(s, g) * g, phi[lvl], outer[lvl], m)
      end_of_context = p % cfg.chunk_sizes[lvl + 1] == 0
      meta_init.append(where_rows(end_of_context, new_phi, phi[lvl]))
      meta_acc.append(where_rows(end_of_context, zeros(m), m))
      theta[lvl] = where_rows(end_of_context, meta_init[lvl], theta[lvl])
      acc[lvl] = where_rows(end_of_context, zeros(acc[lvl]), acc[lvl])
    new = CMSState(tuple(theta), tuple(acc), jnp.stack(hs, axis=1), jnp.ones((b,), bool), p,
                   tuple(meta_init), tuple(meta_acc))
    return new, x

  xs = (jnp.moveaxis(x_BxTxD.astype(dt), 1, 0), jnp.moveaxis(reset_BxT, 1, 0))
  st, y = jax.lax.scan(token, st, xs)
  return jnp.moveaxis(y, 0, 1).astype(x_BxTxD.dtype), st


class LevelInit(nnx.Module):
  """Initial weights of one level (SwiGLU names, so sharding rules match)."""

  def __init__(self, d: int, f: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.w_gate = nnx.Param(dense_init(rngs.params(), (d, f), d, param_dtype))
    self.w_up = nnx.Param(dense_init(rngs.params(), (d, f), d, param_dtype))
    self.w_down = nnx.Param(dense_init(rngs.params(), (f, d), f, param_dtype))

  def weights(self) -> SwiGLUWeights:
    return SwiGLUWeights(self.w_gate[...], self.w_up[...], self.w_down[...])


class ContinuumMemorySystem(nnx.Module):
  """The CMS layer (see the module docstring); includes its residual connections.

  Parameters: ``level_{l}_init`` (w_gate, w_up, w_down), ``norm_scale`` [k, d], ``agg`` [k]
  (independent variant only). State: CMSState.
  """

  def __init__(self, cfg: CMSConfig, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
    config_tree.check_bound(cfg)
    self.cfg = cfg
    for lvl in range(cfg.n_levels):
      setattr(self, f"level_{lvl}_init",
              LevelInit(cfg.d_model, cfg.hidden, rngs=rngs, param_dtype=param_dtype))
    self.norm_scale = nnx.Param(jnp.ones((cfg.n_levels, cfg.d_model), param_dtype))
    if cfg.variant == "independent":
      self.agg = nnx.Param(jnp.full((cfg.n_levels,), 1.0 / cfg.n_levels, param_dtype))

  def params(self) -> CMSParams:
    cfg = self.cfg
    init = tuple(getattr(self, f"level_{lvl}_init").weights() for lvl in range(cfg.n_levels))
    agg = self.agg[...] if cfg.variant == "independent" else jnp.ones((cfg.n_levels,))
    return CMSParams(init, self.norm_scale[...], agg)

  def load_pretrained(self, level: int, w_gate, w_up, w_down) -> None:
    """Sets level's initial weights from a pretrained SwiGLU (spec 6.3)."""
    lv = getattr(self, f"level_{level}_init")
    for name, w in (("w_gate", w_gate), ("w_up", w_up), ("w_down", w_down)):
      old = getattr(lv, name)
      if tuple(w.shape) != tuple(old.shape):
        raise ValueError(f"ContinuumMemorySystem.load_pretrained: {name} has shape "
                         f"{tuple(w.shape)}, expected {tuple(old.shape)}")
      old[...] = jnp.asarray(w, old[...].dtype)

  def init_memory(self, batch_size: int) -> CMSState:
    """The per-sequence state at stream start (both objectives)."""
    return init_state(self.cfg, self.params(), batch_size)

  def __call__(self, x_BxTxD, state: CMSState, reset_BxT, implementation: str = "chunked",
               start_aligned: bool = False):
    """Returns (y [B, T, D], new state, aux).

    start_aligned: the caller created ``state`` for this call (position 0); see cms_scan.
    """
    if self.cfg.objective == "ntp":
      raise ValueError("ContinuumMemorySystem: objective='ntp' learns from the whole model's "
                       "next-token loss, so the model drives it segment by segment "
                       "(nl_jax.models.cms_ntp, used by Hope / HopeAttention with "
                       "cms.objective='ntp'); call the layer itself only with objective='local'")
    if implementation == "sequential":
      y, st = sequential_reference(self.cfg, self.params(), state, x_BxTxD, reset_BxT)
      return y, st, {}
    y, st, stats = cms_scan(self.cfg, self.params(), state, x_BxTxD, reset_BxT,
                            start_aligned=start_aligned)
    return y, st, stats
