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
"""Tests for the byte and SentencePiece tokenizers."""

import pickle

import numpy as np
import pytest

from nl_jax.data import shakespeare, tokenizers

TEXTS = ["", "To be, or not to be", "héllo wörld 日本語 🎉\n\t\x00 end",
         " lead\n\n  spaces  "]


@pytest.mark.parametrize("text", TEXTS)
def test_byte_tokenizer_round_trip(text):
  tok = tokenizers.ByteTokenizer()
  ids = tok.encode(text)
  assert ids.dtype == np.int32
  assert len(ids) == len(text.encode("utf-8"))
  assert ids.min(initial=3) >= 3 and ids.max(initial=3) < tok.vocab_size
  assert tok.decode(ids, errors="strict") == text


def test_byte_tokenizer_layout():
  tok = tokenizers.ByteTokenizer()
  assert (tok.vocab_size, tok.pad_id, tok.eos_id, tok.bos_id) == (259, 0, 1, 2)
  np.testing.assert_array_equal(tok.encode("A"), [ord("A") + 3])
  # Specials and out-of-range ids are dropped; broken UTF-8 is replaced, not raised.
  assert tok.decode([2, ord("h") + 3, ord("i") + 3, 1, 0, 999]) == "hi"
  assert tok.decode([0xE6 + 3]) == "\ufffd"


def test_byte_tokenizer_round_trips_whole_corpus():
  tok = tokenizers.ByteTokenizer()
  for doc in shakespeare.load_corpus("validation"):
    assert tok.decode(tok.encode(doc), errors="strict") == doc


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
  pytest.importorskip("sentencepiece")
  prefix = tmp_path_factory.mktemp("spm") / "shakespeare_1k"
  return tokenizers.train_sentencepiece(shakespeare.load_corpus("train"), 1024, prefix)


def test_sentencepiece_round_trip(spm_model):
  tok = tokenizers.SentencePieceTokenizer(spm_model)
  assert tok.vocab_size == 1024
  assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
  for text in TEXTS + shakespeare.load_corpus("validation")[:5]:
    ids = tok.encode(text)
    assert ids.dtype == np.int32
    assert tok.decode(ids) == text
  # Subword tokens compress English text well below one token per byte.
  doc = shakespeare.load_corpus("validation")[0]
  assert len(tok.encode(doc)) < 0.5 * len(doc)


def test_sentencepiece_pickles_without_processor(spm_model):
  tok = tokenizers.SentencePieceTokenizer(spm_model)
  ids = tok.encode("Good night, sweet prince")
  clone = pickle.loads(pickle.dumps(tok))
  assert clone == tok
  np.testing.assert_array_equal(clone.encode("Good night, sweet prince"), ids)


def test_get_tokenizer(spm_model):
  assert isinstance(tokenizers.get_tokenizer("byte"), tokenizers.ByteTokenizer)
  for name in (spm_model, f"spm:{spm_model}", f"sentencepiece:{spm_model}"):
    assert tokenizers.get_tokenizer(name).model_path == spm_model
  tok = tokenizers.ByteTokenizer()
  assert tokenizers.get_tokenizer(tok) is tok
  with pytest.raises(ValueError, match="unknown tokenizer"):
    tokenizers.get_tokenizer("gpt5")
  with pytest.raises(FileNotFoundError):
    tokenizers.get_tokenizer("spm:/nonexistent/x.model")


def test_train_spm_cli(tmp_path):
  pytest.importorskip("sentencepiece")
  from nl_jax.data import train_spm  # pylint: disable=g-import-not-at-top

  path = train_spm.main(["--vocab_size", "512", "--output", str(tmp_path / "m" / "spm")])
  assert path.endswith("spm.model")
  assert (tmp_path / "m" / "spm.vocab").is_file()
  assert tokenizers.get_tokenizer(path).vocab_size == 512
