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
"""Which memory of a trained model learns in context: switch each one's writes off.

For every trained workdir (``lm.py``'s ``runs/<model>_seed<s>``) the same trained weights are
evaluated under config variants that change only the in-context updates, never a trained
weight:

* ``as trained``;
* ``no SMT / Titans writes``: ``smt.eta_max`` (Titans: ``titans.eta_max``) 1e-6 (the memories'
  step, eta in (0, eta_max], is
  ~0: they keep their meta-learned initial state; Hope's self-modifying Titans, Titans' LMM);
* ``no CMS steps`` (Hope, Hope-Attention): every ``cms.learning_rates`` 0 (the CMS levels
  stay at their initial weights: static MLPs);
* both.

Each is scored by the held-out loss on ``--windows`` windows of ``--len`` bytes (one call per
window) and by reading ``--twice-texts`` held-out texts twice (lm.py's read-twice, memory
carried). A variant that leaves both unchanged shows that those updates carry nothing the
trained model uses.

  python experiments/in_context/switch_off.py \\
      --workdirs experiments/in_context/results/lm_v3/runs/hope_seed0,... --out /tmp/switch_off
"""

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from nl_jax.eval import experiment, perplexity, runner  # noqa: E402

def evaluate(model, windows, texts) -> dict:
  fn = runner.make_logits_fn(model)
  nll = perplexity.position_nll(fn, windows, batch_size=8)
  reads = [perplexity.read_twice(fn, t) for t in texts]
  first = float(np.mean([np.log(r["first_ppl"]) for r in reads]))
  second = float(np.mean([np.log(r["second_ppl"]) for r in reads]))
  return {"heldout_nll": float(nll.mean()), "first_nll": first, "second_nll": second}


def run(workdir: str, args) -> dict:
  from nl_jax.train import load_for_eval  # noqa: PLC0415

  model, _ = load_for_eval(workdir)
  windows = perplexity.windows(args.len, args.windows, seed=args.seed)
  texts = perplexity.heldout_texts(args.twice_texts, args.twice_len, args.seed)
  out = {}
  for name, overrides in experiment.switch_off_variants(model.config).items():
    out[name] = evaluate(experiment.with_overrides(model, overrides), windows, texts)
    r = out[name]
    print(f"   {name}: held-out {r['heldout_nll']:.5f}, read twice {r['first_nll']:.4f} -> "
          f"{r['second_nll']:.4f}", flush=True)
  return out


def table(results: dict) -> str:
  rows = []
  names = []
  for r in results.values():
    names += [v for v in r if v not in names]
  by_model: dict[str, list] = {}
  for workdir, r in results.items():
    by_model.setdefault(os.path.basename(workdir).rsplit("_seed", 1)[0], []).append(r)
  for model, runs in by_model.items():
    for name in names:
      got = [r[name] for r in runs if name in r]
      if not got:
        continue
      base = [r["as trained"]["heldout_nll"] for r in runs if name in r]
      d = [g["heldout_nll"] - b for g, b in zip(got, base, strict=True)]
      gain = [g["second_nll"] - g["first_nll"] for g in got]
      rows.append([model, name, len(got),
                   f"{np.mean([g['heldout_nll'] for g in got]):.5f}",
                   f"{np.mean(d):+.5f} [{min(d):+.5f}, {max(d):+.5f}]",
                   f"{np.mean(gain):+.4f} [{min(gain):+.4f}, {max(gain):+.4f}]"])
  return experiment.markdown_table(
      ["model", "variant", "seeds", "held-out loss", "change vs as trained",
       "read twice: 2nd - 1st"], rows)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdirs", required=True, help="comma-separated trained workdirs")
  p.add_argument("--len", type=int, default=512)
  p.add_argument("--windows", type=int, default=32)
  p.add_argument("--twice-len", type=int, default=128)
  p.add_argument("--twice-texts", type=int, default=16)
  p.add_argument("--seed", type=int, default=3)
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  workdirs = [w for w in args.workdirs.split(",") if w]
  missing = [w for w in workdirs if not os.path.isdir(os.path.join(w, "checkpoints"))]
  if missing:
    raise SystemExit(f"--workdirs: no checkpoints/ in {missing}; train them first (lm.py)")
  path = experiment.out_dir(__file__, args.out)
  results = {}
  for w in workdirs:
    print(f"== {w}", flush=True)
    results[w] = run(w, args)
  md = table(results)
  experiment.write(path, {"settings": experiment.settings(args),
                          "results": results}, md)
  print(md)
  return results


if __name__ == "__main__":
  main()
