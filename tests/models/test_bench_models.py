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
"""Smoke runs of experiments/bench_models.py (slow: compiles models), bench_layers.py and
bench_precision.py."""

import importlib.util
import pathlib

import pytest


@pytest.mark.slow
def test_bench_models_quick_runs(capsys):
  path = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "bench_models.py"
  spec = importlib.util.spec_from_file_location("bench_models", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  rows = bench.main(["--quick", "--lengths", "64", "--models", "titans,transformer_pp"])
  assert [r["model"] for r in rows] == ["transformer_pp", "titans"]
  assert all(r["tok_s"] > 0 and r["mib"] > 0 and r["gflop"] > 0 for r in rows)
  assert "x TPP" in capsys.readouterr().out


def _load(name):
  path = pathlib.Path(__file__).resolve().parents[2] / "experiments" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
def test_bench_models_depth_sweep_runs():
  rows = _load("bench_models").main(["--quick", "--lengths", "64", "--models", "transformer_pp",
                                     "--depths", "1,3"])
  assert [(r["layers"], r["scan_layers"]) for r in rows] == [(1, False), (1, True), (3, False),
                                                              (3, True)]
  assert rows[1]["hlo_lines"] == rows[3]["hlo_lines"]  # one block program at any depth
  assert all(r["temp_mib"] > 0 for r in rows)


def test_bench_models_passes_each_model_only_its_fields():
  bench = _load("bench_models")
  overrides = {"remat": True, "chunk_remat_group": 0}
  assert bench.for_model("hope", overrides) == overrides
  assert bench.for_model("transformer_pp", overrides) == {"remat": True}
  dotted = bench.parse_set(["cms.meta_gradient=first_order", "smt.chunk_size=32"])
  assert dotted == {"cms.meta_gradient": "first_order", "smt.chunk_size": 32}
  assert bench.for_model("hope", dotted) == dotted
  assert bench.for_model("transformer_pp", dotted) == {}
  with pytest.raises(SystemExit, match="NAME=VALUE"):
    bench.parse_set(["cms.meta_gradient"])
  with pytest.raises(SystemExit):  # a field no selected model has: refused before any work
    bench.main(["--quick", "--models", "transformer_pp", "--set", "cms.meta_gradient=x"])


def test_bench_precision_keeps_memory_float32_and_errors_at_bfloat16_scale(capsys):
  rows = _load("bench_precision").main(["--models", "titans", "--lengths", "32", "--batch", "2"])
  (row,) = rows
  assert row["state_dtypes"] == "float32"
  # bfloat16 has an 8-bit mantissa (eps 7.8e-3): errors of a few eps, nothing like O(1).
  for k in ("logits", "logits_carried", "grads"):
    assert 1e-4 < row[k] < 0.1, (k, row)
  assert row["state"] < 0.1 and row["dloss"] < 0.05, row
  assert "relative 2-norm errors" in capsys.readouterr().out


def test_bench_layers_quick_runs(capsys):
  """The layer benchmark's smoke run (the fast layers only: SwiGLU and the CMS)."""
  path = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "bench_layers.py"
  spec = importlib.util.spec_from_file_location("bench_layers", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  rows = bench.main(["--quick", "--layers", "swiglu,cms_manual"])
  assert [r["layer"] for r in rows] == ["swiglu", "cms_manual"]
  assert all(r["fwd_bwd_ms"] > 0 for r in rows) and rows[1]["ratio"] > 0
  # The CMS runs its SwiGLU pass, its in-context gradient and the backward through both.
  assert rows[1]["gflop"] > 2 * rows[0]["gflop"] > 0
  assert "x ref" in capsys.readouterr().out
  with pytest.raises(SystemExit, match="unknown layer"):
    bench.main(["--quick", "--layers", "conv"])


def test_profile_layer_attributes_the_time_to_source_lines(capsys):
  """The layer profile's smoke run: most of the CMS's thunk time lands on named source lines,
  its levels' chunk among them."""
  out = _load("profile_layer").main(["--preset", "tiny", "--layer", "cms", "--length", "32",
                                     "--tokens", "64", "--calls", "1"])
  assert out["total_ms"] > 0
  named = sum(us for src, us in out["by_source"].items() if src.endswith(tuple("0123456789")))
  assert named > 0.5 * sum(out["by_source"].values()), out["by_source"]
  assert any(src.startswith("cms_chunk.py:") for src in out["by_source"]), out["by_source"]
  assert "thunk kind" in capsys.readouterr().out
