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
"""Held-out perplexity as a function of context position (spec Fig. 10), and "read twice".

`position_nll` averages the next-token loss at every position over many windows of held-out
text; `bucket` summarises it in log-spaced position buckets. A model that uses its context
(and a memory that keeps learning) has a loss that falls with position, and keeps falling
beyond the training length if its memory generalizes.

`read_twice` feeds a text twice in a row (with state carried when segmented) and compares the
perplexity of the first and the second reading: in-context learning makes the second lower.
"""

import numpy as np

from nl_jax.eval.examples import LogitsFn, encode
from nl_jax.eval.runner import token_nll


def heldout_text(split: str = "validation") -> str:
  """The held-out corpus split as one stream of text (documents joined by blank lines)."""
  from nl_jax.data import load_corpus  # noqa: PLC0415

  return "\n\n".join(load_corpus(split))


def windows(seq_len: int, num_windows: int, seed: int, text: str | None = None) -> np.ndarray:
  """``num_windows`` random windows of ``seq_len`` byte tokens from held-out text; int32."""
  ids = encode(heldout_text() if text is None else text)
  if seq_len < 2 or seq_len > len(ids):
    raise ValueError(f"seq_len={seq_len} must be in [2, {len(ids)}] (length of the text)")
  rng = np.random.default_rng([seed, seq_len])
  starts = rng.integers(0, len(ids) - seq_len + 1, size=num_windows)
  return np.stack([ids[s:s + seq_len] for s in starts]).astype(np.int32)


def heldout_texts(num: int, length: int, seed: int) -> list[str]:
  """``num`` random held-out texts of ``length`` characters (the read-twice texts)."""
  text = heldout_text()
  rng = np.random.default_rng([seed, length, 2])
  starts = rng.integers(0, len(text) - length, size=num)
  return [text[s:s + length] for s in starts]


def position_nll(logits_fn: LogitsFn, tokens_NxT: np.ndarray, batch_size: int = 4,
                 reset_every: int | None = None) -> np.ndarray:
  """Mean NLL (nats) of predicting token t+1 at each position t; shape [T-1].

  ``reset_every=K`` gives every block of K tokens its own segment id, so the model sees at
  most the current block (attention stays in it, memories restart at its first token): the
  short-context control of a loss-by-position curve. On the same windows, its NLL minus the
  full-context NLL at a position is what the context before the position's block is worth,
  free of how hard the text at that position happens to be.
  """
  if reset_every is not None and reset_every < 1:
    raise ValueError(f"reset_every={reset_every} must be a positive number of tokens or None")
  total = np.zeros(tokens_NxT.shape[1] - 1)
  segment_ids_T = np.ones(tokens_NxT.shape[1], np.int32)
  if reset_every is not None:
    segment_ids_T = 1 + np.arange(tokens_NxT.shape[1], dtype=np.int32) // reset_every
  for i in range(0, len(tokens_NxT), batch_size):
    tok = tokens_NxT[i:i + batch_size]
    logits = logits_fn(tok, np.broadcast_to(segment_ids_T, tok.shape))
    total += token_nll(logits, tok).sum(0)
  return total / len(tokens_NxT)


def bucket(nll_T: np.ndarray, first: int = 16) -> list[dict]:
  """Log-spaced buckets [0, first), [first, 2 first), ...: mean NLL and perplexity each."""
  edges = [0, first]
  while edges[-1] < len(nll_T):
    edges.append(edges[-1] * 2)
  edges[-1] = len(nll_T)
  rows = []
  for lo, hi in zip(edges[:-1], edges[1:], strict=False):
    if hi > lo:
      m = float(nll_T[lo:hi].mean())
      rows.append({"start": lo, "end": hi, "nll": m, "ppl": float(np.exp(m))})
  return rows


def read_twice(logits_fn: LogitsFn, text: str) -> dict[str, float]:
  """Perplexity of ``text`` on its first and on its second consecutive reading."""
  ids = encode(text)
  n = len(ids)
  tok = np.concatenate([ids, ids])[None].astype(np.int32)
  nll = token_nll(logits_fn(tok, np.ones_like(tok)), tok)[0]
  # Position n-1 predicts the first token of the second copy: it belongs to neither reading.
  first, second = nll[:n - 1], nll[n:]
  return {"first_ppl": float(np.exp(first.mean())), "second_ppl": float(np.exp(second.mean()))}
