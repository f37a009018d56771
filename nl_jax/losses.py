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
"""The next-token loss, written once: the trainer, the CMS's in-context objective and the
experiments' task loop all call `masked_cross_entropy`."""

import jax
import jax.numpy as jnp
import optax


def masked_cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
                         loss_mask_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  r"""Sum of the masked token cross-entropies and the number of counted tokens.

  .. math::
    \mathrm{total} = \sum_{b,t} m_{bt}\,\bigl(\log\textstyle\sum_v e^{z_{btv}} - z_{bty_{bt}}\bigr),
    \qquad \mathrm{count} = \sum_{b,t} m_{bt}.

  The caller picks the reduction: ``total / count`` is the mean loss per token (the trainer
  divides after summing over micro-batches and devices, so it needs the two parts;
  ``total / max(count, 1)`` guards an all-masked batch).

  Args:
    logits_BxTxV: unnormalised logits [..., V] (any leading shape, usually [B, T]), any float
      dtype.
    targets_BxT: integer class indices in ``[0, V)``, the logits' shape without V.
    loss_mask_BxT: weights of the same shape as ``targets_BxT``: 1 counts a token, 0 drops it
      (bool or float; fractional weights scale the token's loss and its count alike).

  Returns:
    ``(total, count)``, two scalars in the compute dtype: the logits' dtype promoted to at least
    float32 (bf16 logits are upcast before the softmax; float64 stays float64 under x64).
  """
  dtype = jnp.promote_types(logits_BxTxV.dtype, jnp.float32)
  losses_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV.astype(dtype),
                                                               targets_BxT)
  mask_BxT = loss_mask_BxT.astype(dtype)
  return jnp.sum(losses_BxT * mask_BxT), jnp.sum(mask_BxT)
