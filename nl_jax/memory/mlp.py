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
"""Deep (MLP) memory: the residual two-layer fast weight of eq. 89, per head and sequence.

M(x) = x + W1 act(W2 x) (residual=True; needs d_in == d_out), trained in context on
the inner loss 0.5 ||M(k) - v||^2. Per token, with G1, G2 the inner gradients::

    W2 <- W2 (alpha I - erase k k^T) - lr G2     # DGD's rank-1 decay on the input-side weight
    W1 <- alpha W1 - lr1 G1                      # (spec 9.4, first option)

with lr1 = eta / (1 + eta ||h||^2), h = act(W2 k) for dgd (w1's own input normalises its step,
see ``_hidden_lr``) and lr1 = lr for paper_l2 and gd. In anchored semantics both steps are
divided by C by default (anchored_step='mean': a chunk's gradients, all taken at its anchor,
are averaged as in TTT / Titans mini-batches; 'sum' adds them, which overshoots by up to C and
diverges on repeated tokens); under 'mean' the per-token erase is not scaled. 'mean_all'
divides the erase by C too, so that the chunk is one mini-batch step in both of its terms
(under 'mean', C identical tokens erase w2 k C times and write it once). Neither makes the
writes of a trained Hope count: there the retention decay empties the memory within a call
whatever the erase (experiments/in_context/README.md, "Why the self-modifying Titans'
writes went unused").

(momentum: S <- mu S - lr G, W <- decay(W) + S). Rules: dgd uses
c = eta / (1 + eta ||k||^2) for both the erase and the step, so the key-direction factor of
the input weight stays in (0, 1]; paper_l2 uses eta for both (eq. 88 literally); gd
has no erase. hebbian and retention_order='before' are matrix-memory only.

exact semantics (gradients at the current weights) has no parallel form and runs the token
loop; anchored semantics (gradients of a chunk at the chunk's anchor) runs chunk-parallel:
the anchored gradients are rank-1 (G2 = dz k^T, G1 = err h^T), so each layer is a matrix
memory with known writes, solved in closed form by chunk_ops.

output_error (anchored semantics only): ``"anchor"`` (default) takes the output-side weight's
error at the anchor like every other gradient. ``"current"`` takes it at w1's current value,
with h = act(w2 k) still from the anchor::

    W1 <- alpha W1 - lr1 (W1 h + k - v) h^T          # lr1 not divided by C

This is the delta rule on the features h, sequential inside the chunk and still closed form
(chunk_ops' exact writes). It needs no 1/C: C identical tokens contract W1 along h by
(alpha - lr1 ||h||^2) per token (in (alpha - 1, alpha] under dgd) instead of adding C copies
of one anchored step, which is what makes anchored_step='sum' overshoot. w2's step is
unchanged (anchored, anchored_step). On its own it does not make a trained Hope's writes
count (w2, and with it h, still decays within a call; same README section).
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from nl_jax.memory import chunk_ops, gates, mlp_chunk
from nl_jax.memory.base import FastLevel, sg, straight_through
from nl_jax.memory.types import rule_coefficients

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": jax.nn.gelu,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "identity": lambda x: x,
}


# How an anchored chunk scales its per-token steps, and where w1's error is taken (see the
# module docstring).
ANCHORED_STEPS = ("mean", "sum", "mean_all")
OUTPUT_ERRORS = ("anchor", "current")
# How the outer backward goes through an anchored chunk (see MLPMemory.chunk_backward).
CHUNK_BACKWARDS = ("manual", "autodiff")


def apply_weights(w: "MLPWeights", x: jax.Array, act, residual: bool) -> jax.Array:
  """M(x) = [x +] w1 act(w2 x) with any matching leading axes: w leaves [..., out, hid] and
  [..., hid, in], x [..., T, in]."""
  h = act(jnp.einsum("...ti,...hi->...th", x, w.w2))
  y = jnp.einsum("...th,...oh->...to", h, w.w1)
  return y + x if residual else y


class MLPWeights(NamedTuple):
  """Fast weights of the MLP memory: w1 [d_out, hidden] (output side) and
  w2 [hidden, d_in] (input side), with optional leading axes."""
  w1: jax.Array
  w2: jax.Array


class SharedChunk(NamedTuple):
  """What a chunk's write computes from the keys, gates and rule alone: the decay kernels and
  the input-side weight's erase system (None under gd). Memories that share those (a
  self-modifying Titans' groups) compute it once per chunk and head (``chunk_shared``)."""
  kern: chunk_ops.ChunkKernels
  system: chunk_ops.EraseSystem | None


class MLPMemoryParams(NamedTuple):
  """Outer parameters: the meta-learned initial weights."""
  initial: MLPWeights


@dataclasses.dataclass(frozen=True, kw_only=True)
class MLPMemory(FastLevel):
  """A residual two-layer MLP fast weight; see the module docstring.

  chunk_backward: how the outer gradient goes through an anchored chunk. ``"autodiff"``
  (default): autodiff transposes ``chunk_ops``' algebra, rematerialised per chunk with
  ``remat``. ``"manual"``: ``nl_jax.memory.mlp_chunk``'s hand-written backward (it saves the
  chunk solve and recomputes the rest), for the chunks it covers (no momentum,
  ``output_error='anchor'``, not ``first_order``; the others keep autodiff). The two give the
  same values to rounding. Measured in the self-modifying Titans layer on the 2-core CPU
  (experiments/BENCHMARKS.md): without remat "manual" takes 0.83-0.84x the time and
  0.48-0.49x the memory of "autodiff"; with the per-chunk remat the two are within 3% and both
  faster and smaller than either without it, so the default stays autodiff.
  """
  in_dim: int
  hidden_dim: int
  out_dim: int | None = None
  activation: str = "silu"
  residual: bool = True
  anchored_step: str = "mean"
  output_error: str = "anchor"
  chunk_backward: str = "autodiff"

  def __post_init__(self):
    super().__post_init__()
    if self.rule == "hebbian":
      raise ValueError("MLPMemory: rule='hebbian' is defined for MatrixMemory only")
    if self.retention_order != "after":
      raise ValueError("MLPMemory: retention_order='before' is defined for MatrixMemory only")
    if self.anchored_step not in ANCHORED_STEPS:
      raise ValueError(f"MLPMemory: anchored_step={self.anchored_step!r} is not one of "
                       f"{ANCHORED_STEPS}")
    if self.output_error not in OUTPUT_ERRORS:
      raise ValueError(f"MLPMemory: output_error={self.output_error!r} is not one of "
                       f"{OUTPUT_ERRORS}")
    if self.chunk_backward not in CHUNK_BACKWARDS:
      raise ValueError(f"MLPMemory: chunk_backward={self.chunk_backward!r} is not one of "
                       f"{CHUNK_BACKWARDS}")
    if self.output_error == "current" and self.semantics != "anchored":
      raise ValueError("MLPMemory: output_error='current' is for semantics='anchored' (exact "
                       "semantics already takes every error at the current weights)")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"MLPMemory: activation={self.activation!r} is not one of "
                       f"{tuple(ACTIVATIONS)}")
    if self.residual and self.d_out != self.in_dim:
      raise ValueError(f"MLPMemory: residual=True needs out_dim == in_dim, got out_dim="
                       f"{self.d_out}, in_dim={self.in_dim}")
    for name in ("in_dim", "hidden_dim"):
      if getattr(self, name) < 1:
        raise ValueError(f"MLPMemory: {name} must be >= 1, got {getattr(self, name)}")

  @property
  def d_in(self) -> int:
    return self.in_dim

  @property
  def d_out(self) -> int:
    return self.in_dim if self.out_dim is None else self.out_dim

  @property
  def has_chunked(self) -> bool:
    return self.semantics == "anchored"

  def init_params(self, rng: jax.Array, head_shape: tuple[int, ...] = (), out_scale: float = 1.0,
                  dtype=jnp.float32) -> MLPMemoryParams:
    """LeCun-normal initial weights; out_scale shrinks w1 (0 starts at identity)."""
    k1, k2 = jax.random.split(rng)
    hs = tuple(head_shape)
    w1 = jax.random.normal(k1, hs + (self.d_out, self.hidden_dim), dtype)
    w2 = jax.random.normal(k2, hs + (self.hidden_dim, self.in_dim), dtype)
    return MLPMemoryParams(MLPWeights(w1 * out_scale / jnp.sqrt(self.hidden_dim).astype(dtype),
                                      w2 / jnp.sqrt(self.in_dim).astype(dtype)))

  def _initial_weights(self, params: MLPMemoryParams):
    w = params.initial
    if (w.w1.shape[-2:] != (self.d_out, self.hidden_dim)
        or w.w2.shape[-2:] != (self.hidden_dim, self.in_dim)):
      raise ValueError(f"MLPMemory: params.initial has w1 {w.w1.shape}, w2 {w.w2.shape}; expected "
                       f"[*heads, {self.d_out}, {self.hidden_dim}] and "
                       f"[*heads, {self.hidden_dim}, {self.in_dim}]")
    return w

  @property
  def _act(self):
    return ACTIVATIONS[self.activation]

  def _apply(self, w: MLPWeights, x_TxK):
    return apply_weights(w, x_TxK, self._act, self.residual)

  def _read_weights(self, w, queries_TxK):
    return self._apply(w, queries_TxK)

  def _hidden_lr(self, eta, lr, h, scaled=True):
    """Step of the output-side weight w1, whose input is the hidden h = act(w2 k).

    dgd normalises it by w1's own input, c1 = eta / (1 + eta ||h||^2) (DGD applied per layer
    with each layer's input, spec 9.4): along h the factor alpha - c1 ||h||^2 stays in
    (alpha - 1, alpha], so the memory cannot blow up however large h grows (a raw step
    eta ||h||^2 > 2 diverges, which repeated inputs trigger within a few dozen tokens).
    paper_l2 and gd keep the literal step eta.
    """
    if self.rule == "dgd":
      lr = eta / (1.0 + eta * jnp.sum(h * h, axis=-1))
    return lr * self._step_scale if scaled else lr

  @property
  def _step_scale(self) -> float:
    """1 / C for anchored_step='mean' (the gradient steps of a chunk, all taken at the same
    anchor, are averaged like a TTT / Titans mini-batch: C identical tokens then move the
    weights as far as one exact step, where summing them overshoots by C and diverges),
    else 1."""
    if self.semantics == "anchored" and self.anchored_step in ("mean", "mean_all"):
      return 1.0 / self.chunk_size
    return 1.0

  @property
  def _erase_scale(self) -> float:
    """1 / C for anchored_step='mean_all' (the erase averaged like the writes), else 1."""
    if self.semantics == "anchored" and self.anchored_step == "mean_all":
      return 1.0 / self.chunk_size
    return 1.0

  def _inner_loss(self, w: MLPWeights, k_K, v_V):
    return 0.5 * jnp.sum((self._apply(w, k_K[None, :])[0] - v_V) ** 2)

  def _token(self, carry, x):
    w, s, anchor = carry
    fo = self.first_order
    w_in, s_in, anchor_in = w, s, anchor
    if fo:
      w_in, s_in, anchor_in = jax.tree.map(sg, (w, s, anchor))
      x = {name: (v if name == "q" else sg(v)) for name, v in x.items()}
    k, v, lr, erase, a = x["k"], x["v"], x["lr"], x["erase"] * self._erase_scale, x["alpha"]
    base = anchor_in if self.semantics == "anchored" else w_in
    grads = jax.grad(self._inner_loss)(base, k, v)
    h = self._act(base.w2 @ k)
    current = self.output_error == "current"
    lr1 = self._hidden_lr(x["eta"], lr, h, scaled=not current)
    if current:  # the delta rule on h: the error at w1's current value
      err = w_in.w1 @ h + (k if self.residual else 0.0) - v
      grads = grads._replace(w1=jnp.outer(err, h))
    decay = MLPWeights(w1=a * w_in.w1,
                       w2=a * w_in.w2 - erase * jnp.outer(w_in.w2 @ k, k))
    step = MLPWeights(w1=lr1 * grads.w1, w2=lr * self._step_scale * grads.w2)
    if self.momentum:
      s_new = jax.tree.map(lambda sv, gv: x["mu"] * sv - gv, s_in, step)
      w_new = jax.tree.map(jnp.add, decay, s_new)
    else:
      s_new = None
      w_new = jax.tree.map(jnp.subtract, decay, step)
    if fo:
      w_new = straight_through(w_new, w)
      s_new = None if s is None else straight_through(s_new, s)
    out = None
    if "q" in x:
      read_from = {"post": w_new, "pre": w, "anchor": anchor}[self.read_at]
      out = self._apply(read_from, x["q"][None, :])[0]
    return out, (w_new, s_new, anchor)

  def token_step(self, carry, k, v, eta, alpha, mu=None):
    """One token's write of one sequence and head (the rule in the module docstring).

    Args:
      carry: (weights, momentum or None, anchor), MLPWeights without batch axes.
      k [d_in], v [d_out]: key and regression target; eta, alpha, mu: scalars (mu with
        momentum only).

    Returns:
      (weights, momentum) after the token (the anchor is the caller's: it moves at chunk ends).
    """
    coef = rule_coefficients(self.rule, eta, jnp.sum(k * k))
    x = dict(k=k, v=v, eta=eta, lr=coef.lr, erase=coef.erase, alpha=alpha)
    if self.momentum:
      x["mu"] = mu
    _, (w, s, _) = self._token(carry, x)
    return w, s

  def chunk_tokens(self, inputs, dtype) -> dict[str, jax.Array]:
    """Per-token inputs of ``chunk_step`` for one chunk (leading axes kept): the rule's
    coefficients (``types.rule_coefficients``) and the clipped log gates."""
    tok = self._prepare(inputs, dtype)
    tok["log_a"] = gates.safe_log_gate(tok["alpha"])
    if self.momentum:
      tok["log_mu"] = gates.safe_log_gate(tok["mu"])
    return tok

  def chunk_step(self, carry, chunk: dict[str, jax.Array], shared: SharedChunk | None = None):
    """One anchored chunk of one sequence and head.

    Args:
      carry: (weights, momentum or None, anchor), MLPWeights without batch axes.
      chunk: ``chunk_tokens``' entries for C tokens, plus ``valid`` [C] (0 for padding, which
        must come with eta = 0 and alpha = mu = 1).
      shared: ``chunk_shared(chunk)``, computed once by a caller that writes several memories
        with the same keys, gates and rule (None: computed here). The hand-written backward
        (``chunk_backward="manual"``) computes its own.

    Returns:
      (reads [C, d_out] or None without queries, (weights, momentum) after the chunk).
    """
    return self._chunk(carry, chunk, shared)

  def chunk_shared(self, chunk: dict[str, jax.Array]) -> SharedChunk:
    """The decay kernels and the input-side weight's erase system of one chunk and head
    (``chunk``: k, erase, log_a, log_mu under momentum, valid); see SharedChunk."""
    kern = chunk_ops.decay_kernels(chunk["log_a"], chunk.get("log_mu"), chunk["valid"])
    beta = self._beta(chunk)
    system = None if beta is None else chunk_ops.erase_system(kern, chunk["k"], beta)
    return SharedChunk(kern, system)

  def _beta(self, chunk):
    return None if self.rule == "gd" else chunk["erase"] * self._erase_scale

  @property
  def _manual_chunk(self) -> bool:
    return (self.chunk_backward == "manual" and not self.momentum and not self.first_order
            and self.output_error == "anchor")

  def _chunk(self, carry, ch, shared=None):
    w0, s0, anchor = carry
    if self._manual_chunk:
      read = None if "q" not in ch or self.read_at == "anchor" else self.read_at
      spec = mlp_chunk.ChunkSpec(self._act, self.residual, self.rule == "dgd", self._step_scale,
                                 self._erase_scale, self.rule != "gd", read)
      out, w_end = mlp_chunk.anchored_chunk(spec, anchor, w0, ch["k"], ch["v"], ch["lr"],
                                            ch["eta"], ch["erase"], ch["log_a"],
                                            ch["q"] if read else None)
      if "q" in ch and self.read_at == "anchor":
        out = self._apply(anchor, ch["q"])
      return out, (w_end, None)
    fo = self.first_order
    if fo:
      w0c, s0c, anchor_c = jax.tree.map(sg, (w0, s0, anchor))
      ch = {name: (x if name == "q" else sg(x)) for name, x in ch.items()}
      shared = None if shared is None else jax.tree.map(sg, shared)
    else:
      w0c, s0c, anchor_c = w0, s0, anchor
    shared = self.chunk_shared(ch) if shared is None else shared
    k, v, lr = ch["k"], ch["v"], ch["lr"]
    # Inner gradients of every token at the anchor, in rank-1 form (no [C, h, d] tensors).
    z_CxH = k @ anchor_c.w2.T
    h_CxH, act_vjp = jax.vjp(self._act, z_CxH)
    y_CxV = h_CxH @ anchor_c.w1.T + (k if self.residual else 0.0)
    err_CxV = y_CxV - v
    (dz_CxH,) = act_vjp(err_CxV @ anchor_c.w1)
    kern = shared.kern
    s1 = None if s0c is None else s0c.w1
    s2 = None if s0c is None else s0c.w2
    sol2 = chunk_ops.solve_chunk(kern, w0c.w2, s2, k, self._beta(ch),
                                 writes_CxV=-(lr * self._step_scale)[:, None] * dz_CxH,
                                 system=shared.system)
    if self.output_error == "current":  # writes lr1 (v - k - W1_{i-1} h_i): chunk_ops' exact form
      lr1 = self._hidden_lr(ch["eta"], lr, h_CxH, scaled=False)
      sol1 = chunk_ops.solve_chunk(kern, w0c.w1, s1, h_CxH, None,
                                   values_CxV=v - (k if self.residual else 0.0), lr_C=lr1,
                                   g_C=jnp.ones_like(lr1))
    else:
      lr1 = self._hidden_lr(ch["eta"], lr, h_CxH)
      sol1 = chunk_ops.solve_chunk(kern, w0c.w1, s1, h_CxH, None,
                                   writes_CxV=-lr1[:, None] * err_CxV)
    out = None
    if "q" in ch:
      q = ch["q"]
      if self.read_at == "anchor":
        out = self._apply(anchor, q)
      else:
        before = self.read_at == "pre"
        r_CxH = chunk_ops.read_chunk(kern, sol2, w0c.w2, s2, k, q, before)
        if fo:
          r_CxH = r_CxH + q @ (w0.w2 - sg(w0.w2)).T
        hq_CxH = self._act(r_CxH)
        out = chunk_ops.read_chunk(kern, sol1, w0c.w1, s1, h_CxH, hq_CxH, before)
        if fo:
          out = out + hq_CxH @ (w0.w1 - sg(w0.w1)).T
        if self.residual:
          out = out + q
    w2_end, s2_end = chunk_ops.final_state(kern, sol2, w0c.w2, s2, k)
    w1_end, s1_end = chunk_ops.final_state(kern, sol1, w0c.w1, s1, h_CxH)
    w_end = MLPWeights(w1_end, w2_end)
    s_end = None if s0 is None else MLPWeights(s1_end, s2_end)
    if fo:
      w_end = straight_through(w_end, w0)
      s_end = None if s0 is None else straight_through(s_end, s0)
    return out, (w_end, s_end)
