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
"""Newton-Schulz kernels vs the reference (interpret mode), cross-lowering, api dispatch."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nl_jax.optim.newton_schulz import resolve_coeffs
from pallas_kernels.newton_schulz import NewtonSchulzConfig, api, gpu, newton_schulz, tpu
from pallas_kernels.newton_schulz.reference import newton_schulz_reference
from tests.kernels import test_base

# A quintic and a cubic (c = 0) step: both branches of every kernel.
COEFFS = (resolve_coeffs("muon", 1)[0], (1.5, -0.5, 0.0))
EPS = 1e-7
KERNELS = {"tpu": tpu.newton_schulz, "gpu": gpu.newton_schulz}

CASES = {
    # tile 8 < m = 16: the fused TPU kernel computes the lower 2x2 tile triangle and mirrors.
    "tpu_fused": ("tpu", (2, 16, 24), NewtonSchulzConfig(tile=8, interpret=True)),
    "tpu_tiled": ("tpu", (2, 16, 32), NewtonSchulzConfig(tile=8, block_k=8, fused_vmem_bytes=0,
                                                         interpret=True)),
    "gpu_fused": ("gpu", (2, 16, 32), NewtonSchulzConfig(interpret=True)),
    "gpu_tiled": ("gpu", (1, 32, 48), NewtonSchulzConfig(gpu_tile=16, gpu_block_k=16,
                                                         gpu_fused_max_elements=0,
                                                         interpret=True)),
}


def _stack(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_matches_reference(case):
  backend, shape, cfg = CASES[case]
  x = _stack(0, shape)
  got = test_base.value_and_vjp(lambda x: KERNELS[backend](x, COEFFS, EPS, cfg), (x,))
  want = test_base.value_and_vjp(lambda x: newton_schulz_reference(x, COEFFS, EPS), (x,))
  test_base.assert_tree_close(got, want, test_base.rtol_for(jnp.float32), case)


@pytest.mark.parametrize("platform,shape,cfg,marker", [
    ("tpu", (2, 1024, 1024), NewtonSchulzConfig(), "newton_schulz_fused"),
    ("tpu", (1, 4096, 4096), NewtonSchulzConfig(), "newton_schulz_sym_gram"),
    ("cuda", (4, 64, 128), NewtonSchulzConfig(gpu_fused_max_elements=64 * 128),
     "newton_schulz_fused"),
    ("cuda", (64, 768, 768), NewtonSchulzConfig(), "newton_schulz_sym_gram"),
])
def test_kernels_lower_for_hardware(platform, shape, cfg, marker):
  """The fused and tiled paths at the benchmark shapes pass the real Mosaic / Triton lowering."""
  coeffs = resolve_coeffs("muon", 5)
  fn = KERNELS["tpu" if platform == "tpu" else "gpu"]
  text = test_base.lower_for(lambda x: fn(x, coeffs, EPS, cfg),
                             (jax.ShapeDtypeStruct(shape, jnp.float32),), platform)
  assert marker in text
  if marker == "newton_schulz_fused":
    assert "newton_schulz_sym_gram" not in text  # every step inside the one launch


def test_fused_tpu_kernel_is_one_launch_for_all_steps():
  coeffs = resolve_coeffs("muon", 5)
  text = test_base.lower_for(lambda x: tpu.newton_schulz(x, coeffs, EPS, NewtonSchulzConfig()),
                             (jax.ShapeDtypeStruct((3, 256, 512), jnp.float32),), "tpu")
  assert text.count("tpu_custom_call") == 1


def test_dispatch_and_fallback(monkeypatch, caplog):
  x = _stack(1, (2, 8, 12))
  coeffs = resolve_coeffs("muon", 2)
  want = newton_schulz_reference(x, coeffs, EPS)
  np.testing.assert_array_equal(newton_schulz(x, coeffs, EPS), want)  # CPU: XLA
  monkeypatch.setattr(api, "current_platform", lambda: "gpu")
  with caplog.at_level(logging.DEBUG, logger=api.__name__):
    got = newton_schulz(x, coeffs, EPS)  # 8 x 12 is no Triton tile
  assert "falling back to XLA" in caplog.text and "gpu_tile" in caplog.text
  np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError, match="implementation='gpu' cannot run"):
    newton_schulz(x, coeffs, EPS, implementation="gpu")
  monkeypatch.setattr(api, "current_platform", lambda: "cpu")
  with pytest.raises(ValueError, match="needs a tpu device"):
    newton_schulz(x, coeffs, EPS, implementation="tpu")
  with pytest.raises(ValueError, match="wide matrices"):
    newton_schulz(jnp.swapaxes(x, 1, 2), coeffs, EPS, implementation="tpu",
                  config=NewtonSchulzConfig(interpret=True))
  with pytest.raises(ValueError, match="implementation='mosaic'"):
    newton_schulz(x, coeffs, EPS, implementation="mosaic")


@pytest.mark.parametrize("kwargs,match", [(dict(tile=100), "tile"), (dict(block_k=4), "block_k"),
                                          (dict(num_warps=-1), "num_warps")])
def test_bad_config_raises(kwargs, match):
  with pytest.raises(ValueError, match=match):
    NewtonSchulzConfig(**kwargs)
