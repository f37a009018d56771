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
"""Formal-language recognition (Table 5; the task set of Irie et al. 2023 / Bhattamishra et
al. 2020), posed as binary classification by class logit.

Languages: ``parity`` (bit strings with an even number of 1s), ``aa_star`` ((aa)*),
``abab_star`` ((abab)*), ``anbn`` (a^n b^n), ``anbncn`` (a^n b^n c^n), ``shuffle_2``
(interleavings of a Dyck-1 word over ``()`` and one over ``[]``; n >= 1 for the counter
languages).

Construction (documented because the paper only cites Irie et al.): an example is the text
``"^" + s + "="`` followed by the label token ``"T"`` (s in the language) or ``"F"``; the
model is scored on the argmax over {T, F} at the ``"="`` position (class logit), so chance is
50%. Labels are balanced: for ``parity`` and ``aa_star`` a uniformly random string is
balanced by itself; for the others half the examples are positives and half are near-miss
negatives *of the same length* (so length alone gives nothing away), built by:

* ``abab_star``: a positive with one symbol flipped, or a prefix of (ab)* whose length is
  not a multiple of 4 (tells (abab)* from (ab)*);
* ``anbn`` / ``anbncn``: the counts perturbed at fixed total length (a^(n+1) b^(n-1), ...)
  or two different symbols of a positive swapped;
* ``shuffle_2``: one symbol of a positive replaced by another bracket, or two symbols
  swapped (kept only if the result is outside the language).

Every label is checked against the recognizer `in_language`. Length bins follow Table 5:
``bin0`` = the training lengths ``[min_len, max_len]``, ``bin1`` = longer strings
``[max_len + 1, 2 * max_len]`` (see `length_bins`).
"""

import dataclasses

import numpy as np

from nl_jax.eval.examples import Example, Span, encode

LANGUAGES = ("parity", "aa_star", "abab_star", "anbn", "anbncn", "shuffle_2")
TRUE, FALSE = "T", "F"
CHOICES = (int(encode(TRUE)[0]), int(encode(FALSE)[0]))


def in_language(language: str, s: str) -> bool:
  """The recognizer (ground truth) of each language."""
  if language == "parity":
    return set(s) <= set("01") and s.count("1") % 2 == 0
  if language == "aa_star":
    return set(s) <= {"a"} and len(s) % 2 == 0
  if language == "abab_star":
    return len(s) % 4 == 0 and s == "abab" * (len(s) // 4)
  if language == "anbn":
    n = len(s) // 2
    return n >= 1 and s == "a" * n + "b" * n
  if language == "anbncn":
    n = len(s) // 3
    return n >= 1 and s == "a" * n + "b" * n + "c" * n
  if language == "shuffle_2":
    if not set(s) <= set("()[]"):
      return False
    depth = {"(": 0, "[": 0}
    for ch in s:
      opener = "(" if ch in "()" else "["
      depth[opener] += 1 if ch in "([" else -1
      if depth[opener] < 0:
        return False
    return depth["("] == 0 and depth["["] == 0
  raise ValueError(f"unknown language {language!r}; choose one of {LANGUAGES}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FormalConfig:
  """One language and a range of string lengths.

  Attributes:
    language: one of `LANGUAGES`.
    min_len: shortest string.
    max_len: longest string (inclusive).
  """

  language: str = "parity"
  min_len: int = 1
  max_len: int = 32

  def __post_init__(self):
    if self.language not in LANGUAGES:
      raise ValueError(f"FormalConfig.language={self.language!r} is unknown; choose one of "
                       f"{LANGUAGES}")
    if not 1 <= self.min_len <= self.max_len:
      raise ValueError(f"FormalConfig needs 1 <= min_len <= max_len, got min_len="
                       f"{self.min_len}, max_len={self.max_len}")
    period = {"abab_star": 4, "anbn": 2, "anbncn": 3, "shuffle_2": 2, "aa_star": 2}
    p = period.get(self.language, 1)
    # Positives exist only at multiples of the period; both labels need a valid length.
    if self.max_len // p * p < max(self.min_len, p) or self.max_len - self.min_len < p - 1:
      raise ValueError(f"FormalConfig length range [{self.min_len}, {self.max_len}] holds no "
                       f"positive string of {self.language}; widen it to span >= {p} "
                       f"lengths including a multiple of {p}")


def length_bins(max_train_len: int, min_len: int = 1) -> dict[str, tuple[int, int]]:
  """Table 5's bins: bin0 = training lengths, bin1 = (max_train_len, 2 * max_train_len]."""
  return {"bin0": (min_len, max_train_len), "bin1": (max_train_len + 1, 2 * max_train_len)}


def _multiple_in(rng, lo, hi, p):
  ks = np.arange(max(1, -(-lo // p)), hi // p + 1)
  return int(rng.choice(ks)) * p


def _dyck(rng, pairs, open_ch, close_ch):
  out, opened, left = [], 0, pairs
  while left or opened:
    if left and (not opened or rng.random() < left / (left + opened)):
      out.append(open_ch)
      opened += 1
      left -= 1
    else:
      out.append(close_ch)
      opened -= 1
  return out


def _positive(language, rng, lo, hi):
  if language == "abab_star":
    return "abab" * (_multiple_in(rng, lo, hi, 4) // 4)
  if language == "anbn":
    n = _multiple_in(rng, lo, hi, 2) // 2
    return "a" * n + "b" * n
  if language == "anbncn":
    n = _multiple_in(rng, lo, hi, 3) // 3
    return "a" * n + "b" * n + "c" * n
  if language == "shuffle_2":
    half = _multiple_in(rng, lo, hi, 2) // 2
    p = int(rng.integers(0, half + 1))
    w1, w2 = _dyck(rng, p, "(", ")"), _dyck(rng, half - p, "[", "]")
    take = rng.permutation(np.r_[np.zeros(len(w1), int), np.ones(len(w2), int)])
    it1, it2 = iter(w1), iter(w2)
    return "".join(next(it2) if t else next(it1) for t in take)
  raise AssertionError(language)


def _swap(rng, s):
  idx = [(i, j) for i in range(len(s)) for j in range(i + 1, len(s)) if s[i] != s[j]]
  if not idx:
    return s
  i, j = idx[int(rng.integers(0, len(idx)))]
  chars = list(s)
  chars[i], chars[j] = chars[j], chars[i]
  return "".join(chars)


def _negative(language, rng, lo, hi):
  pos = _positive(language, rng, lo, hi)
  kind = int(rng.integers(0, 2))
  if language == "abab_star":
    if kind == 0:
      i = int(rng.integers(0, len(pos)))
      return pos[:i] + ("b" if pos[i] == "a" else "a") + pos[i + 1:]
    lengths = [n for n in range(lo, hi + 1) if n % 4]
    if not lengths:
      return _swap(rng, pos)
    return ("ab" * hi)[:int(rng.choice(lengths))]
  if language in ("anbn", "anbncn"):
    if kind == 0:
      k = 2 if language == "anbn" else 3
      n = len(pos) // k
      counts = np.full(k, n)
      i, j = rng.choice(k, size=2, replace=False)
      d = int(rng.integers(1, n + 1))
      counts[i] += d
      counts[j] -= d
      return "".join(ch * int(c) for ch, c in zip("abc", counts, strict=False))
    return _swap(rng, pos)
  if language == "shuffle_2":
    if kind == 0:
      i = int(rng.integers(0, len(pos)))
      other = [c for c in "()[]" if c != pos[i]]
      return pos[:i] + other[int(rng.integers(0, 3))] + pos[i + 1:]
    return _swap(rng, pos)
  raise AssertionError(language)


def make_string(config: FormalConfig, rng: np.random.Generator, label: bool | None = None):
  """Returns (string, in_language) with the length in [min_len, max_len]."""
  lo, hi, lang = config.min_len, config.max_len, config.language
  if lang in ("parity", "aa_star"):
    n = int(rng.integers(lo, hi + 1))
    s = "".join(rng.choice(list("01"), size=n)) if lang == "parity" else "a" * n
    return s, in_language(lang, s)
  want = bool(rng.random() < 0.5) if label is None else label
  for _ in range(100):
    s = _positive(lang, rng, lo, hi) if want else _negative(lang, rng, lo, hi)
    if lo <= len(s) <= hi and in_language(lang, s) == want:
      return s, want
  raise RuntimeError(f"could not draw a {'positive' if want else 'negative'} {lang} string "
                     f"with length in [{lo}, {hi}]")


def make_example(config: FormalConfig, rng: np.random.Generator) -> Example:
  s, label = make_string(config, rng)
  text = "^" + s + "=" + (TRUE if label else FALSE)
  ids = encode(text).astype(np.int32)
  span = Span(len(ids) - 1, len(ids), config.language, CHOICES)
  return Example(ids, (span,), {"string": s, "label": label, "length": len(s)})


def make_examples(config: FormalConfig, num_examples: int, seed: int) -> list[Example]:
  rng = np.random.default_rng([seed, LANGUAGES.index(config.language), config.min_len,
                               config.max_len])
  return [make_example(config, rng) for _ in range(num_examples)]
