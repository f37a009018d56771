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
"""Newton-Schulz orthogonalization used by M3: weights as matrix stacks, presets, sharding.

The iteration itself lives in ``pallas_kernels/newton_schulz/reference.py`` (the executable
spec that the Pallas kernels are tested against); this module runs it with XLA or dispatches
to the kernels.

A Newton-Schulz step applies an odd matrix polynomial to ``X`` (wide, ``m <= n``):

.. math::
  A = X X^\\top, \\qquad X \\leftarrow a X + (b A + c A^2) X,

which acts on every singular value independently as ``s -> a s + b s^3 + c s^5``. After the
Frobenius normalisation all singular values lie in ``(0, 1]`` and a few steps push them towards
1, i.e. ``X`` towards the orthogonal polar factor ``U V^T`` of ``X = U S V^T``.
"""

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nl_jax.optim import _common
from pallas_kernels.newton_schulz import api as ns_api
from pallas_kernels.newton_schulz import reference as ns_reference
from pallas_kernels.newton_schulz.config import NewtonSchulzConfig

# The iteration is owned by the kernels' executable spec; its old name here stays importable.
newton_schulz_wide = ns_reference.newton_schulz_reference

# Keller Jordan's quintic coefficients (Muon): maximal slope at 0, converges to a band ~[0.7, 1.1].
MUON_COEFFS = (3.4445, -4.7750, 2.0315)


def cubic_coeffs(zeta: float = 0.25) -> tuple[float, float, float]:
  """Coefficients of one gradient step on the orthogonality objective (paper eq. 43-44).

  Eq. 44 reads ``O <- O - zeta (O - g + 2 O (O^T O - I))``. Its ``O - g`` part is a proximal pull
  towards the gradient whose fixed point is not orthogonal, so we keep only the orthogonality
  gradient ``2 O (O^T O - I)``: ``O <- (1 + 2 zeta) O - 2 zeta O O^T O``. With ``zeta = 1/4`` this
  is the classical cubic Newton-Schulz iteration ``1.5 O - 0.5 O O^T O`` (quadratic convergence
  to 1 for singular values in ``(0, sqrt(3))``).

  Args:
    zeta: inner step size of eq. 44.

  Returns:
    ``(a, b, c)`` for ``X <- a X + (b A + c A^2) X`` with ``c = 0``.
  """
  return (1.0 + 2.0 * zeta, -2.0 * zeta, 0.0)


NS_PRESETS: dict[str, tuple[float, float, float]] = {
    "muon": MUON_COEFFS,
    "quintic": MUON_COEFFS,
    "cubic": cubic_coeffs(0.25),
}

_IMPLEMENTATIONS = ("xla", "auto", "pallas", None)


class DimensionNumbers(NamedTuple):
  """Which axes of a weight form the matrix that is orthogonalised.

  Mirrors `optax.contrib.MuonDimensionNumbers` (either class is accepted): the matrix has the
  (flattened) reduction axes as rows and the (flattened) output axes as columns, every other axis
  is a batch axis and is orthogonalised independently. The default suits flax kernels ``(in, out)``.
  """
  reduction_axis: Sequence[int] | int = 0
  output_axis: Sequence[int] | int = 1


def resolve_coeffs(ns_coeffs: Any, ns_steps: int | None) -> tuple[tuple[float, float, float], ...]:
  """Turns a preset name, an ``(a, b, c)`` triple or a schedule into one triple per step.

  A schedule (sequence of triples) runs its triples in order; ``ns_steps`` defaults to its length,
  a shorter ``ns_steps`` truncates it and a longer one repeats the last triple.

  Raises:
    ValueError: unknown preset, malformed coefficients or ``ns_steps < 1``.
  """
  if isinstance(ns_coeffs, str):
    if ns_coeffs not in NS_PRESETS:
      raise ValueError(f"Unknown ns_coeffs preset {ns_coeffs!r}; known: {sorted(NS_PRESETS)}.")
    ns_coeffs = NS_PRESETS[ns_coeffs]
  arr = np.asarray(ns_coeffs, dtype=np.float64)
  if arr.ndim == 1:
    arr = arr[None]
    default_steps = 5
  else:
    default_steps = arr.shape[0]
  if arr.ndim != 2 or arr.shape[-1] != 3 or arr.shape[0] < 1:
    raise ValueError(
        f"ns_coeffs must be (a, b, c) or a sequence of such triples, got {ns_coeffs!r}.")
  steps = _common.static_int("ns_steps", default_steps if ns_steps is None else ns_steps)
  rows = [arr[min(i, arr.shape[0] - 1)] for i in range(steps)]
  return tuple(tuple(float(v) for v in r) for r in rows)


def check_implementation(implementation: str | None) -> None:
  if implementation not in _IMPLEMENTATIONS:
    raise ValueError(
        f"implementation={implementation!r} is not available; choose 'xla' (or None), 'auto' "
        "(the Pallas kernel on TPU/GPU where it applies, else XLA) or 'pallas' (force it).")


def _normalize_axes(ndim: int, dim_nums: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
  red = dim_nums.reduction_axis
  out = dim_nums.output_axis
  red = (red,) if isinstance(red, int) else tuple(red)
  out = (out,) if isinstance(out, int) else tuple(out)
  red = tuple(a % ndim for a in red)
  out = tuple(a % ndim for a in out)
  if not red or not out or set(red) & set(out):
    raise ValueError(f"reduction and output axes must be non-empty and disjoint, got {dim_nums}.")
  return red, out


class MatrixView(NamedTuple):
  """How to turn a weight into a ``(batch, m, n)`` stack of matrices and back."""
  perm: tuple[int, ...]
  inv_perm: tuple[int, ...]
  flat_shape: tuple[int, int, int]
  unflat_shape: tuple[int, ...]


def matrix_view(shape: tuple[int, ...], dim_nums: Any | None) -> MatrixView:
  ndim = len(shape)
  if ndim < 2:
    raise ValueError(f"orthogonalize needs an input of rank >= 2, got shape {shape}.")
  if dim_nums is None:
    # Leading axes are batch axes; the last two form the matrix.
    dim_nums = DimensionNumbers(reduction_axis=ndim - 2, output_axis=ndim - 1)
  red, out = _normalize_axes(ndim, dim_nums)
  batch = tuple(a for a in range(ndim) if a not in red and a not in out)
  perm = batch + red + out
  inv_perm = tuple(int(i) for i in np.argsort(perm))
  def size(axes):
    return math.prod(shape[a] for a in axes)
  return MatrixView(perm, inv_perm, (size(batch), size(red), size(out)),
                     tuple(shape[a] for a in perm))


def matrix_fans(shape: tuple[int, ...], dim_nums: Any | None = None) -> tuple[int, int]:
  """``(fan_in, fan_out)`` = (rows, cols) of the matrix view of a weight of this shape."""
  view = matrix_view(tuple(shape), dim_nums)
  return view.flat_shape[1], view.flat_shape[2]


def _reshard(x: jax.Array, mesh: Any, spec: jax.sharding.PartitionSpec) -> jax.Array:
  return jax.sharding.reshard(x, jax.sharding.NamedSharding(mesh, spec))


def _is_explicit(mesh: Any) -> bool:
  return all(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types)


# Jitted once per (shape, coefficients): eager callers get one compiled kernel instead of an
# op-by-op dispatch; inside an outer jit this is simply inlined.
_newton_schulz_jit = jax.jit(newton_schulz_wide, static_argnums=(1,))


def _iterate(stack: jax.Array, coeffs: tuple[tuple[float, float, float], ...], eps: float,
             implementation: str | None, mesh: Any) -> jax.Array:
  """Runs the iteration on a float32 wide stack with the requested implementation.

  The Pallas kernels (``pallas_kernels.newton_schulz``; its api module loads Pallas only when a
  kernel runs) are opaque to the SPMD partitioner, so a stack spread over a mesh stays on XLA
  under "auto"; "pallas" on a mesh raises.
  """
  if implementation in (None, "xla") or (implementation == "auto" and mesh is not None):
    return _newton_schulz_jit(stack, coeffs, eps)
  if mesh is not None:
    raise ValueError("implementation='pallas' does not run on a device mesh (the kernel is not "
                     "partitionable); use 'auto' or 'xla'")
  if implementation == "auto":
    return _kernel_jit(stack, coeffs, eps, None, None)
  platform = ns_api.current_platform()
  if platform in ("tpu", "gpu"):
    return _kernel_jit(stack, coeffs, eps, platform, None)
  # No accelerator: the TPU kernel in interpret mode (slow; for tests).
  return _kernel_jit(stack, coeffs, eps, "tpu", NewtonSchulzConfig(interpret=True))


def _kernel(stack, coeffs, eps, backend, config):
  return ns_api.newton_schulz(stack, coeffs, eps, implementation=backend, config=config)


_kernel_jit = jax.jit(_kernel, static_argnums=(1, 2, 3, 4))


def _stack_mesh(x: jax.Array) -> Any:
  """The mesh a stack should be spread over: the context mesh, else the explicit-type mesh."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    mesh = getattr(jax.typeof(x).sharding, "mesh", mesh)
  if mesh.empty or mesh.size == 1:
    return None
  if not _is_explicit(mesh) and jax.sharding.get_abstract_mesh().empty:
    return None  # Auto mode without a mesh context: nothing to constrain against.
  return mesh


def _shard_stack(x: jax.Array, mesh: Any) -> jax.Array:
  """Shards a ``(batch, m, n)`` stack over every mesh axis along ``batch``.

  Each device then owns whole matrices, so the Gram products of the iteration need no
  communication: the only collectives are the reshards into and out of this layout, whose number
  does not depend on ``ns_steps``. The batch must be divisible by the mesh size (the caller pads).
  """
  if mesh is None:
    return x
  spec = jax.sharding.PartitionSpec(tuple(mesh.axis_names), None, None)
  if _is_explicit(mesh):
    return _reshard(x, mesh, spec)
  return jax.lax.with_sharding_constraint(x, spec)


def _restore_sharding(y: jax.Array, like: jax.Array) -> jax.Array:
  """In explicit-sharding mode, gives `y` the sharding type of `like` (no-op otherwise)."""
  sharding = jax.typeof(like).sharding
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or mesh.empty:
    return y
  if _is_explicit(mesh):
    if jax.typeof(y).sharding.spec != sharding.spec:
      return _reshard(y, mesh, sharding.spec)
  return y


def orthogonalize_many(xs: Sequence[jax.Array], ns_coeffs: Any = "muon",
                       ns_steps: int | None = None,
                       eps: float = 1e-7, dimension_numbers: Sequence[Any] | None = None,
                       *, implementation: str | None = None) -> list[jax.Array]:
  """Orthogonalises several weights at once, stacking same-size matrices into one batch.

  Matrices whose wide orientation has the same ``(m, n)`` (e.g. ``768x3072`` and ``3072x768``)
  share one batched iteration, which both amortises dispatch and, on a mesh, lets every device
  orthogonalise whole matrices locally (see `_shard_stack`). The result equals calling
  `orthogonalize` on every element.

  Args:
    xs: weights, each of rank >= 2.
    ns_coeffs: preset name, ``(a, b, c)`` or a schedule of triples.
    ns_steps: number of iterations (see `resolve_coeffs`).
    eps: added to the Frobenius norm before normalising.
    dimension_numbers: optional per-weight `DimensionNumbers` (None entries = last two axes).
    implementation: "xla" or None (XLA), "auto" or "pallas" (see `orthogonalize`).

  Returns:
    The orthogonalised weights, with the shapes and dtypes of ``xs``.
  """
  check_implementation(implementation)
  _common.check_range("eps", eps, low=0.0, low_inclusive=False)
  coeffs = resolve_coeffs(ns_coeffs, ns_steps)
  xs = list(xs)
  dims = list(dimension_numbers) if dimension_numbers is not None else [None] * len(xs)
  if len(dims) != len(xs):
    raise ValueError("dimension_numbers must have one entry per input.")
  groups: dict[tuple[int, int], list[tuple[int, jax.Array, bool]]] = {}
  views = []
  for i, (x, d) in enumerate(zip(xs, dims, strict=True)):
    view = matrix_view(tuple(x.shape), d)
    views.append(view)
    flat = jnp.transpose(x, view.perm).reshape(view.flat_shape).astype(jnp.float32)
    tall = view.flat_shape[1] > view.flat_shape[2]
    if tall:
      flat = jnp.swapaxes(flat, -1, -2)  # Gram matrix on the small side.
    groups.setdefault(flat.shape[1:], []).append((i, flat, tall))
  outs: list[jax.Array | None] = [None] * len(xs)
  for members in groups.values():
    flats = [f for _, f, _ in members]
    mesh = _stack_mesh(flats[0])
    if mesh is not None and _is_explicit(mesh):
      # Explicit sharding types must agree before concatenation; gathering each matrix once is
      # a per-step cost that is independent of ns_steps.
      flats = [_reshard(f, mesh, jax.sharding.PartitionSpec()) for f in flats]
    stack = jnp.concatenate(flats, axis=0) if len(flats) > 1 else flats[0]
    pad = 0 if mesh is None else (-stack.shape[0]) % mesh.size
    if pad:
      # Zero matrices stay zero (eps > 0), so the padding only balances the devices.
      stack = jnp.concatenate([stack, jnp.zeros((pad,) + stack.shape[1:], stack.dtype)], axis=0)
    stack = _shard_stack(stack, mesh)
    res = _iterate(stack, coeffs, eps, implementation, mesh)
    if mesh is not None and _is_explicit(mesh):
      res = _reshard(res, mesh, jax.sharding.PartitionSpec())  # Sliceable again.
    offset = 0
    for i, flat, tall in members:
      b = flat.shape[0]
      y = res[offset:offset + b]
      offset += b
      if tall:
        y = jnp.swapaxes(y, -1, -2)
      view = views[i]
      y = y.reshape(view.unflat_shape).transpose(view.inv_perm).astype(xs[i].dtype)
      outs[i] = _restore_sharding(y, xs[i])
  return outs  # type: ignore[return-value]


def orthogonalize(x: jax.Array, ns_coeffs: Any = "muon", ns_steps: int | None = None,
                  eps: float = 1e-7, dimension_numbers: Any | None = None,
                  *, implementation: str | None = None) -> jax.Array:
  r"""Approximate polar factor of a matrix (or a batch of matrices) by Newton-Schulz.

  With ``X`` the matrix view of ``x`` (transposed when tall so that ``A`` is the small Gram
  matrix) and one ``(a_k, b_k, c_k)`` per step:

  .. math::
    X_0 = \frac{X}{\|X\|_F + \epsilon}, \qquad
    A_k = X_k X_k^\top, \qquad
    X_{k+1} = a_k X_k + (b_k A_k + c_k A_k^2) X_k .

  The computation runs in float32 and the result is cast back to ``x.dtype``.

  Args:
    x: array of rank >= 2. By default the last two axes form the matrix and leading axes are
      batch axes.
    ns_coeffs: ``"muon"``/``"quintic"`` (3.4445, -4.7750, 2.0315), ``"cubic"`` (eq. 44 with
      ``zeta = 1/4``, see `cubic_coeffs`), one ``(a, b, c)`` triple, or a schedule of triples.
    ns_steps: number of iterations; default 5 for a triple, the schedule length for a schedule.
    eps: added to the Frobenius norm (> 0), so a zero input maps to zero.
    dimension_numbers: `DimensionNumbers` (or `optax.contrib.MuonDimensionNumbers`) saying which
      axes are the reduction (rows) and output (columns) axes; the others are batch axes.
    implementation: ``"xla"`` or ``None`` (the XLA iteration), ``"auto"`` (the Pallas kernel
      of ``pallas_kernels.newton_schulz`` on TPU/GPU where it applies, else XLA; stacks on a
      multi-device mesh stay on XLA) or ``"pallas"`` (force the kernel; on CPU the TPU kernel
      in interpret mode). Anything else raises.

  Returns:
    An array of the shape and dtype of ``x``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from nl_jax.optim import orthogonalize
    >>> g = jax.random.normal(jax.random.key(0), (64, 32))
    >>> o = orthogonalize(g)
    >>> s = jnp.linalg.svd(o, compute_uv=False)
    >>> bool((s > 0.6).all() and (s < 1.2).all())
    True
  """
  return orthogonalize_many([x], ns_coeffs, ns_steps, eps, [dimension_numbers],
                            implementation=implementation)[0]
