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
"""Tests of the Newton-Schulz reference `nl_jax.optim.orthogonalize`."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import _muon as optax_muon

from nl_jax import optim
from nl_jax.optim import newton_schulz as ns


def _with_singular_values(key, m, n, svals):
  """A random (m, n) matrix whose singular values are exactly `svals`."""
  k1, k2 = jax.random.split(key)
  r = min(m, n)
  u, _ = jnp.linalg.qr(jax.random.normal(k1, (m, r)))
  v, _ = jnp.linalg.qr(jax.random.normal(k2, (n, r)))
  return (u * svals) @ v.T


def _scalar_map(s, coeffs):
  for a, b, c in coeffs:
    s = a * s + b * s**3 + c * s**5
  return s


def test_quintic_band_from_polynomial():
  """Singular values land in the band the quintic polynomial promises.

  The iteration acts on every normalised singular value through p(s) = a s + b s^3 + c s^5. For
  an (m, n) input with condition number kappa and r = min(m, n), the normalised singular values
  lie in [1 / (kappa sqrt(r)), 1]; iterating p 5 times on a fine grid of that interval gives the
  band [lo, hi] the output singular values must fall in.
  """
  coeffs = ns.resolve_coeffs("muon", 5)
  m, n, kappa = 64, 32, 4.0
  grid = np.linspace(1.0 / (kappa * np.sqrt(n)), 1.0, 20001)
  image = _scalar_map(grid, coeffs)
  lo, hi = image.min(), image.max()
  assert 0.6 < lo < 0.75 and 1.05 < hi < 1.2, (lo, hi)  # Muon's well-known ~[0.68, 1.13].
  svals = jnp.linspace(1.0, kappa, n)
  x = _with_singular_values(jax.random.key(0), m, n, svals)
  out = optim.orthogonalize(x)
  s_out = np.sort(np.linalg.svd(np.asarray(out), compute_uv=False))
  assert s_out.min() >= lo - 1e-4 and s_out.max() <= hi + 1e-4, (s_out.min(), s_out.max())
  # Stronger: each singular value follows the scalar map exactly (up to float32 error).
  s_in = np.sort(np.asarray(svals)) / (float(jnp.linalg.norm(x)) + 1e-7)
  np.testing.assert_allclose(s_out, np.sort(_scalar_map(s_in, coeffs)), atol=2e-4)


def test_cubic_preset_converges_to_orthogonal():
  assert ns.NS_PRESETS["cubic"] == optim.cubic_coeffs(0.25) == (1.5, -0.5, 0.0)
  x = _with_singular_values(jax.random.key(1), 24, 16, jnp.linspace(1.0, 3.0, 16))
  out = optim.orthogonalize(x, ns_coeffs="cubic", ns_steps=40)
  s = np.linalg.svd(np.asarray(out), compute_uv=False)
  np.testing.assert_allclose(s, 1.0, atol=1e-4)
  u, _, vt = np.linalg.svd(np.asarray(x), full_matrices=False)
  np.testing.assert_allclose(out, u @ vt, atol=1e-4)


def test_coefficient_schedule():
  sched = [(3.0, -3.2, 1.2), (2.0, -1.5, 0.5)]
  x = jax.random.normal(jax.random.key(2), (8, 12))
  xn = x / (jnp.linalg.norm(x) + 1e-7)

  def manual(steps):
    y = xn
    for a, b, c in steps:
      g = y @ y.T
      y = a * y + (b * g + c * g @ g) @ y
    return y

  np.testing.assert_allclose(optim.orthogonalize(x, sched), manual(sched), atol=1e-5)
  np.testing.assert_allclose(optim.orthogonalize(x, sched, ns_steps=4),
                             manual(sched + [sched[-1]] * 2), atol=1e-5)
  np.testing.assert_allclose(optim.orthogonalize(x, sched, ns_steps=1), manual(sched[:1]),
                             atol=1e-6)


def test_tall_wide_batched_agree():
  key = jax.random.key(3)
  x = jax.random.normal(key, (3, 24, 40))
  batched = optim.orthogonalize(x)
  for i in range(3):
    np.testing.assert_allclose(batched[i], optim.orthogonalize(x[i]), atol=1e-5)
    np.testing.assert_allclose(optim.orthogonalize(x[i].T), optim.orthogonalize(x[i]).T,
                               atol=1e-5)
  tall = optim.orthogonalize(jnp.swapaxes(x, 1, 2))
  np.testing.assert_allclose(tall, jnp.swapaxes(batched, 1, 2), atol=1e-5)


def test_dimension_numbers_batch_axis_in_the_middle():
  x = jax.random.normal(jax.random.key(4), (6, 3, 5))
  dn = optim.DimensionNumbers(reduction_axis=0, output_axis=2)
  out = optim.orthogonalize(x, dimension_numbers=dn)
  assert out.shape == x.shape
  for i in range(3):
    np.testing.assert_allclose(out[:, i, :], optim.orthogonalize(x[:, i, :]), atol=1e-5)
  # optax's MuonDimensionNumbers is accepted too, and flattened multi-axis matrices work.
  out2 = optim.orthogonalize(x, dimension_numbers=optax.contrib.MuonDimensionNumbers(0, 2))
  np.testing.assert_allclose(out, out2, atol=0)
  conv = jax.random.normal(jax.random.key(5), (3, 4, 8))
  dn = optim.DimensionNumbers(reduction_axis=(0, 1), output_axis=2)
  np.testing.assert_allclose(optim.orthogonalize(conv, dimension_numbers=dn),
                             optim.orthogonalize(conv.reshape(12, 8)).reshape(3, 4, 8), atol=1e-5)


def test_matches_optax_newton_schulz():
  x = jax.random.normal(jax.random.key(6), (16, 48))
  ref = optax_muon.orthogonalize_via_newton_schulz(x, jnp.asarray(ns.MUON_COEFFS), 5, eps=1e-7)
  np.testing.assert_allclose(optim.orthogonalize(x), ref, atol=1e-5)


def test_bf16_in_bf16_out():
  x = jax.random.normal(jax.random.key(7), (32, 48))
  out16 = optim.orthogonalize(x.astype(jnp.bfloat16))
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_allclose(out16.astype(jnp.float32), optim.orthogonalize(x), atol=2e-2)


def test_many_equals_individual_and_jit():
  key = jax.random.key(8)
  xs = [jax.random.normal(jax.random.fold_in(key, i), s)
        for i, s in enumerate([(16, 32), (32, 16), (16, 32), (8, 8), (2, 8, 8)])]
  many = jax.jit(optim.orthogonalize_many)(xs)
  for x, y in zip(xs, many, strict=True):
    assert y.shape == x.shape
    np.testing.assert_allclose(y, optim.orthogonalize(x), atol=1e-5)


def test_zero_input_stays_zero():
  out = optim.orthogonalize(jnp.zeros((4, 6)))
  assert bool(jnp.all(out == 0))


def test_implementation_keyword():
  """"auto" is XLA on CPU; "pallas" forces the kernel (TPU kernel in interpret mode here)."""
  x = jax.random.normal(jax.random.key(9), (2, 8, 16))
  want = optim.orthogonalize(x, implementation="xla")
  for impl in ("auto", None):
    np.testing.assert_array_equal(optim.orthogonalize(x, implementation=impl), want)
  np.testing.assert_allclose(optim.orthogonalize(x, implementation="pallas"), want, atol=1e-5)
  np.testing.assert_allclose(optim.orthogonalize(jnp.swapaxes(x, 1, 2), implementation="pallas"),
                             jnp.swapaxes(want, 1, 2), atol=1e-5)
  with pytest.raises(ValueError, match="implementation"):
    optim.orthogonalize(x, implementation="triton")


@pytest.mark.parametrize("kwargs,match", [
    (dict(ns_steps=0), "ns_steps"),
    (dict(eps=0.0), "eps"),
    (dict(ns_coeffs="quartic"), "preset"),
    (dict(ns_coeffs=(1.0, 2.0)), "ns_coeffs"),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optim.orthogonalize(jnp.ones((4, 4)), **kwargs)


def test_rank_one_input_rejected():
  with pytest.raises(ValueError, match="rank"):
    optim.orthogonalize(jnp.ones((4,)))
