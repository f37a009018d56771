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
"""Training metrics: JSONL, TensorBoard event files, console progress, throughput and MFU.

Files in the workdir (process 0 only):

* ``metrics.jsonl``: one JSON object per logged step, ``{"split": "train"|"eval", "step",
  "loss", "perplexity", "tokens_per_s", "mfu", "lr", "grad_norm", "aux/<name>", ...}``.
* ``tensorboard/events.out.tfevents.*``: the same scalars, for ``tensorboard --logdir``.
  The writer is ~60 lines here (protobuf + TFRecord framing with CRC32C) instead of a
  dependency on TensorFlow/tensorboardX.
"""

import json
import math
import os
import socket
import struct
import time
from collections.abc import Mapping
from typing import Any

from absl import logging

# CRC32C (Castagnoli), as TFRecord framing requires.
_CRC_TABLE = []
for _i in range(256):
  _c = _i
  for _ in range(8):
    _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
  _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for b in data:
    crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    bits = value & 0x7F
    value >>= 7
    if value:
      out.append(bits | 0x80)
    else:
      out.append(bits)
      return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, *, scalars: Mapping[str, float] | None = None,
           file_version: str | None = None) -> bytes:
  """A serialized ``tensorflow.Event`` proto (wall_time=1, step=2, file_version=3, summary=5)."""
  out = bytearray(b"\x09" + struct.pack("<d", wall_time))
  out += b"\x10" + _varint(step & 0xFFFFFFFFFFFFFFFF)
  if file_version is not None:
    out += _field_bytes(3, file_version.encode())
  if scalars:
    summary = b"".join(
        _field_bytes(1, _field_bytes(1, tag.encode()) + b"\x15" + struct.pack("<f", value))
        for tag, value in scalars.items())
    out += _field_bytes(5, summary)
  return bytes(out)


def _record(data: bytes) -> bytes:
  header = struct.pack("<Q", len(data))
  return (header + struct.pack("<I", _masked_crc(header)) + data
          + struct.pack("<I", _masked_crc(data)))


class TensorBoardWriter:
  """Appends scalar summaries to a TensorBoard event file in ``logdir``."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self.path = os.path.join(logdir, name)
    self._f = open(self.path, "ab")  # pylint: disable=consider-using-with
    self._f.write(_record(_event(time.time(), 0, file_version="brain.Event:2")))
    self._f.flush()

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    values = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
    self._f.write(_record(_event(time.time(), step, scalars=values)))
    self._f.flush()

  def close(self) -> None:
    self._f.close()


def read_event_scalars(path: str) -> list[tuple[int, dict[str, float]]]:
  """Parses an event file written by `TensorBoardWriter` (checks every CRC); for tests."""
  out = []
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    header = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    if struct.unpack("<I", data[pos + 8:pos + 12])[0] != _masked_crc(header):
      raise ValueError(f"{path}: bad length CRC at byte {pos}")
    payload = data[pos + 12:pos + 12 + length]
    if struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] != _masked_crc(payload):
      raise ValueError(f"{path}: bad data CRC at byte {pos}")
    pos += 16 + length
    out.append(_parse_event(payload))
  return out


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
  shift = value = 0
  while True:
    b = buf[i]
    i += 1
    value |= (b & 0x7F) << shift
    shift += 7
    if not b & 0x80:
      return value, i


def _parse_fields(buf: bytes):
  i = 0
  while i < len(buf):
    key, i = _read_varint(buf, i)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, i = _read_varint(buf, i)
    elif wire == 1:
      value, i = buf[i:i + 8], i + 8
    elif wire == 5:
      value, i = buf[i:i + 4], i + 4
    else:
      n, i = _read_varint(buf, i)
      value, i = buf[i:i + n], i + n
    yield number, value


def _parse_event(buf: bytes) -> tuple[int, dict[str, float]]:
  step, scalars = 0, {}
  for number, value in _parse_fields(buf):
    if number == 2:
      step = value
    elif number == 5:
      for _, v in _parse_fields(value):
        fields = dict(_parse_fields(v))
        scalars[fields[1].decode()] = struct.unpack("<f", fields[2])[0]
  return step, scalars


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


def _fmt_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _json_value(value: Any) -> Any:
  """Non-finite floats as the strings "nan" / "inf" / "-inf" (valid JSON)."""
  if isinstance(value, float) and not math.isfinite(value):
    return "nan" if value != value else ("inf" if value > 0 else "-inf")
  return value


class MetricsLogger:
  """Writes train/eval metrics (JSONL + TensorBoard) and prints the progress line.

  Args:
    workdir: where ``metrics.jsonl`` and ``tensorboard/`` go.
    total_steps: for the ETA.
    tokens_per_step: global tokens per train step (for tokens/s).
    flops_per_token: for MFU (0 = not reported).
    peak_flops_total: peak FLOP/s of all devices together (0 = MFU not reported).
    tensorboard: also write TensorBoard event files.
    enabled: False on processes other than 0 (they only keep time).
  """

  def __init__(self, workdir: str, *, total_steps: int, tokens_per_step: int,
               flops_per_token: float = 0.0, peak_flops_total: float = 0.0,
               tensorboard: bool = True, enabled: bool = True):
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
        self._tb = TensorBoardWriter(os.path.join(workdir, "tensorboard"))
    self._last_time = None
    self._last_step = None

  def start(self, step: int) -> None:
    """Starts the throughput clock (call after the first, compiling, step)."""
    self._last_time = time.perf_counter()
    self._last_step = step

  def train(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Logs train metrics of ``step`` (after it ran); returns the row written."""
    now = time.perf_counter()
    row: dict[str, Any] = {"split": "train", "step": int(step)}
    row.update({k: float(v) for k, v in metrics.items()})
    row["perplexity"] = math.exp(min(row["loss"], 80.0)) if math.isfinite(row["loss"]) else (
        float("nan"))
    rate = float("nan")
    if self._last_time is not None and step > self._last_step:
      dt = now - self._last_time
      rate = (step - self._last_step) / max(dt, 1e-9)
      row["steps_per_s"] = rate
      row["tokens_per_s"] = rate * self.tokens_per_step
      if self.flops_per_token and self.peak_flops_total:
        row["mfu"] = row["tokens_per_s"] * self.flops_per_token / self.peak_flops_total
    self._last_time, self._last_step = now, step
    self._write(row)
    if self.enabled:
      eta = (self.total_steps - step) / rate if rate == rate and rate > 0 else float("nan")
      parts = [f"step {step}/{self.total_steps}", f"loss {row['loss']:.4f}",
               f"ppl {row['perplexity']:.2f}"]
      if "tokens_per_s" in row:
        parts.append(f"{row['tokens_per_s']:,.0f} tok/s")
      if "mfu" in row:
        parts.append(f"mfu {100 * row['mfu']:.1f}%")
      parts += [f"lr {row.get('lr', float('nan')):.2e}",
                f"gnorm {row.get('grad_norm', float('nan')):.3f}",
                f"ETA {_fmt_duration(eta)}"]
      logging.info(" | ".join(parts))
    return row

  def eval(self, step: int, loss: float, tokens: float) -> dict[str, Any]:
    row = {"split": "eval", "step": int(step), "loss": float(loss), "tokens": float(tokens),
           "perplexity": math.exp(min(loss, 80.0)) if math.isfinite(loss) else float("nan")}
    self._write(row)
    if self.enabled:
      logging.info("eval step %d | held-out loss %.4f | perplexity %.2f | %d tokens", step,
                   loss, row["perplexity"], tokens)
    return row

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
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


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
