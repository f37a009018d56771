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
"""Console progress of a run: a bar on a terminal, the same facts as log lines elsewhere.

On an interactive terminal (stderr is a TTY) `Progress` redraws one line in place::

  step 120/300 [#########...........]  40% | loss 2.3104 | 5,120 tok/s | 0.19 s/step | ETA 0m34s

Elsewhere (CI, ``nohup``, pipes) it writes the same fields as a log line every ``log_every``
steps. Rates and the ETA come from a moving window over the last ``window`` steps, so one slow
step (an eval, a checkpoint) moves them little. ``NL_JAX_PROGRESS=bar|log`` forces a mode.
"""

import collections
import logging as py_logging
import math
import os
import sys
import time
from typing import TextIO

from absl import logging


def format_duration(seconds: float) -> str:
  """``1h02m03s`` / ``4m09s``; ``?`` when unknown."""
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def is_interactive(stream: TextIO) -> bool:
  """Whether ``stream`` is a terminal that can redraw a line (``NL_JAX_PROGRESS`` overrides)."""
  forced = os.environ.get("NL_JAX_PROGRESS", "").lower()
  if forced in ("bar", "log"):
    return forced == "bar"
  isatty = getattr(stream, "isatty", None)
  return bool(isatty and isatty()) and os.environ.get("TERM", "") != "dumb"


class _ClearBarBeforeLogs(py_logging.Filter):
  """Erases the bar before another log line is printed, so lines never interleave."""

  def __init__(self, progress: "Progress"):
    super().__init__()
    self.progress = progress

  def filter(self, record) -> bool:
    self.progress.clear()
    return True


class Progress:
  """Steps, tokens/s, loss and ETA as a bar (TTY) or log lines.

  Args:
    total_steps: the run's last step.
    tokens_per_step: global tokens per step (for tokens/s; 0 = not shown).
    interactive: draw a bar (default: `is_interactive(stream)`).
    stream: where the bar goes (default ``sys.stderr``).
    window: number of most recent steps the rates and ETA average over.
    enabled: False on processes other than 0.
  """

  def __init__(self, total_steps: int, *, tokens_per_step: int = 0,
               interactive: bool | None = None, stream: TextIO | None = None,
               window: int = 50, enabled: bool = True, width: int = 20):
    self.total_steps = int(total_steps)
    self.tokens_per_step = int(tokens_per_step)
    self.stream = sys.stderr if stream is None else stream
    self.interactive = is_interactive(self.stream) if interactive is None else interactive
    self.enabled = enabled
    self.width = width
    self._times = collections.deque(maxlen=max(2, window + 1))
    self._loss = float("nan")
    self._step = 0
    self._drawn = False
    self._last_draw = 0.0
    self._filter = None
    if self.enabled and self.interactive:
      self._filter = _ClearBarBeforeLogs(self)
      for handler in py_logging.getLogger().handlers:
        handler.addFilter(self._filter)

  def start(self, step: int) -> None:
    """Starts the clock at ``step`` (after the compiling first step)."""
    self._times.clear()
    self._times.append((time.perf_counter(), int(step)))
    self._step = int(step)

  @property
  def step(self) -> int:
    """The last step recorded (``start`` or ``update``)."""
    return self._step

  def steps_per_second(self) -> float:
    """Steps per second over the window (NaN before two points)."""
    if len(self._times) < 2:
      return float("nan")
    (t0, s0), (t1, s1) = self._times[0], self._times[-1]
    return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else float("nan")

  def eta_seconds(self) -> float:
    rate = self.steps_per_second()
    return (self.total_steps - self._step) / rate if rate > 0 else float("nan")

  def update(self, step: int, loss: float | None = None) -> None:
    """Records that ``step`` finished (every step); redraws the bar at most 10 times/s."""
    self._step = int(step)
    if loss is not None:
      self._loss = float(loss)
    self._times.append((time.perf_counter(), self._step))
    if not (self.enabled and self.interactive):
      return
    now = time.perf_counter()
    if now - self._last_draw >= 0.1 or step >= self.total_steps:
      self._draw()
      self._last_draw = now

  def fields(self) -> list[str]:
    """The facts shown: loss, tokens/s, s/step, ETA."""
    rate = self.steps_per_second()
    parts = [f"loss {self._loss:.4f}"]
    if self.tokens_per_step and rate == rate:
      parts.append(f"{rate * self.tokens_per_step:,.0f} tok/s")
    if rate == rate and rate > 0:
      parts.append(f"{1.0 / rate:.2f} s/step")
    parts.append(f"ETA {format_duration(self.eta_seconds())}")
    return parts

  def line(self) -> str:
    """The bar's text."""
    frac = min(1.0, self._step / max(self.total_steps, 1))
    filled = int(round(frac * self.width))
    bar = "#" * filled + "." * (self.width - filled)
    return " | ".join([f"step {self._step}/{self.total_steps} [{bar}] {100 * frac:3.0f}%"]
                      + self.fields())

  def log_line(self, extra: list[str] | None = None) -> str:
    """The non-interactive line: ``step 10/300 | loss ... | ... | ETA ...`` plus ``extra``."""
    return " | ".join([f"step {self._step}/{self.total_steps}"] + self.fields()[:1]
                      + list(extra or []) + self.fields()[1:])

  def _draw(self) -> None:
    self.stream.write("\r\x1b[2K" + self.line())
    self.stream.flush()
    self._drawn = True

  def clear(self) -> None:
    """Erases the bar (it comes back on the next update)."""
    if self._drawn:
      self.stream.write("\r\x1b[2K")
      self.stream.flush()
      self._drawn = False

  def message(self, text: str) -> None:
    """Logs ``text`` as its own line (above the bar on a terminal)."""
    if not self.enabled:
      return
    self.clear()
    logging.info(text)

  def close(self) -> None:
    if self._drawn:
      self.stream.write("\n")
      self.stream.flush()
      self._drawn = False
    if self._filter is not None:
      for handler in py_logging.getLogger().handlers:
        handler.removeFilter(self._filter)
      self._filter = None
