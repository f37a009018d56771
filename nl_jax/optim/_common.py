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
"""Shared helpers of the optimizer package: argument checks and abstract-safe state init."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def concrete_float(value: Any) -> float | None:
  """Returns `value` as a Python float when it is concrete, else None.

  `optax.inject_hyperparams` re-runs the optimizer factories inside `update` with traced
  hyperparameters; checks must then be skipped rather than fail on a tracer.
  """
  if callable(value) or isinstance(value, jax.core.Tracer):
    return None
  try:
    arr = np.asarray(value)
  except Exception:  # pylint: disable=broad-except
    return None
  if arr.shape != ():
    return None
  return float(arr)


def check_range(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                low_inclusive: bool = True, high_inclusive: bool = True) -> None:
  """Raises `ValueError` naming `name` if a concrete `value` lies outside the range."""
  v = concrete_float(value)
  if v is None:
    return
  bad = np.isnan(v)
  if low is not None:
    bad |= v < low if low_inclusive else v <= low
  if high is not None:
    bad |= v > high if high_inclusive else v >= high
  if bad:
    lo = "(-inf" if low is None else ("[" if low_inclusive else "(") + f"{low}"
    hi = "inf)" if high is None else f"{high}" + ("]" if high_inclusive else ")")
    raise ValueError(f"{name} must lie in {lo}, {hi}, got {name}={value!r}.")


def check_learning_rate(learning_rate: Any) -> None:
  """Learning rates must be >= 0; schedules are checked lazily by their user."""
  check_range("learning_rate", learning_rate, low=0.0)


def static_int(name: str, value: Any, *, low: int = 1) -> int:
  """Returns a Python int for a shape-determining argument, or raises a clear error."""
  if isinstance(value, jax.core.Tracer):
    raise TypeError(
        f"{name} determines the traced program and must be a Python int; with "
        f"optax.inject_hyperparams pass static_args=({name!r}, ...). Got a tracer.")
  v = np.asarray(value)
  if v.shape != () or not (np.issubdtype(v.dtype, np.integer) or float(v) == int(v)):
    raise ValueError(f"{name} must be an integer, got {name}={value!r}.")
  v = int(v)
  if v < low:
    raise ValueError(f"{name} must be >= {low}, got {name}={value!r}.")
  return v


def zeros_like(x: Any, dtype: Any = None) -> jax.Array:
  """Zeros with the shape, dtype and (when known) sharding of `x`.

  Works for concrete arrays and for `jax.ShapeDtypeStruct` leaves, so `init` can be traced with
  `jax.eval_shape` or called on abstract parameters.
  """
  return jnp.zeros_like(x, dtype=dtype)


def lr_at(learning_rate: Any, count: jax.Array) -> jax.Array:
  """Evaluates a scalar-or-schedule learning rate at step `count`."""
  if callable(learning_rate):
    return jnp.asarray(learning_rate(count))
  return jnp.asarray(learning_rate)


def replicated_like(x: jax.Array) -> Any:
  """A replicated `NamedSharding` on the explicit mesh of `x`, or None outside explicit mode.

  Small contractions over a sharded axis (e.g. ``g^T mu``) have an ambiguous output sharding in
  explicit mode; the result is tiny, so we ask for it replicated.
  """
  sharding = jax.typeof(x).sharding
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or mesh.empty:
    return None
  if not all(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
    return None
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
