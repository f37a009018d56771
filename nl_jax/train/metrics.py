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
"""Training metrics: JSONL, TensorBoard, console progress, samples, throughput and MFU.

Files in the workdir (process 0 only):

* ``metrics.jsonl``: one JSON object per logged step, ``{"split": "train"|"eval"|"sample",
  "step", "loss", "perplexity", "tokens_per_s", "mfu", "lr", "grad_norm", "aux/<name>", ...}``.
* ``tensorboard/events.out.tfevents.*``: the same scalars and the eval samples as text, for
  ``tensorboard --logdir``, written by ``tensorboardX`` (the ``monitoring`` extra; without it
  one line says so and the run continues without event files).
* ``loss.png``: the train and held-out loss curves, written at the end of a run
  (`write_loss_plot`, matplotlib).
"""

import glob
import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

from absl import logging

from nl_jax.train import guards
from nl_jax.train import progress as progress_lib


def _tensorboardx():
  """The tensorboardX module, or None after one line naming the extra."""
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning('TensorBoard files off: tensorboardX is not installed '
                    '(pip install -e ".[monitoring]")')
    return None
  return tensorboardX


class TensorBoardWriter:
  """Scalars and text summaries in a TensorBoard event file in ``logdir`` (tensorboardX)."""

  def __init__(self, logdir: str, tensorboardx=None):
    tbx = tensorboardx or _tensorboardx()
    if tbx is None:
      raise ImportError('TensorBoard files need tensorboardX: pip install -e ".[monitoring]"')
    os.makedirs(logdir, exist_ok=True)
    before = set(glob.glob(os.path.join(logdir, "events.out.tfevents.*")))
    self._writer = tbx.SummaryWriter(logdir=logdir, flush_secs=10)
    self._writer.flush()
    new = sorted(set(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))) - before)
    self.path = new[-1] if new else None

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    for tag, value in values.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        self._writer.add_scalar(tag, float(value), global_step=int(step))

  def text(self, step: int, tag: str, text: str) -> None:
    self._writer.add_text(tag, text, global_step=int(step))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def read_events(path: str) -> list[tuple[int, dict[str, float], dict[str, str]]]:
  """``(step, scalars, texts)`` per event of an event file (every CRC checked)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

  from nl_jax.data import tfrecord  # pylint: disable=g-import-not-at-top

  out = []
  for payload in tfrecord.read_records(path):
    event = event_pb2.Event.FromString(payload)
    scalars, texts = {}, {}
    for value in event.summary.value:
      if value.HasField("simple_value"):
        scalars[value.tag] = value.simple_value
      elif value.HasField("tensor") and value.tensor.string_val:
        texts[value.tag] = b"".join(value.tensor.string_val).decode("utf-8", "replace")
    out.append((int(event.step), scalars, texts))
  return out


def read_event_scalars(path: str) -> list[tuple[int, dict[str, float]]]:
  """``(step, scalars)`` per event of an event file (every CRC checked); for tests."""
  return [(step, scalars) for step, scalars, _ in read_events(path)]


def model_flops_per_token(num_params: int, embed_params: int, n_layers: int, d_model: int,
                          seq_len: int) -> float:
  """Training FLOPs per token: 6 N (non-embedding) + 6 L T d for attention scores/values.

  The usual estimate (PaLM appendix B); the memory modules' own inner updates are not
  counted, so MFU is a lower bound for Hope/Titans.
  """
  return 6.0 * (num_params - embed_params) + 6.0 * n_layers * seq_len * d_model


def peak_flops(device_kind: str, override: float, table) -> float:
  """Peak FLOP/s of one device (``override`` if > 0, else by device kind; 0 = unknown)."""
  if override > 0:
    return float(override)
  for name, flops in table:
    if name.lower() in device_kind.lower():
      return float(flops)
  return 0.0


def _json_value(value: Any) -> Any:
  """Non-finite floats as the strings "nan" / "inf" / "-inf" (valid JSON)."""
  if isinstance(value, float) and not math.isfinite(value):
    return "nan" if value != value else ("inf" if value > 0 else "-inf")
  return value


class MetricsLogger:
  """Writes train/eval metrics (JSONL + TensorBoard) and shows the progress.

  Args:
    workdir: where ``metrics.jsonl`` and ``tensorboard/`` go.
    total_steps: for the progress and its ETA.
    tokens_per_step: global tokens per train step (for tokens/s).
    flops_per_token: for MFU (0 = not reported).
    peak_flops_total: peak FLOP/s of all devices together (0 = MFU not reported).
    tensorboard: also write TensorBoard event files.
    enabled: False on processes other than 0 (they only keep time).
    interactive: a progress bar instead of log lines (default: stderr is a terminal).
  """

  def __init__(self, workdir: str, *, total_steps: int, tokens_per_step: int,
               flops_per_token: float = 0.0, peak_flops_total: float = 0.0,
               tensorboard: bool = True, enabled: bool = True,
               interactive: bool | None = None):
    self.total_steps = total_steps
    self.tokens_per_step = tokens_per_step
    self.flops_per_token = flops_per_token
    self.peak_flops_total = peak_flops_total
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, "metrics.jsonl")
      self._jsonl = open(path, "a", encoding="utf-8")  # pylint: disable=consider-using-with
      if tensorboard:
        tbx = _tensorboardx()
        if tbx is not None:
          self._tb = TensorBoardWriter(os.path.join(workdir, "tensorboard"), tbx)
    self.progress = progress_lib.Progress(total_steps, tokens_per_step=tokens_per_step,
                                          interactive=interactive, enabled=enabled)
    self._last_time = None
    self._last_step = None

  def start(self, step: int) -> None:
    """Starts the throughput clock (call after the first, compiling, step)."""
    self._last_time = time.perf_counter()
    self._last_step = step
    self.progress.start(step)

  def step(self, step: int, loss: float) -> None:
    """Every step: moves the progress bar (cheap; nothing is written)."""
    self.progress.update(step, loss)

  def train(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Logs train metrics of ``step`` (after it ran); returns the row written."""
    now = time.perf_counter()
    row: dict[str, Any] = {"split": "train", "step": int(step)}
    row.update({k: float(v) for k, v in metrics.items()})
    row["perplexity"] = math.exp(min(row["loss"], 80.0)) if math.isfinite(row["loss"]) else (
        float("nan"))
    if self._last_time is not None and step > self._last_step:
      dt = now - self._last_time
      rate = (step - self._last_step) / max(dt, 1e-9)
      row["steps_per_s"] = rate
      row["tokens_per_s"] = rate * self.tokens_per_step
      if self.flops_per_token and self.peak_flops_total:
        row["mfu"] = row["tokens_per_s"] * self.flops_per_token / self.peak_flops_total
    self._last_time, self._last_step = now, step
    self._write(row)
    if self.progress.step != step:
      self.progress.update(step, row["loss"])
    if self.enabled and not self.progress.interactive:
      extra = [f"ppl {row['perplexity']:.2f}"]
      if "mfu" in row:
        extra.append(f"mfu {100 * row['mfu']:.1f}%")
      extra += [f"lr {row.get('lr', float('nan')):.2e}",
                f"gnorm {row.get('grad_norm', float('nan')):.3f}"]
      extra += guards.console_fields(row)
      logging.info(self.progress.log_line(extra))
    return row

  def eval(self, step: int, loss: float, tokens: float) -> dict[str, Any]:
    row = {"split": "eval", "step": int(step), "loss": float(loss), "tokens": float(tokens),
           "perplexity": math.exp(min(loss, 80.0)) if math.isfinite(loss) else float("nan")}
    self._write(row)
    self.progress.message(f"eval step {step} | held-out loss {loss:.4f} | perplexity "
                          f"{row['perplexity']:.2f} | {int(tokens)} tokens")
    return row

  def sample(self, step: int, prompt: str, continuation: str) -> None:
    """An eval's generated continuation: console, ``metrics.jsonl`` and TensorBoard text."""
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"split": "sample", "step": int(step), "prompt": prompt,
                                  "continuation": continuation}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      # Markdown: a code block keeps the model's line breaks and spacing.
      self._tb.text(step, "samples", f"```\n{prompt}{continuation}\n```")
    self.progress.message(f"sample step {step}: {prompt!r} -> {continuation!r}")

  def _write(self, row: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    # Strict JSON has no NaN/Infinity: non-finite floats are written as the strings
    # "nan", "inf", "-inf" (``float(value)`` reads both forms back).
    self._jsonl.write(json.dumps({k: _json_value(v) for k, v in row.items()},
                                 allow_nan=False) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      prefix = row["split"] + "/"
      self._tb.scalars(row["step"], {prefix + k: v for k, v in row.items()
                                     if k not in ("split", "step")})

  def close(self) -> None:
    self.progress.close()
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def write_loss_plot(workdir: str, path: str | None = None) -> str | None:
  """Plots train and held-out loss from ``metrics.jsonl`` into ``loss.png``; its path.

  Returns None (after one line naming the extra) when matplotlib is not installed, and None
  when there is nothing to plot.
  """
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning('loss.png not written: matplotlib is not installed '
                    '(pip install -e ".[monitoring]")')
    return None
  rows = read_jsonl(workdir) if os.path.exists(os.path.join(workdir, "metrics.jsonl")) else []
  train = [(r["step"], float(r["loss"])) for r in rows if r.get("split") == "train"]
  held = [(r["step"], float(r["loss"])) for r in rows if r.get("split") == "eval"]
  if not train and not held:
    return None
  path = path or os.path.join(workdir, "loss.png")
  fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
  if train:
    ax.plot(*zip(*train, strict=True), label="train", lw=1)
  if held:
    ax.plot(*zip(*held, strict=True), "o-", label="held-out", lw=1.5)
  ax.set_xlabel("step")
  ax.set_ylabel("loss (nats/token)")
  ax.set_title(os.path.basename(os.path.normpath(workdir)))
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def last_losses(workdir: str) -> tuple[float | None, float | None, int | None]:
  """(last train loss, last held-out loss, last step) recorded in ``metrics.jsonl``."""
  if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    return None, None, None
  rows = read_jsonl(workdir)
  train = [r for r in rows if r.get("split") == "train"]
  held = [r for r in rows if r.get("split") == "eval"]
  return (train[-1]["loss"] if train else None, held[-1]["loss"] if held else None,
          max((r["step"] for r in train + held), default=None))


class _QuietLibraries:
  """absl-logging filter: INFO records from orbax/grain (dozens per checkpoint) are dropped."""

  def filter(self, record) -> bool:
    path = record.pathname.replace("\\", "/")
    noisy = "/orbax/" in path or "/grain/" in path
    return record.levelno >= 30 or not noisy


def quiet_library_logs() -> None:
  """Keeps the console readable: only warnings and errors from orbax and grain."""
  import logging as py_logging  # pylint: disable=g-import-not-at-top

  absl_logger = py_logging.getLogger("absl")
  if not any(isinstance(f, _QuietLibraries) for f in absl_logger.filters):
    absl_logger.addFilter(_QuietLibraries())


def read_jsonl(workdir: str) -> list[dict[str, Any]]:
  """All rows of ``<workdir>/metrics.jsonl``."""
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
