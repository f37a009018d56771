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
"""The custom_vjp wiring both memory-scan backends share (only their kernels differ)."""

import functools

import jax
import jax.numpy as jnp


def reduce_backward_outputs(outs, momentum: bool, t: int, k, v, q, sc):
  """Sums the per-value-block partial gradients and drops the ragged-tail padding."""
  dk_p, dv_, dq_p, dsc_p, dm0 = outs[:5]
  ds0 = outs[5] if momentum else None
  return (jnp.sum(dk_p, axis=1)[:, :t].astype(k.dtype), dv_[:, :t].astype(v.dtype),
          jnp.sum(dq_p, axis=1)[:, :t].astype(q.dtype),
          jnp.sum(dsc_p, axis=1)[:, :t].astype(sc.dtype), dm0, ds0)


def make_scan_core(forward, backward):
  """scan_core(k, v, q, sc, m0, s0, config) with forward / backward kernels as its VJP.

  forward(k, v, q, sc, m0, s0, config, save_states) -> (outputs, saved chunk-start states);
  backward(k, v, q, sc, saved, dy, dm, ds, config) -> cotangents of the six array inputs.
  """
  @functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
  def scan_core(k_NxTxK, v_NxTxV, q_NxTxK, sc_NxTxS, m0_NxVxK, s0_NxVxK, config):
    """Kernel version of `reference.reference_core` (same arguments, config last)."""
    out, _ = forward(k_NxTxK, v_NxTxV, q_NxTxK, sc_NxTxS, m0_NxVxK, s0_NxVxK, config, False)
    return out

  def scan_fwd(k, v, q, sc, m0, s0, config):
    out, saved = forward(k, v, q, sc, m0, s0, config, True)
    return out, (k, v, q, sc, saved)

  def scan_bwd(config, res, cts):
    k, v, q, sc, saved = res
    dy, dm, ds = cts
    return backward(k, v, q, sc, saved, dy, dm, ds, config)

  scan_core.defvjp(scan_fwd, scan_bwd)
  return scan_core
