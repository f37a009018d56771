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
"""Console progress (bar / log lines, windowed ETA), samples in the metrics, the loss plot."""

import io
import json
import logging as py_logging

import pytest

from nl_jax.train import metrics as metrics_lib
from nl_jax.train import progress as progress_lib


class _Clock:
  def __init__(self):
    self.t = 100.0

  def __call__(self):
    return self.t


@pytest.fixture
def clock(monkeypatch):
  c = _Clock()
  monkeypatch.setattr(progress_lib.time, "perf_counter", c)
  return c


def test_eta_comes_from_a_moving_window(clock):
  p = progress_lib.Progress(100, tokens_per_step=1000, interactive=False, window=10)
  p.start(0)
  for step in range(1, 21):  # 1 s per step ...
    clock.t += 1.0
    p.update(step, loss=3.0)
  assert p.steps_per_second() == pytest.approx(1.0)
  assert p.eta_seconds() == pytest.approx(80.0)
  clock.t += 30.0  # ... one slow step (an eval) moves the estimate only within the window
  p.update(21)
  assert p.eta_seconds() == pytest.approx(79 * 39 / 10)  # steps 11..21 took 9 + 30 s
  for step in range(22, 33):
    clock.t += 1.0
    p.update(step)
  assert p.eta_seconds() == pytest.approx(68.0)  # the slow step has left the window
  assert "1,000 tok/s" in p.log_line() and "ETA 1m08s" in p.log_line()


def test_bar_on_a_terminal_redraws_in_place(clock):
  stream = io.StringIO()
  p = progress_lib.Progress(10, tokens_per_step=64, interactive=True, stream=stream)
  p.start(0)
  for step in range(1, 11):
    clock.t += 0.5
    p.update(step, loss=2.0 - 0.1 * step)
  p.close()
  out = stream.getvalue()
  assert out.count("\r\x1b[2K") >= 2 and out.endswith("\n")
  last = out.split("\r\x1b[2K")[-1]
  assert last.startswith("step 10/10 [####################] 100%")
  assert "loss 1.0000" in last and "128 tok/s" in last and "ETA 0m00s" in last


def test_non_interactive_logs_lines(clock, caplog):
  stream = io.StringIO()
  p = progress_lib.Progress(4, interactive=False, stream=stream)
  p.start(0)
  clock.t += 1
  p.update(1, 1.5)
  assert stream.getvalue() == ""  # no bar escapes in logs
  with caplog.at_level(py_logging.INFO):
    p.message("compiling the train step...")
  assert "compiling the train step..." in caplog.text


@pytest.mark.parametrize("value,mode", [("bar", True), ("log", False)])
def test_mode_can_be_forced(monkeypatch, value, mode):
  monkeypatch.setenv("NL_JAX_PROGRESS", value)
  assert progress_lib.is_interactive(io.StringIO()) is mode


def test_format_duration():
  assert progress_lib.format_duration(4 * 60 + 9) == "4m09s"
  assert progress_lib.format_duration(3723) == "1h02m03s"
  assert progress_lib.format_duration(float("nan")) == "?"


def test_logger_writes_samples_and_the_loss_plot(tmp_path, caplog):
  pytest.importorskip("tensorboardX")
  pytest.importorskip("matplotlib")
  logger = metrics_lib.MetricsLogger(str(tmp_path), total_steps=4, tokens_per_step=8,
                                     interactive=False)
  logger.start(0)
  for step in range(1, 5):
    logger.step(step, 3.0 / step)
    logger.train(step, {"loss": 3.0 / step, "lr": 1e-3, "grad_norm": 1.0})
  logger.eval(4, 1.0, 64)
  with caplog.at_level(py_logging.INFO):
    logger.sample(4, "ROMEO:", " what light")
  logger.close()
  assert "sample step 4: 'ROMEO:' -> ' what light'" in caplog.text
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert {"split": "sample", "step": 4, "prompt": "ROMEO:", "continuation": " what light"} in rows
  (event_file,) = (tmp_path / "tensorboard").iterdir()
  texts = [t for _, _, t in metrics_lib.read_events(str(event_file)) if t]
  assert "ROMEO: what light" in texts[0]["samples/text_summary"]
  assert metrics_lib.last_losses(str(tmp_path)) == (0.75, 1.0, 4)
  path = metrics_lib.write_loss_plot(str(tmp_path))
  assert path == str(tmp_path / "loss.png")
  assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_tensorboardx_one_line_names_the_extra(tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(metrics_lib, "_tensorboardx", lambda: metrics_lib.logging.warning(
      'TensorBoard files off: tensorboardX is not installed (pip install -e ".[monitoring]")'))
  with caplog.at_level(py_logging.WARNING):
    logger = metrics_lib.MetricsLogger(str(tmp_path), total_steps=1, tokens_per_step=1,
                                       interactive=False)
    logger.close()
  assert '.[monitoring]' in caplog.text and not (tmp_path / "tensorboard").exists()
