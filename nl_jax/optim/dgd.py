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
r"""Delta Gradient Descent (DGD) for linear layers (paper eqs. 56-57, spec 2.1 and 2.5).

Kernel convention: flax kernels are ``W`` of shape ``(in, out)`` with ``y = x W``. For one input
row ``x`` and output gradient ``g_y``, the DGD step is the exact minimiser of

.. math::
  \tfrac12 \|x W - u\|^2 + \tfrac{1}{2\eta}\|W - W_t\|_F^2, \qquad u = -\nabla_y L,

i.e. ``(x x^T + I/eta) W = W_t/eta + x u^T``; by Sherman-Morrison, with
``c = eta / (1 + eta ||x||^2)``,

.. math::
  W_{t+1} = (I - c\, x x^\top) W_t - c\, x\, g_y^\top ,

so the rank-1 decay acts on the *input* side (left) for ``(in, out)`` kernels, the transpose of
the paper's ``W (I - c x x^T)`` for ``(out, in)`` matrices.

Batch form (our choice, spec 2.5 leaves it open): average the per-row objectives over the ``N``
input rows of the step, ``1/(2N) sum_b ||x_b W - u_b||^2``. For a loss that is a mean over those
rows the batch gradient is ``G = X^T G_y = -X^T U / N``, so with ``S = X^T X / N``

.. math::
  W_{t+1} = (I + \eta S)^{-1} (W_t - \eta G)
          = W_t - \eta\, (I + \eta S)^{-1} (G + S W_t).

We solve it exactly: with the ``in x in`` Cholesky factor of ``I + eta S`` when ``N >= in``, else
with the Woodbury identity ``(I + eta X^T X/N)^{-1} = I - X^T (N/eta I + X X^T)^{-1} X`` (an
``N x N`` solve; for ``N = 1`` this is Sherman-Morrison). ``N = 1`` recovers eq. 57 exactly.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from nl_jax.optim import _common

_SOLVES = ("auto", "direct", "woodbury")


class ScaleByDGDState(NamedTuple):
  """State of `scale_by_dgd`: the step count (int32), used to evaluate a schedule."""
  count: jax.Array


def _dgd_direction(grad: jax.Array, param: jax.Array, x: jax.Array, lr: jax.Array,
                   solve: str, gamma: Any) -> jax.Array:
  """``(I + lr gamma S)^{-1} (G + gamma S W)`` with ``S = X^T X / N`` for a kernel ``(in, out)``."""
  if param.ndim != 2:
    raise ValueError(f"DGD layer inputs need a 2D (in, out) kernel, got shape {param.shape}.")
  d_in = param.shape[0]
  if x.shape[-1] != d_in:
    raise ValueError(f"layer input feature size {x.shape[-1]} != kernel fan-in {d_in}.")
  x = jax.lax.stop_gradient(x.reshape(-1, d_in).astype(jnp.float32))
  n = x.shape[0]
  g = grad.astype(jnp.float32)
  w = param.astype(jnp.float32)
  rhs = g + gamma * (x.T @ (x @ w)) / n  # G + gamma S W without forming S.
  step = lr * gamma
  use_woodbury = solve == "woodbury" or (solve == "auto" and n < d_in)
  if use_woodbury:
    inner = (n / jnp.maximum(step, 1e-30)) * jnp.eye(n, dtype=jnp.float32) + x @ x.T
    chol = jax.scipy.linalg.cho_factor(inner, lower=True)
    d = rhs - x.T @ jax.scipy.linalg.cho_solve(chol, x @ rhs)
  else:
    mat = jnp.eye(d_in, dtype=jnp.float32) + (step / n) * (x.T @ x)
    chol = jax.scipy.linalg.cho_factor(mat, lower=True)
    d = jax.scipy.linalg.cho_solve(chol, rhs)
  # step = 0 makes the Woodbury inner matrix infinite; there the direction is exactly rhs.
  d = jnp.where(step > 0, d, rhs)
  return d.astype(grad.dtype)


def scale_by_dgd(learning_rate: optax.ScalarOrSchedule, decay: float = 1.0, *,
                 solve: str = "auto") -> optax.GradientTransformationExtraArgs:
  r"""Preconditions kernel gradients into the Delta Gradient Descent direction.

  For a kernel ``W`` (``(in, out)``) whose input rows ``X`` (``N x in``) are passed as
  ``layer_inputs``, and ``S = X^T X / N``:

  .. math::
    d = (I + \eta_t \gamma S)^{-1} (G + \gamma S W), \qquad W \leftarrow W - \eta_t d

  (the last step is `optax.scale_by_learning_rate`, as in the `dgd` alias), which is the exact
  argmin of the batch-averaged eq. 56 (see the module docstring) generalised with a weight
  ``gamma`` on its "erase" term: ``gamma/2 ||x W||^2 - <x W, u> + 1/(2 eta) ||W - W_t||^2``.
  ``gamma = 1`` is the paper's DGD; ``gamma = 0`` is the dot-product objective of eq. 55 (SGD).
  Note that with ``gamma > 0`` the fixed points satisfy ``G = -gamma S W``: DGD behaves like
  descent on the loss plus ``gamma/2 mean ||x W||^2`` (the state-aware decay of the paper).
  Leaves without inputs (``None``), or calls without ``layer_inputs``, pass the gradient
  through: plain SGD.

  Args:
    learning_rate: the step size ``eta`` (scalar or schedule, >= 0). It also sets the strength
      of the input-direction decay, so it must equal the learning rate applied afterwards.
    decay: weight ``gamma`` (>= 0) of the input-direction decay (1 = paper).
    solve: ``"auto"`` (Woodbury when ``N < in``), ``"direct"`` or ``"woodbury"``.

  Returns:
    An `optax.GradientTransformationExtraArgs` whose ``update`` takes
    ``layer_inputs=`` (a pytree matching the params, input batches ``(..., in)`` at kernels and
    ``None`` elsewhere) and requires ``params``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from nl_jax.optim import scale_by_dgd
    >>> tx = scale_by_dgd(0.1)
    >>> params = {'kernel': jnp.ones((3, 2)), 'bias': jnp.zeros(2)}
    >>> grads = {'kernel': jnp.ones((3, 2)), 'bias': jnp.ones(2)}
    >>> state = tx.init(params)
    >>> d, state = tx.update(grads, state, params,
    ...                      layer_inputs={'kernel': jnp.ones((5, 3)), 'bias': None})
    >>> d['kernel'].shape, bool(jnp.all(d['bias'] == 1.0))
    ((3, 2), True)
  """
  _common.check_learning_rate(learning_rate)
  _common.check_range("decay", decay, low=0.0)
  if solve not in _SOLVES:
    raise ValueError(f"solve must be one of {_SOLVES}, got solve={solve!r}.")

  def init_fn(params):
    del params
    return ScaleByDGDState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, *, layer_inputs=None, **extra_args):
    del extra_args
    lr = _common.lr_at(learning_rate, state.count).astype(jnp.float32)
    new_state = ScaleByDGDState(count=optax.safe_increment(state.count))
    if layer_inputs is None:
      return updates, new_state
    if params is None:
      raise ValueError("scale_by_dgd needs params when layer_inputs are given.")

    def leaf(g, p, x):
      if x is None:
        return g
      return _dgd_direction(g, p, x, lr, solve, decay)

    return jax.tree.map(leaf, updates, params, layer_inputs), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def dgd(learning_rate: optax.ScalarOrSchedule, decay: float = 1.0, weight_decay: float = 0.0,
        weight_decay_mask: Any = None, *, solve: str = "auto"
        ) -> optax.GradientTransformationExtraArgs:
  r"""Delta Gradient Descent: exact L2-regression (delta-rule) steps for linear layers.

  .. math::
    W \leftarrow W - \eta_t \Big((I + \eta_t \gamma S)^{-1}(G + \gamma S W) + \lambda W\Big),
    \qquad S = X^\top X / N,

  for kernels with inputs, plain SGD (plus decoupled weight decay ``lambda``) elsewhere. For a
  single input row this is eq. 57 with ``eta' = eta / (1 + eta ||x||^2)``.

  Args:
    learning_rate: scalar or schedule (>= 0).
    decay: weight ``gamma`` of the input-direction decay (1 = paper, 0 = SGD).
    weight_decay: decoupled weight decay (multiplied by the learning rate).
    weight_decay_mask: optional mask for the weight decay.
    solve: see `scale_by_dgd`.

  Returns:
    An `optax.GradientTransformationExtraArgs`; pass ``layer_inputs=`` to ``update`` (see
    `capture_linear_inputs` for flax NNX models).

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from nl_jax.optim import dgd
    >>> x = jax.random.normal(jax.random.key(0), (16, 4))
    >>> y = x @ jnp.ones((4, 2))
    >>> params = {'kernel': jnp.zeros((4, 2))}
    >>> loss = lambda p: jnp.mean((x @ p['kernel'] - y) ** 2)
    >>> tx = dgd(learning_rate=0.5)
    >>> state = tx.init(params)
    >>> for _ in range(20):
    ...   u, state = tx.update(jax.grad(loss)(params), state, params,
    ...                        layer_inputs={'kernel': x})
    ...   params = optax.apply_updates(params, u)
    >>> bool(loss(params) < 0.3 * loss({'kernel': jnp.zeros((4, 2))}))
    True
  """
  _common.check_learning_rate(learning_rate)
  _common.check_range("weight_decay", weight_decay, low=0.0)
  return optax.chain(
      scale_by_dgd(learning_rate, decay, solve=solve),
      optax.add_decayed_weights(weight_decay, weight_decay_mask),
      optax.scale_by_learning_rate(learning_rate),
  )


def capture_linear_inputs(model: Any, *args: Any,
                          layer_types: Sequence[type] | None = None,
                          **kwargs: Any) -> tuple[Any, Any]:
  """Runs a flax NNX model and records the inputs of its linear layers for DGD.

  Temporarily wraps ``__call__`` of the classes of the matching sub-modules (``nnx.Linear`` by
  default), calls ``model(*args, **kwargs)`` and restores the classes. Works under ``jax.jit`` /
  ``jax.grad`` (the recording is Python-level; inputs are wrapped in ``stop_gradient``). Not
  thread-safe: do not run two captures of the same layer class concurrently. A layer called
  several times contributes all its input rows.

  Args:
    model: an ``nnx.Module``.
    *args: positional arguments of the model call.
    layer_types: module classes whose first call argument is the ``(..., in)`` input of an
      ``(in, out)`` ``kernel`` (default ``(nnx.Linear,)``).
    **kwargs: keyword arguments of the model call.

  Returns:
    ``(output, layer_inputs)``: the model output, and a nested dict with the structure of
    ``nnx.to_pure_dict(nnx.state(model, nnx.Param))`` holding the ``(N, in)`` inputs at each
    captured ``kernel`` and ``None`` elsewhere (ready for ``dgd().update(..., layer_inputs=)``).
  """
  from flax import nnx  # pylint: disable=import-outside-toplevel  (keep nl_jax.optim flax-free)

  types = tuple(layer_types) if layer_types is not None else (nnx.Linear,)
  targets = {id(m): path for path, m in nnx.iter_modules(model) if isinstance(m, types)}
  classes = {type(m) for _, m in nnx.iter_modules(model) if isinstance(m, types)}
  records: dict[int, list[jax.Array]] = {}
  saved: list[tuple[type, bool, Callable[..., Any] | None]] = []

  def make_wrapper(orig):
    def wrapper(self, inputs, *a, **k):
      if id(self) in targets:
        records.setdefault(id(self), []).append(inputs)
      return orig(self, inputs, *a, **k)
    return wrapper

  try:
    for cls in classes:
      had = "__call__" in cls.__dict__
      saved.append((cls, had, cls.__dict__.get("__call__")))
      cls.__call__ = make_wrapper(cls.__call__)
    output = model(*args, **kwargs)
  finally:
    for cls, had, orig in saved:
      if had:
        cls.__call__ = orig
      else:
        delattr(cls, "__call__")

  tree = jax.tree.map(lambda _: None, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  for mod_id, xs in records.items():
    node = tree
    for key in targets[mod_id]:
      node = node[key]
    d_in = xs[0].shape[-1]
    node["kernel"] = jax.lax.stop_gradient(
        jnp.concatenate([x.reshape(-1, d_in) for x in xs], axis=0))
  return output, tree
