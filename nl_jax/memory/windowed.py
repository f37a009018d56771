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
r"""Generalized gradient descent with windowed retention (paper Definition 5, eqs. 59-60).

Definition 5 writes a memory's step as an argmin whose retention term looks at the last ``c``
states, not only the current one:

.. math::
  W_{t+1} = \arg\min_W \tilde{\mathcal{L}}(W; k_t, v_t)
            + \mathrm{Ret}\big(W, \{W_i\}_{i=t-c+1}^{t}\big).

We take the retention to be the proximal term of eq. 56 spread evenly over the window, with the
usual retention gate ``alpha``:

.. math::
  \mathrm{Ret} = \frac{1}{2\eta_t} \cdot \frac{1}{c} \sum_{i=t-c+1}^{t}
                 \|W - \alpha_t W_i\|_F^2 ,

which equals ``(1/(2 eta)) ||W - alpha Wbar||^2`` plus a constant, ``Wbar`` being the mean of the
window. The argmin is then closed form:

* ``rule="dgd"`` (L2 objective ``1/2 ||W k - v||^2``, eq. 56):
  ``W_{t+1} = alpha Wbar (I - c_t k k^T) + c_t v k^T`` with ``c_t = eta / (1 + eta ||k||^2)``;
* ``rule="hebbian"`` (dot-product objective ``-<W k, v>``): ``W_{t+1} = alpha Wbar + eta v k^T``.

``window=1`` is DGD with the retention applied first (`MatrixMemory` with ``rule="dgd"``,
``retention_order="before"``) and the Hebbian rule, exactly. Before ``c`` states exist, the
missing ones are the initial state (the memory rests at its initial weights before the
sequence; a reset refills the window with it).

The state keeps the window, ``[*batch, c, d_v, d_k]`` with the newest state last; reads use the
newest. Only the sequential path exists (the mean over a sliding window of states has no
chunked closed form here).
"""

import dataclasses

import jax
import jax.numpy as jnp

from nl_jax.memory.base import FastLevel
from nl_jax.memory.matrix import MatrixMemoryParams

WINDOWED_RULES = ("dgd", "hebbian")


@dataclasses.dataclass(frozen=True, kw_only=True)
class WindowedMatrixMemory(FastLevel):
  """A matrix memory whose proximal retention averages its last ``window`` states.

  Attributes:
    key_dim, value_dim: d_k and d_v of each state M [d_v, d_k].
    window: number of past states ``c`` the retention looks at (>= 1).

  Supported options of `FastLevel`: rule in (dgd, hebbian), semantics exact, no momentum,
  read_at post or pre, first_order False, retention_order before (the gate scales the
  proximal centre), implementation sequential or auto (which resolves to sequential). Other
  values raise at construction.
  """
  key_dim: int
  value_dim: int
  window: int = 4
  retention_order: str = "before"
  implementation: str = "sequential"

  def __post_init__(self):
    super().__post_init__()
    owner = type(self).__name__
    if not isinstance(self.window, int) or isinstance(self.window, bool) or self.window < 1:
      raise ValueError(f"{owner}: window must be a positive int, got window={self.window!r}")
    if self.rule not in WINDOWED_RULES:
      raise ValueError(f"{owner}: rule={self.rule!r} has no exact windowed argmin here; "
                       f"choose one of {WINDOWED_RULES}")
    for name, bad in (("semantics", self.semantics != "exact"), ("momentum", self.momentum),
                      ("read_at", self.read_at not in ("post", "pre")),
                      ("first_order", self.first_order),
                      ("retention_order", self.retention_order != "before"),
                      ("implementation", self.implementation == "chunked")):
      if bad:
        raise ValueError(f"{owner}: {name}={getattr(self, name)!r} is not supported (exact "
                         "semantics, no momentum, read_at post/pre, first_order=False, "
                         "retention_order='before', sequential implementation)")

  @property
  def d_in(self) -> int:
    return self.key_dim

  @property
  def d_out(self) -> int:
    return self.value_dim

  @property
  def has_chunked(self) -> bool:
    return False

  def init_params(self, rng: jax.Array, head_shape: tuple[int, ...] = (), scale: float = 0.0,
                  dtype=jnp.float32) -> MatrixMemoryParams:
    """Initial state scale * N(0, 1/d_k), as `MatrixMemory.init_params`."""
    shape = tuple(head_shape) + (self.value_dim, self.key_dim)
    init = scale * jax.random.normal(rng, shape, dtype) / jnp.sqrt(self.key_dim).astype(dtype)
    return MatrixMemoryParams(init)

  def _weight_rank(self, x) -> int:
    return 3

  def _initial_weights(self, params: MatrixMemoryParams):
    init = params.initial
    if init.ndim < 2 or init.shape[-2:] != (self.value_dim, self.key_dim):
      raise ValueError(f"{type(self).__name__}: params.initial has shape {init.shape}, expected "
                       f"[*heads, {self.value_dim}, {self.key_dim}]")
    return jnp.broadcast_to(init[..., None, :, :],
                            init.shape[:-2] + (self.window,) + init.shape[-2:])

  def _read_weights(self, window_CxVxK, queries_TxK):
    return queries_TxK @ window_CxVxK[-1].T

  def _token(self, carry, x):
    window_CxVxK, s, anchor = carry
    k, v, lr, erase, a = x["k"], x["v"], x["lr"], x["erase"], x["alpha"]
    center_VxK = a * jnp.mean(window_CxVxK, axis=0)
    new_VxK = center_VxK - erase * jnp.outer(center_VxK @ k, k) + lr * jnp.outer(v, k)
    out = None
    if "q" in x:
      read_from = new_VxK if self.read_at == "post" else window_CxVxK[-1]
      out = read_from @ x["q"]
    window_CxVxK = jnp.concatenate([window_CxVxK[1:], new_VxK[None]], axis=0)
    return out, (window_CxVxK, s, anchor)
