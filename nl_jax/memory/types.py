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
"""Inputs, state and inner-rule coefficients shared by the matrix and MLP memories."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

RULES = ("dgd", "paper_l2", "gd", "hebbian")
SEMANTICS = ("exact", "anchored")
READS = ("post", "pre", "anchor")
RETENTION_ORDERS = ("after", "before")


class MemoryInputs(NamedTuple):
  """Per-token inputs of a fast level; leading axes [*batch, T].

  Attributes:
    keys: [*batch, T, d_in] keys the memory is written at.
    values: [*batch, T, d_out] regression targets (the paper's vhat).
    eta: [*batch, T] inner learning rate, > 0 (see gates.eta_from_logits).
    queries: [*batch, T, d_in] read positions, or None to only write.
    alpha: [*batch, T] retention in [0, 1], or None for 1.
    momentum: [*batch, T] momentum decay in [0, 1); required iff the memory has
      momentum.
    reset: [*batch, T] bool (or 0/1), or None: True at the first token of a new document.
      The state goes back to the meta-learned initial weights (momentum to zero, anchor to
      the initial weights) before that token is processed, so packed documents never read
      what another one wrote. Exact per token in the sequential path; the chunked path
      applies resets at chunk starts (global position % chunk_size == 0), which is where
      the data pipeline's document alignment puts them (see FastLevel.scan).
  """
  keys: jax.Array
  values: jax.Array
  eta: jax.Array
  queries: jax.Array | None = None
  alpha: jax.Array | None = None
  momentum: jax.Array | None = None
  reset: jax.Array | None = None


class MemoryState(NamedTuple):
  """State of a fast level for each sequence of a batch (never shared across the batch).

  Attributes:
    memory: the fast weights (an array for the matrix memory, MLPWeights for the MLP
      memory), leading axes [*batch], float32 (float64 under x64 with f64 inputs).
    momentum: Titans-style momentum of the same structure, or None.
    anchor: the fast weights at the last chunk boundary (anchored semantics), or None.
    position: [*batch] int32, the number of tokens written so far.
  """
  memory: Any
  momentum: Any
  anchor: Any
  position: jax.Array


class RuleCoefficients(NamedTuple):
  """Per-token coefficients of the generic rule.

  The rule, per token (M the weight whose input is k)::

    decay:    M (a I - erase k k^T)                      (per token, never anchored)
    gradient: lr (g * M_grad k - v) k^T                  (anchored in anchored semantics)
    update:   M <- decay - gradient                      (no momentum)
              S <- mu S - gradient ; M <- decay + S      (momentum)
  """
  lr: jax.Array
  erase: jax.Array
  grad_state: float


def rule_coefficients(rule: str, eta: jax.Array, key_sqnorm: jax.Array) -> RuleCoefficients:
  """Coefficients of each named inner rule (spec 2.1, 5.4, 9.1).

  * dgd: the exact argmin of DGD's objective,
    M (alpha I - c k k^T) + c v k^T with c = eta / (1 + eta ||k||^2):
    a rank-1 decay along the key plus a state-independent write.
  * paper_l2: eq. 93 literally, M (alpha I - eta k k^T) - eta (M k - v) k^T.
  * gd: plain L2 gradient step with retention, alpha M - eta (M k - v) k^T.
  * hebbian: dot-product objective, alpha M + eta v k^T.
  """
  if rule == "dgd":
    c = eta / (1.0 + eta * key_sqnorm)
    return RuleCoefficients(lr=c, erase=c, grad_state=0.0)
  if rule == "paper_l2":
    return RuleCoefficients(lr=eta, erase=eta, grad_state=1.0)
  if rule == "gd":
    return RuleCoefficients(lr=eta, erase=jnp.zeros_like(eta), grad_state=1.0)
  if rule == "hebbian":
    return RuleCoefficients(lr=eta, erase=jnp.zeros_like(eta), grad_state=0.0)
  raise ValueError(f"unknown inner rule {rule!r}; expected one of {RULES}")


def check_choice(owner: str, name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{owner}: {name}={value!r} is not one of {choices}")


def state_dtype(*dtypes) -> jnp.dtype:
  """Float32 for bf16/f16/f32 activations; float64 only when float64 inputs arrive."""
  out = jnp.dtype(jnp.float32)
  for d in dtypes:
    if d is not None and jnp.dtype(d) == jnp.float64:
      out = jnp.dtype(jnp.float64)
  return out


def validate_inputs(owner: str, inputs: MemoryInputs, d_in: int, d_out: int,
                    has_momentum: bool, batch_shape: tuple[int, ...] | None = None) -> tuple[
                      tuple[int, ...], int]:
  """Checks shapes and dtypes of inputs; returns (batch_shape, T).

  Raises ValueError naming the field, its shape and the expected shape, before any work.
  """
  if not isinstance(inputs, MemoryInputs):
    raise TypeError(f"{owner}: inputs must be a MemoryInputs, got {type(inputs).__name__}")
  keys = inputs.keys
  if keys.ndim < 2:
    raise ValueError(f"{owner}: inputs.keys must have shape [*batch, T, {d_in}], got {keys.shape}")
  bshape, t = tuple(keys.shape[:-2]), keys.shape[-2]
  if batch_shape is not None and bshape != tuple(batch_shape):
    raise ValueError(f"{owner}: inputs.keys batch axes {bshape} do not match the state's batch "
                     f"axes {tuple(batch_shape)}")
  expect = {
      "keys": bshape + (t, d_in),
      "values": bshape + (t, d_out),
      "queries": bshape + (t, d_in),
      "eta": bshape + (t,),
      "alpha": bshape + (t,),
      "momentum": bshape + (t,),
  }
  for name, want in expect.items():
    x = getattr(inputs, name)
    if x is None:
      continue
    if tuple(x.shape) != want:
      raise ValueError(f"{owner}: inputs.{name} has shape {tuple(x.shape)}, expected {want} "
                       f"(batch {bshape}, T={t})")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"{owner}: inputs.{name} must be floating point, got {x.dtype}")
  if inputs.reset is not None:
    if tuple(inputs.reset.shape) != bshape + (t,):
      raise ValueError(f"{owner}: inputs.reset has shape {tuple(inputs.reset.shape)}, expected "
                       f"{bshape + (t,)} (batch {bshape}, T={t})")
    if not (jnp.issubdtype(inputs.reset.dtype, jnp.bool_)
            or jnp.issubdtype(inputs.reset.dtype, jnp.integer)):
      raise ValueError(f"{owner}: inputs.reset must be bool or integer 0/1, got "
                       f"{inputs.reset.dtype}")
  if has_momentum and inputs.momentum is None:
    raise ValueError(f"{owner}: momentum=True needs inputs.momentum (decay per token)")
  if not has_momentum and inputs.momentum is not None:
    raise ValueError(f"{owner}: inputs.momentum was given but the memory has momentum=False")
  return bshape, t
