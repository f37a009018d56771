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
"""Where a layer's forward+backward time goes, by source line (one of bench_layers' layers).

Traces the compiled forward+backward of ``bench_layers.py`` with ``jax.profiler`` (XLA:CPU
records every thunk it runs as an event named after its HLO instruction), maps each
instruction to the Python frames in its HLO metadata (``stack_frame_id``), and prints the
time per source line (the innermost ``--frames`` frames) and per kind of thunk. This is how
the self-modifying Titans' repeated chunk solves and reset selects were found
(experiments/BENCHMARKS.md). CPU only: other backends name their events differently.

    python experiments/profile_layer.py --layer smt --length 2048          # small widths
    python experiments/profile_layer.py --layer cms --frames 2 --top 40
    python experiments/profile_layer.py --preset tiny --layer smt --length 64 --tokens 2048
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_layers  # noqa: E402  (a sibling script)

# Events that are not one thunk of the program (the executor, the Python side).
_NOT_THUNKS = ("ThunkExecutor", "$", "PjitFunction", "CommonPjRt")


def source_of_instructions(hlo_text: str, frames: int) -> dict[str, str]:
  """Instruction name -> "file:function:line < caller ..." (innermost ``frames`` frames)."""
  section, files, funcs, locs, stack = None, {}, {}, {}, {}
  for line in hlo_text.splitlines():
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      section = line
      continue
    if section and not re.match(r"^\d+ ", line):
      section = None
    if section in ("FileNames", "FunctionNames"):
      i, value = line.split(" ", 1)
      (files if section == "FileNames" else funcs)[int(i)] = value.strip('"')
    elif section in ("FileLocations", "StackFrames"):
      fields = dict(re.findall(r"(\w+)=(\d+)", line))
      i = int(line.split(" ", 1)[0])
      if section == "FileLocations":
        locs[i] = (int(fields["file_name_id"]), int(fields["function_name_id"]),
                   int(fields["line"]))
      else:
        stack[i] = (int(fields["file_location_id"]), int(fields.get("parent_frame_id", 0)))

  def chain(frame_id):
    out = []
    while frame_id in stack and len(out) < frames:
      loc, parent = stack[frame_id]
      file_id, func_id, line = locs[loc]
      out.append(f"{os.path.basename(files[file_id])}:{funcs[func_id]}:{line}")
      if parent == frame_id:
        break
      frame_id = parent
    return " < ".join(out)

  source = {}
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*stack_frame_id=(\d+)", line)
    if m:
      source[m.group(1)] = chain(int(m.group(2)))
  return source


def thunk_times(trace_dir: str, calls: int) -> collections.Counter:
  """Thunk name -> microseconds per call (self time), from the perfetto trace in
  ``trace_dir``. A thunk that runs others (a conditional, a loop) is charged only the time
  outside them, so nothing is counted twice."""
  (path,) = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  by_thread = collections.defaultdict(list)
  for e in events:
    if e.get("ph") == "X" and not e["name"].startswith(_NOT_THUNKS):
      by_thread[(e.get("pid"), e.get("tid"))].append(e)
  times = collections.Counter()
  for evs in by_thread.values():
    evs.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
    open_ = []  # [end, name, self time] of the enclosing thunks
    for e in evs:
      start, dur = e["ts"], e.get("dur", 0)
      while open_ and open_[-1][0] <= start:
        _, name, own = open_.pop()
        times[name] += own / calls
      if open_:
        open_[-1][2] -= dur  # nested: not the parent's own time
      open_.append([start + dur, e["name"], dur])
    for _, name, own in open_:
      times[name] += own / calls
  return times


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layer", default="smt", choices=bench_layers.LAYERS)
  parser.add_argument("--preset", default="small", help="model preset whose widths to use")
  parser.add_argument("--length", type=int, default=2048, help="T")
  parser.add_argument("--tokens", type=int, default=4096, help="tokens per call, B = tokens / T")
  parser.add_argument("--calls", type=int, default=2, help="traced calls (after a warm-up)")
  parser.add_argument("--frames", type=int, default=1,
                      help="source frames per row, innermost first")
  parser.add_argument("--top", type=int, default=25)
  args = parser.parse_args(argv)
  if jax.devices()[0].platform != "cpu":
    raise SystemExit("profile_layer.py: reads XLA:CPU's thunk events; run it on a CPU host")
  b = max(1, args.tokens // args.length)
  _, fb, call_args, *_ = bench_layers.programs(args.layer, args.preset, b, args.length)
  source = source_of_instructions(fb.as_text(), args.frames)
  jax.block_until_ready(fb(*call_args))  # warm-up
  t0 = time.perf_counter()
  for _ in range(args.calls):
    jax.block_until_ready(fb(*call_args))
  wall_ms = (time.perf_counter() - t0) / args.calls * 1e3  # untraced
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    for _ in range(args.calls):
      jax.block_until_ready(fb(*call_args))
    jax.profiler.stop_trace()
    times = thunk_times(trace_dir, args.calls)
  by_source, by_kind = collections.Counter(), collections.Counter()
  for name, us in times.items():
    by_source[source.get(name) or "(no source: copies, layout)"] += us
    by_kind[re.sub(r"[.\d]+$", "", name)] += us
  total_ms = sum(times.values()) / 1e3
  print(f"jax {jax.__version__}; {args.layer} at {args.preset} widths, T={args.length}, B={b}; "
        f"forward+backward {wall_ms:.1f} ms per call (untraced), its thunks {total_ms:.1f} ms "
        f"(traced)")
  for title, counts in (("source", by_source), ("thunk kind", by_kind)):
    print(f"\n{'ms':>9} {'share':>6}  {title}")
    for key, us in counts.most_common(args.top):
      print(f"{us / 1e3:9.1f} {us / 1e3 / total_ms:6.1%}  {key}")
  return dict(total_ms=total_ms, by_source=dict(by_source), by_kind=dict(by_kind))


if __name__ == "__main__":
  main(sys.argv[1:])
