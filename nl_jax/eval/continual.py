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
"""A continual-learning stream: tasks learnt in context one after another.

This is the small-scale analogue of the paper's CTNL experiment (Fig. 8: two languages
learnt in context sequentially, then the first one is tested). Task ``i`` is a made-up
language: a random dictionary from a shared set of English words to 3-letter code words.
Because every language translates the *same* words, later tasks interfere with earlier ones
(the stream is built to cause forgetting, not just to be long).

Stage ``s`` of the stream is the text::

  "In <lang_s>, <word> is <code>. " for every pair, shuffled, ``repeats`` times
  (+ optional filler from the corpus)

After each stage ``s`` and for each task ``j <= s`` there is one example: the stream up to
stage ``s`` followed by ``"In <lang_j>, <word> is <code>."`` for each queried word, every
``<code>`` (its 3 letters) a scored span in group ``"s<s>/t<j>"``. `accuracy_matrix` turns
the scores into ``A[s, j]`` (accuracy on task ``j`` after stage ``s``; NaN above the
diagonal) and
`forgetting` into the usual average forgetting ``mean_j max_{s<S-1} A[s, j] - A[S-1, j]``.
Models with memory state can be fed the stream in segments with the state carried
(`nl_jax.eval.runner.make_logits_fn(..., segment_len=...)`).
"""

import dataclasses

import numpy as np

from nl_jax.eval import text as text_lib
from nl_jax.eval.examples import Example, example_from_parts

LANGUAGE_NAMES = ("Zorbish", "Quelan", "Mirvic", "Tavoran", "Pelish", "Drunic", "Ostral",
                  "Velkan")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ContinualConfig:
  """Sizes of the stream.

  Attributes:
    num_tasks: languages learnt one after another (<= len(LANGUAGE_NAMES)).
    num_words: dictionary size, shared by every language (<= len(KEY_WORDS)).
    repeats: times each dictionary is shown in its stage.
    num_queries: words queried per (stage, task) example (<= num_words).
    filler: corpus characters appended after each stage (more distance between tasks).
  """

  num_tasks: int = 3
  num_words: int = 6
  repeats: int = 2
  num_queries: int = 4
  filler: int = 0

  def __post_init__(self):
    if not 1 <= self.num_tasks <= len(LANGUAGE_NAMES):
      raise ValueError(f"ContinualConfig.num_tasks={self.num_tasks} must be in "
                       f"[1, {len(LANGUAGE_NAMES)}]")
    if not 1 <= self.num_words <= len(text_lib.KEY_WORDS):
      raise ValueError(f"ContinualConfig.num_words={self.num_words} must be in "
                       f"[1, {len(text_lib.KEY_WORDS)}]")
    if not 1 <= self.num_queries <= self.num_words:
      raise ValueError(f"ContinualConfig.num_queries={self.num_queries} must be in "
                       f"[1, num_words={self.num_words}]")
    if self.repeats < 1 or self.filler < 0:
      raise ValueError(f"ContinualConfig needs repeats >= 1 and filler >= 0, got repeats="
                       f"{self.repeats}, filler={self.filler}")


def make_stream(config: ContinualConfig, rng: np.random.Generator) -> list[Example]:
  """One stream: ``num_tasks * (num_tasks + 1) / 2`` examples, one per (stage, task<=stage)."""
  words = [text_lib.KEY_WORDS[i]
           for i in rng.choice(len(text_lib.KEY_WORDS), config.num_words, replace=False)]
  langs = [LANGUAGE_NAMES[i]
           for i in rng.choice(len(LANGUAGE_NAMES), config.num_tasks, replace=False)]
  dicts = []
  for _ in langs:
    codes = []  # a list, not a set: set order of str depends on PYTHONHASHSEED
    while len(codes) < config.num_words:
      code = "".join(_LETTERS[i] for i in rng.integers(0, 26, size=3))
      if code not in codes:
        codes.append(code)
    dicts.append(dict(zip(words, codes, strict=False)))
  stages = []
  for lang, d in zip(langs, dicts, strict=False):
    parts = []
    for _ in range(config.repeats):
      parts.extend(f"In {lang}, {w} is {d[w]}. " for w in rng.permutation(words))
    parts.append(text_lib.haystack(rng, config.filler, "corpus") + (" " if config.filler else ""))
    stages.append("".join(parts))
  examples = []
  for s in range(config.num_tasks):
    prefix = "".join(stages[:s + 1])
    for j in range(s + 1):
      asked = [str(w) for w in rng.permutation(words)[:config.num_queries]]
      parts = [(prefix, None)]
      for w in asked:
        # The scored span is the code alone: the space before it is the same every time,
        # and would put a floor of 1/4 under the answer-token accuracy.
        parts += [(f"In {langs[j]}, {w} is ", None), (dicts[j][w], f"s{s}/t{j}"),
                  (". ", None)]
      examples.append(example_from_parts(parts, {"stage": s, "task": j, "language": langs[j],
                                                 "asked": asked, "dictionary": dicts[j]}))
  return examples


def make_streams(config: ContinualConfig, num_streams: int, seed: int) -> list[Example]:
  rng = np.random.default_rng([seed, config.num_tasks, config.num_words])
  return [ex for _ in range(num_streams) for ex in make_stream(config, rng)]


def accuracy_matrix(by_group: dict[str, float], num_tasks: int) -> np.ndarray:
  """``A[s, j]`` from `nl_jax.eval.examples.score`'s ``by_group`` (NaN where j > s)."""
  acc = np.full((num_tasks, num_tasks), np.nan)
  for s in range(num_tasks):
    for j in range(s + 1):
      acc[s, j] = by_group[f"s{s}/t{j}"]
  return acc


def forgetting(acc_SxS: np.ndarray) -> float:
  """Average over tasks j < S-1 of (best accuracy before the last stage - final accuracy)."""
  s_count = acc_SxS.shape[0]
  if s_count < 2:
    return 0.0
  drops = [np.nanmax(acc_SxS[j:s_count - 1, j]) - acc_SxS[s_count - 1, j]
           for j in range(s_count - 1)]
  return float(np.mean(drops))
