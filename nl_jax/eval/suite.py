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
"""Named evaluation suites: task name + length -> examples, and running them on a model.

================  ====================================================  =================
task              subtasks                                              ``length`` means
================  ====================================================  =================
``niah``          s_niah_1, s_niah_2, s_niah_3, mk_niah_1               prompt tokens
``mqar``          mqar (min(36, L // 4) pairs, all queried, gap fill)   sequence tokens
``babilong``      qa1, qa2                                              prompt tokens
``formal``        the 6 languages x {bin0, bin1}                        max train length
``continual``     s<stage>/t<task> cells of the accuracy matrix         filler per stage
``ppl``           perplexity per position bucket                        window tokens
================  ====================================================  =================
"""

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from nl_jax.eval import babilong, continual, formal, mqar, niah, perplexity
from nl_jax.eval.examples import (
    TOKENIZER,
    LogitsFn,
    chance_accuracy,
    constant_answer_accuracy,
    score,
)

TASKS = ("niah", "mqar", "babilong", "formal", "continual", "ppl")


def parse_lengths(spec: str) -> list[int]:
  """``"1k,2k,4096"`` -> [1024, 2048, 4096]."""
  out = []
  for item in spec.split(","):
    item = item.strip().lower()
    if not item:
      continue
    mult = 1024 if item.endswith("k") else 1
    try:
      value = int(item[:-1] if item.endswith("k") else item) * mult
    except ValueError:
      raise ValueError(f"--lengths: cannot parse {item!r}; use e.g. 1k,2k,4096") from None
    if value < 1:
      raise ValueError(f"--lengths: {item!r} must be positive")
    out.append(value)
  if not out:
    raise ValueError(f"--lengths: no length in {spec!r}")
  return out


def examples_for(task: str, length: int, num_examples: int, seed: int) -> dict[str, list]:
  """{subtask: examples} of ``task`` at ``length`` (see the module table)."""
  if task == "niah":
    return {t: niah.make_examples(niah.NiahConfig(task=t, length=length), num_examples, seed)
            for t in niah.TASKS}
  if task == "mqar":
    pairs = min(len(mqar.KEY_TOKENS), max(length // 4, 1))
    cfg = mqar.MqarConfig(num_pairs=pairs, num_queries=pairs, gap=max(length - 4 * pairs, 0))
    return {"mqar": mqar.make_examples(cfg, num_examples, seed)}
  if task == "babilong":
    return {t: babilong.make_examples(babilong.BabilongConfig(task=t, length=length),
                                      num_examples, seed) for t in babilong.TASKS}
  if task == "formal":
    out = {}
    for lang in formal.LANGUAGES:
      for name, (lo, hi) in formal.length_bins(length).items():
        cfg = formal.FormalConfig(language=lang, min_len=lo, max_len=hi)
        out[f"{lang}/{name}"] = formal.make_examples(cfg, num_examples, seed)
    return out
  if task == "continual":
    cfg = continual.ContinualConfig(filler=length)
    return {"stream": continual.make_streams(cfg, num_examples, seed)}
  raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")


def _span_group(examples, group: str) -> list:
  """The examples restricted to the spans of one group (for per-cell chance levels)."""
  out = []
  for ex in examples:
    spans = tuple(s for s in ex.spans if s.group == group)
    if spans:
      out.append(dataclasses.replace(ex, spans=spans))
  return out


def run(logits_fn: LogitsFn, task: str, lengths: list[int], *, num_examples: int = 20,
        seed: int = 0, batch_size: int = 4, pad_to_multiple: int = 1,
        progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
  """Runs ``task`` at every length; returns result rows.

  Each row: ``task, subtask, length, metric, value, n, seconds`` and, for accuracies,
  ``chance`` (uniform guessing, `chance_accuracy`) and ``baseline`` (always the most frequent
  answer, `constant_answer_accuracy`); for perplexity ``chance`` is the vocabulary size (the
  perplexity of uniform guessing). ``progress`` gets one line per finished subtask and length.
  """
  rows = []
  say = progress or (lambda _: None)
  for li, length in enumerate(lengths):
    t0 = time.time()
    where = f"{task} length {length} ({li + 1}/{len(lengths)})"
    if task == "ppl":
      nll = perplexity.position_nll(logits_fn, perplexity.windows(length, num_examples, seed),
                                    batch_size)
      for b in perplexity.bucket(nll):
        rows.append({"task": task, "subtask": f"pos {b['start']}-{b['end']}", "length": length,
                     "metric": "ppl", "value": b["ppl"], "n": num_examples,
                     "chance": float(TOKENIZER.vocab_size), "baseline": None,
                     "seconds": time.time() - t0})
      say(f"{where}: {len(rows)} position buckets, {time.time() - t0:.1f}s")
      continue
    subtasks = examples_for(task, length, num_examples, seed)
    for si, (sub, exs) in enumerate(subtasks.items()):
      res = score(logits_fn, exs, batch_size, pad_to_multiple)
      if task == "continual":
        cfg = continual.ContinualConfig()
        acc = continual.accuracy_matrix(res["by_group"], cfg.num_tasks)
        for s in range(cfg.num_tasks):
          for j in range(s + 1):
            cell = _span_group(exs, f"s{s}/t{j}")
            rows.append({"task": task, "subtask": f"after stage {s}: task {j}",
                         "length": length, "metric": "accuracy", "value": float(acc[s, j]),
                         "n": num_examples, "chance": chance_accuracy(cell),
                         "baseline": constant_answer_accuracy(cell),
                         "seconds": time.time() - t0})
        rows.append({"task": task, "subtask": "forgetting", "length": length,
                     "metric": "forgetting", "value": continual.forgetting(acc),
                     "n": num_examples, "chance": None, "baseline": None,
                     "seconds": time.time() - t0})
      else:
        rows.append({"task": task, "subtask": sub, "length": length, "metric": "accuracy",
                     "value": res["accuracy"], "n": res["num_spans"],
                     "chance": chance_accuracy(exs), "baseline": constant_answer_accuracy(exs),
                     "seconds": time.time() - t0})
      say(f"{where}, {sub} ({si + 1}/{len(subtasks)}): accuracy {100 * res['accuracy']:.1f}% "
          f"over {res['num_spans']} answers, {time.time() - t0:.1f}s")
  return rows


def _fmt(value, metric: str) -> str:
  if value is None:
    return "-"
  return f"{100 * value:.1f}" if metric == "accuracy" else f"{value:.3f}"


def _reference(rows: list[dict[str, Any]], key: str, metric: str) -> str:
  """One reference value (chance / baseline) for a subtask: the value, or its range."""
  vals = [r.get(key) for r in rows if r.get(key) is not None]
  if not vals:
    return "-"
  lo, hi = min(vals), max(vals)
  if _fmt(lo, metric) == _fmt(hi, metric):
    return _fmt(lo, metric)
  return f"{_fmt(lo, metric)}-{_fmt(hi, metric)}"


def format_table(rows: list[dict[str, Any]]) -> str:
  """A markdown table: one row per subtask, a chance and a baseline column, one per length.

  Accuracies are in %; ``chance`` is uniform guessing, ``baseline`` always the most frequent
  answer (for perplexity, chance is the vocabulary size; ``-`` where none applies).
  """
  lengths = sorted({r["length"] for r in rows})
  subtasks = list(dict.fromkeys(r["subtask"] for r in rows))
  cell = {(r["subtask"], r["length"]): r for r in rows}
  head = ("| subtask | metric | chance | baseline | " + " | ".join(str(n) for n in lengths)
          + " |")
  lines = [head, "|" + "---|" * (len(lengths) + 4)]
  for sub in subtasks:
    sub_rows = [r for r in rows if r["subtask"] == sub]
    metric = sub_rows[0]["metric"]
    vals = []
    for n in lengths:
      r = cell.get((sub, n))
      vals.append("" if r is None else _fmt(r["value"], metric))
    lines.append(f"| {sub} | {metric} | {_reference(sub_rows, 'chance', metric)} | "
                 f"{_reference(sub_rows, 'baseline', metric)} | " + " | ".join(vals) + " |")
  return "\n".join(lines)
