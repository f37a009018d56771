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
"""Plots for experiments/stability/README.md from saved metrics and probe files.

  python experiments/stability/plot.py \\
      --run none=experiments/stability/results/metrics_value_norm_none.jsonl \\
      --run l2=experiments/stability/results/metrics_value_norm_l2.jsonl \\
      --probe none=experiments/stability/results/probe_d1_none_300.json \\
      --probe l2=experiments/stability/results/probe_f1_l2_300.json \\
      --out experiments/stability/results
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
_OUT = flags.DEFINE_string("out", "experiments/stability/results", "output folder")

TRAIN_KEYS = (("loss", "train loss"), ("aux/block_1/smt/v_rms", "block 1 ||v|| (RMS)"),
              ("aux/block_1/smt/inner_loss", "block 1 SMT inner loss"),
              ("aux/block_1/smt/out_w1_norm", "block 1 output memory ||W1||"))
PROBE_KEYS = (("nll", "NLL of the call"), ("block_1/smt/out_w1_norm", "block 1 ||W1||"),
              ("block_1/cms/level_1/drift", "block 1 CMS level 1 drift"))


def _rows(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _value(v):
  v = float(v)
  return v if math.isfinite(v) else float("nan")


def main(argv):
  del argv
  os.makedirs(_OUT.value, exist_ok=True)
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
