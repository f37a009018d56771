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
"""The experiment scripts' --shrunk settings run end to end and write their outputs."""

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _script(name, file="run.py"):
  path = os.path.join(ROOT, "experiments", name, file)
  spec = importlib.util.spec_from_file_location(f"exp_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _outputs(path, pngs):
  with open(os.path.join(path, "results.json")) as f:
    results = json.load(f)
  with open(os.path.join(path, "results.md")) as f:
    table = f.read()
  for png in pngs:
    assert os.path.getsize(os.path.join(path, png)) > 1000, png
  assert results["settings"]["shrunk"] is True and "machine" in results
  return results, table


def test_formal_languages_shrunk(tmp_path):
  out = _script("formal_languages").main(["--shrunk", "--out", str(tmp_path)])
  r = out["transformer_pp/parity"]
  assert 0.0 <= r["bin0"] <= 1.0 and 0.0 <= r["bin1"] <= 1.0 and len(r["losses"]) == 3
  # Bins hold the lengths they promise: 1..6 and 7..12.
  assert set(r["bin0_by_length"]) <= set(range(1, 7))
  assert set(r["bin1_by_length"]) <= set(range(7, 13))
  _, table = _outputs(str(tmp_path), ["accuracy_by_length_parity.png"])
  assert "| parity |" in table and "100.0/100.0" in table


def test_paper_scale_plan_shrunk(tmp_path):
  recs = _script("paper_scale", "plan.py").main(["--shrunk", "--out", str(tmp_path)])
  (rec,) = recs
  assert rec["run"] == "transformer_760m"
  assert abs(rec["params"] - 760e6) / 760e6 < 0.05
  assert rec["tokens"] <= 30e9 and rec["tokens"] > 0.99 * 30e9
  assert rec["state_gib_per_chip"][64] == pytest.approx(rec["params"] * 16 / 64 / 2**30)
  _outputs(str(tmp_path), [])


@pytest.mark.slow
def test_niah_small_shrunk(tmp_path):
  out = _script("niah_small").main(["--shrunk", "--out", str(tmp_path)])
  assert set(out["transformer_pp"]) == {0, 1}  # one training run per seed
  for run in out["transformer_pp"].values():
    assert set(run["accuracy"]) == set(run["token_accuracy"]) == {"s_niah_1@1x", "s_niah_1@2x"}
  _, table = _outputs(str(tmp_path), ["niah_vs_length.png"])
  assert "| transformer_pp | 0.07M | 2 | 2/2 |" in table
  # --combine merges result folders (here one with itself) without training.
  merged = _script("niah_small").main(["--combine", str(tmp_path), "--out",
                                      str(tmp_path / "all")])
  assert set(merged["transformer_pp"]) == {"0", "1"}


@pytest.mark.slow
def test_niah_small_switch_off_shrunk(tmp_path):
  out = _script("niah_small").main(["--shrunk", "--models", "hope", "--seeds", "0",
                                    "--switch-off", "--out", str(tmp_path)])
  off = out["hope"][0]["switch_off"]
  assert set(off) == {"no SMT / Titans writes", "no CMS steps", "both off"}
  assert all(set(v["accuracy"]) == {"s_niah_1@1x", "s_niah_1@2x"} for v in off.values())
  _, table = _outputs(str(tmp_path), ["niah_vs_length.png"])
  assert "| hope | no CMS steps | 1 |" in table


@pytest.mark.slow
def test_niah_length_probe_shrunk(tmp_path):
  out = _script("niah_small", "length_probe.py").main(["--shrunk", "--models", "hope",
                                                       "--seeds", "0", "--out", str(tmp_path)])
  assert set(out["accuracy"]) == {"s_niah_1@1x/depth=0.5", "s_niah_1@2x/depth=0.5"}
  drift = out["drift"]["s_niah_1@2x"]
  assert drift["positions"][:2] == [32, 64]
  # One curve per CMS level of the one block, each read after every segment; the weights move.
  assert set(drift) == {"positions", "block_0/level_0", "block_0/level_1"}
  assert all(len(drift[k]) == len(drift["positions"]) and drift[k][-1] > 0 for k in drift)
  _, table = _outputs(str(tmp_path), ["cms_drift.png", "accuracy_by_depth.png"])
  assert "| s_niah_1 | 0.5 |" in table
  with pytest.raises(ValueError, match="one model with one seed"):
    _script("niah_small", "length_probe.py").parse(["--seeds", "0,1"])


@pytest.mark.slow
def test_continual_shrunk(tmp_path):
  out = _script("continual").main(["--shrunk", "--seeds", "0,1", "--out", str(tmp_path)])
  assert set(out["transformer_pp"]) == {0, 1}  # one training run per seed
  for run in out["transformer_pp"].values():
    assert run["steps_done"] == 2
    for mode in ("full", "segmented"):
      m = run[mode]["matrix"]
      assert len(m) == 2 and m[0][1] != m[0][1]  # NaN above the diagonal
  _, table = _outputs(str(tmp_path), ["task0_accuracy_full.png", "task0_accuracy_segmented.png"])
  assert "| transformer_pp | 0.07M | 2 | 2/2 |" in table and "| transformer_pp | full |" in table
  # --combine merges result folders (here one with itself) without training.
  merged = _script("continual").main(["--combine", str(tmp_path), "--out", str(tmp_path / "all")])
  assert set(merged["transformer_pp"]) == {"0", "1"}
  with pytest.raises(ValueError, match="label:model:overrides"):
    _script("continual").parse(["--variants", "hope"])


@pytest.mark.slow
def test_ablations_shrunk(tmp_path):
  out = _script("ablations").main(["--shrunk", "--out", str(tmp_path)])
  assert out["w/o CMS"]["overrides"]["cms.learning_rates"] == (0.0,)
  assert out["hope"]["overrides"]["smt.momentum"] is True  # the paper reference (Table 6)
  _, table = _outputs(str(tmp_path), ["train_loss.png"])
  assert "| w/o DGD | not run |" in table and "| static k | not run |" in table
  script = _script("ablations")
  assert script.row_overrides("static v", {}, "tiny") == {"smt.static_projections": ("v",)}


@pytest.mark.slow
def test_optimizers_shrunk(tmp_path):
  out = _script("optimizers").main(["--shrunk", "--out", str(tmp_path)])
  assert set(out) == {"adamw@0.003", "m3@0.01"}
  _outputs(str(tmp_path), ["eval_loss.png", "train_loss.png"])
  assert all(r["curves"]["param_norm"] for r in out.values())
  # A second seed of the same grid, summarised: 2 seeds per optimizer at its best rate.
  seed1 = str(tmp_path / "seed1")
  _script("optimizers").main(["--shrunk", "--seed", "1", "--out", seed1])
  summary = _script("optimizers", "summarize.py").main(
      ["--sweep", str(tmp_path), "--seeds", seed1, "--out", str(tmp_path / "summary")])
  assert {k: len(v["finals"]) for k, v in summary.items()} == {"adamw": 2, "m3": 2}
  assert os.path.exists(tmp_path / "summary" / "eval_loss_seeds.png")


@pytest.mark.slow
def test_optimizers_a_diverging_rate_is_recorded_not_fatal(tmp_path):
  """A sweep goes on past a rate that diverges (the trainer raises NonFiniteError): the run is
  kept with an infinite final loss and the reason, and is never the best."""
  out = _script("optimizers").main(["--shrunk", "--grid", "adamw:1e30|3e-3", "--out",
                                    str(tmp_path)])
  assert out["adamw@1e+30"]["final_eval"] == float("inf")
  assert "non-finite" in out["adamw@1e+30"]["diverged"]
  assert out["adamw@0.003"]["final_eval"] < 10
  summary = _script("optimizers", "summarize.py").main(["--sweep", str(tmp_path), "--out",
                                                        str(tmp_path / "summary")])
  assert summary["adamw"]["lr"] == 3e-3
