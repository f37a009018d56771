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
"""Generators (deterministic, correct, lengths and placements as asked) and scorers."""

import re

import numpy as np
import pytest

from nl_jax.eval import babilong, continual, formal, mqar, niah, perplexity, suite
from nl_jax.eval import examples as examples_lib
from nl_jax.eval.examples import (
    TOKENIZER,
    Example,
    Span,
    make_batch,
    oracle_logits_fn,
    random_logits_fn,
    score,
)


def _decode(ids):
  return TOKENIZER.decode(ids, errors="strict")


def _same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=False):
    np.testing.assert_array_equal(x.tokens, y.tokens)
    assert x.spans == y.spans
    assert x.meta == y.meta


@pytest.mark.parametrize("task", niah.TASKS)
def test_niah_lengths_needles_and_answer(task):
  cfg = niah.NiahConfig(task=task, length=700)
  exs = niah.make_examples(cfg, 6, seed=1)
  _same(exs, niah.make_examples(cfg, 6, seed=1))
  assert _decode(exs[0].tokens) != _decode(niah.make_examples(cfg, 1, seed=2)[0].tokens)
  for ex in exs:
    assert len(ex.prompt) == 700
    text = _decode(ex.tokens)
    for start, needle, depth in zip(ex.meta["needle_starts"], ex.meta["needles"],
                                    ex.meta["depths"], strict=False):
      assert text[start:start + len(needle)] == needle
      # Placed at its depth of the haystack, moved back at most to the previous word start.
      assert start <= 60 + depth * 700 + sum(len(n) for n in ex.meta["needles"])
    key, value = ex.meta["keys"][ex.meta["query"]], ex.meta["values"][ex.meta["query"]]
    # The answer is recoverable from the text: the queried needle states it.
    assert f"for {key} is {value}." in text[:len(ex.prompt)]
    assert _decode(ex.answer()) == " " + value
    assert text[:len(ex.prompt)].endswith(f"for {key}? Answer:")
  if task == "s_niah_3":
    assert all(len(v) == 36 and v.count("-") == 4 for e in exs for v in e.meta["values"])
  if task == "mk_niah_1":
    assert all(len(set(e.meta["keys"])) == cfg.num_needles for e in exs)


def test_niah_fixed_depth_and_errors():
  for depth in (0.0, 0.5, 1.0):
    ex = niah.make_examples(niah.NiahConfig(task="s_niah_2", length=600, depth=depth), 1, 0)[0]
    hay_len = 600 - 130  # instructions + needle + question are ~130 tokens
    start = ex.meta["needle_starts"][0] - 56  # minus the instruction prefix
    assert abs(start - depth * hay_len) < 40
  with pytest.raises(ValueError, match="length=50 is too short"):
    niah.make_examples(niah.NiahConfig(task="s_niah_1", length=50), 1, 0)
  with pytest.raises(ValueError, match="task='niah_9'"):
    niah.NiahConfig(task="niah_9")


def test_mqar_answers_follow_their_keys():
  cfg = mqar.MqarConfig(num_pairs=10, num_queries=6, gap=5)
  exs = mqar.make_examples(cfg, 5, seed=3)
  _same(exs, mqar.make_examples(cfg, 5, seed=3))
  for ex in exs:
    text = _decode(ex.tokens)
    assert len(text) == cfg.length
    context = text[:2 * cfg.num_pairs]
    pairs = dict(zip(context[0::2], context[1::2], strict=False))
    assert len(ex.spans) == 6
    for span in ex.spans:
      assert pairs[text[span.start - 1]] == text[span.start]
  with pytest.raises(ValueError, match="num_queries=5"):
    mqar.MqarConfig(num_pairs=4, num_queries=5)


@pytest.mark.parametrize("language", formal.LANGUAGES)
def test_formal_labels_lengths_balance(language):
  bins = formal.length_bins(16)
  for lo, hi in bins.values():
    cfg = formal.FormalConfig(language=language, min_len=lo, max_len=hi)
    exs = formal.make_examples(cfg, 200, seed=0)
    _same(exs[:20], formal.make_examples(cfg, 20, seed=0))
    labels = np.asarray([e.meta["label"] for e in exs])
    assert 0.35 < labels.mean() < 0.65
    for ex in exs:
      s = ex.meta["string"]
      assert lo <= len(s) <= hi
      assert formal.in_language(language, s) == ex.meta["label"]
      assert _decode(ex.tokens) == "^" + s + "=" + ("T" if ex.meta["label"] else "F")
      assert ex.spans[0].choices == formal.CHOICES
    if language not in ("parity", "aa_star"):
      # Negatives are near misses: the same lengths occur with both labels.
      pos_len = {e.meta["length"] for e in exs if e.meta["label"]}
      neg_len = {e.meta["length"] for e in exs if not e.meta["label"]}
      assert pos_len & neg_len


def test_formal_recognizers():
  cases = {
      "parity": (["", "11", "0101"], ["1", "010"]),
      "aa_star": (["aa", "aaaa"], ["a", "aaa", "ab"]),
      "abab_star": (["abab", "abababab"], ["ab", "abba", "ababab"]),
      "anbn": (["ab", "aaabbb"], ["", "aab", "abab", "ba"]),
      "anbncn": (["abc", "aabbcc"], ["aabbc", "abcabc", "acb"]),
      "shuffle_2": (["()", "([)]", "[(])()"], [")(", "(]", "(()", "([)"]),
  }
  for lang, (pos, neg) in cases.items():
    assert all(formal.in_language(lang, s) for s in pos), lang
    assert not any(formal.in_language(lang, s) for s in neg), lang
  with pytest.raises(ValueError, match="holds no positive"):
    formal.FormalConfig(language="abab_star", min_len=5, max_len=7)


@pytest.mark.parametrize("task", babilong.TASKS)
def test_babilong_facts_in_text_and_answer_recoverable(task):
  cfg = babilong.BabilongConfig(task=task, length=900, num_facts=8)
  exs = babilong.make_examples(cfg, 8, seed=4)
  _same(exs, babilong.make_examples(cfg, 8, seed=4))
  for ex in exs:
    assert len(ex.prompt) == 900
    text = _decode(ex.tokens)
    starts = ex.meta["fact_starts"]
    assert starts == sorted(starts)
    for fact, start in zip(ex.meta["facts"], starts, strict=False):
      assert text[start:start + len(fact)] == fact
    # Replaying the facts in order answers the question (one or two supporting facts).
    where, holder, place = {}, {}, {}
    for f in ex.meta["facts"]:
      w = f.rstrip(". ").split()
      if w[1] == "went":
        where[w[0]] = w[-1]
      elif w[1] == "picked":
        holder[w[-1]] = w[0]
      else:
        holder.pop(w[-1])
        place[w[-1]] = where[w[0]]
    q = ex.meta["question"].rstrip("?").split()[-1]
    truth = where[q] if task == "qa1" else (where[holder[q]] if q in holder else place[q])
    assert truth == ex.meta["answer"] and _decode(ex.answer()) == " " + truth
    assert len(ex.meta["supporting"]) == (1 if task == "qa1" else 2)
    assert set(ex.meta["supporting"]) <= set(starts)


def test_continual_stream_and_forgetting():
  cfg = continual.ContinualConfig(num_tasks=3, num_words=5, num_queries=3, filler=40)
  exs = continual.make_streams(cfg, 2, seed=5)
  _same(exs, continual.make_streams(cfg, 2, seed=5))
  assert len(exs) == 2 * 6
  for ex in exs:
    text = _decode(ex.tokens)
    d = ex.meta["dictionary"]
    assert len(ex.spans) == 3
    for span, word in zip(ex.spans, ex.meta["asked"], strict=False):
      assert text[span.start:span.end] == d[word] and text[span.start - 1] == " "
      assert f"In {ex.meta['language']}, {word} is {d[word]}. " in text[:ex.spans[0].start]
      assert span.group == f"s{ex.meta['stage']}/t{ex.meta['task']}"
  acc = np.array([[1.0, np.nan, np.nan], [0.5, 1.0, np.nan], [0.25, 0.75, 1.0]])
  assert continual.forgetting(acc) == pytest.approx(((1 - 0.25) + (1 - 0.75)) / 2)
  res = score(oracle_logits_fn(), exs)
  np.testing.assert_array_equal(continual.accuracy_matrix(res["by_group"], 3)[2], 1.0)
  np.testing.assert_array_equal(continual.accuracy_matrix(res["token_by_group"], 3)[2], 1.0)


def test_oracle_scores_one_and_random_scores_chance():
  exs = (niah.make_examples(niah.NiahConfig(task="mk_niah_1", length=500), 4, 0)
         + mqar.make_examples(mqar.MqarConfig(num_pairs=6, num_queries=6), 4, 0)
         + babilong.make_examples(babilong.BabilongConfig(length=300), 4, 0))
  assert score(oracle_logits_fn(), exs, batch_size=5)["accuracy"] == 1.0
  rand = score(random_logits_fn(0), exs, batch_size=5)
  assert rand["token_accuracy"] < 0.05 and rand["accuracy"] < 0.05
  fexs = [e for lang in formal.LANGUAGES
          for e in formal.make_examples(formal.FormalConfig(language=lang, max_len=12), 100, 0)]
  assert score(oracle_logits_fn(), fexs, batch_size=64)["accuracy"] == 1.0
  assert abs(score(random_logits_fn(1), fexs, batch_size=64)["accuracy"] - 0.5) < 0.06


def test_score_is_teacher_forced_greedy_and_padding_safe():
  ex = Example(np.array([5, 6, 7, 8, 9], np.int32), (Span(3, 5, "g"),))

  def one_wrong(tokens, seg):
    logits = oracle_logits_fn()(tokens, seg)
    logits[:, 3, :] = 0.0
    logits[:, 3, 4] = 1.0  # the second answer token is predicted wrong
    return logits

  res = score(one_wrong, [ex])
  assert res["accuracy"] == 0.0 and res["token_accuracy"] == 0.5
  # Per group: "h" (one token, predicted at position 4) is right, "g" keeps its 1 of 2.
  ex_h = Example(np.array([1, 2, 3, 4, 5, 6], np.int32), (Span(5, 6, "h"),))
  res = score(one_wrong, [ex, ex_h], batch_size=1)
  assert res["by_group"] == {"g": 0.0, "h": 1.0}
  assert res["token_by_group"] == {"g": 0.5, "h": 1.0}
  assert res["token_accuracy"] == pytest.approx(2 / 3)
  batch = make_batch([ex, Example(np.arange(3, 10, dtype=np.int32), (Span(1, 2),))])
  assert batch["inputs"].shape == (2, 7) and batch["segment_ids"][0, 5:].sum() == 0
  np.testing.assert_array_equal(batch["loss_mask"][0], [0, 0, 1, 1, 0, 0, 0])
  with pytest.raises(ValueError, match="span"):
    Example(np.arange(4, dtype=np.int32), (Span(0, 2),))


def test_perplexity_windows_and_buckets():
  w = perplexity.windows(64, 3, seed=0)
  np.testing.assert_array_equal(w, perplexity.windows(64, 3, seed=0))
  assert w.shape == (3, 64)
  nll = perplexity.position_nll(oracle_logits_fn(), w)
  assert nll.shape == (63,) and nll.max() < 1e-6
  rows = perplexity.bucket(np.arange(100.0), first=16)
  assert [(r["start"], r["end"]) for r in rows] == [(0, 16), (16, 32), (32, 64), (64, 100)]
  twice = perplexity.read_twice(oracle_logits_fn(), "to be or not to be")
  assert twice["first_ppl"] == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["transformer_pp", "titans"])
def test_position_nll_reset_every_sees_only_the_current_block(name):
  import flax.nnx as nnx  # noqa: PLC0415

  from nl_jax.eval import runner  # noqa: PLC0415
  from nl_jax.models import registry  # noqa: PLC0415

  model = registry.build_model(registry.model_config(name, "tiny", n_layers=1),
                               rngs=nnx.Rngs(0))
  fn = runner.make_logits_fn(model)
  w = perplexity.windows(48, 2, seed=1)
  full = perplexity.position_nll(fn, w)
  reset = perplexity.position_nll(fn, w, reset_every=16)
  for b in range(3):  # each block alone; its last position predicts the next block's token
    alone = perplexity.position_nll(fn, w[:, 16 * b:16 * b + 16])
    np.testing.assert_allclose(reset[16 * b:16 * b + 15], alone, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(reset[:16], full[:16], rtol=1e-5, atol=1e-5)
  assert np.abs(reset[16:] - full[16:]).max() > 1e-3  # the context beyond a block counts
  with pytest.raises(ValueError, match="reset_every=0"):
    perplexity.position_nll(fn, w, reset_every=0)


def test_suite_lengths_and_table():
  assert suite.parse_lengths("1k, 2K,300") == [1024, 2048, 300]
  with pytest.raises(ValueError, match="cannot parse"):
    suite.parse_lengths("1m")
  rows = suite.run(oracle_logits_fn(), "mqar", [40, 80], num_examples=2)
  assert [r["value"] for r in rows] == [1.0, 1.0]
  table = suite.format_table(rows)
  # One-token answers: chance 1/259 = 0.4%; the baseline is the most frequent value.
  assert table.splitlines()[0] == "| subtask | metric | chance | baseline | 40 | 80 |"
  assert re.search(r"\| mqar \| accuracy \| 0\.4 \| [\d.]+(-[\d.]+)? \| 100\.0 \| 100\.0 \|",
                   table), table


def test_chance_and_constant_baseline():
  """Classification by class logit: chance 1/#choices; the baseline is the majority class."""
  fexs = formal.make_examples(formal.FormalConfig(language="parity", max_len=12), 200, 0)
  assert examples_lib.chance_accuracy(fexs) == pytest.approx(0.5)
  labels = [tuple(e.tokens[s.start:s.end]) for e in fexs for s in e.spans]
  majority = max(labels.count(x) for x in set(labels)) / len(labels)
  assert examples_lib.constant_answer_accuracy(fexs) == pytest.approx(majority)
  # Free-form answers: uniform guessing over 259 byte tokens is ~0; a constant answer
  # cannot recall a random needle.
  nexs = niah.make_examples(niah.NiahConfig(task="s_niah_1", length=300), 20, 0)
  assert examples_lib.chance_accuracy(nexs) < 1e-6
  assert examples_lib.constant_answer_accuracy(nexs) <= 0.1
  # Random logits score near chance, and every table row carries both references.
  rows = suite.run(random_logits_fn(2), "formal", [12], num_examples=50)
  assert all(r["chance"] == pytest.approx(0.5) and 0.0 <= r["baseline"] <= 1.0 for r in rows)
  ppl = suite.run(oracle_logits_fn(), "ppl", [64], num_examples=2)
  assert all(r["chance"] == 259.0 for r in ppl)
  assert "| 259.000 | - |" in suite.format_table(ppl)


def test_progress_line_per_subtask_and_length():
  lines = []
  suite.run(oracle_logits_fn(), "niah", [400, 500], num_examples=1, progress=lines.append)
  assert len(lines) == 2 * len(niah.TASKS)
  assert lines[0].startswith("niah length 400 (1/2), s_niah_1 (1/4): accuracy 100.0%")
  assert lines[-1].startswith("niah length 500 (2/2), mk_niah_1 (4/4)")


def test_task_batches_have_the_trainers_schema():
  """make_batch / lm_batch make what the data pipeline makes (nl_jax.data.batch), and the
  task loop names a missing key before any work."""
  import optax

  from nl_jax.data import batch as batch_lib
  from nl_jax.eval import fit
  from tests.eval.test_runner import _RunningCount

  ex = Example(np.array([5, 6, 7, 8, 9], np.int32), (Span(3, 5, "g"),))
  batch = make_batch([ex, Example(np.arange(3, 10, dtype=np.int32), (Span(1, 2),))])
  lm = fit.lm_batch(np.random.default_rng(0), 2, 16)
  for b in (batch, lm):
    assert sorted(b) == sorted(batch_lib.BATCH_KEYS)
    assert {k: v.dtype for k, v in b.items()} == {
        k: np.dtype(np.float32 if k == "loss_mask" else np.int32) for k in batch_lib.BATCH_KEYS}
  # positions restart with the padding's segment 0 (right padding of the 5-token example)
  np.testing.assert_array_equal(batch["positions"], [[0, 1, 2, 3, 4, 0, 1], np.arange(7)])
  np.testing.assert_array_equal(lm["positions"], np.tile(np.arange(16), (2, 1)))
  no_positions = {k: v for k, v in lm.items() if k != "positions"}
  with pytest.raises(ValueError, match=r"fit.train: the batch has no \['positions'\]"):
    fit.train(_RunningCount(vocab=7), iter([no_positions]), 1, optax.sgd(0.1))
