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
"""Every language-model training config: one table of models x sizes (configs as data).

  python launch/train.py --config=experiments/configs/lm.py:hope,tiny --workdir=/tmp/hope_tiny

The text after ``:`` is a comma-separated list: the model, the size, and optionally the mode.

* model: ``hope`` (the default), ``hope_attention``, ``titans`` or ``transformer`` (Transformer++,
  also ``transformer_pp``).
* size: ``tiny`` (the default; CPU-sized, 300 steps of 32 x 64 byte tokens of the embedded
  Shakespeare corpus, held-out perplexity every 100 steps), ``760m`` (30B tokens, peak lr
  4e-4) or ``1_3b`` (100B tokens, peak lr 3e-4): bf16 activations, remat, the blocks under one
  scan, FSDP over every device, 128 rows of 4096 tokens per step (common.paper).
* mode: ``smoke`` (the same model and pipeline, 6 steps) or ``files`` (real data from the
  environment, common.py).

Entries may also be named, big_vision style: ``model=hope,size=760m,mode=files``. Examples::

  python launch/train.py --config=experiments/configs/lm.py:hope,tiny,smoke --workdir=/tmp/h
  python launch/compile_only.py --config=experiments/configs/lm.py:hope,760m --topology=v5p:4x4x4
  NL_JAX_TRAIN_FILES='gs://bucket/fineweb-edu/train/*.parquet' \\
  NL_JAX_EVAL_FILES='gs://bucket/fineweb-edu/val/*.parquet' \\
  NL_JAX_TOKENIZER=spm:/path/to/tokenizer.model \\
  python launch/train.py --config=experiments/configs/lm.py:hope,1_3b,files \\
      --workdir=gs://bucket/runs/hope_1_3b

At the paper sizes Hope is ``common.HOPE_REFERENCE``, the ablations' reference Hope: the
default profile with inner momentum and adaptive q (the paper's literal choices are one switch
away, ``--config.model.profile=paper``; nl_jax/models/hope.py tabulates the differences).
Any field is overridable as usual: ``--config.model.d_model=128``, ``--config.train.steps=1000``.
"""

from experiments.configs import common

# model name in the arg -> registry name.
MODELS = {"hope": "hope", "hope_attention": "hope_attention", "titans": "titans",
          "transformer": "transformer_pp", "transformer_pp": "transformer_pp"}
# size -> common.paper's arguments (None: common.tiny).
SIZES = {"tiny": None,
         "760m": dict(tokens=30e9, learning_rate=4e-4),
         "1_3b": dict(tokens=100e9, learning_rate=3e-4)}
# registry model -> model fields set at the paper sizes.
PAPER_OVERRIDES = {"hope": common.HOPE_REFERENCE}
MODES = tuple(a for a in common.ARGS if a is not None)


def parse_arg(arg: str | None) -> dict[str, str | None]:
  """"hope,760m,files" or "model=hope,size=760m,mode=files" -> {model, size, mode}."""
  out = {"model": "hope", "size": "tiny", "mode": None}
  given = set()
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    if "=" in item:
      key, value = (s.strip() for s in item.split("=", 1))
      if key not in out:
        raise ValueError(f"config arg {arg!r}: unknown key {key!r} (model, size, mode)")
    else:  # positional: model, then size; a mode name may come anywhere
      value = item
      key = "mode" if value in MODES else next(
          (k for k in ("model", "size", "mode") if k not in given), None)
      if key is None:
        raise ValueError(f"config arg {arg!r}: too many entries (model,size,mode)")
    if key in given:
      raise ValueError(f"config arg {arg!r}: {key} given twice")
    given.add(key)
    out[key] = value
  choices = {"model": tuple(MODELS), "size": tuple(SIZES), "mode": MODES}
  for key, value in out.items():
    if value is not None and value not in choices[key]:
      raise ValueError(f"config arg {arg!r}: {key}={value!r} is not one of "
                       f"{list(choices[key])} (--config=experiments/configs/lm.py:model,size"
                       "[,mode])")
  return out


def get_config(arg=None):
  """The training config of ``arg`` (module docstring)."""
  a = parse_arg(arg)
  model = MODELS[a["model"]]
  if SIZES[a["size"]] is None:
    return common.tiny(model, a["mode"])
  return common.paper(model, a["size"], a["mode"], **SIZES[a["size"]],
                      model_overrides=PAPER_OVERRIDES.get(model))
