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
"""experiments/bench_memory_scan.py: a --quick smoke run in-process (no timing asserted), the
malloc it reports, and launch/with_tcmalloc.sh (tcmalloc preloaded, freed pages kept)."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "launch" / "with_tcmalloc.sh"


def _load_bench():
  path = ROOT / "experiments" / "bench_memory_scan.py"
  spec = importlib.util.spec_from_file_location("bench_memory_scan", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  return bench


def test_bench_memory_scan_quick_runs(capsys):
  bench = _load_bench()
  rows = bench.main(["--quick", "--lengths", "64", "--repeats", "1", "--memories", "matrix"])
  assert [(r["memory"], r["t"]) for r in rows] == [("matrix dgd exact", 64)]
  assert all(r["fb_x"] > 0 and r["chunked_mib"] > 0 for r in rows)
  assert "f+b x" in capsys.readouterr().out


def test_describe_allocator_names_the_malloc():
  bench = _load_bench()
  libc = "7f0000-7f1000 r-xp 00000000 00:00 0  /usr/lib/x86_64-linux-gnu/libc.so.6\n"
  tc = "7f2000-7f3000 r-xp 00000000 00:00 0  /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4\n"
  je = "7f4000-7f5000 r-xp 00000000 00:00 0  /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n"
  assert bench.describe_allocator(libc, {}) == "glibc malloc"
  assert bench.describe_allocator(libc + tc, {"TCMALLOC_RELEASE_RATE": "0"}) == (
      "tcmalloc (TCMALLOC_RELEASE_RATE=0)")
  assert bench.describe_allocator(tc + libc, {}) == "tcmalloc (TCMALLOC_RELEASE_RATE=default)"
  assert bench.describe_allocator(libc + je, {}) == "jemalloc"
  assert bench.describe_allocator("", {}) == "system malloc"


def _tcmalloc_on_host():
  """Whether the launcher finds a library (its own lookup, not a second copy of it)."""
  probe = subprocess.run([str(LAUNCHER), "true"], env=_clean_env(), capture_output=True,
                         text=True, check=False)
  if probe.returncode != 0 and "no tcmalloc library found" not in probe.stderr:
    raise AssertionError(f"launch/with_tcmalloc.sh true failed: {probe.stderr}")
  return probe.returncode == 0


# Allocates and frees 128 MiB, then allocates it again and prints the minor page faults the
# second allocation took, and the malloc the bench sees.
_REUSE_PROBE = """
import resource, sys
import numpy as np
sys.path.insert(0, "experiments")
from bench_memory_scan import host_allocator
a = np.ones(2**24); del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(2**24)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, host_allocator(), sep="|")
"""


def _clean_env():
  env = dict(os.environ)
  for name in ("LD_PRELOAD", "TCMALLOC_RELEASE_RATE", "NL_JAX_TCMALLOC"):
    env.pop(name, None)
  return env


def test_with_tcmalloc_preloads_and_reuses_freed_pages():
  if not _tcmalloc_on_host():
    pytest.skip("no libtcmalloc on this host (Debian/Ubuntu: apt-get install libtcmalloc-minimal4)")
  cmd = [sys.executable, "-c", _REUSE_PROBE]
  plain = subprocess.run(cmd, cwd=ROOT, env=_clean_env(), capture_output=True, text=True,
                         check=True).stdout.strip().split("|")
  wrapped = subprocess.run([str(LAUNCHER)] + cmd, cwd=ROOT, env=_clean_env(),
                           capture_output=True, text=True, check=True).stdout.strip().split("|")
  assert plain[1] == "glibc malloc"
  assert wrapped[1] == "tcmalloc (TCMALLOC_RELEASE_RATE=0)"
  pages = 2**24 * 8 // 4096
  # The second 128 MiB comes from the pages the first one freed: (almost) no faults.
  assert int(wrapped[0]) < pages // 20, (wrapped, plain)


def test_with_tcmalloc_errors():
  no_args = subprocess.run([str(LAUNCHER)], capture_output=True, text=True, check=False)
  assert no_args.returncode == 2 and "usage" in no_args.stderr
  env = _clean_env()
  env["NL_JAX_TCMALLOC"] = "/nonexistent/libtcmalloc.so.4"
  missing = subprocess.run([str(LAUNCHER), "true"], env=env, capture_output=True, text=True,
                           check=False)
  assert missing.returncode == 1
  assert "/nonexistent/libtcmalloc.so.4" in missing.stderr and "NL_JAX_TCMALLOC" in missing.stderr
