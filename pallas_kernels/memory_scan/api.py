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
"""`memory_scan`: the matrix-memory scan with backend dispatch (TPU / GPU kernels, XLA).

Usage (the Titans layer with ``memory_kernel="auto"``)::

    out = memory_scan(keys_BxHxTxK, values_BxHxTxV, queries_BxHxTxK, eta_BxHxT, m0_BxHxVxK,
                      alpha=alpha_BxHxT, rule="dgd")
    y_BxHxTxV, m_BxHxVxK = out.outputs, out.state
"""

import dataclasses
import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels.memory_scan import reference
from pallas_kernels.memory_scan.config import MemoryScanConfig

logger = logging.getLogger(__name__)

IMPLEMENTATIONS = (None, "xla", "tpu", "gpu")
_GPU_BLOCK_V = 64  # default value block of the GPU kernel (see MemoryScanConfig.block_v)
_RULES = ("dgd", "paper_l2", "gd", "hebbian")


class MemoryScanOutput(NamedTuple):
  """Result of `memory_scan`.

  Attributes:
    outputs: [*batch, T, d_v] reads M_t q_t after each token's write (dtype of queries), or
      None when queries is None.
    state: [*batch, d_v, d_k] final memory (float32; float64 under x64 with f64 inputs).
    momentum: [*batch, d_v, d_k] final momentum, or None without momentum.
  """
  outputs: jax.Array | None
  state: jax.Array
  momentum: jax.Array | None


def _check_shape(name, x, want):
  if x is None:
    return
  if tuple(x.shape) != tuple(want):
    raise ValueError(f"memory_scan: {name} has shape {tuple(x.shape)}, expected {tuple(want)}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"memory_scan: {name} must be floating point, got {x.dtype}")


def _validate(keys, values, queries, eta, initial_state, alpha, momentum, initial_momentum,
              reset, rule, retention_order, semantics, implementation, config):
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"memory_scan: implementation={implementation!r} is not one of "
                     f"{IMPLEMENTATIONS}")
  if rule not in _RULES:
    raise ValueError(f"memory_scan: rule={rule!r} is not one of {_RULES}")
  if retention_order not in ("after", "before"):
    raise ValueError(f"memory_scan: retention_order={retention_order!r} is not 'after' or "
                     "'before'")
  if semantics not in ("exact", "anchored"):
    raise ValueError(f"memory_scan: semantics={semantics!r} is not 'exact' or 'anchored'")
  if config is not None and not isinstance(config, MemoryScanConfig):
    raise ValueError(f"memory_scan: config must be a MemoryScanConfig, got {type(config).__name__}")
  if keys.ndim < 2:
    raise ValueError(f"memory_scan: keys must have shape [*batch, T, d_k], got {keys.shape}")
  batch, t, dk = tuple(keys.shape[:-2]), keys.shape[-2], keys.shape[-1]
  if values.ndim != keys.ndim or tuple(values.shape[:-1]) != batch + (t,):
    raise ValueError(f"memory_scan: values has shape {tuple(values.shape)}, expected "
                     f"{batch + (t, 'd_v')} (batch and T of keys {tuple(keys.shape)})")
  dv = values.shape[-1]
  _check_shape("keys", keys, keys.shape)
  _check_shape("values", values, values.shape)
  _check_shape("queries", queries, batch + (t, dk))
  for name, x in (("eta", eta), ("alpha", alpha), ("momentum", momentum)):
    _check_shape(name, x, batch + (t,))
  _check_shape("initial_state", initial_state, batch + (dv, dk))
  _check_shape("initial_momentum", initial_momentum, batch + (dv, dk))
  if initial_momentum is not None and momentum is None:
    raise ValueError("memory_scan: initial_momentum was given without momentum (the per-token "
                     "momentum decay); pass momentum or drop initial_momentum")
  if reset is not None and tuple(reset.shape) != batch + (t,):
    raise ValueError(f"memory_scan: reset has shape {tuple(reset.shape)}, expected "
                     f"{batch + (t,)}")
  return batch, t, dk, dv


def current_platform() -> str:
  """The default backend ("cpu", "gpu", "tpu"); a function so tests can pretend."""
  return jax.default_backend()


def _kernel_problem(backend, *, dk, dv, t, state_dtype, queries, semantics, reset,
                    config) -> str | None:
  """Why the `backend` kernel cannot run this call, or None when it can."""
  if semantics != "exact":
    return f"semantics={semantics!r} has no kernel (only 'exact')"
  if reset is not None:
    return "memory resets are handled by nl_jax.memory.MatrixMemory.scan, not the kernel"
  if queries is None:
    return "write-only scans (queries=None) use the reference"
  if t == 0:
    return "empty sequence"
  if config.block_v is not None and dv % config.block_v:
    return f"block_v={config.block_v} does not divide d_v={dv}"
  bv = config.value_block(dv)
  if backend == "tpu" and bv != dv and bv % 128:
    return f"TPU blocks need block_v % 128 == 0 or block_v == d_v (block_v={bv}, d_v={dv})"
  if backend == "gpu":
    for name, d in (("d_k", dk), ("block_v", bv), ("chunk_size", config.chunk_size)):
      if d < 16 or d & (d - 1):
        return f"Triton needs {name} to be a power of two >= 16, got {d}"
  if not config.interpret:
    platform = current_platform()
    if platform != backend:
      return (f"the {backend} kernel needs a {backend} device (default backend is {platform!r});"
              " set MemoryScanConfig(interpret=True) to run it in interpret mode")
    if state_dtype == jnp.float64:
      return "float64 state is not supported on accelerators"
  return None


def memory_scan(keys: jax.Array, values: jax.Array, queries: jax.Array | None, eta: jax.Array,
                initial_state: jax.Array, *, alpha: jax.Array | None = None,
                momentum: jax.Array | None = None, initial_momentum: jax.Array | None = None,
                rule: str = "dgd", retention_order: str = "after", semantics: str = "exact",
                reset: jax.Array | None = None, implementation: str | None = None,
                config: MemoryScanConfig | None = None) -> MemoryScanOutput:
  """Scans a matrix memory over a sequence (chunk-parallel, differentiable).

  Equals ``nl_jax.memory.MatrixMemory(key_dim=d_k, value_dim=d_v, rule=rule,
  momentum=momentum is not None, retention_order=retention_order, semantics=semantics,
  read_at="post").scan`` from the state (initial_state, initial_momentum), for any chunk size.

  Args:
    keys: [*batch, T, d_k] keys (e.g. [B, H, T, d_k]); bf16 or f32.
    values: [*batch, T, d_v] values written.
    queries: [*batch, T, d_k] reads, or None to only write.
    eta: [*batch, T] inner learning rate (> 0).
    initial_state: [*batch, d_v, d_k] memory before the first token (cast to float32).
    alpha: [*batch, T] retention in [0, 1], or None (= 1).
    momentum: [*batch, T] momentum decay in [0, 1), or None for no momentum.
    initial_momentum: [*batch, d_v, d_k] momentum state; zeros when None (momentum only).
    rule: "dgd", "gd", "hebbian" or "paper_l2" (see nl_jax.memory.rule_coefficients).
    retention_order: "after" or "before" (see nl_jax.memory.FastLevel).
    semantics: "exact"; "anchored" runs nl_jax.memory.MatrixMemory.scan (no kernel), starting
      at a chunk boundary.
    reset: [*batch, T] bool, True = back to initial_state before this token; runs
      MatrixMemory.scan (exact on chunk starts, see nl_jax.memory).
    implementation: None picks the kernel of the default backend ("tpu" on TPU, "gpu" on GPU,
      else "xla") and falls back to "xla" where the kernel does not apply (the reason is
      logged at debug level); "xla" is the jnp reference; "tpu" / "gpu" force a kernel and
      raise ValueError where it does not apply.
    config: MemoryScanConfig (chunk size, value block, interpret); default MemoryScanConfig().

  Returns:
    MemoryScanOutput(outputs, state, momentum).

  Raises:
    ValueError: bad shapes, dtypes or options (before any compilation), or a forced kernel
      that cannot run this call.
  """
  config = MemoryScanConfig() if config is None else config
  batch, t, dk, dv = _validate(keys, values, queries, eta, initial_state, alpha, momentum,
                               initial_momentum, reset, rule, retention_order, semantics,
                               implementation, config)
  state_dtype = jnp.promote_types(initial_state.dtype, jnp.float32)
  if momentum is not None and initial_momentum is None:
    initial_momentum = jnp.zeros(initial_state.shape, state_dtype)
  backend = implementation
  if implementation is None:
    backend = {"tpu": "tpu", "gpu": "gpu"}.get(current_platform(), "xla")
  gpu_split = dv > _GPU_BLOCK_V and not dv % _GPU_BLOCK_V
  if backend == "gpu" and config.block_v is None and gpu_split:
    # The state block lives in registers on GPU: 64 x 128 float32 per program at most.
    config = dataclasses.replace(config, block_v=_GPU_BLOCK_V)
  if backend != "xla":
    problem = _kernel_problem(backend, dk=dk, dv=dv, t=t, state_dtype=state_dtype,
                              queries=queries, semantics=semantics, reset=reset, config=config)
    if problem is not None:
      if implementation is not None:
        raise ValueError(f"memory_scan: implementation={implementation!r} cannot run: {problem}")
      logger.debug("memory_scan: falling back to the XLA reference: %s", problem)
      backend = "xla"
  if semantics != "exact" or reset is not None or queries is None:
    return _memory_core_scan(keys, values, queries, eta, initial_state, alpha, momentum,
                             initial_momentum, reset, rule, retention_order, semantics, config,
                             state_dtype)
  n = 1
  for b in batch:
    n *= b
  flat = lambda x, *tail: None if x is None else x.reshape((n,) + tail)  # noqa: E731
  sc = reference.pack_scalars(flat(keys, t, dk), flat(eta, t), flat(alpha, t),
                              flat(momentum, t), rule, retention_order).astype(state_dtype)
  args = (flat(keys, t, dk), flat(values, t, dv), flat(queries, t, dk), sc,
          flat(initial_state, dv, dk).astype(state_dtype),
          None if momentum is None else flat(initial_momentum, dv, dk).astype(state_dtype))
  if backend == "xla":
    y, m, s = reference.reference_core(*args, chunk_size=config.chunk_size)
  elif backend == "tpu":
    from pallas_kernels.memory_scan import tpu
    y, m, s = tpu.scan_core(*args, config)
  else:
    from pallas_kernels.memory_scan import gpu
    y, m, s = gpu.scan_core(*args, config)
  y = y.reshape(batch + (t, dv)).astype(queries.dtype)
  m = m.reshape(batch + (dv, dk))
  s = None if s is None else s.reshape(batch + (dv, dk))
  return MemoryScanOutput(y, m, s)


def _memory_core_scan(keys, values, queries, eta, initial_state, alpha, momentum,
                      initial_momentum, reset, rule, retention_order, semantics, config,
                      state_dtype):
  """Options without a kernel: nl_jax.memory.MatrixMemory.scan itself."""
  from nl_jax.memory import MatrixMemory, MatrixMemoryParams, MemoryInputs, MemoryState
  dv, dk = initial_state.shape[-2:]
  batch = tuple(initial_state.shape[:-2])
  mem = MatrixMemory(key_dim=dk, value_dim=dv, rule=rule, semantics=semantics,
                     chunk_size=config.chunk_size, momentum=momentum is not None,
                     retention_order=retention_order, read_at="post", implementation="chunked")
  fields = dict(keys=keys, values=values, eta=eta, queries=queries, alpha=alpha,
                momentum=momentum)
  if reset is not None:
    if "reset" not in MemoryInputs._fields:
      raise ValueError("memory_scan: reset needs nl_jax.memory.MemoryInputs.reset, which this "
                       "version of nl_jax.memory does not have")
    fields["reset"] = reset
  m0 = initial_state.astype(state_dtype)
  state = MemoryState(m0, None if momentum is None else initial_momentum.astype(state_dtype),
                      m0 if semantics == "anchored" else None, jnp.zeros(batch, jnp.int32))
  # Resets return to initial_state: it plays the meta-learned initial weights here.
  outputs, new = mem.scan(MatrixMemoryParams(initial_state), state, MemoryInputs(**fields))
  return MemoryScanOutput(outputs, new.memory, new.momentum)
