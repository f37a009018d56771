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
"""The embedded default corpus: Shakespeare's 42 works, split into scene-sized documents.

The texts ship inside the package (``nl_jax/data/corpus/*.txt.gz``, about 2 MB; provenance
and licence in ``corpus/SOURCE.md``), so tests and small experiments need no network.

Documents are the unit of shuffling and packing. A play is cut at its act/scene headings
(one document per scene, the title page and cast list ride with the first scene); a poem is
cut at stanza boundaries into chunks of about ``_POEM_CHUNK_CHARS`` characters. This gives
827 documents of ~6 KB on average (786 train, 41 validation): enough for shuffling and
packing to matter.

The held-out split is deterministic and disjoint from train: document ``i`` of the canonical
order (works sorted by file name, documents in reading order) is validation iff
``i % validation_every == validation_every - 1``.
"""

import functools
import gzip
import pathlib
import re

CORPUS_DIR = pathlib.Path(__file__).resolve().parent / "corpus"

# Every 20th document is held out (~5%): spread over all works, so validation loss measures
# the same distribution as train rather than one particular play's vocabulary.
DEFAULT_VALIDATION_EVERY = 20

# A line that opens an act or a scene: "ACT I.", "Act II.", "Scene III. A room.", "SCENE 2.".
_HEADING_RE = re.compile(r"^\s*(ACT|Act|SCENE|Scene)\s+([IVXLC]+|\d+)\b")
# Headings closer together than this (e.g. "ACT I." then "Scene I.") belong to one document.
_MIN_DOC_CHARS = 400
_POEM_CHUNK_CHARS = 4000

_GUTENBERG_START_RE = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M)
_GUTENBERG_END_RE = re.compile(r"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG.*$", re.M)


def list_works() -> list[str]:
  """Returns the names of the embedded works (e.g. ``"hamlet"``), sorted."""
  return sorted(p.name[: -len(".txt.gz")] for p in CORPUS_DIR.glob("*.txt.gz"))


def strip_gutenberg_boilerplate(text: str) -> str:
  """Drops a Project Gutenberg licence header/footer if present; a no-op otherwise."""
  start = _GUTENBERG_START_RE.search(text)
  if start:
    text = text[start.end():]
  end = _GUTENBERG_END_RE.search(text)
  if end:
    text = text[: end.start()]
  return text.strip("\n") + "\n" if (start or end) else text


@functools.lru_cache(maxsize=None)
def load_work(name: str) -> str:
  """Returns the full text of one embedded work.

  Args:
    name: a name from `list_works()`.

  Raises:
    ValueError: if no such work is embedded.
  """
  path = CORPUS_DIR / f"{name}.txt.gz"
  if not path.is_file():
    raise ValueError(f"unknown work {name!r}; embedded works: {list_works()}")
  with gzip.open(path, "rt", encoding="utf-8") as f:
    return strip_gutenberg_boilerplate(f.read())


def _split_play(text: str) -> list[str]:
  lines = text.splitlines(keepends=True)
  starts = [i for i, line in enumerate(lines) if _HEADING_RE.match(line)]
  bounds = [0] + [s for s in starts if s > 0] + [len(lines)]
  chunks = ["".join(lines[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
  # Merge short pieces (a bare "ACT II." heading, a title page) into the next piece, so a
  # heading always opens the scene it names and nothing is lost.
  docs, carry = [], ""
  for chunk in chunks:
    carry += chunk
    if len(carry.strip()) >= _MIN_DOC_CHARS:
      docs.append(carry)
      carry = ""
  if carry:
    if docs:
      docs[-1] += carry
    else:
      docs.append(carry)
  return docs


def _split_poem(text: str) -> list[str]:
  # Cut only at blank lines so a stanza (or sonnet) is never split.
  stanzas = re.split(r"(?<=\n)(?=\n)", text)
  docs, current = [], ""
  for stanza in stanzas:
    current += stanza
    if len(current) >= _POEM_CHUNK_CHARS:
      docs.append(current)
      current = ""
  if current:
    if docs and len(current) < _POEM_CHUNK_CHARS // 4:
      docs[-1] += current
    else:
      docs.append(current)
  return docs


def split_into_documents(text: str) -> list[str]:
  """Splits one work into documents: scenes for a play, stanza-aligned chunks for a poem.

  ``"".join(split_into_documents(text)) == text`` always holds.
  """
  starts = sum(1 for line in text.splitlines() if _HEADING_RE.match(line))
  return _split_play(text) if starts >= 3 else _split_poem(text)


@functools.lru_cache(maxsize=None)
def _all_documents() -> tuple[str, ...]:
  docs = []
  for name in list_works():
    docs.extend(split_into_documents(load_work(name)))
  return tuple(docs)


def load_corpus(
    split: str = "train",
    *,
    validation_every: int = DEFAULT_VALIDATION_EVERY,
) -> list[str]:
  """Returns the embedded Shakespeare corpus as a list of documents.

  Args:
    split: ``"train"``, ``"validation"`` or ``"all"``.
    validation_every: document ``i`` (canonical order) goes to validation iff
      ``i % validation_every == validation_every - 1``. Must be >= 2.

  Returns:
    The documents of the split, in canonical order (shuffling is the pipeline's job).

  Raises:
    ValueError: on an unknown split or ``validation_every < 2``.
  """
  if validation_every < 2:
    raise ValueError(f"validation_every must be >= 2, got {validation_every}")
  docs = _all_documents()
  if split == "all":
    return list(docs)
  if split == "train":
    return [d for i, d in enumerate(docs) if i % validation_every != validation_every - 1]
  if split in ("validation", "eval", "test"):
    return [d for i, d in enumerate(docs) if i % validation_every == validation_every - 1]
  raise ValueError(f"unknown split {split!r}; expected 'train', 'validation' or 'all'")
