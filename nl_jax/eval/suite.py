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

import time
from typing import Any

from nl_jax.eval import babilong, continual, formal, mqar, niah, perplexity
from nl_jax.eval.examples import LogitsFn, score

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


def run(logits_fn: LogitsFn, task: str, lengths: list[int], *, num_examples: int = 20,
        seed: int = 0, batch_size: int = 4, pad_to_multiple: int = 1) -> list[dict[str, Any]]:
  """Runs ``task`` at every length; returns result rows (subtask, length, metric, value...)."""
  rows = []
  for length in lengths:
    t0 = time.time()
    if task == "ppl":
      nll = perplexity.position_nll(logits_fn, perplexity.windows(length, num_examples, seed),
                                    batch_size)
      for b in perplexity.bucket(nll):
        rows.append({"task": task, "subtask": f"pos {b['start']}-{b['end']}", "length": length,
                     "metric": "ppl", "value": b["ppl"], "n": num_examples,
                     "seconds": time.time() - t0})
      continue
    for sub, exs in examples_for(task, length, num_examples, seed).items():
      res = score(logits_fn, exs, batch_size, pad_to_multiple)
      if task == "continual":
        cfg = continual.ContinualConfig()
        acc = continual.accuracy_matrix(res["by_group"], cfg.num_tasks)
        for s in range(cfg.num_tasks):
          for j in range(s + 1):
            rows.append({"task": task, "subtask": f"after stage {s}: task {j}",
                         "length": length, "metric": "accuracy", "value": float(acc[s, j]),
                         "n": num_examples, "seconds": time.time() - t0})
        rows.append({"task": task, "subtask": "forgetting", "length": length,
                     "metric": "forgetting", "value": continual.forgetting(acc),
                     "n": num_examples, "seconds": time.time() - t0})
        continue
      rows.append({"task": task, "subtask": sub, "length": length, "metric": "accuracy",
                   "value": res["accuracy"], "n": res["num_spans"],
                   "seconds": time.time() - t0})
  return rows


def format_table(rows: list[dict[str, Any]]) -> str:
  """A markdown table: one row per subtask, one column per length."""
  lengths = sorted({r["length"] for r in rows})
  subtasks = list(dict.fromkeys(r["subtask"] for r in rows))
  cell = {(r["subtask"], r["length"]): r for r in rows}
  head = "| subtask | metric | " + " | ".join(str(n) for n in lengths) + " |"
  lines = [head, "|" + "---|" * (len(lengths) + 2)]
  for sub in subtasks:
    metric = next(r["metric"] for r in rows if r["subtask"] == sub)
    vals = []
    for n in lengths:
      r = cell.get((sub, n))
      if r is None:
        vals.append("")
      elif r["metric"] == "accuracy":
        vals.append(f"{100 * r['value']:.1f}")
      else:
        vals.append(f"{r['value']:.3f}")
    lines.append(f"| {sub} | {metric} | " + " | ".join(vals) + " |")
  return "\n".join(lines)
