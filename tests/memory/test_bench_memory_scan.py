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
"""Smoke run of experiments/bench_memory_scan.py --quick, in-process (no timing asserted)."""

import importlib.util
import pathlib


def test_bench_memory_scan_quick_runs(capsys):
  path = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "bench_memory_scan.py"
  spec = importlib.util.spec_from_file_location("bench_memory_scan", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  rows = bench.main(["--quick", "--lengths", "64", "--repeats", "1", "--memories", "matrix"])
  assert [(r["memory"], r["t"]) for r in rows] == [("matrix dgd exact", 64)]
  assert all(r["fb_x"] > 0 and r["chunked_mib"] > 0 for r in rows)
  assert "f+b x" in capsys.readouterr().out
