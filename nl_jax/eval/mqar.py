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
"""Multi-query associative recall (MQAR, Arora et al. 2024 "Zoology"), on byte tokens.

Layout (``num_pairs`` key-value pairs, then ``num_queries`` queries)::

  k_1 v_1 k_2 v_2 ... k_N v_N | q_1 a_1 q_2 a_2 ... q_Q a_Q

Keys are distinct lowercase letters and digits drawn from `KEY_TOKENS`; values are
uppercase letters from `VALUE_TOKENS` (repeats allowed). Each query ``q_j`` is one of the
keys and ``a_j`` its value; every ``a_j`` is a scored span of length 1, so accuracy is the
fraction of queries answered (Zoology scores exactly these positions). Queries are distinct
keys in random order (as in Zoology), so ``num_queries <= num_pairs``.
"""

import dataclasses

import numpy as np

from nl_jax.eval.examples import Example, Span, encode, make_batch

KEY_TOKENS = "abcdefghijklmnopqrstuvwxyz0123456789"
VALUE_TOKENS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclasses.dataclass(frozen=True, kw_only=True)
class MqarConfig:
  """MQAR sizes.

  Attributes:
    num_pairs: key-value pairs in the context (<= len(KEY_TOKENS)).
    num_queries: queries after the context (<= num_pairs).
    gap: filler tokens ("." ) between the context and the first query (longer contexts
      without more pairs).
  """

  num_pairs: int = 8
  num_queries: int = 8
  gap: int = 0

  def __post_init__(self):
    if not 1 <= self.num_pairs <= len(KEY_TOKENS):
      raise ValueError(f"MqarConfig.num_pairs={self.num_pairs} must be in "
                       f"[1, {len(KEY_TOKENS)}]")
    if not 1 <= self.num_queries <= self.num_pairs:
      raise ValueError(f"MqarConfig.num_queries={self.num_queries} must be in "
                       f"[1, num_pairs={self.num_pairs}]")
    if self.gap < 0:
      raise ValueError(f"MqarConfig.gap={self.gap} must be >= 0")

  @property
  def length(self) -> int:
    return 2 * self.num_pairs + self.gap + 2 * self.num_queries


def make_example(config: MqarConfig, rng: np.random.Generator) -> Example:
  keys = rng.choice(len(KEY_TOKENS), size=config.num_pairs, replace=False)
  vals = rng.integers(0, len(VALUE_TOKENS), size=config.num_pairs)
  mapping = {KEY_TOKENS[k]: VALUE_TOKENS[v] for k, v in zip(keys, vals, strict=False)}
  context = "".join(KEY_TOKENS[k] + VALUE_TOKENS[v] for k, v in zip(keys, vals, strict=False))
  query_keys = [KEY_TOKENS[k] for k in rng.permutation(keys)[:config.num_queries]]
  queries = "".join(q + mapping[q] for q in query_keys)
  text = context + "." * config.gap + queries
  first = len(context) + config.gap
  spans = tuple(Span(first + 2 * j + 1, first + 2 * j + 2, "mqar")
                for j in range(config.num_queries))
  return Example(encode(text).astype(np.int32), spans,
                 {"mapping": mapping, "queries": query_keys})


def make_examples(config: MqarConfig, num_examples: int, seed: int) -> list[Example]:
  rng = np.random.default_rng([seed, config.num_pairs, config.num_queries, config.gap])
  return [make_example(config, rng) for _ in range(num_examples)]


def sample_examples(rng: np.random.Generator, num_examples: int, *, min_pairs: int = 1,
                    max_pairs: int = 16, max_gap: int = 0,
                    zero_gap_share: float = 0.0) -> list[Example]:
  """Examples of varied sizes: each draws its number of pairs (queries = pairs) uniformly
  from ``[min_pairs, max_pairs]`` and its gap from ``[0, max_gap]``, except that a share
  ``zero_gap_share`` of them (in expectation) has gap 0.

  Training on a range of sizes (as Zoology does) keeps a model from keying on one layout;
  the test sizes are then fixed `MqarConfig` s, some beyond ``max_pairs`` / ``max_gap``.
  Gap-0 examples put the last pairs next to their queries: they are where a query's pair is
  in its own few-token block, which a block-wise memory (Hope's CMS) cannot recall and a
  token-level one must (`accuracy_by_placement`); ``zero_gap_share`` trains more of those
  without giving up the gaps that length generalisation needs.
  """
  if not 1 <= min_pairs <= max_pairs:
    raise ValueError(f"min_pairs={min_pairs}, max_pairs={max_pairs}: need 1 <= min <= max")
  if max_gap < 0:
    raise ValueError(f"max_gap={max_gap} must be >= 0")
  if not 0.0 <= zero_gap_share <= 1.0:
    raise ValueError(f"zero_gap_share={zero_gap_share} must be in [0, 1]")
  out = []
  for _ in range(num_examples):
    pairs = int(rng.integers(min_pairs, max_pairs + 1))
    gap = int(rng.integers(0, max_gap + 1))
    if zero_gap_share and rng.random() < zero_gap_share:
      gap = 0
    out.append(make_example(MqarConfig(num_pairs=pairs, num_queries=pairs, gap=gap), rng))
  return out


def training_batch(rng: np.random.Generator, batch_size: int, length: int, *,
                   min_pairs: int = 1, max_pairs: int = 16, max_gap: int = 0,
                   zero_gap_share: float = 0.0,
                   pad_to_multiple: int = 1) -> dict[str, np.ndarray]:
  """A training batch of `sample_examples`, right-padded to ``length`` (one shape).

  Returns the `nl_jax.eval.examples.make_batch` dict (loss mask on the answer tokens only),
  the batch format of `nl_jax.eval.fit.train`.
  """
  longest = 4 * max_pairs + max_gap
  if longest > length:
    raise ValueError(f"length={length} < 4 * max_pairs + max_gap = {longest} (the longest "
                     "example); raise length")
  exs = sample_examples(rng, batch_size, min_pairs=min_pairs, max_pairs=max_pairs,
                        max_gap=max_gap, zero_gap_share=zero_gap_share)
  return make_batch(exs, pad_to_multiple=pad_to_multiple, length=length)


def pair_positions(example: Example) -> list[int]:
  """For each query (span order), the position of its pair's value token in the context."""
  value_at = {k: 2 * j + 1 for j, k in enumerate(example.meta["mapping"])}
  return [value_at[q] for q in example.meta["queries"]]


def accuracy_by_placement(examples: list[Example], per_example: list[list[bool]],
                          block: int) -> dict[str, float]:
  """Accuracy of the queries whose pair was written in an earlier ``block``-token block than
  the query's own position (``earlier_block``), and of those in the same block.

  A model whose memory only takes in a block of tokens at the block's end (the CMS levels
  of Hope: a level with chunk C updates at positions C, 2C, ...) can recall only the first
  kind; attention and token-level memories have no such boundary. Each entry is nan when no
  query falls in that class. ``per_example`` is `nl_jax.eval.examples.score`'s.
  """
  if block < 1:
    raise ValueError(f"block={block} must be >= 1")
  hits: dict[str, list[bool]] = {"earlier_block": [], "same_block": []}
  for ex, flags in zip(examples, per_example, strict=True):
    for span, value_pos, ok in zip(ex.spans, pair_positions(ex), flags, strict=True):
      read_pos = span.start - 1  # the query token, where the answer is predicted
      kind = "earlier_block" if value_pos // block < read_pos // block else "same_block"
      hits[kind].append(ok)
  return {k: float(np.mean(v)) if v else float("nan") for k, v in hits.items()}
