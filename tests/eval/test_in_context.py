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
"""experiments/in_context: the MQAR training batches and both scripts' pieces end to end."""

import importlib.util
import json
import os

import flax.nnx as nnx
import jax
import numpy as np
import pytest

from nl_jax.eval import examples as ex_lib
from nl_jax.eval import experiment, mqar, perplexity

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _script(file):
  path = os.path.join(ROOT, "experiments", "in_context", file)
  spec = importlib.util.spec_from_file_location(f"in_context_{file[:-3]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_mqar_training_batch_answers_recoverable():
  rng = np.random.default_rng(0)
  batch = mqar.training_batch(rng, 16, 96, min_pairs=2, max_pairs=16, max_gap=32,
                              pad_to_multiple=32)
  assert batch["inputs"].shape == (16, 96) and batch["loss_mask"].dtype == np.float32
  ex = mqar.sample_examples(np.random.default_rng(1), 32, min_pairs=2, max_pairs=16,
                            max_gap=32)
  for e in ex:
    n = len(e.meta["mapping"])
    assert 2 <= n <= 16 and len(e.spans) == n and 4 * n <= len(e.tokens) <= 4 * n + 32
    # Every answer is the value its query key was given in the context.
    for span, q in zip(e.spans, e.meta["queries"], strict=True):
      assert chr(e.tokens[span.start - 1] - 3) == q
      assert chr(e.tokens[span.start] - 3) == e.meta["mapping"][q]
  # Loss mask = exactly the positions predicting the answers; oracle scores 1, chance ~0.
  b = ex_lib.make_batch(ex, length=96)
  assert b["loss_mask"].sum() == sum(len(e.spans) for e in ex)
  assert ex_lib.score(ex_lib.oracle_logits_fn(), ex, length=96)["accuracy"] == 1.0
  assert ex_lib.score(ex_lib.random_logits_fn(0), ex, length=96)["accuracy"] < 0.1


def test_mqar_training_batch_validates():
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match="length=60"):
    mqar.training_batch(rng, 2, 60, max_pairs=16)
  with pytest.raises(ValueError, match="min_pairs=5"):
    mqar.sample_examples(rng, 2, min_pairs=5, max_pairs=4)


def test_mqar_zero_gap_share():
  def gaps(share, seed=3):
    exs = mqar.sample_examples(np.random.default_rng(seed), 400, min_pairs=2, max_pairs=8,
                               max_gap=16, zero_gap_share=share)
    return np.asarray([len(e.tokens) - 4 * len(e.meta["mapping"]) for e in exs])

  default = mqar.sample_examples(np.random.default_rng(3), 400, min_pairs=2, max_pairs=8,
                                 max_gap=16)
  # Share 0 draws exactly what the option's absence draws (earlier runs stay reproducible).
  np.testing.assert_array_equal(
      gaps(0.0), [len(e.tokens) - 4 * len(e.meta["mapping"]) for e in default])
  assert (gaps(1.0) == 0).all()
  # Half the examples forced to gap 0, the other half at gap 0 one time in 17.
  zero = (gaps(0.5) == 0).mean()
  assert 0.45 < zero < 0.6 and gaps(0.5).max() > 8
  with pytest.raises(ValueError, match="zero_gap_share=1.5"):
    mqar.training_batch(np.random.default_rng(0), 2, 64, max_pairs=8, zero_gap_share=1.5)


def test_mqar_accuracy_by_placement_separates_earlier_and_same_block():
  """A reader that only knows the pairs of earlier 8-token blocks (like a memory that takes a
  block in at its end) scores 1 on those queries and 0 on the others; the split counts every
  query once."""
  exs = mqar.make_examples(mqar.MqarConfig(num_pairs=6, num_queries=6), 20, 0)
  block = 8
  per_example, n_earlier = [], 0
  for ex in exs:
    flags = []
    for span, value_pos in zip(ex.spans, mqar.pair_positions(ex), strict=True):
      assert ex.tokens[value_pos] == ex.tokens[span.start]  # the pair's value is the answer
      assert ex.tokens[value_pos - 1] == ex.tokens[span.start - 1]  # its key is the query
      # Layout: values at 1, 3, ..., 11, queries read at 12, 14, ..., 22. Only values 9 and 11
      # share the block [8, 16) with a query (those read at 12 and 14).
      same = value_pos >= 8 and span.start - 1 < 16
      flags.append(not same)
      n_earlier += flags[-1]
    per_example.append(flags)
  acc = mqar.accuracy_by_placement(exs, per_example, block)
  assert acc == {"earlier_block": 1.0, "same_block": 0.0}
  assert 0 < n_earlier < 120  # both kinds occur: pairs at 0-11, queries at 12-23
  # One block as long as the examples: every query is in the same block as its pair.
  acc = mqar.accuracy_by_placement(exs, per_example, 64)
  assert np.isnan(acc["earlier_block"]) and acc["same_block"] == pytest.approx(n_earlier / 120)
  with pytest.raises(ValueError, match="block=0"):
    mqar.accuracy_by_placement(exs, per_example, 0)


@pytest.mark.slow
def test_mqar_script_shrunk(tmp_path):
  out = _script("mqar.py").main(["--shrunk", "--out", str(tmp_path)])
  r = out["transformer_pp"][0]
  assert r["steps_done"] == 2 and len(r["losses"]) == 2
  assert set(r["accuracy"]) == {"pairs=2", "pairs=4", "pairs=6", "len=16", "len=32"}
  assert set(r["placement"]) == set(r["accuracy"])
  assert all(0.0 <= a <= 1.0 for a in r["accuracy"].values())
  with open(tmp_path / "results.json") as f:
    saved = json.load(f)
  assert saved["settings"]["shrunk"] is True and "machine" in saved
  assert saved["results"]["transformer_pp"]["0"]["accuracy"] == r["accuracy"]
  for png in ("mqar_vs_pairs.png", "mqar_vs_length.png", "mqar_train_loss.png"):
    assert os.path.getsize(tmp_path / png) > 1000
  assert "| transformer_pp |" in (tmp_path / "results.md").read_text()
  # --combine merges earlier result folders into one report without training.
  merged = _script("mqar.py").main(["--combine", str(tmp_path), "--out", str(tmp_path / "all")])
  assert merged["transformer_pp"]["0"]["accuracy"] == r["accuracy"]
  assert os.path.getsize(tmp_path / "all" / "mqar_vs_pairs.png") > 1000


@pytest.mark.slow
def test_twin_titans_like_hope_equals_titans_on_padded_mqar():
  """The Titans-like self-modifying Titans in a one-level static CMS block is Titans: the same
  loss and gradients on an MQAR batch whose padding starts inside a chunk (the SMT's reset
  rule once made wk's and wv's gradients differ by 50% here)."""
  twin = _script("twin.py")
  diffs = twin.compare_grads(*twin.twins(0), seed=0)
  assert max(diffs.values()) < 1e-5, diffs


def test_mqar_script_test_sizes():
  script = _script("mqar.py")
  args = script.parse(["--test-pairs", "4,32", "--length-pairs", "8", "--test-lengths",
                       "64,512"])
  cfgs = script.test_configs(args)
  assert {k: c.length for k, c in cfgs.items()} == {"pairs=4": 16, "pairs=32": 128,
                                                   "len=64": 64, "len=512": 512}
  with pytest.raises(ValueError, match="--test-lengths 16"):
    script.test_configs(script.parse(["--test-lengths", "16"]))


def test_mqar_switch_off_table():
  """--switch-off's table: accuracy per update switched off, mean over the seeds that have it,
  and in brackets the in-block accuracy where a test set has in-block queries."""
  script = _script("mqar.py")

  def view(acc, same):
    return {"accuracy": {"pairs=2": acc, "pairs=4": acc},
            "placement": {"pairs=2": {"earlier_block": float("nan"), "same_block": same},
                          "pairs=4": {"earlier_block": acc, "same_block": float("nan")}}}

  runs = {0: {**view(1.0, 0.5), "switch_off": {"no SMT / Titans writes": view(0.5, 0.1)}},
          1: {**view(0.8, 0.3), "switch_off": {"no SMT / Titans writes": view(0.3, 0.0)}}}
  md = script.switch_off_table({"hope": runs}, ["pairs=2", "pairs=4"])
  assert "| hope | as trained | 2 | 90.0 (40) | 90.0 |" in md, md
  assert "| hope | no SMT / Titans writes | 2 | 40.0 (5) | 40.0 |" in md, md
  assert script.switch_off_table({"tpp": {0: view(1.0, 1.0)}}, ["pairs=2"]) == ""


# Error on UserWarning: matplotlib warned when the eval-loss plot asked for a legend with no
# curve drawn (runs that never evaluated).
@pytest.mark.filterwarnings("error::UserWarning")
def test_lm_tables_from_results(tmp_path):
  """The aggregation (mean [min-max] over seeds) and plots of the LM script, made-up runs."""
  script = _script("lm.py")
  args = script.parse(["--ppl-len", "64", "--twice-len", "32"])

  def run(loss, first, second):
    nll = np.linspace(3.0, 2.0, 63)
    twice = {"first_nll": first, "second_nll": second, "per_text": []}
    return {"train": {"status": "ok", "eval_loss": loss, "last_eval_step": 300,
                      "eval_curve": [(300, loss)], "train_curve": []},
            "params": 100, "eval": {"position_nll": nll.tolist(),
                                    "buckets": perplexity.bucket(nll),
                                    "twice_context": twice, "twice_segments": twice}}

  results = {"titans": {0: run(2.0, 2.5, 1.5), 1: run(2.2, 2.7, 1.9)}}
  md = script.tables(results, args)
  assert "| titans | 100 | 2 | 300/300 | ok/ok | 2.100 [2.000-2.200] |" in md
  assert "| titans | context | 2.600 [2.500-2.700] | 1.700 [1.500-1.900] | " \
         "-0.900 [-1.000--0.800] |" in md
  script.plots(str(tmp_path), results, args)
  for png in ("loss_by_position.png", "read_twice.png", "eval_loss.png"):
    assert os.path.getsize(tmp_path / png) > 1000
  assert "Gain of the full context" not in md  # no --ppl-reset: no control measured

  # With the short-context control: its gain table and plot.
  args = script.parse(["--ppl-len", "64", "--twice-len", "32", "--ppl-reset", "16"])
  for seed, r in results["titans"].items():
    short = np.asarray(r["eval"]["position_nll"]) + 0.1 * (seed + 1) * (np.arange(63) >= 16)
    r["eval"]["position_nll_reset"] = short.tolist()
    r["eval"]["gain_buckets"] = perplexity.bucket(short - r["eval"]["position_nll"])
  md = script.tables(results, args)
  assert "| titans | 0.000 [0.000-0.000] | 0.150 [0.100-0.200] |" in md, md
  script.plots(str(tmp_path), results, args)
  assert os.path.getsize(tmp_path / "context_gain.png") > 1000

  # A run that failed (no evaluation, e.g. a non-finite loss) still gets its plots and
  # tables written, without a curve.
  failed = {"train": {"status": "non-finite loss at step 58", "eval_loss": float("nan"),
                      "last_eval_step": None, "eval_curve": [], "train_curve": []},
            "params": 100}
  args = script.parse(["--ppl-len", "64", "--twice-len", "32"])
  (tmp_path / "failed").mkdir()
  script.plots(str(tmp_path / "failed"), {"hope": {0: failed}}, args)
  assert os.path.getsize(tmp_path / "failed" / "loss_by_position.png") > 1000
  assert "non-finite loss at step 58" in script.tables({"hope": {0: failed}}, args)


def test_lm_refuses_misaligned_lengths_before_training(tmp_path):
  script = _script("lm.py")
  with pytest.raises(ValueError, match="--ppl-reset 20 must be a multiple of titans's "
                                       r"alignment 16 \(e.g. 16\)"):
    script.main(["--models", "titans", "--ppl-reset", "20", "--out", str(tmp_path)])
  with pytest.raises(ValueError, match="--models: unknown model 'gpt'"):
    script.main(["--models", "gpt", "--out", str(tmp_path)])
  assert not os.path.exists(tmp_path / "runs")  # nothing trained


def test_lm_match_params_sets_the_baselines_width():
  script = _script("lm.py")
  args = script.parse(["--match-params", "hope"])
  assert script.size_overrides("hope", args) == {}
  cmd = script.train_cmd("transformer_pp", 0, "/tmp/w", args)
  assert "--config.model.mlp_hidden=255" in cmd  # 147,584 parameters against Hope's 147,760
  assert not any("mlp_hidden" in c for c in script.train_cmd("hope", 0, "/tmp/w", args))


@pytest.mark.slow
def test_lm_script_shrunk(tmp_path):
  out = _script("lm.py").main(["--shrunk", "--out", str(tmp_path)])
  r = out["transformer_pp"][0]
  assert r["train"]["status"] == "ok" and np.isfinite(r["train"]["eval_loss"])
  assert len(r["eval"]["position_nll"]) == 63
  # Without carried state, Transformer++ reads the second copy as if it were new.
  seg = r["eval"]["twice_segments"]
  assert seg["second_nll"] == pytest.approx(seg["first_nll"], rel=1e-5)
  for png in ("loss_by_position.png", "read_twice.png", "eval_loss.png"):
    assert os.path.getsize(tmp_path / png) > 1000


def test_fit_max_seconds_leaves_out_compilation():
  """A budget of 0 s still runs step 0 (compilation) and stops right after it."""
  import optax

  from nl_jax.eval import fit
  from tests.eval.test_runner import _RunningCount

  tokens = np.array([[1, 2, 3, 4, 5, 6, 0, 0]], np.int32)
  batch = {"inputs": tokens, "targets": np.roll(tokens, -1, axis=1),
           "segment_ids": (tokens > 0).astype(np.int32), "positions": np.arange(8)[None],
           "loss_mask": (tokens > 0).astype(np.float32)}
  model = _RunningCount(vocab=7)
  log = fit.train(model, iter([batch] * 5), 5, optax.sgd(0.1), max_seconds=0.0)
  assert len(log["losses"]) == 1 and float(model.scale[...]) != 1.0
  log = fit.train(model, iter([batch] * 5), 5, optax.sgd(0.1), max_seconds=600.0)
  assert len(log["losses"]) == 5


def test_switch_off_variants_and_table(tmp_path):
  """Which in-context updates each model has, and the aggregation over seeds."""
  from nl_jax.models import registry

  script = _script("switch_off.py")
  variants = experiment.switch_off_variants
  hope = variants(registry.model_config("hope", "tiny"))
  assert hope == {"as trained": {}, "no SMT / Titans writes": {"smt.eta_max": 1e-6},
                  "no CMS steps": {"cms.learning_rates": (0.0, 0.0)},
                  "both off": {"smt.eta_max": 1e-6, "cms.learning_rates": (0.0, 0.0)}}
  assert variants(registry.model_config("titans", "tiny"))[
      "no SMT / Titans writes"] == {"titans.eta_max": 1e-6}
  assert list(variants(registry.model_config("titans", "tiny"))) == [
      "as trained", "no SMT / Titans writes"]
  assert list(variants(registry.model_config("transformer_pp", "tiny"))) == [
      "as trained"]

  model = experiment.build("hope", "tiny", 3, n_layers=1)
  off = experiment.with_overrides(model, hope["both off"])
  assert experiment.with_overrides(model, {}) is model
  assert (off.config.smt.eta_max, off.config.cms.learning_rates) == (1e-6, (0.0, 0.0))
  assert model.config.smt.eta_max != 1e-6
  for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)),
                  jax.tree.leaves(nnx.state(off, nnx.Param)), strict=True):
    np.testing.assert_array_equal(a, b)  # the trained weights, not a fresh init (seed 0)

  def r(base, off):
    return {"as trained": {"heldout_nll": base, "first_nll": 2.0, "second_nll": 1.9},
            "no CMS steps": {"heldout_nll": base + off, "first_nll": 2.0, "second_nll": 2.0}}

  md = script.table({"runs/hope_seed0": r(2.0, 0.02), "runs/hope_seed1": r(2.2, 0.04)})
  assert "| hope | as trained | 2 | 2.10000 | +0.00000 [+0.00000, +0.00000] | " \
         "-0.1000 [-0.1000, -0.1000] |" in md, md
  assert "| hope | no CMS steps | 2 | 2.13000 | +0.03000 [+0.02000, +0.04000] | " \
         "+0.0000 [+0.0000, +0.0000] |" in md, md
  with pytest.raises(SystemExit, match="no checkpoints/"):
    script.main(["--workdirs", str(tmp_path)])
