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
from nl_jax.optim import m3 as m3_lib
from nl_jax.optim import newton_schulz as ns

_SOLVES = ("auto", "direct", "woodbury")


class ScaleByDGDState(NamedTuple):
  """State of `scale_by_dgd`: the step count (int32), used to evaluate a schedule."""
  count: jax.Array


class InputStats(NamedTuple):
  """Sufficient statistics of a kernel's input rows for DGD: ``gram = X^T X``, ``count = N``.

  What `nl_jax.layers.projection` records in the training forward; ``S = gram / count``.
  """
  gram: jax.Array
  count: jax.Array


def _solve_direction(g: jax.Array, w: jax.Array, x: Any, lr: jax.Array, solve: str,
                     gamma: Any) -> jax.Array:
  """``(I + lr gamma S)^{-1} (G + gamma S W)`` for matrices ``G, W`` [in, out] (float32+)."""
  dt = w.dtype
  d_in = w.shape[0]
  step = lr * gamma
  if isinstance(x, InputStats):
    if x.gram.shape != (d_in, d_in):
      raise ValueError(f"DGD input statistics of shape {x.gram.shape} do not match the kernel "
                       f"fan-in {d_in}.")
    s = jax.lax.stop_gradient(x.gram.astype(dt)) / jnp.maximum(
        jax.lax.stop_gradient(x.count).astype(dt), 1.0)
    rhs = g + gamma * (s @ w)
    mat = jnp.eye(d_in, dtype=dt) + step * s
    chol = jax.scipy.linalg.cho_factor(mat, lower=True)
    return jax.scipy.linalg.cho_solve(chol, rhs)
  if x.shape[-1] != d_in:
    raise ValueError(f"layer input feature size {x.shape[-1]} != kernel fan-in {d_in}.")
  x = jax.lax.stop_gradient(x.reshape(-1, d_in).astype(dt))
  n = x.shape[0]
  rhs = g + gamma * (x.T @ (x @ w)) / n  # G + gamma S W without forming S.
  use_woodbury = solve == "woodbury" or (solve == "auto" and n < d_in)
  if use_woodbury:
    inner = (n / jnp.maximum(step, 1e-30)) * jnp.eye(n, dtype=dt) + x @ x.T
    chol = jax.scipy.linalg.cho_factor(inner, lower=True)
    d = rhs - x.T @ jax.scipy.linalg.cho_solve(chol, x @ rhs)
  else:
    mat = jnp.eye(d_in, dtype=dt) + (step / n) * (x.T @ x)
    chol = jax.scipy.linalg.cho_factor(mat, lower=True)
    d = jax.scipy.linalg.cho_solve(chol, rhs)
  # step = 0 makes the Woodbury inner matrix infinite; there the direction is exactly rhs.
  return jnp.where(step > 0, d, rhs)


def _dgd_direction(grad: jax.Array, param: jax.Array, x: Any, lr: jax.Array,
                   solve: str, gamma: Any, dims: Any = None) -> jax.Array:
  """The DGD direction of one weight, on its matrix view ``(in, out)`` (``dims``)."""
  if dims is None and param.ndim != 2:
    raise ValueError(f"DGD layer inputs need a 2D (in, out) kernel or weight_dimension_numbers, "
                     f"got shape {param.shape}.")
  view = ns.matrix_view(tuple(param.shape), dims)
  if view.flat_shape[0] != 1:
    raise ValueError(f"DGD needs a single matrix per weight; dimension numbers {dims} leave "
                     f"batch axes in shape {param.shape}.")
  dt = jnp.promote_types(param.dtype, jnp.float32)

  def to_matrix(a):
    return jnp.transpose(a, view.perm).reshape(view.flat_shape[1:]).astype(dt)
  d = _solve_direction(to_matrix(grad), to_matrix(param), x, lr, solve, gamma)
  d = d.reshape(view.unflat_shape).transpose(view.inv_perm)
  return d.astype(grad.dtype)


def scale_by_dgd(learning_rate: optax.ScalarOrSchedule, decay: float = 1.0, *,
                 solve: str = "auto", weight_dimension_numbers: Any = None
                 ) -> optax.GradientTransformationExtraArgs:
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
    solve: ``"auto"`` (Woodbury when ``N < in``), ``"direct"`` or ``"woodbury"`` (for input
      rows; `InputStats` always use the direct ``in x in`` Cholesky solve).
    weight_dimension_numbers: `DimensionNumbers` (one, a tree like the params, or a callable
      of the params) giving the matrix view ``(in, out)`` of weights that are not 2-D
      ``(in, out)`` kernels, e.g. an attention ``wq`` [embed, heads, head_dim] is
      ``DimensionNumbers(0, (1, 2))``; None = 2-D kernels.

  Returns:
    An `optax.GradientTransformationExtraArgs` whose ``update`` takes
    ``layer_inputs=`` (a pytree matching the params: input batches ``(..., in)`` or
    `InputStats` ``(X^T X, N)`` at kernels and ``None`` elsewhere) and requires ``params``.

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

    # Under optax.partition / optax.masked the leaves of other groups are MaskedNodes, while
    # layer_inputs keeps one entry per parameter of the whole tree: both are flattened with
    # the masked leaves in place, and those pass through.
    full, treedef = jax.tree.flatten(updates, is_leaf=_is_masked)
    inputs = jax.tree.leaves(layer_inputs,
                             is_leaf=lambda x: x is None or isinstance(x, InputStats))
    if len(inputs) != len(full):
      raise ValueError(f"layer_inputs must have one entry (input, InputStats or None) per "
                       f"parameter: got {len(inputs)} for {len(full)} parameters.")
    dims = iter(m3_lib.flat_dims(weight_dimension_numbers, updates))
    out = []
    for g, p, x in zip(full, treedef.flatten_up_to(params), inputs, strict=True):
      if _is_masked(g):
        out.append(g)
        continue
      d = next(dims)
      out.append(g if x is None else _dgd_direction(g, p, x, lr, solve, decay, d))
    return jax.tree.unflatten(treedef, out), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def dgd(learning_rate: optax.ScalarOrSchedule, decay: float = 1.0, weight_decay: float = 0.0,
        weight_decay_mask: Any = None, *, solve: str = "auto",
        weight_dimension_numbers: Any = None,
        adam_learning_rate: optax.ScalarOrSchedule | None = None, adam_b1: float = 0.9,
        adam_b2: float = 0.999, adam_eps: float = 1e-8,
        adam_weight_decay: float | None = None) -> optax.GradientTransformationExtraArgs:
  r"""Delta Gradient Descent: exact L2-regression (delta-rule) steps for linear layers.

  .. math::
    W \leftarrow W - \eta_t \Big((I + \eta_t \gamma S)^{-1}(G + \gamma S W) + \lambda W\Big),
    \qquad S = X^\top X / N,

  for kernels with inputs, plain SGD (plus decoupled weight decay ``lambda``) elsewhere. For a
  single input row this is eq. 57 with ``eta' = eta / (1 + eta ||x||^2)``.

  With ``adam_learning_rate`` the parameters that are not DGD matrices (no entry in the tree
  of ``weight_dimension_numbers``, or not 2-D when it is None: e.g. embeddings, norms, biases,
  gates) take AdamW at that rate instead of SGD, as
  `optax.contrib.muon` does for its non-matrix leaves. DGD's rates are 30-300x AdamW's, so one
  rate cannot serve both groups.

  Args:
    learning_rate: scalar or schedule (>= 0).
    decay: weight ``gamma`` of the input-direction decay (1 = paper, 0 = SGD).
    weight_decay: decoupled weight decay (multiplied by the learning rate).
    weight_decay_mask: optional mask for the weight decay.
    solve, weight_dimension_numbers: see `scale_by_dgd`.
    adam_learning_rate: None (default: SGD on the non-matrix leaves) or the AdamW rate
      (scalar or schedule) for them.
    adam_b1, adam_b2, adam_eps: AdamW's moments for those leaves.
    adam_weight_decay: their decoupled weight decay (None: ``weight_decay``), multiplied by
      ``adam_learning_rate``.

  Returns:
    An `optax.GradientTransformationExtraArgs`; pass ``layer_inputs=`` to ``update`` (the
    trainer records them with `nl_jax.layers.projection`; `capture_linear_inputs` for models
    built from ``nnx.Linear``).

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
  tx = optax.chain(
      scale_by_dgd(learning_rate, decay, solve=solve,
                   weight_dimension_numbers=weight_dimension_numbers),
      optax.add_decayed_weights(weight_decay, weight_decay_mask),
      optax.scale_by_learning_rate(learning_rate),
  )
  if adam_learning_rate is None:
    return tx
  _common.check_learning_rate(adam_learning_rate)
  adam = optax.adamw(adam_learning_rate, adam_b1, adam_b2, adam_eps,
                     weight_decay=weight_decay if adam_weight_decay is None else adam_weight_decay,
                     mask=weight_decay_mask)

  def labels(params):
    if weight_dimension_numbers is None:
      return jax.tree.map(lambda p: "dgd" if p.ndim == 2 else "adam", params)
    dims = m3_lib.flat_dims(weight_dimension_numbers, params)
    return jax.tree.unflatten(jax.tree.structure(params),
                              ["adam" if d is None else "dgd" for d in dims])
  return optax.partition({"dgd": tx, "adam": adam}, labels)


def _is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


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
