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
"""RULER-style needle-in-a-haystack tasks (Hsieh et al. 2024), byte tokens, no downloads.

=============  ===========================  ============================================
task           needle value                 haystack
=============  ===========================  ============================================
s_niah_1       pass key (5 digits)          RULER noise ("The grass is green. ...")
s_niah_2       number (7 digits)            real text (embedded corpus, held-out split)
s_niah_3       UUID (36 characters)         real text
mk_niah_1      number; ``num_needles - 1``  real text; the other needles have other keys
               distractor needles
=============  ===========================  ============================================

Layout of one example (``length`` = number of prompt tokens, exactly)::

  "Remember the special magic <kind>s hidden in this text. " + haystack with needles
  + " Question: what is the special magic <kind> for <key>? Answer:"   | " <value>"

Each needle reads "The special magic <kind> for <key> is <value>. " and is inserted at a
word boundary at ``depth * len(haystack)``. The answer span is " <value>" (exact match of
the greedy continuation, see `nl_jax.eval.examples`).
"""

import dataclasses

import numpy as np

from nl_jax.eval import text as text_lib
from nl_jax.eval.examples import Example, Span, encode

TASKS = ("s_niah_1", "s_niah_2", "s_niah_3", "mk_niah_1")

_KIND = {"s_niah_1": "pass key", "s_niah_2": "number", "s_niah_3": "uuid",
         "mk_niah_1": "number"}
_SOURCE = {"s_niah_1": "noise", "s_niah_2": "corpus", "s_niah_3": "corpus",
           "mk_niah_1": "corpus"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class NiahConfig:
  """One NIAH task at one context length.

  Attributes:
    task: one of `TASKS`.
    length: prompt length in tokens (haystack + needles + instructions + question).
    num_needles: needles in the haystack (mk_niah_1 only; s_niah_* always have 1).
    depth: fixed needle depth in [0, 1] for single-needle tasks; None = uniform random.
    split: corpus split used as haystack (``validation`` is held out from training).
  """

  task: str = "s_niah_1"
  length: int = 1024
  num_needles: int = 4
  depth: float | None = None
  split: str = "validation"

  def __post_init__(self):
    if self.task not in TASKS:
      raise ValueError(f"NiahConfig.task={self.task!r} is unknown; choose one of {TASKS}")
    if self.num_needles < 1 or (self.task == "mk_niah_1" and self.num_needles < 2):
      raise ValueError(f"NiahConfig.num_needles={self.num_needles}: mk_niah_1 needs >= 2")
    if self.depth is not None and not 0.0 <= self.depth <= 1.0:
      raise ValueError(f"NiahConfig.depth={self.depth} must be in [0, 1] or None")


def _value(rng: np.random.Generator, kind: str) -> str:
  if kind == "pass key":
    return str(int(rng.integers(10_000, 100_000)))
  if kind == "number":
    return str(int(rng.integers(1_000_000, 10_000_000)))
  h = "".join("0123456789abcdef"[i] for i in rng.integers(0, 16, size=32))
  return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def make_example(config: NiahConfig, rng: np.random.Generator) -> Example:
  """Draws one example; ``meta`` records keys, values, needle starts (token index), depths."""
  kind = _KIND[config.task]
  n = config.num_needles if config.task == "mk_niah_1" else 1
  key_ids = rng.choice(len(text_lib.KEY_WORDS), size=n, replace=False)
  keys = [text_lib.KEY_WORDS[i] for i in key_ids]
  values = [_value(rng, kind) for _ in range(n)]
  query = int(rng.integers(0, n))
  needles = [f"The special magic {kind} for {k} is {v}. " for k, v in zip(keys, values, strict=False)]
  head = f"Remember the special magic {kind}s hidden in this text. "
  question = f" Question: what is the special magic {kind} for {keys[query]}? Answer:"
  answer = f" {values[query]}"
  fixed = len(head) + sum(len(s) for s in needles) + len(question)
  hay_len = config.length - fixed
  if hay_len < 1:
    raise ValueError(f"NiahConfig.length={config.length} is too short for {config.task}: "
                     f"instructions and needles alone take {fixed} tokens; use length >= "
                     f"{fixed + 1}")
  hay = text_lib.haystack(rng, hay_len, _SOURCE[config.task], config.split)
  if n == 1 and config.depth is not None:
    depths = np.asarray([config.depth])
  else:
    depths = rng.uniform(0.0, 1.0, size=n)
  offsets = [text_lib.snap_to_space(hay, int(round(d * hay_len))) for d in depths]
  body, starts = text_lib.insert_at(hay, list(zip(offsets, needles, strict=False)))
  prompt = head + body + question
  ids = np.concatenate([encode(prompt), encode(answer)]).astype(np.int32)
  meta = {
      "task": config.task, "length": config.length, "keys": keys, "values": values,
      "query": query, "answer": answer, "needles": needles,
      "needle_starts": [len(head) + s for s in starts],
      "depths": [float(d) for d in depths],
  }
  return Example(ids, (Span(len(prompt), len(ids), config.task),), meta)


def make_examples(config: NiahConfig, num_examples: int, seed: int) -> list[Example]:
  """``num_examples`` examples, deterministic in (config, seed)."""
  rng = np.random.default_rng([seed, TASKS.index(config.task), config.length])
  return [make_example(config, rng) for _ in range(num_examples)]
