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
"""One-line user errors of the launch scripts (exit status 2, no traceback, nothing created)."""

import os
import subprocess
import sys

import pytest

from nl_jax.train import cli
from nl_jax.train import config as config_lib
from tests.train.conftest import ROOT, launch_cmd, subprocess_env

CONFIG = "experiments/configs/lm.py:transformer,tiny,smoke"


def _config():
  return cli.load_config_file(str(ROOT / "experiments" / "configs" / "lm.py") + ":transformer")


def test_unknown_key_lists_the_closest():
  with pytest.raises(cli.UserError, match=r"--config.train.stepz: no such config field; "
                     r"closest: train.steps"):
    cli.check_overrides(_config(), ["prog", "--config.train.stepz=3"])
  with pytest.raises(cli.UserError, match=r"closest: model.d_model"):
    cli.check_overrides(_config(), ["prog", "--config.modle.d_model", "3"])
  cli.check_overrides(_config(), ["prog", "--config.train.steps=3", "--config.model.d_model",
                                  "64", "--workdir=/x"])


def test_missing_config_file_lists_the_available_ones():
  with pytest.raises(cli.UserError) as e:
    cli.load_config_file("experiments/configs/hope_tiyn.py")
  msg = str(e.value)
  assert "no such file 'experiments/configs/hope_tiyn.py'" in msg
  assert msg.endswith("available in experiments/configs/: lm.py") and "\n" not in msg
  with pytest.raises(cli.UserError, match=r"config arg 'hope,tiny,smok': mode='smok'"):
    cli.load_config_file(str(ROOT / "experiments" / "configs" / "lm.py") + ":hope,tiny,smok")


def test_workdir_checks_create_nothing(tmp_path):
  afile = tmp_path / "afile"
  afile.write_text("x")
  with pytest.raises(cli.UserError, match="is a file, not a directory"):
    cli.check_workdir(str(afile))
  with pytest.raises(cli.UserError, match="is a file, so the directory cannot be created"):
    cli.check_workdir(str(afile / "run"))
  with pytest.raises(cli.UserError, match="does not exist"):
    cli.check_workdir(str(tmp_path / "none"), must_exist=True)
  assert cli.check_workdir(str(tmp_path / "new" / "run")) == str(tmp_path / "new" / "run")
  assert not (tmp_path / "new").exists()
  assert cli.check_workdir("gs://bucket/run") == "gs://bucket/run"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_read_only_workdir(tmp_path):
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o555)
  try:
    with pytest.raises(cli.UserError, match="is not writable"):
      cli.check_workdir(str(ro / "run"))
  finally:
    ro.chmod(0o755)


def test_config_error_and_missing_extra_are_one_line():
  err = config_lib.ConfigError("invalid config:\n  field 'train.steps': must be >= 1, got -3\n"
                               "  field 'x': bad")
  assert cli.user_message(err) == ("invalid config: field 'train.steps': must be >= 1, got -3; "
                                   "field 'x': bad")
  missing = ModuleNotFoundError("No module named 'pyarrow'", name="pyarrow")
  assert cli.user_message(missing) == ('missing optional package pyarrow: pip install -e '
                                       '".[data]" (or pip install pyarrow)')
  assert cli.user_message(RuntimeError("a bug")) is None  # bugs keep their traceback
  from nl_jax.data import sources  # pylint: disable=g-import-not-at-top
  from nl_jax.train import workdir  # pylint: disable=g-import-not-at-top

  empty = sources.SourceDataError("data file /x.parquet: is empty (0 bytes); remove it from "
                                  "the paths")
  assert cli.user_message(empty) == str(empty)
  locked = workdir.WorkdirLockedError("workdir /w is in use by\nhost h pid 1")
  assert cli.user_message(locked) == "workdir /w is in use by host h pid 1"


# input -> the one line printed (after the program name); all fail before JAX starts except
# the invalid value, which fails in the config validation before anything compiles.
ERROR_TABLE = [
    (("--config.train.stepz=3",), "--config.train.stepz: no such config field; closest: "
     "train.steps"),
    (("--config.train.steps=abc",), "flag --config.train.steps=abc: invalid literal for int()"),
    (("--config.train.steps=0",), "invalid config: field 'optimizer.warmup_steps'"),
    (("--config=experiments/configs/nope.py",), "--config: no such file "
     "'experiments/configs/nope.py'; available in experiments/configs/: lm.py"),
    (("--workdir=AFILE",), "is a file, not a directory; choose another path"),
    (("positional",), "unexpected arguments: ['positional']"),
]


@pytest.mark.parametrize("args,expected", ERROR_TABLE, ids=[a[0] for a, _ in ERROR_TABLE])
def test_user_errors_exit_2_with_one_line(tmp_path, compile_cache, args, expected):
  afile = tmp_path / "afile"
  afile.write_text("x")
  workdir = tmp_path / "run"
  cmd = launch_cmd(CONFIG, workdir) + [a.replace("AFILE", str(afile)) for a in args]
  proc = subprocess.run(cmd, env=subprocess_env(compile_cache), cwd=str(ROOT),
                        capture_output=True, text=True, timeout=180, check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("train.py: error: ")]
  assert len(errors) == 1 and expected in errors[0], proc.stderr[-3000:]
  # Besides the error, at most the startup line of a run that got as far as JAX.
  assert len(proc.stderr.strip().splitlines()) <= 2, proc.stderr[-3000:]
  assert not workdir.exists()


def test_debug_shows_the_traceback(tmp_path, compile_cache):
  proc = subprocess.run(launch_cmd(CONFIG, tmp_path / "run", "--config.train.stepz=3",
                                   "--debug"),
                        env=subprocess_env(compile_cache), cwd=str(ROOT), capture_output=True,
                        text=True, timeout=180, check=False)
  assert proc.returncode != 0 and "Traceback" in proc.stderr and "UserError" in proc.stderr


def test_sample_script_errors(tmp_path, compile_cache):
  proc = subprocess.run([sys.executable, str(ROOT / "launch" / "sample.py"),
                         f"--workdir={tmp_path}"], env=subprocess_env(compile_cache),
                        cwd=str(ROOT), capture_output=True, text=True, timeout=180, check=False)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert f"sample.py: error: --workdir={tmp_path}: load_for_eval" in proc.stderr
  assert "train first with launch/train.py" in proc.stderr
