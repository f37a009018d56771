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
"""Which update rule gets which parameter, and its matrix view, from its logical axes.

A parameter's logical axes are the ones that shard it (the trainer's
``config.sharding.param_rules``: the first rule whose regex matches the path and whose rank
equals the parameter's). The matrix view of the matrix rules (M3, Muon, DGD, delta momentum)
comes from the same axes, by `MATRIX_VIEWS`: heads x head_dim fold into one matrix axis, as
`optax.contrib.MuonDimensionNumbers` describes it. E.g. an attention ``wq`` [embed, heads,
head_dim] is the matrix ``embed x (heads * head_dim)`` and ``wo`` [heads, head_dim, embed] is
``(heads * head_dim) x embed``.

Blocks stacked for ``scan_layers`` live under `STACKED_BLOCKS` ("scanned_blocks/attn/wq",
shape [n_layers, ...]): the rules are matched on the shape without the leading axis, which gets
the logical axis "layers"; for the matrix rules it is a batch axis (each layer's matrix is
orthogonalised on its own).

Kinds (`Assignment.kind`):

* ``"projection"``: a weight with matrix logical axes that multiplies the layer input directly
  (through `nl_jax.layers.projection`): orthogonalised by M3/Muon, DGD-preconditioned by DGD.
* ``"initial_state"``: a matrix whose path has a ``*_init`` component: the meta-learned initial
  state of a fast memory (e.g. Hope's CMS MLP levels). It is the model's weight at the start of
  every sequence, so M3/Muon orthogonalise it; but the matmuls use the in-context fast weights,
  so there is no layer input for DGD, which gives it a plain SGD step.
* ``"other"``: everything else, AdamW for M3/Muon (SGD for DGD), with the reason: embedding /
  unembedding (a ``vocab`` axis), gates (a ``gates`` axis), depthwise convolutions
  (``conv_width``), norm scales (``norm``), the per-head initial states of MLP fast memories
  (``memory_hidden``: one small matrix per head, not a projection), and leaves without logical
  axes (biases, 1-D scales).
"""

import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax

from nl_jax.optim import newton_schulz as ns

# The module attribute (and so the parameter path prefix) of blocks stacked on a leading
# "layers" axis (nl_jax.models.common, LMConfig.scan_layers).
STACKED_BLOCKS = "scanned_blocks"
LAYERS_AXIS = "layers"

# Logical axes of a matrix -> its matrix view (rows = reduction/input axes).
MATRIX_VIEWS: dict[tuple[str, ...], ns.DimensionNumbers] = {
    ("embed", "heads"): ns.DimensionNumbers(0, 1),
    ("embed", "heads", "head_dim"): ns.DimensionNumbers(0, (1, 2)),
    ("heads", "embed"): ns.DimensionNumbers(0, 1),
    ("heads", "head_dim", "embed"): ns.DimensionNumbers((0, 1), 2),
    ("embed", "mlp"): ns.DimensionNumbers(0, 1),
    ("mlp", "embed"): ns.DimensionNumbers(0, 1),
}
# A logical axis that makes a parameter a non-matrix, and the reason printed for it.
NON_MATRIX_AXES = {
    "vocab": "embedding/unembedding",
    "gates": "gate",
    "conv_width": "depthwise conv",
    "norm": "norm scale",
    "memory_hidden": "per-head memory initial state",
}
_INITIAL_STATE = re.compile(r"(^|/)[^/]*_init(/|_|$)")


class Assignment(NamedTuple):
  """How the optimizers see one parameter.

  Attributes:
    path: "blocks/0/attn/wq".
    shape: the parameter's shape.
    logical: its logical axes (None: no rule of its rank matched).
    kind: "projection", "initial_state" or "other" (see the module docstring).
    dims: the matrix view (`DimensionNumbers`) for the first two kinds, else None.
    reason: why a non-matrix is one.
  """
  path: str
  shape: tuple[int, ...]
  logical: tuple[str | None, ...] | None
  kind: str
  dims: ns.DimensionNumbers | None
  reason: str

  @property
  def is_matrix(self) -> bool:
    return self.dims is not None

  @property
  def matrix_shape(self) -> tuple[int, int] | None:
    """``(rows, cols)`` = ``(fan_in, fan_out)`` of the matrix view."""
    return None if self.dims is None else ns.matrix_fans(self.shape, self.dims)


def path_str(path: Sequence[Any]) -> str:
  """A pytree key path as "a/b/0/c" (what the sharding and optimizer-rule regexes match)."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def logical_axes_of(path: str, shape: Sequence[int],
                    param_rules: Sequence[tuple[str, Sequence[str | None]]]
                    ) -> tuple[str | None, ...] | None:
  """The logical axes of the first rule matching ``path`` with the parameter's rank.

  A parameter of stacked blocks (path under `STACKED_BLOCKS`) is matched without its leading
  axis, which is `LAYERS_AXIS`.
  """
  stacked = is_stacked(path)
  rank = len(shape) - 1 if stacked else len(shape)
  for regex, axes in param_rules:
    if len(axes) == rank and re.search(regex, path):
      return ((LAYERS_AXIS,) if stacked else ()) + tuple(axes)
  return None


def is_stacked(path: str) -> bool:
  """Whether ``path`` names a parameter of blocks stacked on a leading "layers" axis."""
  return path == STACKED_BLOCKS or path.startswith(STACKED_BLOCKS + "/")


def _shifted(dims: ns.DimensionNumbers, by: int) -> ns.DimensionNumbers:
  def shift(a):
    return a + by if isinstance(a, int) else tuple(x + by for x in a)
  return ns.DimensionNumbers(shift(dims.reduction_axis), shift(dims.output_axis))


def assign_one(path: str, shape: Sequence[int],
               param_rules: Sequence[tuple[str, Sequence[str | None]]]) -> Assignment:
  """The `Assignment` of one parameter."""
  shape = tuple(int(d) for d in shape)
  logical = logical_axes_of(path, shape, param_rules)
  if logical is None:
    kind = "memory initial state" if _INITIAL_STATE.search(path) else "bias/scale/scalar"
    return Assignment(path, shape, None, "other", None, f"no logical axes ({kind})")
  for axis, why in NON_MATRIX_AXES.items():
    if axis in logical:
      return Assignment(path, shape, logical, "other", None, why)
  stacked = logical[:1] == (LAYERS_AXIS,)
  dims = MATRIX_VIEWS.get(logical[1:] if stacked else logical)
  if dims is not None and stacked:
    dims = _shifted(dims, 1)  # the layers axis is a batch axis of the matrix view
  if dims is None:
    return Assignment(path, shape, logical, "other", None,
                      f"logical axes {logical} are not a matrix view")
  kind = "initial_state" if _INITIAL_STATE.search(path) else "projection"
  return Assignment(path, shape, logical, kind, dims, "")


def assign(params: Any, param_rules: Sequence[tuple[str, Sequence[str | None]]]) -> Any:
  """A tree like ``params`` (arrays or ShapeDtypeStructs) of `Assignment` s."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: assign_one(path_str(p), x.shape, param_rules), params)


def is_assignment(x: Any) -> bool:
  """Whether x is an Assignment (the ``is_leaf`` of trees of assignments)."""
  return isinstance(x, Assignment)


def dimension_numbers(assignments: Any, kinds: Sequence[str] = ("projection", "initial_state"),
                      factory: Any = ns.DimensionNumbers) -> Any:
  """Tree of matrix views (``factory(reduction_axis, output_axis)``) for ``kinds``, else None."""
  def one(a):
    if a.dims is None or a.kind not in kinds:
      return None
    return factory(a.dims.reduction_axis, a.dims.output_axis)
  return jax.tree.map(one, assignments, is_leaf=is_assignment)


def describe(assignments: Any, rules: Mapping[str, str]) -> str:
  """The startup table "path -> rule -> matrix shape" (one line per parameter).

  Args:
    assignments: a tree of `Assignment` s.
    rules: kind -> the rule name the optimizer gives it (e.g. ``{"projection": "m3",
      "initial_state": "m3", "other": "adamw"}``).
  """
  rows = []
  for a in jax.tree.leaves(assignments, is_leaf=is_assignment):
    rule = rules[a.kind]
    if a.is_matrix and rules[a.kind] != rules.get("other"):
      m, n = a.matrix_shape
      what = f"matrix {m}x{n}"
    else:
      what = a.reason or a.kind.replace("_", " ")
    rows.append((a.path, str(a.shape), rule, what))
  w0 = max((len(r[0]) for r in rows), default=0)
  w1 = max((len(r[1]) for r in rows), default=0)
  w2 = max((len(r[2]) for r in rows), default=0)
  return "\n".join(f"  {p:<{w0}} {s:<{w1}} -> {r:<{w2}} {x}" for p, s, r, x in rows)
