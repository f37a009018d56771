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
"""Smoke runs of experiments/bench_models.py (slow: compiles models) and bench_layers.py."""

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
  assert all(r["tok_s"] > 0 and r["mib"] > 0 for r in rows)
  assert "x TPP" in capsys.readouterr().out


def test_bench_layers_quick_runs(capsys):
  """The layer benchmark's smoke run (the fast layers only: SwiGLU and the CMS)."""
  path = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "bench_layers.py"
  spec = importlib.util.spec_from_file_location("bench_layers", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  rows = bench.main(["--quick", "--layers", "swiglu,cms_first_order"])
  assert [r["layer"] for r in rows] == ["swiglu", "cms_first_order"]
  assert all(r["fwd_bwd_ms"] > 0 for r in rows) and rows[1]["ratio"] > 0
  assert "x ref" in capsys.readouterr().out
  with pytest.raises(SystemExit, match="unknown layer"):
    bench.main(["--quick", "--layers", "conv"])
