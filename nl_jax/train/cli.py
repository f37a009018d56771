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
"""Command-line plumbing of the ``launch/*.py`` mains: one-line user errors, ``--debug``.

A mistake the user can fix (unknown or badly typed ``--config.*`` field, missing config
file, unusable workdir, invalid config, missing optional package) is printed as one line
``<program>: error: ...`` naming the field or path and the fix, and the process exits with
status 2 (`EXIT_USAGE`) before anything is created in the workdir. ``--debug`` shows the
traceback instead, plus the startup logs that are otherwise silenced.

Usage in a main::

  from nl_jax.train import cli
  ...
  if __name__ == "__main__":
    cli.run(main, config_flag="config")
"""

import difflib
import glob
import importlib.util
import logging as py_logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags, logging

EXIT_USAGE = 2

# Optional packages -> the extra of setup.py that installs them.
EXTRA_OF_MODULE = {
    "tensorboardX": "monitoring",
    "tensorboard": "monitoring",
    "google_crc32c": "monitoring",
    "matplotlib": "monitoring",
    "pyarrow": "data",
    "array_record": "data",
    "sentencepiece": "tokenizers",
    "seqio": "seqio",
    "tensorflow": "seqio",
}

_DEBUG = flags.DEFINE_bool("debug", False, "Show tracebacks and the startup logs (library INFO "
                           "lines, the parameter shardings).")


class UserError(Exception):
  """A mistake in the command line or the environment that the user can fix."""


def missing_extra_message(module: str, purpose: str = "") -> str:
  """'<purpose> needs <module>: pip install -e ".[<extra>]"' (one line)."""
  extra = EXTRA_OF_MODULE.get(module.split(".")[0])
  fix = f'pip install -e ".[{extra}]" (or pip install {module})' if extra else (
      f"pip install {module}")
  return f"{purpose + ' needs' if purpose else 'missing optional package'} {module}: {fix}"


def debug_requested(argv: Sequence[str]) -> bool:
  """Whether ``--debug`` is on the command line (readable before flags are parsed)."""
  return any(a in ("--debug", "--debug=true", "--debug=True", "--debug=1") for a in argv[1:])


# ----- the config file and its overrides, checked before absl parses them -----

def _flag_values(argv: Sequence[str], name: str) -> list[tuple[str, str | None]]:
  """``(flag, value)`` for ``--name=v`` / ``--name v`` / ``--name.sub=v`` in argv."""
  out = []
  i = 1
  while i < len(argv):
    a = argv[i]
    if a == "--":
      break
    for prefix in ("--" + name, "-" + name):
      if a == prefix or a.startswith(prefix + "=") or a.startswith(prefix + "."):
        flag, eq, value = a.partition("=")
        if not eq:
          value = argv[i + 1] if i + 1 < len(argv) else None
          i += 1
        out.append((flag.lstrip("-"), value))
        break
    i += 1
  return out


def available_configs(directory: str) -> list[str]:
  """The config files (``*.py`` with ``get_config``) in ``directory``."""
  out = []
  for path in sorted(glob.glob(os.path.join(directory, "*.py"))):
    with open(path, encoding="utf-8") as f:
      if "def get_config" in f.read():
        out.append(path)
  return out


def _default_config_dir() -> str:
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return os.path.join(root, "experiments", "configs")


def load_config_file(spec: str) -> Any:
  """Loads ``path[:arg]`` as ml_collections does (``get_config(arg)``), or raises UserError."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    directory = os.path.dirname(path) if os.path.isdir(os.path.dirname(path) or ".") else ""
    configs = available_configs(directory) if directory else []
    if not configs:
      here = _default_config_dir()
      configs = [os.path.relpath(p) for p in available_configs(here)]
    where = os.path.dirname(configs[0]) if configs else ""
    names = ", ".join(os.path.basename(c) for c in configs) if configs else "none found"
    raise UserError(f"--config: no such file {path!r}; available in {where or '.'}/: {names}")
  module_spec = importlib.util.spec_from_file_location("_nl_jax_config_file", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
      raise UserError(f"--config: {path} has no get_config() function")
    return module.get_config(arg) if arg else module.get_config()
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"--config={spec}: loading it failed: {_root_message(e)}") from e


def _leaf_keys(config, prefix: str = "") -> list[str]:
  keys = []
  for k, v in config.items():
    name = prefix + k
    keys.append(name)
    if hasattr(v, "items") and not isinstance(v, (str, bytes)):
      keys += _leaf_keys(v, name + ".")
  return keys


def closest_keys(config, key: str, n: int = 3) -> list[str]:
  """The fields of ``config`` closest to the dotted ``key`` (for "did you mean")."""
  keys = _leaf_keys(config)
  close = difflib.get_close_matches(key, keys, n=n, cutoff=0.6)
  if not close:
    # A right leaf under a wrong parent ("model.steps"): match the last component.
    last = key.rsplit(".", 1)[-1]
    close = [k for k in keys if k.rsplit(".", 1)[-1] in
             difflib.get_close_matches(last, [x.rsplit(".", 1)[-1] for x in keys], n=n)][:n]
  return close


def check_overrides(config, argv: Sequence[str], config_flag: str = "config") -> None:
  """Every ``--config.a.b=v`` names an existing field, else UserError with the closest."""
  for flag, _ in _flag_values(argv, config_flag):
    if flag == config_flag:
      continue
    key = flag[len(config_flag) + 1:]
    node = config
    for part in key.split("."):
      if hasattr(node, "items") and part in node:
        node = node[part]
        continue
      close = closest_keys(config, key)
      hint = f"; closest: {', '.join(close)}" if close else ""
      raise UserError(f"--{flag}: no such config field{hint}")


_HELP_FLAGS = ("--help", "-help", "--helpfull", "--helpshort", "--helpxml", "-h", "-?")


def preflight(argv: Sequence[str], config_flag: str | None = "config") -> None:
  """Checks the config file and the overrides' field names before absl parses them."""
  if config_flag is None or any(a.split("=")[0] in _HELP_FLAGS for a in argv[1:]):
    return
  values = [(f, v) for f, v in _flag_values(argv, config_flag) if f == config_flag]
  if not values or not values[-1][1]:
    example = os.path.relpath(os.path.join(_default_config_dir(), "lm.py")) + ":hope,tiny"
    raise UserError(f"--{config_flag} is required, e.g. --{config_flag}={example} "
                    f"(configs: {os.path.dirname(example)}/)")
  config = load_config_file(values[-1][1])
  check_overrides(config, argv, config_flag)


def check_workdir(path: str, *, must_exist: bool = False) -> str:
  """Absolute ``path`` if it is (or can become) a writable directory; else UserError.

  Nothing is created. Remote paths (``gs://...``) are not checked.
  """
  if not path:
    raise UserError("--workdir: must be a directory path, got an empty string")
  if "://" in path:
    return path
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f"--workdir={path} is a file, not a directory; choose another path")
  if must_exist and not os.path.isdir(path):
    raise UserError(f"--workdir={path} does not exist; pass the workdir of a training run")
  probe = path
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise UserError(f"--workdir={path}: {probe} is a file, so the directory cannot be created")
  if not os.access(probe, os.W_OK | os.X_OK):
    what = "the workdir" if probe == path else f"{probe} (where the workdir would be created)"
    raise UserError(f"--workdir={path}: {what} is not writable; choose a writable path")
  return path


# ----- turning exceptions into one line -----

def _root_message(e: BaseException) -> str:
  """The innermost cause's message, unescaped and on one line."""
  seen = set()
  while (e.__cause__ or e.__context__) is not None and id(e) not in seen:
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  msg = str(e.args[0]) if len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
  if isinstance(e, KeyError | AttributeError) and msg.startswith(("'", '"')):
    msg = msg.strip("'\"").encode("utf-8").decode("unicode_escape").strip("'\"")
  return " ".join(part.strip() for part in msg.splitlines() if part.strip())


# Errors the library raises for things the user controls (data files, a workdir in use, a
# changed config on resume, a full disk, damaged checkpoints): their messages name the file
# or field and the fix, so they are printed as one line too.
_USER_FACING = (
    ("nl_jax.data.sources", "SourceDataError"),
    ("nl_jax.data.pipeline", "DataConfigError"),
    ("nl_jax.train.workdir", "WorkdirLockedError"),
    ("nl_jax.train.workdir", "ConfigChangedError"),
    ("nl_jax.train.checkpoint", "CheckpointSaveError"),
    ("nl_jax.train.checkpoint", "DamagedCheckpointError"),
)


def _one_line(text: str) -> str:
  return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def user_message(e: BaseException) -> str | None:
  """One line for a user error, None for a bug (which keeps its traceback)."""
  from nl_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top

  if isinstance(e, UserError):
    return str(e)
  for module, name in _USER_FACING:
    cls = getattr(sys.modules.get(module), name, None)
    if isinstance(cls, type) and isinstance(e, cls):
      return _one_line(e)
  if isinstance(e, config_lib.ConfigError):
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if lines and lines[0].endswith(":"):
      return lines[0] + " " + "; ".join(lines[1:])
    return "; ".join(lines)
  if isinstance(e, ModuleNotFoundError) and e.name and e.name.split(".")[0] in EXTRA_OF_MODULE:
    return missing_extra_message(e.name.split(".")[0])
  if isinstance(e, ImportError) and "pip install" in str(e):
    return _root_message(e)
  if isinstance(e, flags.Error):
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip())
  return None


def _fail(message: str) -> None:
  prog = os.path.basename(sys.argv[0]) if sys.argv else "nl_jax"
  sys.stderr.write(f"{prog}: error: {message}\n")
  sys.stderr.flush()
  sys.exit(EXIT_USAGE)


def _parse_flags(argv: list[str], config_flag: str | None) -> list[str]:
  debug = debug_requested(argv)
  try:
    preflight(argv, config_flag)
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    if debug:
      raise
    message = user_message(e)
    _fail(message if message is not None else _root_message(e))
  return []  # unreachable


class _QuietStartup(py_logging.Filter):
  """Drops the startup lines a newcomer cannot act on (shown again under ``--debug``)."""

  NOISE = ("Unable to initialize backend", "overriding jax.Array",
           "An NVIDIA GPU may be present on this machine",
           "CheckpointManagerOptions.read_only=True", "Given directory is read only")

  def filter(self, record) -> bool:
    try:
      message = record.getMessage()
    except Exception:  # pylint: disable=broad-except
      return True
    return not any(n in message for n in self.NOISE)


def quiet_startup() -> None:
  """Filters the libtpu / orbax startup lines out of the console."""
  handler_filter = _QuietStartup()
  for name in ("absl", "jax._src.xla_bridge", "jax"):
    logger = py_logging.getLogger(name)
    if not any(isinstance(f, _QuietStartup) for f in logger.filters):
      logger.addFilter(handler_filter)
  for handler in py_logging.getLogger().handlers:
    if not any(isinstance(f, _QuietStartup) for f in handler.filters):
      handler.addFilter(handler_filter)


def is_debug() -> bool:
  """``--debug`` (False before flags are parsed)."""
  return flags.FLAGS.is_parsed() and _DEBUG.value


def run(main: Callable[[list[str]], Any], *, config_flag: str | None = "config") -> None:
  """``app.run(main)`` with user errors as one line and exit status 2.

  Args:
    main: the absl main.
    config_flag: name of the ``config_flags`` config-file flag whose file and ``.field``
      overrides are checked before parsing (None: no config flag).
  """
  def wrapped(argv):
    if not _DEBUG.value:
      quiet_startup()
    else:
      logging.set_verbosity(logging.DEBUG)
      py_logging.getLogger("jax").setLevel(py_logging.INFO)
    try:
      return main(argv)
    except app.UsageError as e:
      if _DEBUG.value:
        raise
      _fail(str(e))
    except Exception as e:  # pylint: disable=broad-except
      message = None if _DEBUG.value else user_message(e)
      if message is None:
        raise
      _fail(message)

  app.run(wrapped, flags_parser=lambda argv: _parse_flags(argv, config_flag))
