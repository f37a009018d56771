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
"""Device mesh and logical-axis sharding for parameters, optimizer state and memory state.

The mesh has three axes, ``data`` x ``fsdp`` x ``tensor`` (``config.mesh``). The batch is
split over ``("data", "fsdp")``; parameters are placed by the logical axis rules of
``config.sharding`` (`nl_jax.train.config.PARAM_RULES`): the parameter's path is matched
against regexes, giving one logical axis per dimension ("embed", "vocab", "heads", "mlp",
...), and each logical axis maps to mesh axes. A dimension that its mesh axes do not divide
is replicated instead (so a rule never makes a preset unshardable). Optimizer-state leaves
that mirror a parameter (same path suffix and shape, e.g. Adam's ``mu``/``nu``) take that
parameter's sharding; other leaves (counts, factored statistics) are replicated. Memory
state leaves have a leading batch axis (the model interface) and are sharded with the batch.

The mesh uses ``AxisType.Auto`` (GSPMD propagation): models are written in plain ``jnp``
without ``out_sharding`` annotations, which JAX 0.10's default Explicit axes would require.
"""

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nl_jax.optim import partition
from nl_jax.optim.partition import path_str  # noqa: F401  (re-exported: sharding regexes)
from nl_jax.train import config as config_lib

BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh_shape: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
  """A ``data x fsdp x tensor`` mesh with Auto axes over ``devices`` (default: all)."""
  shape = tuple(int(mesh_shape[a]) for a in config_lib.MESH_AXES)
  devices = jax.devices() if devices is None else list(devices)
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"mesh shape {dict(zip(config_lib.MESH_AXES, shape, strict=True))} needs "
                     f"{int(np.prod(shape))} devices, got {len(devices)}")
  return jax.make_mesh(shape, config_lib.MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                       devices=devices)


def _mesh_axes_size(mesh: Mesh, axes: Sequence[str]) -> int:
  return int(np.prod([mesh.shape[a] for a in axes])) if axes else 1


def spec_for(shape: Sequence[int], logical: Sequence[str | None], logical_axes: Mapping[str, Any],
             mesh: Mesh, used: set | None = None) -> P:
  """PartitionSpec for one array from its logical axes (non-dividing dims replicated)."""
  used = set() if used is None else used
  entries = []
  for dim, name in zip(shape, logical, strict=True):
    axes = tuple(a for a in (logical_axes.get(name, ()) if name else ())
                 if a not in used and mesh.shape[a] > 1)
    if axes and dim % _mesh_axes_size(mesh, axes) == 0:
      used.update(axes)
      entries.append(axes if len(axes) > 1 else axes[0])
    else:
      entries.append(None)
  return P(*entries)


def _rules(rules) -> list[tuple[re.Pattern, tuple]]:
  return [(re.compile(r), tuple(axes)) for r, axes in rules]


def tree_shardings(tree: Any, mesh: Mesh, rules: Sequence, logical_axes: Sequence,
                   *, what: str = "parameter") -> Any:
  """NamedShardings for every leaf of ``tree`` (arrays or ShapeDtypeStructs) by the rules."""
  logical = {name: tuple(axes) for name, axes in logical_axes}

  def one(path, leaf):
    name = path_str(path)
    shape = tuple(leaf.shape)
    axes = partition.logical_axes_of(name, shape, rules)
    if axes is None:
      return NamedSharding(mesh, P())
    spec = spec_for(shape, axes, logical, mesh)
    logging.debug("%s %s %s -> %s", what, name, shape, spec)
    return NamedSharding(mesh, spec)

  return jax.tree_util.tree_map_with_path(one, tree)


def param_shardings(params: Any, mesh: Mesh, sharding_cfg: Any) -> Any:
  """Parameter shardings from ``config.sharding.param_rules``/``logical_axes``."""
  return tree_shardings(params, mesh, sharding_cfg.param_rules, sharding_cfg.logical_axes)


def memory_shardings(memory_state: Any, mesh: Mesh, sharding_cfg: Any) -> Any:
  """Memory-state shardings (leading axis = batch) from ``config.sharding.memory_rules``.

  A rule's logical axes cover the leading dimensions; the rest are replicated.
  """
  compiled = _rules(sharding_cfg.memory_rules)
  logical = {name: tuple(axes) for name, axes in sharding_cfg.logical_axes}

  def one(path, leaf):
    name = path_str(path)
    for regex, axes in compiled:
      if regex.search(name) and len(axes) <= len(leaf.shape):
        full = tuple(axes) + (None,) * (len(leaf.shape) - len(axes))
        return NamedSharding(mesh, spec_for(leaf.shape, full, logical, mesh))
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(one, memory_state)


def mirror_shardings(tree: Any, params: Any, param_sh: Any, mesh: Mesh) -> Any:
  """Shardings for optimizer state: leaves mirroring a parameter take its sharding.

  A leaf mirrors a parameter when the parameter's path is a suffix of the leaf's path and
  the shapes agree (Adam's ``mu``/``nu``, momentum buffers); all other leaves replicate.
  """
  by_path = {}
  for (path, leaf), sh in zip(jax.tree_util.tree_leaves_with_path(params),
                              jax.tree.leaves(param_sh), strict=True):
    by_path[path_str(path)] = (tuple(leaf.shape), sh)
  replicated = NamedSharding(mesh, P())

  def one(path, leaf):
    name = path_str(path)
    parts = name.split("/")
    for start in range(len(parts)):
      hit = by_path.get("/".join(parts[start:]))
      if hit is not None and hit[0] == tuple(leaf.shape):
        return hit[1]
    return replicated

  return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """[B, T] batches split over ``data`` x ``fsdp``."""
  return NamedSharding(mesh, P(BATCH_AXES, None))


def activation_sharding(mesh: Mesh) -> NamedSharding:
  """[B, T, D] activations (the residual stream) split over the batch axes like the batch."""
  return NamedSharding(mesh, P(BATCH_AXES, None, None))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def describe(tree: Any, shardings: Any, limit: int = 12) -> str:
  """A short table "path shape spec" for logging (first ``limit`` leaves)."""
  rows = []
  for (path, leaf), sh in zip(jax.tree_util.tree_leaves_with_path(tree),
                              jax.tree.leaves(shardings), strict=True):
    rows.append(f"  {path_str(path)} {tuple(leaf.shape)} {sh.spec}")
  more = len(rows) - limit
  return "\n".join(rows[:limit] + ([f"  ... {more} more"] if more > 0 else []))
