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
"""`newton_schulz`: all Newton-Schulz steps on a stack of wide matrices, with dispatch."""

import logging

import jax
import jax.numpy as jnp

from pallas_kernels.newton_schulz import reference
from pallas_kernels.newton_schulz.config import NewtonSchulzConfig

logger = logging.getLogger(__name__)

IMPLEMENTATIONS = (None, "xla", "tpu", "gpu")


def current_platform() -> str:
  """The default backend; a function so tests can pretend to be on an accelerator."""
  return jax.default_backend()


def kernel_problem(backend: str, m: int, n: int, config: NewtonSchulzConfig) -> str | None:
  """Why the `backend` kernel cannot run an (m, n) stack, or None when it can."""
  if m > n:
    return f"the kernels take wide matrices (m <= n), got ({m}, {n})"
  if backend == "tpu":
    from pallas_kernels.newton_schulz import tpu
    fits = tpu.fused_vmem_bytes(m, n) <= config.fused_vmem_bytes and tpu.fused_tile(m, config)
    if not fits and tpu.tiled_blocks(m, n, config) is None:
      return (f"({m}, {n}) neither fits the fused kernel (fused_vmem_bytes="
              f"{config.fused_vmem_bytes}) nor tiles with tile={config.tile}, "
              f"block_k={config.block_k}")
  else:
    from pallas_kernels.newton_schulz import gpu
    if not gpu.fused_applies(m, n, config) and gpu.tiled_blocks(m, n, config) is None:
      return (f"({m}, {n}) is neither small enough for the fused kernel nor tiles with "
              f"gpu_tile={config.gpu_tile}, gpu_block_k={config.gpu_block_k}")
  if not config.interpret and current_platform() != backend:
    return (f"the {backend} kernel needs a {backend} device (default backend is "
            f"{current_platform()!r}); set NewtonSchulzConfig(interpret=True) for interpret mode")
  return None


def newton_schulz(x_BxMxN: jax.Array, coeffs: tuple[tuple[float, float, float], ...],
                  eps: float, *, implementation: str | None = None,
                  config: NewtonSchulzConfig | None = None) -> jax.Array:
  """Runs every step of the iteration (reference.py) on a float32 stack ``[B, m, n]``, m <= n.

  Args:
    x_BxMxN: float32 stack of wide matrices.
    coeffs: one static ``(a, b, c)`` per step.
    eps: added to the Frobenius norm.
    implementation: None (the kernel of the default backend where it applies, else XLA; the
      reason is logged at debug level), "xla", or "tpu" / "gpu" (forced; ValueError when the
      kernel cannot run).
    config: NewtonSchulzConfig; default NewtonSchulzConfig().

  Returns:
    The float32 stack after the last step.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"newton_schulz: implementation={implementation!r} is not one of "
                     f"{IMPLEMENTATIONS}")
  if x_BxMxN.ndim != 3:
    raise ValueError(f"newton_schulz: x must be a [batch, m, n] stack, got {x_BxMxN.shape}")
  config = NewtonSchulzConfig() if config is None else config
  x = x_BxMxN.astype(jnp.float32)
  coeffs = tuple(tuple(float(v) for v in c) for c in coeffs)
  _, m, n = x.shape
  backend = implementation
  if implementation is None:
    backend = {"tpu": "tpu", "gpu": "gpu"}.get(current_platform(), "xla")
  if backend != "xla":
    problem = kernel_problem(backend, m, n, config)
    if problem is not None:
      if implementation is not None:
        raise ValueError(f"newton_schulz: implementation={implementation!r} cannot run: "
                         f"{problem}")
      logger.debug("newton_schulz: falling back to XLA: %s", problem)
      backend = "xla"
  if backend == "xla":
    return reference.newton_schulz_reference(x, coeffs, eps)
  if backend == "tpu":
    from pallas_kernels.newton_schulz import tpu
    return tpu.newton_schulz(x, coeffs, eps, config)
  from pallas_kernels.newton_schulz import gpu
  return gpu.newton_schulz(x, coeffs, eps, config)
