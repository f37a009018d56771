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
"""One anchored chunk of the MLP memory, with a hand-written backward (custom VJP).

The chunk of ``nl_jax.memory.mlp`` (anchored semantics, no momentum, w1's error at the
anchor), one sequence and head. With anchor weights (A1, A2), chunk-start weights (W1, W2),
``r`` = 1 for the residual memory and 0 without, s the step scale and b the erase::

    z = k A2^T   h = act(z)   e = h A1^T + r k - v      (inner error at the anchor)
    dz = act'(z) * (e A1)                              (the anchored inner gradients, rank 1)
    w2 = -lr s dz                w1 = -lr1 e            (known writes; lr1 = s eta / (1 + eta
                                                         ||h||^2) under dgd, else lr s)
    p = (I + kep * b * k k^T)^-1 (gammap W2 k + (kep * k k^T) w2)   (w2's in-chunk predictions)
    u2 = w2 - b p                                        (what w2 receives per token)
    read:  hq = act(gr q W2^T + (kr * q k^T) u2)
           o = gr hq W1^T + (kr * hq h^T) w1 + r q
    end:   W2' = gamma_L W2 + (ke_L u2)^T k      W1' = gamma_L W1 + (ke_L w1)^T h

with the decay kernels of ``chunk_ops`` (ke, gamma; kep, gammap the shifted ones, read "pre";
kr, gr the ones of the read). This is the same algebra as ``MLPMemory._chunk`` (which calls
``chunk_ops`` and lets autodiff transpose it); here the backward is written out: every
cotangent in one pass. The forward saves its inputs and w2's chunk solve (the triangular
inverse and the predictions, the one step that is not a few matmuls); the backward recomputes
the rest (the hidden features, the Gram matrices, the reads) and takes the second-order term
through the inner gradient (act''(z) (e A1) from ``dz``) in closed form. The decay kernels'
cotangents are mapped to the log gates by autodiff of ``segment_log_products`` (C x C
elementwise work). What it measured against autodiff: experiments/BENCHMARKS.md ("a
hand-written backward of the memories' chunks").

Options outside this form (momentum, ``output_error='current'``, first order) keep the autodiff
path of ``MLPMemory._chunk``; see ``MLPMemory.chunk_backward``.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from nl_jax.memory import chunk_ops, gates


class ChunkSpec(NamedTuple):
  """Static choices of one chunk (hashable: the custom VJP's non-differentiated argument).

  Attributes:
    activation: an elementwise function (``nl_jax.memory.mlp.ACTIVATIONS`` value).
    residual: M(x) = x + W1 act(W2 x) (True) or W1 act(W2 x).
    dgd: w1's step is normalised by its own input (eta / (1 + eta ||h||^2)).
    step_scale: 1 / C (anchored_step 'mean' / 'mean_all') or 1.
    erase_scale: 1 / C ('mean_all') or 1.
    erase: the rule erases along the key (dgd, paper_l2); False for gd.
    read: 'pre' (M_{i-1} q_i), 'post' (M_i q_i) or None (write only).
  """
  activation: object
  residual: bool
  dgd: bool
  step_scale: float
  erase_scale: float
  erase: bool
  read: str | None


def _derivs(act, z):
  """act(z), act'(z) (elementwise activations: one forward-mode pass each)."""
  return jax.jvp(act, (z,), (jnp.ones_like(z),))


def _second(act, z):
  first = lambda x: jax.jvp(act, (x,), (jnp.ones_like(x),))[1]  # noqa: E731
  return jax.jvp(first, (z,), (jnp.ones_like(z),))[1]


def _forward(spec: ChunkSpec, anchor, w0, k, v, lr, eta, erase, log_a, q, solved=None,
             kernels=None):
  """(reads, end state, intermediates). solved: the saved (inverse, predictions) of w2's
  chunk system, which the backward reuses instead of solving it again; kernels: the decay
  kernels (ke, gamma) of log_a when the caller has them."""
  act = spec.activation
  a1, a2 = anchor
  m1, m2 = w0
  z = k @ a2.T
  h, ap = _derivs(act, z)
  e = h @ a1.T - v
  if spec.residual:
    e = e + k
  gz = e @ a1
  dz = ap * gz
  l2 = lr * spec.step_scale
  if spec.dgd:
    lr1 = spec.step_scale * eta / (1.0 + eta * jnp.sum(h * h, axis=-1))
  else:
    lr1 = l2
  w2 = -l2[:, None] * dz
  w1 = -lr1[:, None] * e
  ke, gamma = gates.segment_log_products(log_a) if kernels is None else kernels
  kep, gammap = chunk_ops.shift_rows(ke, 0.0), chunk_ops.shift_rows(gamma, 1.0)
  res = dict(z=z, h=h, ap=ap, e=e, gz=gz, dz=dz, lr1=lr1, w1=w1, w2=w2, ke=ke, gamma=gamma,
             kep=kep, gammap=gammap)
  km2 = k @ m2.T
  if spec.erase:
    beta = erase * spec.erase_scale
    g = k @ k.T
    if solved is None:
      rhs = gammap[:, None] * km2 + (kep * g) @ w2
      x = chunk_ops.unit_lower_inverse(kep * beta[None, :] * g)
      p = x @ rhs
    else:
      x, p = solved
    u2 = w2 - beta[:, None] * p
    res.update(beta=beta, g=g, x=x, p=p, km2=km2)
  else:
    u2 = w2
  res["u2"] = u2
  out = None
  if spec.read is not None:
    kr, gr = (kep, gammap) if spec.read == "pre" else (ke, gamma)
    gq = q @ k.T
    qm2 = q @ m2.T
    r = gr[:, None] * qm2 + (kr * gq) @ u2
    hq, apq = _derivs(act, r)
    gh = hq @ h.T
    hm1 = hq @ m1.T
    out = gr[:, None] * hm1 + (kr * gh) @ w1
    if spec.residual:
      out = out + q
    res.update(gq=gq, qm2=qm2, apq=apq, hq=hq, gh=gh, hm1=hm1)
  ke_l, g_l = ke[-1], gamma[-1]
  m2_end = g_l * m2 + (ke_l[:, None] * u2).T @ k
  m1_end = g_l * m1 + (ke_l[:, None] * w1).T @ h
  return out, (m1_end, m2_end), res


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def anchored_chunk(spec: ChunkSpec, anchor, w0, k, v, lr, eta, erase, log_a, q):
  """(reads [C, d_out] or None, (W1', W2')) of one anchored chunk (module docstring).

  Args:
    spec: the chunk's static choices.
    anchor, w0: (w1 [d_out, hidden], w2 [hidden, d_in]) at the anchor and at the chunk's start.
    k [C, d_in], v [C, d_out]: keys and regression targets; q [C, d_in] or None (spec.read).
    lr, eta, erase [C]: the rule's step (``types.rule_coefficients``), eta, and the erase.
    log_a [C]: clipped log retention (``gates.safe_log_gate``).
  """
  out, end, _ = _forward(spec, anchor, w0, k, v, lr, eta, erase, log_a, q)
  return out, type(w0)(*end)


def _fwd(spec, anchor, w0, k, v, lr, eta, erase, log_a, q):
  out, end, res = _forward(spec, anchor, w0, k, v, lr, eta, erase, log_a, q)
  # Saved: the inputs and the chunk solve (the inverse is the one step that is not a few
  # matmuls); everything else is recomputed by the backward.
  solved = (res["x"], res["p"]) if spec.erase else None
  return (out, type(w0)(*end)), (anchor, w0, k, v, lr, eta, erase, log_a, q, solved)


def _add(d: dict, **terms) -> None:
  """Accumulates cotangents by name."""
  for name, x in terms.items():
    d[name] = x if name not in d else d[name] + x


def _end_cotangents(res, w0, k, d_m1e, d_m2e, d: dict) -> None:
  """W2' = g_L W2 + (ke_L u2)^T k, W1' = g_L W1 + (ke_L w1)^T h."""
  m1, m2 = w0
  h, w1, u2 = res["h"], res["w1"], res["u2"]
  ke_l, g_l = res["ke"][-1], res["gamma"][-1]
  du2 = k @ d_m2e.T                        # d(ke_L u2)
  dw1 = h @ d_m1e.T                        # d(ke_L w1)
  d_ke = jnp.zeros_like(res["ke"]).at[-1].set(jnp.sum(du2 * u2, axis=-1)
                                              + jnp.sum(dw1 * w1, axis=-1))
  d_gamma = jnp.zeros_like(res["gamma"]).at[-1].set(jnp.sum(m2 * d_m2e) + jnp.sum(m1 * d_m1e))
  _add(d, m1=g_l * d_m1e, m2=g_l * d_m2e, u2=ke_l[:, None] * du2, w1=ke_l[:, None] * dw1,
       k=(ke_l[:, None] * u2) @ d_m2e, h=(ke_l[:, None] * w1) @ d_m1e, ke=d_ke, gamma=d_gamma)


def _read_cotangents(spec, res, w0, k, q, d_out, d: dict) -> None:
  """o = gr hq W1^T + (kr * hq h^T) w1 + r q, hq = act(gr q W2^T + (kr * q k^T) u2)."""
  m1, m2 = w0
  pre = spec.read == "pre"
  kr, gr = (res["kep"], res["gammap"]) if pre else (res["ke"], res["gamma"])
  gq, gh, hq, h, w1, u2 = res["gq"], res["gh"], res["hq"], res["h"], res["w1"], res["u2"]
  gd_out = gr[:, None] * d_out
  dmat1 = d_out @ w1.T                     # d(kr * gh)
  dgh = dmat1 * kr
  dhq = gd_out @ m1 + dgh @ h
  dr = res["apq"] * dhq
  gdr = gr[:, None] * dr
  dmat2 = dr @ u2.T                        # d(kr * gq)
  dgq = dmat2 * kr
  dkr = dmat1 * gh + dmat2 * gq
  dgr = jnp.sum(d_out * res["hm1"], axis=-1) + jnp.sum(dr * res["qm2"], axis=-1)
  dq = gdr @ m2 + dgq @ k + (d_out if spec.residual else 0.0)
  _add(d, m1=gd_out.T @ hq, w1=(kr * gh).T @ d_out, h=dgh.T @ hq, m2=gdr.T @ q,
       u2=(kr * gq).T @ dr, k=dgq.T @ q, q=dq)
  if pre:
    _add(d, kep=dkr, gammap=dgr)
  else:
    _add(d, ke=dkr, gamma=dgr)


def _solve_cotangents(spec, res, w0, k, d: dict) -> None:
  """u2 = w2 - beta p, p = (I + kep * beta * g)^-1 (gammap k W2^T + (kep * g) w2), g = k k^T."""
  beta, g, x, p, kep, w2 = res["beta"], res["g"], res["x"], res["p"], res["kep"], res["w2"]
  du2 = d["u2"]
  drhs = x.T @ (-beta[:, None] * du2)
  da = -(drhs @ p.T)                       # kep zeroes what lies on or above the diagonal
  dmat3 = drhs @ w2.T                      # d(kep * g)
  dg = da * kep * beta[None, :] + dmat3 * kep
  dbeta = -jnp.sum(du2 * p, axis=-1) + jnp.sum(da * kep * g, axis=0)
  gdrhs = res["gammap"][:, None] * drhs
  _add(d, erase=dbeta * spec.erase_scale, kep=da * beta[None, :] * g + dmat3 * g,
       gammap=jnp.sum(drhs * res["km2"], axis=-1), m2=gdrhs.T @ k, w2=(kep * g).T @ drhs,
       k=gdrhs @ w0[1] + (dg + dg.T) @ k)


def _write_cotangents(spec, res, anchor, k, lr, eta, d: dict) -> None:
  """w2 = -lr s act'(z) (e A1), w1 = -lr1 e, e = act(k A2^T) A1^T + r k - v."""
  a1, a2 = anchor
  s = spec.step_scale
  h, e, dz, ap, gz = res["h"], res["e"], res["dz"], res["ap"], res["gz"]
  dw1, dw2 = d["w1"], d["w2"]
  dlr = -s * jnp.sum(dw2 * dz, axis=-1)
  ddz = -(lr * s)[:, None] * dw2
  dlr1 = -jnp.sum(dw1 * e, axis=-1)
  dh = d["h"]
  if spec.dgd:  # lr1 = s eta / (1 + eta ||h||^2)
    den = 1.0 + eta * jnp.sum(h * h, axis=-1)
    deta = dlr1 * s / (den * den)
    dh = dh + (-2.0 * s * dlr1 * eta * eta / (den * den))[:, None] * h
  else:  # lr1 = s lr
    deta = jnp.zeros_like(eta)
    dlr = dlr + s * dlr1
  dgz = ap * ddz
  de = -res["lr1"][:, None] * dw1 + dgz @ a1.T
  dh = dh + de @ a1
  dz_tot = ap * dh + _second(spec.activation, res["z"]) * gz * ddz
  _add(d, a1=e.T @ dgz + de.T @ h, a2=dz_tot.T @ k, v=-de, lr=dlr, eta=deta,
       k=dz_tot @ a2 + (de if spec.residual else 0.0))


def _bwd(spec, saved, cts):
  anchor, w0, k, v, lr, eta, erase, log_a, q, solved = saved
  kernels, kern_vjp = jax.vjp(gates.segment_log_products, log_a)
  _, _, res = _forward(spec, anchor, w0, k, v, lr, eta, erase, log_a, q, solved, kernels)
  d_out, (d_m1e, d_m2e) = cts
  d: dict = {}
  _end_cotangents(res, w0, k, d_m1e, d_m2e, d)
  if spec.read is not None:
    _read_cotangents(spec, res, w0, k, q, d_out, d)
  d["w2"] = d["u2"]  # u2 = w2 - beta p
  if spec.erase:
    _solve_cotangents(spec, res, w0, k, d)
  _write_cotangents(spec, res, anchor, k, lr, eta, d)
  # The shifted kernels are rows of the plain ones; then autodiff of the log products.
  zeros = jnp.zeros_like
  d_ke = d["ke"].at[:-1].add(d.get("kep", zeros(res["ke"]))[1:])
  d_gamma = d["gamma"].at[:-1].add(d.get("gammap", zeros(res["gamma"]))[1:])
  (d_log_a,) = kern_vjp((d_ke, d_gamma))
  like = lambda ref, leaves: jax.tree.unflatten(jax.tree.structure(ref), leaves)  # noqa: E731
  return (like(anchor, [d["a1"], d["a2"]]), like(w0, [d["m1"], d["m2"]]), d["k"], d["v"],
          d["lr"], d["eta"], d.get("erase", zeros(lr)), d_log_a, d.get("q"))


anchored_chunk.defvjp(_fwd, _bwd)
