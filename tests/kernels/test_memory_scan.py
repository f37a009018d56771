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
"""Memory-scan kernels vs the reference (interpret mode), cross-lowering, api dispatch."""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

from nl_jax.memory import MatrixMemory, MemoryInputs, MemoryState
from pallas_kernels.memory_scan import MemoryScanConfig, api, gpu, memory_scan, reference, tpu
from tests.kernels import test_base

KERNELS = {"tpu": tpu.scan_core, "gpu": gpu.scan_core}


def _inputs(seed, batch, t, dk, dv, momentum, dtype=jnp.float32):
  """Random inputs of `memory_scan` (numpy draws: no compilation)."""
  rng = np.random.default_rng(seed)
  shape = tuple(batch) + (t,)
  sigmoid = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
  f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
  x = dict(
      keys=jnp.asarray(rng.standard_normal(shape + (dk,)) / np.sqrt(dk), dtype),
      values=jnp.asarray(rng.standard_normal(shape + (dv,)), dtype),
      queries=jnp.asarray(rng.standard_normal(shape + (dk,)), dtype),
      eta=f32(sigmoid(rng.standard_normal(shape))),
      alpha=f32(sigmoid(2.0 + rng.standard_normal(shape))),
      initial_state=f32(0.3 * rng.standard_normal(tuple(batch) + (dv, dk))))
  if momentum:
    x["momentum"] = f32(0.9 * sigmoid(rng.standard_normal(shape)))
    x["initial_momentum"] = f32(0.1 * rng.standard_normal(tuple(batch) + (dv, dk)))
  return x


def _core_args(x, rule="dgd"):
  """Flattened core arguments (N = prod(batch)) from `_inputs`."""
  dv, dk = x["initial_state"].shape[-2:]
  t = x["keys"].shape[-2]
  n = x["eta"].size // t
  sc = reference.pack_scalars(x["keys"].reshape(n, t, dk), x["eta"].reshape(n, t),
                              x["alpha"].reshape(n, t),
                              x["momentum"].reshape(n, t) if "momentum" in x else None, rule)
  s0 = x.get("initial_momentum")
  return (x["keys"].reshape(n, t, dk), x["values"].reshape(n, t, dv),
          x["queries"].reshape(n, t, dk), sc, x["initial_state"].reshape(n, dv, dk),
          None if s0 is None else s0.reshape(n, dv, dk))


# ----- the reference -----

@pytest.mark.parametrize("rule,momentum,order", [
    ("dgd", True, "after"),
    pytest.param("gd", False, "after", marks=pytest.mark.slow),
    pytest.param("hebbian", True, "after", marks=pytest.mark.slow),
    pytest.param("gd", True, "before", marks=pytest.mark.slow),
    pytest.param("paper_l2", False, "after", marks=pytest.mark.slow)])
def test_reference_equals_matrix_memory_scan(rule, momentum, order):
  """api(implementation="xla") == MatrixMemory.scan (exact, post, chunked), fwd + grad."""
  x = _inputs(0, (2, 3), 21, 8, 6, momentum)
  c = 8
  mem = MatrixMemory(key_dim=8, value_dim=6, rule=rule, momentum=momentum, chunk_size=c,
                     semantics="exact", read_at="post", retention_order=order,
                     implementation="chunked")

  def via_memory(x):
    state = MemoryState(x["initial_state"], x.get("initial_momentum"), None,
                        jnp.zeros((2, 3), jnp.int32))
    inputs = MemoryInputs(x["keys"], x["values"], x["eta"], x["queries"], x["alpha"],
                          x.get("momentum"))
    y, new = mem.scan(None, state, inputs)
    return y, new.memory, new.momentum

  def via_api(x):
    out = memory_scan(rule=rule, retention_order=order, implementation="xla",
                      config=MemoryScanConfig(chunk_size=c), **x)
    return tuple(out)

  got = test_base.value_and_vjp(via_api, (x,))
  want = test_base.value_and_vjp(via_memory, (x,))
  test_base.assert_tree_close(got, want, 1e-5, f"{rule}/momentum={momentum}")


@pytest.mark.slow
def test_reference_core_equals_token_loop_float64():
  """The chunked reference is exact: float64, ragged T, momentum, forward and gradient."""
  with jax.enable_x64(True):
    x = _inputs(1, (2,), 19, 8, 4, True)
    x = jax.tree.map(lambda a: a.astype(jnp.float64), x)
    args = _core_args(x, "dgd")
    got = test_base.value_and_vjp(functools.partial(reference.reference_core, chunk_size=8),
                                  args)
    want = test_base.value_and_vjp(reference.sequential_core, args)
    test_base.assert_tree_close(got, want, 1e-12, "float64")


# ----- kernels in interpret mode -----

@functools.cache
def _reference_result(seed, t, dv, momentum, rule, chunk_size):
  x = _inputs(seed, (2,), t, 8, dv, momentum)
  args = _core_args(x, rule)
  return args, test_base.value_and_vjp(
      functools.partial(reference.reference_core, chunk_size=chunk_size), args)


@pytest.mark.parametrize("backend", sorted(KERNELS))
def test_kernel_matches_reference(backend):
  """Forward and every input gradient in f32; T=20, C=8: two chunks and a ragged tail,
  momentum, block_v=8 splits the 16 state rows in two (outputs NaN-poisoned, see below)."""
  args, want = _reference_result(2, 20, 16, True, "dgd", 8)
  cfg = MemoryScanConfig(chunk_size=8, block_v=8, interpret=True)
  got = test_base.value_and_vjp(functools.partial(KERNELS[backend], config=cfg), args)
  test_base.assert_tree_close(got, want, test_base.rtol_for(jnp.float32), backend)


@pytest.mark.slow
@pytest.mark.parametrize("backend", sorted(KERNELS))
@pytest.mark.parametrize("rule,momentum", [("dgd", False), ("hebbian", False), ("gd", True)])
def test_kernel_matches_reference_more_shapes(backend, rule, momentum):
  x = _inputs(3, (3,), 37, 16, 16, momentum)
  args = _core_args(x, rule)
  cfg = MemoryScanConfig(chunk_size=16, interpret=True)
  got = test_base.value_and_vjp(functools.partial(KERNELS[backend], config=cfg), args)
  want = test_base.value_and_vjp(functools.partial(reference.reference_core, chunk_size=16),
                                 args)
  test_base.assert_tree_close(got, want, test_base.rtol_for(jnp.float32), f"{backend}/{rule}")


@pytest.mark.parametrize("backend", sorted(KERNELS))
def test_bf16_operands_through_api(backend):
  """bf16 keys/values/queries, f32 state: the forced kernel (interpret) vs the XLA reference."""
  x = _inputs(4, (1, 2), 12, 16, 16, False, dtype=jnp.bfloat16)
  cfg = MemoryScanConfig(chunk_size=16, interpret=True)
  got = jax.jit(lambda x: memory_scan(implementation=backend, config=cfg, **x))(x)
  want = jax.jit(lambda x: memory_scan(implementation="xla", config=cfg, **x))(x)
  assert got.outputs.dtype == jnp.bfloat16 and got.state.dtype == jnp.float32
  test_base.assert_tree_close(tuple(got), tuple(want), test_base.rtol_for(jnp.bfloat16), backend)


def test_interpret_mode_poisons_unwritten_outputs():
  """The premise of the comparisons above: a block a kernel forgets to write comes back NaN."""
  def kernel(x_ref, o_ref):
    @pl.when(pl.program_id(0) == 0)
    def _():
      o_ref[...] = x_ref[...]

  out = pl.pallas_call(kernel, grid=(2,), in_specs=[pl.BlockSpec((8, 128), lambda i: (i, 0))],
                       out_specs=pl.BlockSpec((8, 128), lambda i: (i, 0)),
                       out_shape=jax.ShapeDtypeStruct((16, 128), jnp.float32),
                       interpret=True)(jnp.ones((16, 128)))
  assert bool(jnp.all(out[:8] == 1)) and bool(jnp.all(jnp.isnan(out[8:])))


# ----- cross-lowering (real Mosaic / Triton lowering on this CPU host) -----

@pytest.mark.parametrize("platform,block_v", [("tpu", None), ("cuda", 64)])
@pytest.mark.parametrize("momentum", [False, True])
def test_kernels_lower_for_hardware(platform, block_v, momentum):
  n, t, d = 2, 200, 128
  sd = jax.ShapeDtypeStruct
  bf = jnp.bfloat16
  args = (sd((n, t, d), bf), sd((n, t, d), bf), sd((n, t, d), bf),
          sd((n, t, reference.NUM_SCALARS), jnp.float32), sd((n, d, d), jnp.float32),
          sd((n, d, d), jnp.float32) if momentum else None)
  core = KERNELS["tpu" if platform == "tpu" else "gpu"]
  cfg = MemoryScanConfig(chunk_size=64, block_v=block_v)

  def loss(*a):
    y, m, s = core(*a, cfg)
    out = jnp.sum(y.astype(jnp.float32)) + jnp.sum(m)
    return out if s is None else out + jnp.sum(s)

  marker = "tpu_custom_call" if platform == "tpu" else "xla.gpu.triton"
  fwd = test_base.lower_for(lambda *a: core(*a, cfg), args, platform)
  bwd = test_base.lower_for(jax.grad(loss, argnums=(0, 1, 2, 3, 4)), args, platform)
  assert marker in fwd
  assert bwd.count(marker) >= 2  # forward (saving chunk states) and backward kernels


def test_tpu_rejects_narrow_value_blocks():
  """block_v=64 < 128 is not a legal TPU tile: the api says so instead of failing in Mosaic."""
  x = _inputs(5, (1,), 8, 128, 128, False)
  cfg = MemoryScanConfig(chunk_size=8, block_v=64, interpret=True)
  with pytest.raises(ValueError, match="block_v % 128"):
    memory_scan(implementation="tpu", config=cfg, **x)
  sd = jax.ShapeDtypeStruct
  args = (sd((1, 64, 128), jnp.float32),) * 3 + (sd((1, 64, 8), jnp.float32),
                                                 sd((1, 128, 128), jnp.float32), None)
  with pytest.raises(ValueError, match="divisible by 8 and 128"):
    test_base.lower_for(lambda *a: tpu.scan_core(*a, MemoryScanConfig(block_v=64)), args, "tpu")


# ----- api dispatch and validation -----

def test_auto_on_cpu_is_the_reference():
  x = _inputs(6, (2,), 9, 4, 4, False)
  cfg = MemoryScanConfig(chunk_size=8)
  got = memory_scan(config=cfg, **x)
  want = memory_scan(implementation="xla", config=cfg, **x)
  test_base.assert_tree_close(tuple(got), tuple(want), 0.0)


def test_fallback_is_logged_and_matches_matrix_memory(monkeypatch, caplog):
  """On a (pretend) accelerator, options and shapes without a kernel fall back with a reason."""
  monkeypatch.setattr(api, "current_platform", lambda: "tpu")
  x = _inputs(7, (2,), 11, 4, 4, False)
  cfg = MemoryScanConfig(chunk_size=8)
  with caplog.at_level(logging.DEBUG, logger=api.__name__):
    got = memory_scan(semantics="anchored", config=cfg, **x)
  assert "semantics='anchored' has no kernel" in caplog.text
  mem = MatrixMemory(key_dim=4, value_dim=4, semantics="anchored", chunk_size=8)
  m0 = x["initial_state"]
  y, new = mem.scan(None, MemoryState(m0, None, m0, jnp.zeros((2,), jnp.int32)),
                    MemoryInputs(x["keys"], x["values"], x["eta"], x["queries"], x["alpha"]))
  test_base.assert_tree_close((got.outputs, got.state), (y, new.memory), 1e-6)
  with pytest.raises(ValueError, match="implementation='tpu' cannot run: semantics"):
    memory_scan(semantics="anchored", implementation="tpu", config=cfg, **x)
  monkeypatch.setattr(api, "current_platform", lambda: "gpu")
  caplog.clear()
  with caplog.at_level(logging.DEBUG, logger=api.__name__):
    small = memory_scan(config=cfg, **x)  # d_k = 4: no Triton dot
  assert "Triton needs d_k to be a power of two >= 16" in caplog.text
  test_base.assert_tree_close(tuple(small), tuple(memory_scan(implementation="xla", config=cfg,
                                                             **x)), 0.0)


def test_forced_kernel_without_device_raises():
  x = _inputs(7, (1,), 8, 16, 16, False)
  with pytest.raises(ValueError, match="needs a gpu device.*interpret=True"):
    memory_scan(implementation="gpu", config=MemoryScanConfig(chunk_size=16), **x)


def test_reset_falls_back_to_matrix_memory():
  """Resets at chunk starts: the api runs MatrixMemory.scan, resetting to initial_state."""
  x = _inputs(10, (2,), 16, 4, 4, False)
  reset = jnp.zeros((2, 16), bool).at[1, 8].set(True)
  out = memory_scan(reset=reset, config=MemoryScanConfig(chunk_size=8), **x)
  tail = {k: (v[1:, 8:] if k not in ("initial_state",) else v[1:]) for k, v in x.items()}
  again = memory_scan(config=MemoryScanConfig(chunk_size=8), **tail)  # fresh start at token 8
  test_base.assert_tree_close((out.outputs[1:, 8:], out.state[1:]),
                              (again.outputs, again.state), 1e-6)


def test_write_only_scan():
  x = _inputs(8, (2,), 10, 4, 4, True)
  x["queries"] = None
  out = memory_scan(config=MemoryScanConfig(chunk_size=8), **x)
  full = memory_scan(config=MemoryScanConfig(chunk_size=8), **_inputs(8, (2,), 10, 4, 4, True))
  assert out.outputs is None
  test_base.assert_tree_close((out.state, out.momentum), (full.state, full.momentum), 1e-6)


@pytest.mark.parametrize("change,match", [
    (dict(values=jnp.ones((2, 9, 4, 1))), "values has shape"),
    (dict(eta=jnp.ones((2, 8))), "eta has shape"),
    (dict(initial_state=jnp.ones((2, 4, 5))), "initial_state has shape"),
    (dict(queries=jnp.ones((2, 9, 3))), "queries has shape"),
    (dict(initial_momentum=jnp.ones((2, 4, 4))), "initial_momentum was given without"),
    (dict(rule="oja"), "rule='oja'"),
    (dict(implementation="cuda"), "implementation='cuda'"),
    (dict(semantics="lazy"), "semantics='lazy'"),
    (dict(eta=jnp.ones((2, 9), jnp.int32)), "eta must be floating"),
])
def test_bad_inputs_raise(change, match):
  x = _inputs(9, (2,), 9, 4, 4, False)
  kwargs = {**x, **change}
  with pytest.raises(ValueError, match=match):
    memory_scan(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(chunk_size=12), "power of two"), (dict(chunk_size=4), "power of two"),
    (dict(block_v=0), "block_v"), (dict(num_warps=0), "num_warps")])
def test_bad_config_raises(kwargs, match):
  with pytest.raises(ValueError, match=match):
    MemoryScanConfig(**kwargs)


def test_gpu_default_value_block(monkeypatch):
  """On GPU the api splits d_v = 128 into two register-sized blocks of 64 (grid_y = 2)."""
  monkeypatch.setattr(api, "current_platform", lambda: "gpu")
  sd = jax.ShapeDtypeStruct
  b, t, d = (1, 2), 128, 128
  args = (sd(b + (t, d), jnp.bfloat16),) * 3 + (sd(b + (t,), jnp.float32),
                                                sd(b + (d, d), jnp.float32))
  text = test_base.lower_for(lambda k, v, q, eta, m0: memory_scan(k, v, q, eta, m0).outputs,
                             args, "cuda")
  assert "xla.gpu.triton" in text and "grid_x = 2 : i32, grid_y = 2 : i32" in text
