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
"""One chunk of a CMS level: its SwiGLU pass and in-context gradient, with a hand-written
backward (custom VJP).

Within a chunk a level's weights w = (Wg, Wu, Wd) are frozen, so one SwiGLU pass over the
chunk's inputs h (N = C + 1 rows: the carried previous input, then the chunk's) gives the
level's outputs and the predictions of its local objective (``nl_jax.layers.cms``), whose
gradient at w is the level's in-context gradient. Per sequence, with silu' and silu'' its
derivatives::

    a = h Wg   b = h Wu   s = silu(a) * b   z = s Wd             (outputs: z's rows 1..C)
    e = [mask * (z_{0..C-1} - target); 0]                        (the local objective's error)
    ds = e Wd^T   da = ds * b * silu'(a)   db = ds * silu(a)
    g = (h^T da, h^T db, s^T e)                                  (dL/dWg, dL/dWu, dL/dWd)

``target`` (the chunk's own inputs) carries no gradient: the local objective stops it.
``mlp_and_grad(..., backward="autodiff")`` lets JAX transpose this (autodiff of the VJP that
gives g); ``backward="manual"`` writes the outer backward out. With cotangents zbar of z and
(Gg, Gu, Gd) of g, every cotangent in one pass: through g (the second-order term)::

    hbar = da Gg^T + db Gu^T           da_bar = h Gg   db_bar = h Gu
    s_bar = e Gd^T                     e_bar = s Gd
    ds_bar = da_bar * b * silu'(a) + db_bar * silu(a)
    a_bar = ds * (da_bar * b * silu''(a) + db_bar * silu'(a))   b_bar = da_bar * ds * silu'(a)
    e_bar += ds_bar Wd                 Wd_bar = ds_bar^T e

then through e (z_bar' = zbar + [mask * e_bar_{0..C-1}; 0]) and the pass itself::

    s_bar += z_bar' Wd^T   Wd_bar += s^T z_bar'   a_bar += s_bar * b * silu'(a)
    b_bar += s_bar * silu(a)   hbar += a_bar Wg^T + b_bar Wu^T
    Wg_bar = h^T a_bar   Wu_bar = h^T b_bar

The forward saves a, b and e; the backward recomputes ds (one matmul) and the elementwise
terms. The count is the autodiff path's (7 matmul units forward, 14 backward); what a
hand-written backward can change is what is saved and how many ops run, measured in
experiments/BENCHMARKS.md ("the CMS levels' chunks by hand"). The first-order meta-gradient
(``CMSConfig.meta_gradient``) never differentiates g, so it keeps the autodiff path.
"""

import jax
import jax.numpy as jnp

BACKWARDS = ("autodiff", "manual")


def _silu_derivs(a):
  """silu(a), silu'(a), silu''(a)."""
  sig = jax.nn.sigmoid(a)
  silu = a * sig
  d1 = sig * (1 + a * (1 - sig))
  d2 = sig * (1 - sig) * (2 + a * (1 - 2 * sig))
  return silu, d1, d2


def _pass(wg, wu, wd, h_BxNxD, target_BxCxD, mask_BxC):
  """The forward algebra of the module docstring: ((z, g), saved for the backward)."""
  a = jnp.einsum("bnd,bdf->bnf", h_BxNxD, wg)
  b = jnp.einsum("bnd,bdf->bnf", h_BxNxD, wu)
  silu, d1, _ = _silu_derivs(a)  # silu'' unused here: removed by the compiler
  s = silu * b
  z = jnp.einsum("bnf,bfd->bnd", s, wd)
  err = (z[:, :-1] - target_BxCxD) * mask_BxC[:, :, None]
  e = jnp.concatenate([err, jnp.zeros_like(err[:, :1])], axis=1)
  ds = jnp.einsum("bnd,bfd->bnf", e, wd)
  da = ds * b * d1
  db = ds * silu
  g = (jnp.einsum("bnd,bnf->bdf", h_BxNxD, da), jnp.einsum("bnd,bnf->bdf", h_BxNxD, db),
       jnp.einsum("bnf,bnd->bfd", s, e))
  return (z, g), (a, b, e)


@jax.custom_vjp
def _manual(wg, wu, wd, h_BxNxD, target_BxCxD, mask_BxC):
  return _pass(wg, wu, wd, h_BxNxD, target_BxCxD, mask_BxC)[0]


def _manual_fwd(wg, wu, wd, h_BxNxD, target_BxCxD, mask_BxC):
  out, (a, b, e) = _pass(wg, wu, wd, h_BxNxD, target_BxCxD, mask_BxC)
  return out, (wg, wu, wd, h_BxNxD, a, b, e, target_BxCxD, mask_BxC)


def _manual_bwd(res, cts):
  """The module docstring's backward, one matmul per term. (Running the matmuls that share an
  operand as one, on concatenated weights, measured slower on the CPU: the concatenations
  cost more than the ops they save.)"""
  wg, wu, wd, h, a, b, e, target, mask = res
  zbar, (gg, gu, gd) = cts
  silu, d1, d2 = _silu_derivs(a)
  s = silu * b
  ds = jnp.einsum("bnd,bfd->bnf", e, wd)
  da, db = ds * b * d1, ds * silu
  # Through g = (h^T da, h^T db, s^T e): the second-order term.
  hbar = jnp.einsum("bnf,bdf->bnd", da, gg) + jnp.einsum("bnf,bdf->bnd", db, gu)
  da_bar = jnp.einsum("bnd,bdf->bnf", h, gg)
  db_bar = jnp.einsum("bnd,bdf->bnf", h, gu)
  s_bar = jnp.einsum("bnd,bfd->bnf", e, gd)
  e_bar = jnp.einsum("bnf,bfd->bnd", s, gd)
  ds_bar = da_bar * b * d1 + db_bar * silu
  a_bar = ds * (da_bar * b * d2 + db_bar * d1)
  b_bar = da_bar * ds * d1
  e_bar = e_bar + jnp.einsum("bnf,bfd->bnd", ds_bar, wd)
  wd_bar = jnp.einsum("bnf,bnd->bfd", ds_bar, e)
  # Through e = [mask (z_{0..C-1} - target); 0] (target: no gradient) and the pass.
  zbar = zbar + jnp.concatenate([e_bar[:, :-1] * mask[:, :, None],
                                 jnp.zeros_like(e_bar[:, :1])], axis=1)
  s_bar = s_bar + jnp.einsum("bnd,bfd->bnf", zbar, wd)
  wd_bar = wd_bar + jnp.einsum("bnf,bnd->bfd", s, zbar)
  a_bar = a_bar + s_bar * b * d1
  b_bar = b_bar + s_bar * silu
  hbar = hbar + jnp.einsum("bnf,bdf->bnd", a_bar, wg) + jnp.einsum("bnf,bdf->bnd", b_bar, wu)
  wg_bar = jnp.einsum("bnd,bnf->bdf", h, a_bar)
  wu_bar = jnp.einsum("bnd,bnf->bdf", h, b_bar)
  return wg_bar, wu_bar, wd_bar, hbar, jnp.zeros_like(target), jnp.zeros_like(mask)


_manual.defvjp(_manual_fwd, _manual_bwd)


def swiglu(w, x_BxSxD):
  """Per-sequence SwiGLU: w = (w_gate [B, D, F], w_up [B, D, F], w_down [B, F, D])."""
  w_gate, w_up, w_down = w
  g = jnp.einsum("bsd,bdf->bsf", x_BxSxD, w_gate)
  u = jnp.einsum("bsd,bdf->bsf", x_BxSxD, w_up)
  return jnp.einsum("bsf,bfd->bsd", jax.nn.silu(g) * u, w_down)


def _autodiff(wg, wu, wd, h_BxNxD, target_BxCxD, mask_BxC):
  """The same values, the backward left to autodiff (of the VJP that takes g)."""
  z, vjp = jax.vjp(lambda w: swiglu(w, h_BxNxD), (wg, wu, wd))
  err = (z[:, :-1] - target_BxCxD) * mask_BxC[:, :, None]
  (g,) = vjp(jnp.concatenate([err, jnp.zeros_like(err[:, :1])], axis=1))
  return z, g


def mlp_and_grad(w, h_BxNxD, target_BxCxD, mask_BxC, backward: str = "autodiff"):
  """A level's SwiGLU over a chunk and its local objective's gradient at w (per sequence).

  Args:
    w: (w_gate [B, D, F], w_up [B, D, F], w_down [B, F, D]), the level's weights.
    h_BxNxD: the inputs, N = C + 1: the previous token's, then the chunk's.
    target_BxCxD: what row j's prediction z_j should be (the next input; no gradient).
    mask_BxC: 1 where the pair (row j, target j) counts in the objective, else 0.
    backward: "autodiff" or "manual" (the module docstring).

  Returns:
    (z [B, N, D], g): the SwiGLU of every row and the objective's gradient
    0.5 sum_j mask_j ||z_j - target_j||^2 w.r.t. (w_gate, w_up, w_down).
  """
  if backward not in BACKWARDS:
    raise ValueError(f"backward={backward!r} is not one of {BACKWARDS}")
  mask = mask_BxC.astype(h_BxNxD.dtype)
  target = jax.lax.stop_gradient(target_BxCxD)
  fn = _manual if backward == "manual" else _autodiff
  return fn(*w, h_BxNxD, target, mask)
