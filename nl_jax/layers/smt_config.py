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
"""Configuration of the self-modifying Titans layer (nl_jax.layers.self_modifying_titans).

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
  reads it, and its initial weights get no gradient. ``"gates"`` (not in the paper's table)
  computes eta and alpha with the scalar memories' meta-learned initial weights, never their
  in-context state: static two-layer gates of xk plus the biases, as Titans computes its
  gates from static projections. The scalar memories still write, their reads are unused, and
  their initial weights get their gradient through the gates only.
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
  k, v, (q,) eta and alpha memories. Equal (every preset), every memory runs in one chunk
  scan (``one_scan``, default); different, in two (the projection scan first).
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
"""

import dataclasses
from typing import ClassVar

from nl_jax import config_tree
from nl_jax.memory import remat_scan
from nl_jax.memory.mlp import ACTIVATIONS, MLPMemory
from nl_jax.memory.mlp import ANCHORED_STEPS as MLP_ANCHORED_STEPS
from nl_jax.memory.mlp import CHUNK_BACKWARDS, OUTPUT_ERRORS

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
    static_projections: subset of ("k", "v", "gates") computed without their in-context
      memory (ablation).
    chunk_size: chunk of the output memory.
    proj_chunk_size: chunk of the k, v, (q,) eta, alpha memories.
    read_at: pre | post | anchor (output memory read).
    eta_max: learning-rate bound, eta in (0, eta_max].
    alpha_min: retention bound, alpha in [alpha_min, 1].
    memory_init_scale: scale of the vector memories' (k, v, q, out) initial output-side weight
      w1 relative to MLPMemory.init_params' LeCun-normal w1; the paper gives none. 0.1
      (default) starts every memory near the identity; Titans' memory starts at 1.0. w2's
      in-context step goes through w1, so it starts this much smaller than at 1.0. The scalar
      (eta, alpha) memories keep 0.1, so the initial gates stay at their biases.
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
    chunk_backward: "autodiff" (default, the reference) or "manual" (the memories' chunks use
      nl_jax.memory.mlp_chunk's hand-written backward where it applies, see MLPMemory).
    one_scan: with chunk_size == proj_chunk_size, run every memory in one chunk scan (default:
      the same values as two scans, without stacking k, v, q over the sequence between them:
      less step memory, up to 1.24x the compile time); False: two scans, the projection
      scan first (always, when the chunk sizes differ).
    conv_width: width of the causal depthwise conv on the q/k/v branch.
    implementation: auto (chunked when the call has at least one full chunk) | chunked |
      sequential.
    remat: jax.checkpoint each chunk (memory grows with chunks, not tokens).
    remat_group: with remat, the backward of the chunked scans keeps the memories' state
      every this many chunks (1: every chunk; 0: about sqrt(chunks) per scan) and runs the
      chunks between forward again (nl_jax.memory.remat_scan): less memory, one more
      forward of the chunk loops.
    dtype: activation dtype (memory states stay float32).
    param_dtype: parameter dtype.
  """
  # Set by the model that owns the layer (None inside a model config; nl_jax.models.config_tree).
  DERIVED: ClassVar[tuple[str, ...]] = ("d_model", "n_heads", "head_dim", "remat",
                                        "remat_group", "dtype", "param_dtype")
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
  memory_init_scale: float = 0.1
  eta_bias_init: float = -2.0
  alpha_bias_init: float = 8.0
  stop_target_grad: bool = False
  value_norm: str | None = "l2"
  anchored_step: str | None = "mean"
  output_error: str = "anchor"
  targets: str = "self"
  chunk_backward: str = "autodiff"
  one_scan: bool = True
  conv_width: int = 4
  implementation: str = "auto"
  remat: bool | None = True
  remat_group: int | None = 1
  dtype: str | None = "float32"
  param_dtype: str | None = "float32"

  def __post_init__(self):
    name = type(self).__name__
    config_tree.check_positive_ints(
        self, ("d_model", "n_heads", "head_dim", "chunk_size", "proj_chunk_size", "conv_width",
               "memory_hidden", "gate_hidden"), optional=("memory_hidden", "gate_hidden"))
    config_tree.check_choices(self, {
        "rule": SMT_RULES, "read_at": SMT_READS, "implementation": IMPLEMENTATIONS,
        "activation": tuple(ACTIVATIONS), "value_norm": VALUE_NORMS,
        "anchored_step": ANCHORED_STEPS, "targets": TARGETS, "output_error": OUTPUT_ERRORS,
        "chunk_backward": CHUNK_BACKWARDS}, may_be_unset=self.PROFILE_FIELDS)
    object.__setattr__(self, "static_projections", tuple(self.static_projections))
    bad = [p for p in self.static_projections if p not in ("k", "v", "gates")]
    if bad:
      raise ValueError(f"{name}.static_projections={self.static_projections!r}: entries must be "
                       "'k', 'v' or 'gates' (a static q is adaptive_q=False)")
    if not self.memory_init_scale >= 0:
      raise ValueError(f"{name}.memory_init_scale must be >= 0, got {self.memory_init_scale}")
    if not self.eta_max > 0:
      raise ValueError(f"{name}.eta_max must be > 0, got {self.eta_max}")
    if not 0.0 <= self.alpha_min <= 1.0:
      raise ValueError(f"{name}.alpha_min must lie in [0, 1], got {self.alpha_min}")
    if not 0.0 <= self.mu_max < 1.0:
      raise ValueError(f"{name}.mu_max must lie in [0, 1), got {self.mu_max}")
    if self.remat_group is not None:  # None: set by the model (DERIVED)
      remat_scan.check_group(f"{name}.remat_group", self.remat_group)

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
