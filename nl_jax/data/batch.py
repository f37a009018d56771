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
"""The one batch schema of nl_jax: the trainer's pipeline, the evaluation tasks and the task
fitting loop all make and read batches of these [B, T] arrays.

  inputs       int32    the tokens the model reads
  targets      int32    the token each position predicts (inputs shifted left)
  segment_ids  int32    the document of each token; 0 = padding (memories reset where it changes)
  positions    int32    RoPE position, restarting at 0 with every document
  loss_mask    float32  1 where the prediction counts (answers only, for a task)
"""

from typing import Any

import numpy as np

BATCH_KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


def model_kwargs(batch: dict[str, Any]) -> dict[str, Any]:
  """The keyword arguments of a model call (``model(batch["inputs"], state, **...)``)."""
  return dict(segment_ids=batch["segment_ids"], positions=batch["positions"],
              targets=batch["targets"], loss_mask=batch["loss_mask"])


def check_keys(batch: dict[str, Any], owner: str) -> None:
  """Raises ValueError naming the keys of the schema that ``batch`` lacks."""
  missing = [k for k in BATCH_KEYS if k not in batch]
  if missing:
    raise ValueError(f"{owner}: the batch has no {missing} (keys {sorted(batch)}); a batch has "
                     f"{list(BATCH_KEYS)} (nl_jax.data.batch; make_batch and lm_batch make them)")


def document_positions(segment_ids_BxT: np.ndarray) -> np.ndarray:
  """Positions that restart at 0 wherever the segment id changes (int32 [B, T])."""
  seg = np.asarray(segment_ids_BxT)
  t = seg.shape[1]
  idx = np.broadcast_to(np.arange(t), seg.shape)
  change = np.concatenate([np.ones_like(seg[:, :1], bool), seg[:, 1:] != seg[:, :-1]], axis=1)
  start = np.maximum.accumulate(np.where(change, idx, 0), axis=1)
  return (idx - start).astype(np.int32)
