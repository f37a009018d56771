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
"""Paper-scale runs (760M / 30B tokens and 1.3B / 100B tokens): commands and a memory plan.

For every model of the paper's Table 2 that nl_jax has (Hope, Titans, Transformer++, and
Hope-Attention) and both scales, prints the training command (experiments/configs/lm.py), the
step count and token budget of that config, the exact parameter count (registry, from shapes
only), the evaluation commands, and the per-chip memory of the *training state* (fp32
parameters + gradients + AdamW moments = 16 bytes/parameter, FSDP-sharded over the chips).
Activation memory depends on the compiled program: ``--compile TOPOLOGY`` runs
launch/compile_only.py for each config and records what XLA reports.

  python experiments/paper_scale/plan.py                    # table, no compilation
  python experiments/paper_scale/plan.py --compile v5p:4x4x4  # needs libtpu on this host
  python experiments/paper_scale/plan.py --shrunk           # transformer_760m only (smoke)
"""

import argparse
import importlib
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from nl_jax.eval import experiment  # noqa: E402

RUNS = [(m, s) for s in ("760m", "1_3b")
        for m in ("hope", "titans", "transformer", "hope_attention")]
BYTES_PER_PARAM = 16  # fp32 params (4) + fp32 grads (4) + AdamW mu, nu (8)


def parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--chips", default="64,128,256", help="slice sizes for the memory column")
  p.add_argument("--compile", default=None, help="topology for launch/compile_only.py")
  p.add_argument("--shrunk", action="store_true")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  return args


def main(argv=None):
  args = parse(argv)
  from nl_jax.models import registry  # noqa: PLC0415

  path = experiment.out_dir(__file__, args.out)
  chips = [int(c) for c in args.chips.split(",")]
  # Shrunk: one config whose model traces fastest (the smoke test of the script's plumbing).
  runs = [("transformer", "760m")] if args.shrunk else RUNS
  t0 = time.time()
  rows, records = [], []
  for model, scale in runs:
    name = f"{model}_{scale}"
    spec = f"experiments/configs/lm.py:{model},{scale}"
    try:
      config = importlib.import_module("experiments.configs.lm").get_config(f"{model},{scale}")
    except ValueError as e:  # e.g. the model module is not in this checkout
      rows.append([name, f"unavailable: {e}", "", "", "", ""] + [""] * len(chips))
      continue
    model_cfg = registry.config_from_dict(config.model_name, config.model.to_dict())
    params = registry.count_params(model_cfg)
    tokens = config.train.steps * config.data.seq_len * config.data.batch_size
    mem = {n: params * BYTES_PER_PARAM / n / 2**30 for n in chips}
    rec = {"run": name, "params": params, "steps": int(config.train.steps),
           "tokens": int(tokens), "seq_len": int(config.data.seq_len),
           "global_batch": int(config.data.batch_size), "state_gib_per_chip": mem,
           "train": (f"python launch/train.py --config={spec},files "
                     f"--workdir=$RUNS/{name}"),
           "eval": (f"python -m nl_jax.eval --task niah,babilong,ppl --checkpoint $RUNS/{name} "
                    "--lengths 4k,8k,16k")}
    if args.compile:
      cmd = [sys.executable, os.path.join(ROOT, "launch", "compile_only.py"),
             f"--config={os.path.join(ROOT, spec)}", f"--topology={args.compile}"]
      proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
      rec["compile_only"] = {"cmd": " ".join(cmd), "rc": proc.returncode,
                             "tail": (proc.stdout + proc.stderr)[-2000:]}
    records.append(rec)
    rows.append([name, f"{params / 1e6:.1f}M", f"{tokens / 1e9:.1f}B", rec["steps"],
                 f"{rec['global_batch']}x{rec['seq_len']}",
                 f"`--config={spec},files`"]
                + [f"{mem[n]:.2f}" for n in chips])
  table = experiment.markdown_table(
      ["run", "params", "tokens", "steps", "batch (rows x len)", "config"]
      + [f"state GiB/chip @{n}" for n in chips], rows)
  experiment.write(path, {"settings": vars(args), "runs": records,
                          "wall_seconds": time.time() - t0}, table)
  print(table)
  for rec in records:
    print(f"\n# {rec['run']}\n{rec['train']}\n{rec['eval']}")
    if "compile_only" in rec:
      print(f"compile_only rc={rec['compile_only']['rc']}:\n{rec['compile_only']['tail']}")
  return records


if __name__ == "__main__":
  main()
