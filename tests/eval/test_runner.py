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
"""runner.make_logits_fn: segments with carried state == one call; padding to alignment."""

import dataclasses

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nl_jax.eval import runner


@dataclasses.dataclass(frozen=True)
class _Config:
  alignment: int = 4


class _RunningCount(nnx.Module):
  """A stateful test double: logits = counts of every token id seen so far in the stream.

  Exactly the streaming contract of the model interface: one call == several calls with the
  state carried. Padding (segment id 0) is not counted.
  """

  def __init__(self, vocab: int):
    self.config = _Config()
    self.vocab = vocab
    self.scale = nnx.Param(jnp.ones(()))

  def init_memory(self, batch_size):
    return {"counts": jnp.zeros((batch_size, self.vocab))}

  def __call__(self, tokens, memory_state=None, *, segment_ids=None, positions=None):
    del positions
    if tokens.shape[1] % self.config.alignment:
      raise ValueError("length must be a multiple of the alignment")
    state = memory_state if memory_state is not None else self.init_memory(tokens.shape[0])
    onehot = jax.nn.one_hot(tokens, self.vocab) * (segment_ids > 0)[..., None]
    counts = state["counts"][:, None] + jnp.cumsum(onehot, axis=1)
    return self.scale * counts, {"counts": counts[:, -1]}, {}


def test_segments_with_carried_state_equal_one_call():
  model = _RunningCount(vocab=7)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 7, size=(2, 19)).astype(np.int32)
  seg = np.ones_like(tokens)
  full = runner.make_logits_fn(model)(tokens, seg)
  assert full.shape == (2, 19, 7)  # padded to 20 inside, cut back to 19
  np.testing.assert_array_equal(full[:, -1].sum(-1), 19)
  for segment_len in (4, 8, 12):
    got = runner.make_logits_fn(model, segment_len=segment_len)(tokens, seg)
    np.testing.assert_allclose(got, full)
  with pytest.raises(ValueError, match="multiple of the model's alignment"):
    runner.make_logits_fn(model, segment_len=6)


def test_token_nll():
  logits = np.log(np.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]]))
  nll = runner.token_nll(logits, np.array([[0, 1, 2]]))
  np.testing.assert_allclose(nll, -np.log([[0.25, 0.1]]), rtol=1e-12)


def test_fit_trains_and_stops_at_a_non_finite_loss():
  import optax

  from nl_jax.eval import fit

  def batches():
    tokens = np.array([[1, 2, 3, 4, 5, 6, 0, 0]], np.int32)
    while True:
      yield {"inputs": tokens, "targets": np.roll(tokens, -1, axis=1),
             "segment_ids": (tokens > 0).astype(np.int32), "positions": np.arange(8)[None],
             "loss_mask": (tokens > 0).astype(np.float32)}

  model = _RunningCount(vocab=7)
  log = fit.train(model, batches(), 3, optax.sgd(0.1))
  assert log["diverged_at"] is None and len(log["losses"]) == 3
  assert log["losses"][-1] != log["losses"][0] and float(model.scale[...]) != 1.0
  model = _RunningCount(vocab=7)
  log = fit.train(model, batches(), 5, optax.scale(float("nan")))
  assert log["diverged_at"] == 1 and np.isnan(log["losses"][1])
  assert float(model.scale[...]) == 1.0  # the parameters that gave the last finite loss
  with pytest.raises(ValueError, match="alignment"):
    fit.train(model, iter([{k: v[:, :6] for k, v in next(batches()).items()}]), 1)
