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
"""Filler text for long-context tasks: real text from the embedded corpus, or RULER noise.

Everything is ASCII (the embedded Shakespeare corpus is), so with the byte tokenizer one
character is one token and character offsets are token offsets.
"""

import functools
import re

import numpy as np

NOISE_SENTENCES = ("The grass is green. The sky is blue. The sun is yellow. "
                   "Here we go. There and back again. ")

# Keys for needles and names for tasks: short, distinct, lowercase ASCII words.
KEY_WORDS = (
    "apple", "river", "candle", "falcon", "marble", "harbor", "violet", "copper",
    "thunder", "meadow", "lantern", "pepper", "silver", "garden", "anchor", "saddle",
    "winter", "basket", "cotton", "dragon", "feather", "hammer", "island", "jungle",
    "kettle", "ladder", "mirror", "needle", "orange", "pillow", "quartz", "rocket",
    "shadow", "ticket", "velvet", "wagon", "yellow", "zebra", "bridge", "castle",
    "forest", "glacier", "helmet", "journal", "kingdom", "lemon", "magnet", "nectar",
    "oyster", "parrot", "raven", "spider", "tunnel", "walnut", "canyon", "desert",
    "ember", "fossil", "granite", "hollow", "iris", "jasmine", "koala", "lotus",
)


@functools.lru_cache(maxsize=4)
def corpus_text(split: str = "validation") -> str:
  """The corpus split as one string with all whitespace runs collapsed to one space."""
  from nl_jax.data import load_corpus  # noqa: PLC0415 (keeps grain out of plain imports)

  text = " ".join(load_corpus(split))
  return re.sub(r"\s+", " ", text).strip()


def haystack(rng: np.random.Generator, num_chars: int, source: str = "corpus",
             split: str = "validation") -> str:
  """Returns exactly ``num_chars`` characters of filler.

  Args:
    rng: source of the random start offset (corpus) - the noise filler is fixed.
    num_chars: length of the filler.
    source: ``"corpus"`` (a random window of real text, wrapping around) or ``"noise"``
      (RULER's repeated "The grass is green..." sentences).
    split: corpus split for ``source="corpus"``.
  """
  if num_chars < 0:
    raise ValueError(f"num_chars must be >= 0, got {num_chars}")
  if source == "noise":
    base = NOISE_SENTENCES
    start = 0
  elif source == "corpus":
    base = corpus_text(split)
    start = int(rng.integers(0, len(base)))
  else:
    raise ValueError(f"unknown haystack source {source!r}; expected 'corpus' or 'noise'")
  reps = -(-(start + num_chars) // len(base)) + 1
  return (base * reps)[start:start + num_chars]


def sentence_boundaries(text: str) -> np.ndarray:
  """Offsets right after ". ", "! ", "? " (where a fact can be inserted), plus 0 and len."""
  cuts = [m.end() for m in re.finditer(r"[.!?] ", text)]
  return np.unique(np.asarray([0] + cuts + [len(text)], np.int64))


def snap_to_space(text: str, pos: int) -> int:
  """Moves ``pos`` back to just after the nearest preceding space (never splits a word)."""
  pos = min(max(pos, 0), len(text))
  while pos > 0 and text[pos - 1] != " ":
    pos -= 1
  return pos


def insert_at(text: str, inserts: list[tuple[int, str]]) -> tuple[str, list[int]]:
  """Inserts strings at offsets of ``text``; returns the new text and each insert's start."""
  order = sorted(range(len(inserts)), key=lambda i: (inserts[i][0], i))
  out, starts, prev, shift = [], [0] * len(inserts), 0, 0
  for i in order:
    pos, s = inserts[i]
    out.append(text[prev:pos])
    starts[i] = pos + shift
    out.append(s)
    shift += len(s)
    prev = pos
  out.append(text[prev:])
  return "".join(out), starts
