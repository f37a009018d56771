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
"""experiments/matmul_flops.py: the FLOPs it counts, by hand, for each construct it walks."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "matmul_flops.py"
_spec = importlib.util.spec_from_file_location("matmul_flops", _PATH)
mf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mf)

X = jax.ShapeDtypeStruct((3, 4), jnp.float32)
W = jax.ShapeDtypeStruct((4, 5), jnp.float32)
DOT = 2 * 3 * 4 * 5  # one [3, 4] @ [4, 5]


def test_one_dot_and_a_batched_einsum():
  assert mf.matmul_flops(jnp.dot, X, W) == DOT
  a = jax.ShapeDtypeStruct((7, 3, 4), jnp.float32)
  b = jax.ShapeDtypeStruct((7, 4, 5), jnp.float32)
  assert mf.matmul_flops(lambda a, b: jnp.einsum("bij,bjk->bik", a, b), a, b) == 7 * DOT


def test_a_scan_body_counts_once_per_step():
  def f(x, w):
    return jax.lax.scan(lambda c, _: (c, c @ w), x, None, length=11)[1]
  assert mf.matmul_flops(f, X, W) == 11 * DOT


def test_a_rematerialised_forward_counts_in_the_backward():
  v = jax.ShapeDtypeStruct((5, 2), jnp.float32)

  def loss(w, x, v):
    return jnp.sum(jnp.tanh(x @ w) @ v)

  plain = mf.matmul_flops(jax.grad(loss), W, X, v)
  remat = mf.matmul_flops(jax.grad(jax.checkpoint(loss)), W, X, v)
  # Forward: x @ w and h @ v; backward: dh = g v^T, dw = x^T dh (no dx, no dv).
  second = 2 * 3 * 5 * 2
  assert plain == 2 * DOT + 2 * second
  assert remat == plain + DOT  # x @ w again: tanh's derivative needs it (h @ v is not rerun)


def test_a_custom_backward_counts_as_written():
  @jax.custom_vjp
  def f(x, w):
    return x @ w

  def f_fwd(x, w):
    return x @ w, (x, w)

  def f_bwd(res, g):  # four dots, each of DOT FLOPs (autodiff's backward would take two)
    x, w = res
    return g @ w.T, x.T @ (g @ w.T @ w)

  f.defvjp(f_fwd, f_bwd)
  assert mf.matmul_flops(f, X, W) == DOT
  loss = lambda x, w: jnp.sum(f(x, w))  # noqa: E731
  assert mf.matmul_flops(jax.grad(loss, argnums=(0, 1)), X, W) == 5 * DOT


def test_cond_counts_the_cheapest_or_the_costliest_branch():
  def f(p, x, w):
    return jax.lax.cond(p, lambda: x @ w @ w.T @ w, lambda: x @ w)
  p = jax.ShapeDtypeStruct((), jnp.bool_)
  assert mf.matmul_flops(f, p, X, W) == DOT
  assert mf.matmul_flops(f, p, X, W, cond="max") == DOT + 2 * 3 * 5 * 4 + DOT
  with pytest.raises(ValueError, match="cond='mean'"):
    mf.matmul_flops(f, p, X, W, cond="mean")


def test_a_while_loop_is_refused_not_undercounted():
  def f(x, w):
    return jax.lax.while_loop(lambda c: jnp.sum(c) < 0, lambda c: c @ w @ w.T, x)
  with pytest.raises(ValueError, match="while loop .*test_matmul_flops.py"):
    mf.matmul_flops(f, X, W)


def test_a_convolution():
  x = jax.ShapeDtypeStruct((1, 2, 10), jnp.float32)  # N, C, W
  k = jax.ShapeDtypeStruct((3, 2, 4), jnp.float32)   # O, I, W
  conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1,), "VALID")  # noqa: E731
  assert mf.matmul_flops(conv, x, k) == 2 * (1 * 3 * 7) * (2 * 4)


def test_flops_by_source_line_sum_to_the_total():
  def f(x, w):
    h = x @ w
    return h @ w.T
  jaxpr = jax.make_jaxpr(f)(X, W)
  by_line = mf.matmul_flops_by_source(jaxpr)
  assert sum(by_line.values()) == mf.jaxpr_matmul_flops(jaxpr) == 2 * DOT
  assert len(by_line) == 2 and all(k.startswith("test_matmul_flops.py:") and ".f:" in k for k in by_line)
