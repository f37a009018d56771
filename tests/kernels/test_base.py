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
"""Shared helpers of the kernel tests: tolerances, comparisons, cross-lowering."""

import jax
import jax.numpy as jnp
import numpy as np

# Relative (to the largest reference entry) error allowed per operand dtype: float32 kernels
# differ from XLA by summation order only; bf16 operands are rounded before the f32 maths.
RTOL = {jnp.dtype(jnp.float32): 1e-5, jnp.dtype(jnp.bfloat16): 1e-2,
        jnp.dtype(jnp.float64): 1e-12}


def rtol_for(*dtypes) -> float:
  return max(RTOL[jnp.dtype(d)] for d in dtypes)


def assert_close(actual, expected, rtol, name=""):
  """max |actual - expected| <= rtol * max |expected| (and everything finite)."""
  a = np.asarray(jnp.asarray(actual, jnp.float32) if actual.dtype == jnp.bfloat16 else actual)
  e = np.asarray(jnp.asarray(expected, jnp.float32) if expected.dtype == jnp.bfloat16
                 else expected)
  assert a.shape == e.shape, (name, a.shape, e.shape)
  assert np.all(np.isfinite(a)), f"{name}: non-finite entries (unwritten block?)"
  scale = max(float(np.max(np.abs(e))), 1e-30)
  err = float(np.max(np.abs(a.astype(np.float64) - e.astype(np.float64))))
  assert err <= rtol * scale, f"{name}: max error {err:.3e} > {rtol:.1e} * {scale:.3e}"


def assert_tree_close(actual, expected, rtol, name=""):
  flat_a, tree_a = jax.tree.flatten(actual)
  flat_e, tree_e = jax.tree.flatten(expected)
  assert tree_a == tree_e, (name, tree_a, tree_e)
  for i, (a, e) in enumerate(zip(flat_a, flat_e, strict=True)):
    assert_close(a, e, rtol, f"{name}[{i}]")


# The GPU that cross-lowering targets from a host without one: compute capability 9.0, what
# jax < 0.11 assumed when no GPU was attached; newer jax asks for it through an abstract device.
CROSS_LOWERING_GPU = "NVIDIA H100"


def lower_for(fn, args, platform: str) -> str:
  """Runs the real Mosaic ("tpu") or Triton ("cuda") lowering of jit(fn) on this host."""
  if platform == "cuda":
    device = jax.sharding.AbstractDevice(CROSS_LOWERING_GPU, None, "cuda")
    mesh = jax.sharding.AbstractMesh((1,), ("x",), (jax.sharding.AxisType.Auto,),
                                     abstract_device=device)
    with jax.sharding.use_abstract_mesh(mesh):
      return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()
  lowered = jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,))
  return lowered.as_text()


def value_and_vjp(fn, args, cotangent_seed=0):
  """(outputs, gradients of a random linear functional of the outputs) in one program."""
  def run(*args):
    out, vjp = jax.vjp(fn, *args)
    leaves, tree = jax.tree.flatten(out)
    keys = jax.random.split(jax.random.key(cotangent_seed), len(leaves))
    cts = [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    return out, vjp(jax.tree.unflatten(tree, cts))
  return jax.jit(run)(*args)
