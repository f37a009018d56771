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
"""The one path of every weight matmul, able to record layer inputs for optimizers (DGD).

Every projection of the models (``x @ W`` / ``einsum(x, W)`` with ``W`` an ``nnx.Param``)
goes through `project` (or `record_input` just before a matmul with several concatenated
weights). Outside `recording` both are the plain matmul. Inside ``recording(probes)`` they
record, in the same forward pass that computes the loss, what an input-aware optimizer needs:
the input statistics ``S = X^T X`` (summed over all rows of all calls) and the row count ``N``
of every weight that has a probe.

How the record leaves the forward: a probe is a zero `InputStats` passed to the loss function
as an extra differentiated argument; `record_input` routes ``x`` through a ``custom_vjp``
identity whose backward returns ``(X^T X, N)`` as the probe's cotangent. So
``jax.value_and_grad(loss, argnums=(params, probes))`` returns the gradients and the recorded
statistics from one forward and one backward. Unlike ``nnx.sow`` this crosses ``nnx.remat``,
``jax.checkpoint`` and ``jax.lax.scan`` (the CMS next-token segment driver runs attention
inside a scan), sums over repeated calls, and is reduced over a sharded batch by the usual
gradient all-reduce, so the optimizer never sees the ``N x in`` activations. DGD's exact step
needs only ``S / N`` (see `nl_jax.optim.dgd`).

Weights are identified by the ``param_path`` metadata ("blocks/0/attn/wq", the path of the
parameter in ``nnx.to_pure_dict(nnx.state(model, nnx.Param))``), set by `tag_param_paths`;
metadata survives the split/merge of nnx transforms, object identity does not.
"""

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import flax.nnx as nnx
import jax
import jax.numpy as jnp

# ``(X^T X, N)``; defined with DGD so that nl_jax.optim stays free of flax.
from nl_jax.optim.dgd import InputStats

PATH_KEY = "param_path"


def zero_stats(fan_in: int) -> InputStats:
  """A probe for a weight of fan-in ``fan_in`` (float32 zeros)."""
  return InputStats(jnp.zeros((fan_in, fan_in), jnp.float32), jnp.zeros((), jnp.float32))


@dataclasses.dataclass
class _Recorder:
  probes: Mapping[str, InputStats]
  seen: dict[str, int]


_ACTIVE: contextvars.ContextVar[_Recorder | None] = contextvars.ContextVar(
    "nl_jax_projection_recorder", default=None)


@contextlib.contextmanager
def recording(probes: Mapping[str, InputStats] | None = None) -> Iterator[dict[str, int]]:
  """Records the inputs of tagged weights while the block runs (at trace time).

  Args:
    probes: ``{param path: InputStats}`` (usually zeros, differentiated by the caller); weights
      without a probe are only listed. None: list only.

  Yields:
    ``{param path: fan-in}`` of every tagged weight whose input went through `record_input`
    (filled while the block runs).
  """
  rec = _Recorder(dict(probes or {}), {})
  token = _ACTIVE.set(rec)
  try:
    yield rec.seen
  finally:
    _ACTIVE.reset(token)


def tag_param_paths(model: nnx.Module) -> None:
  """Sets the ``param_path`` metadata of every ``nnx.Param`` of ``model`` (idempotent)."""
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Param):
      node.set_metadata(**{PATH_KEY: "/".join(str(p) for p in path)})


def param_path(weight: Any) -> str | None:
  """The ``param_path`` tag of a parameter (None if untagged or not a Variable)."""
  if not isinstance(weight, nnx.Variable):
    return None
  return weight.get_metadata().get(PATH_KEY)


@jax.custom_vjp
def _tap(x_NxI: jax.Array, probes: tuple[InputStats, ...]) -> jax.Array:
  del probes
  return x_NxI


def _tap_fwd_res(x_NxI, probes):
  return x_NxI, (x_NxI, len(probes))


def _tap_bwd(res, ct):
  x_NxI, n_probes = res
  x = x_NxI.astype(jnp.float32)
  # HIGHEST: S enters a linear solve; default TPU/GPU matmul precision would round it to bf16.
  stats = InputStats(jnp.matmul(x.T, x, precision=jax.lax.Precision.HIGHEST),
                     jnp.asarray(x.shape[0], jnp.float32))
  return ct, (stats,) * n_probes


_tap.defvjp(_tap_fwd_res, _tap_bwd)


def record_input(x: jax.Array, *weights: Any, in_axes: int = 1) -> jax.Array:
  """Returns ``x`` unchanged, recording it as the input of ``weights`` when recording.

  Args:
    x: ``[..., *in]``: the trailing ``in_axes`` axes are contracted with the reduction axes
      of every weight (in the weights' order).
    *weights: the ``nnx.Param`` s that multiply ``x`` (several for a concatenated matmul).
    in_axes: number of trailing axes of ``x`` that form the input feature vector.

  Returns:
    ``x`` (the identity, also for gradients).
  """
  rec = _ACTIVE.get()
  if rec is None:
    return x
  fan_in = 1
  for d in x.shape[x.ndim - in_axes:]:
    fan_in *= d
  probes = []
  for w in weights:
    key = param_path(w)
    if key is None:
      continue
    rec.seen[key] = fan_in
    if key in rec.probes:
      probe = rec.probes[key]
      if probe.gram.shape != (fan_in, fan_in):
        raise ValueError(f"record_input: the probe of {key} has shape {probe.gram.shape}, but "
                         f"the weight's input has {fan_in} features (x shape {x.shape}).")
      probes.append(probe)
  if not probes:
    return x
  x_NxI = x.reshape(-1, fan_in)
  return _tap(x_NxI, tuple(probes)).reshape(x.shape)


def _parse(equation: str) -> tuple[str, str, str]:
  lhs, out = equation.replace(" ", "").split("->")
  xs, ws = lhs.split(",")
  return xs, ws, out


def project(equation: str, x: jax.Array, weight: Any, dtype: Any = None,
            **einsum_kwargs: Any) -> jax.Array:
  """``einsum(equation, x, W)`` with ``W = weight[...]`` cast to ``dtype``; records ``x``.

  The contracted axes of ``x`` must be its trailing axes, in the order of the weight's
  reduction axes (as in every projection of the models: ``"btd,dhk->bthk"``,
  ``"bthk,hkd->btd"``, ``"...d,df->...f"``).

  Args:
    equation: a two-operand einsum, input first.
    x: the input.
    weight: the ``nnx.Param`` (or an array: then nothing is recorded).
    dtype: dtype of both operands (None: keep them).
    **einsum_kwargs: forwarded to ``jnp.einsum`` (e.g. ``preferred_element_type``).

  Returns:
    The einsum.

  Raises:
    ValueError: the contracted axes are not the trailing axes of ``x`` in the weight's order.
  """
  return project_shared(equation, x, (weight,), dtype, **einsum_kwargs)[0]


def project_shared(equation: str, x: jax.Array, weights: Any, dtype: Any = None,
                   **einsum_kwargs: Any) -> tuple[jax.Array, ...]:
  """`project` of one input by several weights (wq, wk, wv; w_gate, w_up).

  The input is recorded once for all of them, so the program holds one ``X^T X`` for the
  group instead of one per weight. (XLA:CPU already merged the identical products: the DGD
  step time did not change, experiments/optimizers/README.md.)

  Args:
    equation, x, dtype, **einsum_kwargs: as in `project` (the same equation for every weight).
    weights: a sequence of ``nnx.Param`` s (or arrays) of one shape.

  Returns:
    A tuple with ``einsum(equation, x, W)`` per weight, in order.
  """
  xs, ws, out = _parse(equation)
  contracted = [c for c in xs if c in ws and c not in out]
  if xs[len(xs) - len(contracted):] != "".join(c for c in ws if c in contracted):
    raise ValueError(f"project: equation {equation!r} must contract the trailing axes of the "
                     "input, in the order of the weight's axes")
  arrays = [w[...] if isinstance(w, nnx.Variable) else w for w in weights]
  if dtype is not None:
    x = x.astype(dtype)
    arrays = [w.astype(dtype) for w in arrays]
  x = record_input(x, *weights, in_axes=len(contracted))
  return tuple(jnp.einsum(equation, x, w, **einsum_kwargs) for w in arrays)
