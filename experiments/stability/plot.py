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
"""Plots (and the long-run table) for experiments/stability/README.md from saved metrics.

  python experiments/stability/plot.py \\
      --run none=experiments/stability/results/metrics_value_norm_none.jsonl \\
      --run l2=experiments/stability/results/metrics_value_norm_l2.jsonl \\
      --probe none=experiments/stability/results/probe_d1_none_300.json \\
      --probe l2=experiments/stability/results/probe_f1_l2_300.json \\
      --out experiments/stability/results

``--long label=metrics.jsonl`` (repeated) draws ``long_runs.png`` (train and held-out loss,
the SMT inner losses, the output memory's ||W1|| and the CMS drift of every block over
training) and writes ``long_runs.md``: per run the last step, whether any logged value was
non-finite, the held-out loss at each eval, and the first and last SMT inner loss per block.
"""

import json
import math
import os

from absl import app
from absl import flags
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top

_RUN = flags.DEFINE_multi_string("run", [], "label=metrics.jsonl")
_PROBE = flags.DEFINE_multi_string("probe", [], "label=probe.json")
_LONG = flags.DEFINE_multi_string("long", [], "label=metrics.jsonl of a long run")
_OUT = flags.DEFINE_string("out", "experiments/stability/results", "output folder")

TRAIN_KEYS = (("loss", "train loss"), ("aux/block_1/smt/v_rms", "block 1 ||v|| (RMS)"),
              ("aux/block_1/smt/inner_loss", "block 1 SMT inner loss"),
              ("aux/block_1/smt/out_w1_norm", "block 1 output memory ||W1||"))
LONG_KEYS = (("loss", "train loss"), ("eval", "held-out loss"),
             ("smt/inner_loss", "SMT inner loss (per block)"),
             ("smt/out_w1_norm", "output memory ||W1|| (per block)"),
             ("cms/level_1/drift", "CMS level 1 drift (per block)"))
PROBE_KEYS = (("nll", "NLL of the call"), ("block_1/smt/out_w1_norm", "block 1 ||W1||"),
              ("block_1/cms/level_1/drift", "block 1 CMS level 1 drift"))


def _rows(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _value(v):
  v = float(v)
  return v if math.isfinite(v) else float("nan")


def _block_keys(rows, suffix):
  keys = sorted({k for r in rows for k in r if k.startswith("aux/block_") and k.endswith(suffix)})
  return [(k, k.split("/")[1]) for k in keys]


def _long_runs(specs, out):
  """long_runs.png and long_runs.md from the metrics of long training runs."""
  fig, axes = plt.subplots(1, len(LONG_KEYS), figsize=(3.6 * len(LONG_KEYS), 3.2))
  lines = ["| run | last step | non-finite | held-out loss by step | SMT inner loss first -> last "
           "(per block) |", "|---|---|---|---|---|"]
  for i, spec in enumerate(specs):
    label, path = spec.split("=", 1)
    rows = _rows(path)
    train = [r for r in rows if r.get("split") == "train"]
    evals = [r for r in rows if r.get("split") == "eval"]
    color = f"C{i}"
    for ax, (key, title) in zip(axes, LONG_KEYS, strict=True):
      ax.set_title(title, fontsize=9)
      ax.set_xlabel("step")
      if key == "loss":
        ax.plot([r["step"] for r in train], [_value(r["loss"]) for r in train], color=color,
                label=label, lw=0.8)
      elif key == "eval":
        ax.plot([r["step"] for r in evals], [_value(r["loss"]) for r in evals], color=color,
                marker=".")
      else:
        for j, (k, _) in enumerate(_block_keys(train, key)):
          ax.plot([r["step"] for r in train], [_value(r.get(k, "nan")) for r in train],
                  color=color, ls=("-", "--", ":", "-.")[j % 4], lw=0.8)
    bad = [r["step"] for r in train
           if any(isinstance(v, (int, float, str)) and k != "split" and not math.isfinite(
               _float(v)) for k, v in r.items())]
    inner = ", ".join(f"{blk} {_value(train[0][k]):.3f} -> {_value(train[-1][k]):.3f}"
                      for k, blk in _block_keys(train, "smt/inner_loss")) if train else "-"
    held = ", ".join(f"{r['step']}: {_value(r['loss']):.4f}" for r in evals)
    last = train[-1]["step"] if train else 0
    lines.append(f"| {label} | {last} | {'at ' + str(bad[0]) if bad else 'none'} | {held} | "
                 f"{inner} |")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "long_runs.png"), dpi=110)
  with open(os.path.join(out, "long_runs.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


def _float(v):
  try:
    return float(v)
  except (TypeError, ValueError):
    return float("nan")  # non-finite values are logged as strings ("nan", "inf")


def main(argv):
  del argv
  os.makedirs(_OUT.value, exist_ok=True)
  if _LONG.value:
    _long_runs(_LONG.value, _OUT.value)
  if _RUN.value:
    fig, axes = plt.subplots(1, len(TRAIN_KEYS), figsize=(4 * len(TRAIN_KEYS), 3.2))
    for spec in _RUN.value:
      label, path = spec.split("=", 1)
      rows = [r for r in _rows(path) if r.get("split") == "train"]
      for ax, (key, title) in zip(axes, TRAIN_KEYS, strict=True):
        ax.plot([r["step"] for r in rows], [_value(r.get(key, "nan")) for r in rows],
                label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    axes[-1].set_yscale("log")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(_OUT.value, "training.png"), dpi=110)
  if _PROBE.value:
    fig, axes = plt.subplots(1, len(PROBE_KEYS), figsize=(4 * len(PROBE_KEYS), 3.2))
    for spec in _PROBE.value:
      label, path = spec.split("=", 1)
      with open(path, encoding="utf-8") as f:
        probe = json.load(f)
      rows = probe["rows"]
      for ax, (key, title) in zip(axes, PROBE_KEYS, strict=True):
        ax.plot([r["start"] + probe["call_len"] for r in rows],
                [_value(r.get(key, "nan")) for r in rows], marker=".", label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("tokens streamed (memory carried)")
    axes[1].set_yscale("log")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(_OUT.value, "stream.png"), dpi=110)


if __name__ == "__main__":
  app.run(main)
