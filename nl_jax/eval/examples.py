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
"""Task examples, batching and scoring shared by every evaluation task.

An `Example` is one token sequence (prompt and answers already in place, byte tokens) plus
the spans of answer tokens inside it. Scoring is teacher-forced: the logits at position
``s - 1 .. e - 2`` must predict the answer tokens ``tokens[s:e]``. For a causal model this is
exactly greedy decoding: greedy decoding reproduces the answer iff every argmax along the
teacher-forced answer is the answer token (once a greedy token is wrong the answer is lost
either way, and while all are right the decoded context equals the teacher-forced one). One
forward pass therefore scores every span, including the interleaved answers of MQAR.

A span may carry ``choices`` (token ids): then the argmax is taken over those tokens only,
which turns recognition tasks (formal languages) into classification by class logit.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from nl_jax.data.batch import document_positions
from nl_jax.data.tokenizers import PAD_ID, ByteTokenizer

TOKENIZER = ByteTokenizer()

# (tokens_BxT int32, segment_ids_BxT int32) -> logits_BxTxV float32, numpy or jax.
LogitsFn = Callable[[np.ndarray, np.ndarray], Any]


@dataclasses.dataclass(frozen=True)
class Span:
  """Answer tokens ``tokens[start:end]`` of an example, scored as one unit.

  Attributes:
    start: index of the first answer token (>= 1: something must predict it).
    end: one past the last answer token.
    group: label used to aggregate accuracy (e.g. a task name or a stage/task pair).
    choices: if set, the candidate token ids; the prediction is the argmax over them.
  """

  start: int
  end: int
  group: str = ""
  choices: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Example:
  """A token sequence with scored answer spans.

  Attributes:
    tokens: int32 [T] byte-token ids (prompt followed by / interleaved with answers).
    spans: the answer spans.
    meta: task-specific facts (needle positions, labels, lengths) for tests and reports.
  """

  tokens: np.ndarray
  spans: tuple[Span, ...]
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    tokens = np.asarray(self.tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f"Example.tokens must be a 1-D integer array, got {tokens.dtype} "
                       f"shape {tokens.shape}")
    for span in self.spans:
      if not 1 <= span.start < span.end <= tokens.shape[0]:
        raise ValueError(f"span [{span.start}, {span.end}) must satisfy 1 <= start < end <= "
                         f"len(tokens) = {tokens.shape[0]}")

  @property
  def prompt(self) -> np.ndarray:
    """Tokens before the first answer (what a generation-based evaluator would feed)."""
    return np.asarray(self.tokens[:self.spans[0].start], np.int32)

  def answer(self, i: int = 0) -> np.ndarray:
    span = self.spans[i]
    return np.asarray(self.tokens[span.start:span.end], np.int32)


def encode(text: str) -> np.ndarray:
  """Byte-encodes ASCII ``text`` (one token per character, so char index == token index)."""
  if not text.isascii():
    raise ValueError("task text must be ASCII so that character and token positions agree; "
                     f"got non-ASCII characters in {text[:60]!r}")
  return TOKENIZER.encode(text)


def example_from_parts(parts: Sequence[tuple[str, str | None]], meta=None) -> Example:
  """Builds an Example from (text, group) parts; parts with a group are answer spans."""
  pieces, spans, pos = [], [], 0
  for text, group in parts:
    ids = encode(text)
    if group is not None:
      spans.append(Span(pos, pos + len(ids), group))
    pieces.append(ids)
    pos += len(ids)
  return Example(np.concatenate(pieces).astype(np.int32), tuple(spans), dict(meta or {}))


def make_batch(examples: Sequence[Example], pad_to_multiple: int = 1,
               length: int | None = None) -> dict[str, np.ndarray]:
  """Right-pads examples into one batch.

  Right padding never changes a causal model's predictions at real positions, so padded and
  unpadded scoring agree. Padding has ``segment_ids == 0``.

  Args:
    examples: the rows.
    pad_to_multiple: round the batch length up to this multiple.
    length: pad to at least this length (one shape for every batch: one compilation).

  Returns:
    A batch of the one schema (nl_jax.data.batch): ``inputs`` / ``segment_ids`` /
    ``positions`` int32 [B, T], ``targets`` int32 [B, T] (inputs shifted left),
    ``loss_mask`` float32 [B, T] (1 where the target is an answer token).
  """
  if not examples:
    raise ValueError("make_batch needs at least one example")
  if pad_to_multiple < 1:
    raise ValueError(f"pad_to_multiple must be >= 1, got {pad_to_multiple}")
  t_max = max(max(len(e.tokens) for e in examples), length or 0)
  t_max = -(-t_max // pad_to_multiple) * pad_to_multiple
  b = len(examples)
  tokens = np.full((b, t_max), PAD_ID, np.int32)
  segment_ids = np.zeros((b, t_max), np.int32)
  loss_mask = np.zeros((b, t_max), np.float32)
  for i, ex in enumerate(examples):
    n = len(ex.tokens)
    tokens[i, :n] = ex.tokens
    segment_ids[i, :n] = 1
    for span in ex.spans:
      loss_mask[i, span.start - 1:span.end - 1] = 1.0
  targets = np.concatenate([tokens[:, 1:], np.full((b, 1), PAD_ID, np.int32)], axis=1)
  return {"inputs": tokens, "segment_ids": segment_ids, "targets": targets,
          "positions": document_positions(segment_ids),
          "loss_mask": loss_mask}


def span_predictions(logits_TxV: np.ndarray, tokens_T: np.ndarray, span: Span):
  """Returns (predicted ids, correct flags) of one span under teacher forcing."""
  logits_AxV = np.asarray(logits_TxV[span.start - 1:span.end - 1], np.float32)
  if span.choices is not None:
    choices = np.asarray(span.choices)
    pred_A = choices[np.argmax(logits_AxV[:, choices], axis=-1)]
  else:
    pred_A = np.argmax(logits_AxV, axis=-1)
  return pred_A, pred_A == tokens_T[span.start:span.end]


def score(logits_fn: LogitsFn, examples: Sequence[Example], batch_size: int = 8,
          pad_to_multiple: int = 1, length: int | None = None) -> dict[str, Any]:
  """Scores examples with a model's logits.

  Args:
    logits_fn: ``(tokens_BxT, segment_ids_BxT) -> logits_BxTxV``.
    examples: examples to score (batched in order; order does not change the result).
    batch_size: examples per call.
    pad_to_multiple: pad each batch's length to this multiple (chunked models need their
      ``alignment``; also fewer distinct shapes to compile).
    length: pad every batch to at least this length (share one compiled shape across calls).

  Returns:
    ``accuracy`` (exact match over all spans), ``token_accuracy``, ``num_spans``,
    ``by_group`` {group: accuracy}, ``token_by_group`` {group: token accuracy}, and
    ``per_example`` lists of per-span correctness.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  span_ok, tok_ok, groups, tok_groups, per_example = [], [], [], [], []
  # One shape for every call (a single compilation): pad the length to the longest example
  # and the last, partial batch with copies of its first example (their scores are dropped).
  length = max(max(len(e.tokens) for e in examples), length or 0)
  for i in range(0, len(examples), batch_size):
    chunk = list(examples[i:i + batch_size])
    batch = make_batch(chunk + [chunk[0]] * (min(batch_size, len(examples)) - len(chunk)),
                       pad_to_multiple, length)
    logits_BxTxV = np.asarray(logits_fn(batch["inputs"], batch["segment_ids"]))
    if logits_BxTxV.shape[:2] != batch["inputs"].shape:
      raise ValueError(f"logits_fn returned shape {logits_BxTxV.shape}; expected "
                       f"[{batch['inputs'].shape[0]}, {batch['inputs'].shape[1]}, vocab]")
    for b, ex in enumerate(chunk):
      flags = []
      for span in ex.spans:
        _, ok_A = span_predictions(logits_BxTxV[b], ex.tokens, span)
        flags.append(bool(ok_A.all()))
        tok_ok.extend(ok_A.tolist())
        tok_groups.extend([span.group] * ok_A.size)
        groups.append(span.group)
      span_ok.extend(flags)
      per_example.append(flags)
  span_ok_arr = np.asarray(span_ok, np.float64)
  tok_ok_arr, by_group, token_by_group = np.asarray(tok_ok, np.float64), {}, {}
  for g in sorted(set(groups)):
    by_group[g] = float(span_ok_arr[np.asarray([x == g for x in groups])].mean())
    token_by_group[g] = float(tok_ok_arr[np.asarray([x == g for x in tok_groups])].mean())
  return {
      "accuracy": float(span_ok_arr.mean()) if span_ok else float("nan"),
      "token_accuracy": float(np.mean(tok_ok)) if tok_ok else float("nan"),
      "num_spans": len(span_ok),
      "by_group": by_group,
      "token_by_group": token_by_group,
      "per_example": per_example,
  }


def chance_accuracy(examples: Sequence[Example], vocab_size: int = TOKENIZER.vocab_size) -> float:
  """Expected exact-match accuracy of uniform guessing, averaged over the spans.

  A span with ``choices`` is guessed among them (1 / #choices); a free span token by token
  among the whole vocabulary ((1 / V) ** span length, ~0 for any multi-token answer).
  """
  probs = [1.0 / len(span.choices) if span.choices else float(vocab_size) ** -(span.end - span.start)
           for ex in examples for span in ex.spans]
  return float(np.mean(probs)) if probs else float("nan")


def constant_answer_accuracy(examples: Sequence[Example]) -> float:
  """Accuracy of the best constant predictor: always the most frequent answer of the set.

  The trivial baseline a model must beat (the majority class of a classification task, the
  most common answer of a QA task); it is computed from the answers themselves, so it is an
  upper bound for any input-blind predictor.
  """
  answers = [tuple(np.asarray(ex.tokens[span.start:span.end]).tolist())
             for ex in examples for span in ex.spans]
  if not answers:
    return float("nan")
  _, counts = np.unique(np.asarray([hash(a) for a in answers]), return_counts=True)
  return float(counts.max() / len(answers))


def oracle_logits_fn(vocab_size: int = TOKENIZER.vocab_size) -> LogitsFn:
  """A perfect next-token predictor (one-hot on the true next token): scores 1 everywhere."""

  def fn(tokens_BxT, segment_ids_BxT):
    del segment_ids_BxT
    next_BxT = np.concatenate([tokens_BxT[:, 1:], tokens_BxT[:, -1:]], axis=1)
    logits = np.full(tokens_BxT.shape + (vocab_size,), -10.0, np.float32)
    np.put_along_axis(logits, next_BxT[..., None], 10.0, axis=-1)
    return logits

  return fn


def random_logits_fn(seed: int, vocab_size: int = TOKENIZER.vocab_size) -> LogitsFn:
  """I.i.d. Gaussian logits: scores chance (1/|choices| per token, ~0 for long answers)."""
  rng = np.random.default_rng(seed)

  def fn(tokens_BxT, segment_ids_BxT):
    del segment_ids_BxT
    return rng.standard_normal(tokens_BxT.shape + (vocab_size,)).astype(np.float32)

  return fn
