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
"""The paper as one switch: ``profile="paper"`` (Hope, Hope-Attention).

The profile sets exactly the documented values (the table in nl_jax/models/hope.py and
README.md's departures table), explicit fields win over it, every field round-trips through
the command line, the paper-scale configs and the ablations' reference are one model, and
the layers under the paper profile equal re-derivations written here from the paper's
equations: self-modifying Titans token by token from eqs. 84, 88, 90 and 94 (float64, numpy),
and the CMS token by token from eq. 71 with the next-token loss (float64 reference, float32
model).
"""

import ast
import dataclasses
import importlib.util
import math
import re
import sys
from pathlib import Path

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from nl_jax.layers.self_modifying_titans import (
  SelfModifyingTitans,
  SMTInputs,
  init_memory_state,
  memory_scan,
)
from nl_jax import config_tree
from nl_jax.models import hope, registry

ROOT = Path(__file__).resolve().parents[2]

# The documented table: field -> (paper, default).
TABLE = {
    "smt.anchored_step": ("sum", "mean"),
    "smt.rule": ("paper_l2", "dgd"),
    "smt.value_norm": ("none", "l2"),
    "smt.momentum": (True, False),
    "smt.adaptive_q": (True, False),
    "cms.objective": ("ntp", "local"),
    "cms.max_step_norm": (math.inf, 1.0),
}
CMS_ROWS = ("cms.objective", "cms.max_step_norm")


def _rows(name):
  return TABLE if name == "hope" else {k: TABLE[k] for k in CMS_ROWS}


def _load(path: Path, module_name: str):
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# ---------------------------------------------------------------------------------------------
# The profile's values, explicit fields, the docs
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["hope", "hope_attention"])
def test_profiles_set_exactly_the_documented_values(name):
  for col, profile in enumerate(("paper", "default")):
    cfg = registry.model_config(name, "tiny", profile=profile)
    assert cfg.choices() == {k: v[col] for k, v in _rows(name).items()}
    cms = cfg.cms_config()
    assert cms.objective == TABLE["cms.objective"][col]
    assert cms.max_step_norm == TABLE["cms.max_step_norm"][col]  # inf: no clip
    if name == "hope":
      smt = cfg.smt_config()
      got = (smt.anchored_step, smt.rule, smt.value_norm, smt.momentum, smt.adaptive_q)
      assert got == tuple(TABLE[k][col] for k in ("smt.anchored_step", "smt.rule",
                                                  "smt.value_norm", "smt.momentum",
                                                  "smt.adaptive_q"))
  # the default profile is the model as it was before profiles existed
  assert registry.model_config(name, "tiny") == registry.model_config(name, "tiny",
                                                                      profile="default")


def test_explicit_fields_win_over_the_profile():
  cfg = registry.model_config("hope", "tiny", profile="paper",
                              cms=dict(objective="local", max_step_norm=2.0),
                              smt=dict(momentum=False))
  want = {k: v[0] for k, v in TABLE.items()}
  want.update({"cms.objective": "local", "smt.momentum": False, "cms.max_step_norm": 2.0})
  assert cfg.choices() == want
  assert cfg.cms_config().max_step_norm == 2.0 and not cfg.smt_config().momentum
  cfg = registry.model_config("hope", "tiny", smt=dict(value_norm="none", anchored_step="sum"))
  assert cfg.smt_config().value_norm == "none" and cfg.smt_config().anchored_step == "sum"
  assert cfg.smt_config().rule == "dgd"
  with pytest.raises(ValueError, match=r"HopeConfig.profile='literal' is not one of "
                     r"\('default', 'paper'\)"):
    registry.model_config("hope", "tiny", profile="literal")
  with pytest.raises(ValueError, match=r"cms: CMSConfig.max_step_norm must be > 0"):
    registry.model_config("hope_attention", "tiny", cms=dict(max_step_norm=0.0))
  with pytest.raises(ValueError, match="anchored_step"):
    registry.model_config("hope", "tiny", smt=dict(anchored_step="median"))
  # The chunk-step variants reach the layer (issue 17's measurements use them).
  cfg = registry.model_config("hope", "tiny", smt=dict(output_error="current",
                                                       anchored_step="mean_all"))
  assert (cfg.smt_config().output_error, cfg.smt_config().anchored_step) == ("current",
                                                                              "mean_all")
  assert cfg.smt_config().out_memory.output_error == "current"
  with pytest.raises(ValueError, match=r"output_error='last' is not one of"):
    registry.model_config("hope", "tiny", smt=dict(output_error="last"))


def _fmt(v, quote):
  return quote + ("True" if v is True else "False" if v is False else str(v)) + quote


def test_docs_tabulate_exactly_the_profile():
  """README.md's departures table and the Hope module docstring list every field of the
  profile with its paper and default value, and nothing else."""
  readme = (ROOT / "README.md").read_text()
  table = readme.split("| field (`--config.model.<field>`) |", 1)[1].split("\n\n", 1)[0]
  rows = [re.split(r"(?<!\\)\|", r)[1:-1] for r in table.splitlines()[2:]]
  got = {cells[0].strip().strip("`"): cells for cells in rows}
  assert set(got) == set(TABLE)
  for field, (paper, default) in TABLE.items():
    assert got[field][1].strip().startswith(_fmt(paper, "`")), field
    assert got[field][2].strip() == _fmt(default, "`"), field
  rows = [re.split(r"\s{2,}", r) for r in hope.__doc__.splitlines()
          if re.match(r"``\w+\.\w+``\s{2,}", r)]
  got = {cells[0].strip("`"): cells for cells in rows}
  assert set(got) == set(TABLE)
  for field, (paper, default) in TABLE.items():
    assert got[field][1].startswith(_fmt(paper, "``")), field
    assert got[field][2] == _fmt(default, "``"), field


# ---------------------------------------------------------------------------------------------
# The command line and the experiment configs
# ---------------------------------------------------------------------------------------------

def _cli_model(monkeypatch, name, *overrides):
  """The model config launch/train.py builds from --config=lm.py:<name>,tiny and overrides."""
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=fv, lock_config=True)
  argv = ["prog", f"--config={ROOT / 'experiments' / 'configs' / 'lm.py'}:{name},tiny",
          *overrides]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv
  fv(argv)
  return registry.config_from_dict(name, fv.config.model.to_dict())


@pytest.mark.parametrize("name", ["hope", "hope_attention"])
def test_every_profile_field_round_trips_through_the_command_line(monkeypatch, name):
  rows = _rows(name)
  paper = {k: v[0] for k, v in rows.items()}
  default = {k: v[1] for k, v in rows.items()}
  assert _cli_model(monkeypatch, name).choices() == default
  cfg = _cli_model(monkeypatch, name, "--config.model.profile=paper")
  assert cfg.profile == "paper" and cfg.choices() == paper
  # every field set on the command line wins over the profile, either way
  flag = lambda k, v: f"--config.model.{k}={_fmt(v, '')}"  # noqa: E731
  cfg = _cli_model(monkeypatch, name, "--config.model.profile=paper",
                   *(flag(k, v) for k, v in default.items()))
  assert cfg.profile == "paper" and cfg.choices() == default
  cfg = _cli_model(monkeypatch, name, *(flag(k, v) for k, v in paper.items()))
  assert cfg.profile == "default" and cfg.choices() == paper


# A value other than the tiny preset's for every field of Hope, Hope-Attention and Titans
# (dotted names), as the command line spells it; one set of values that validates together.
EVERY_FIELD = {
    "vocab_size": "300", "d_model": "96", "n_layers": "3", "n_heads": "2", "head_dim": "24",
    "mlp_hidden": "80", "dtype": "bfloat16", "param_dtype": "bfloat16", "remat": "True",
    "remat_policy": "memory_states",
    "scan_layers": "True", "tie_embeddings": "False", "norm_eps": "1e-5",
    "rope_theta": "500.0", "profile": "paper", "chunk_remat": "False", "chunk_remat_group": "0",
    "cms.chunk_sizes": "(4, 16, 64)", "cms.learning_rates": "(0.1, 0.2, 0.0)",
    "cms.variant": "nested", "cms.objective": "local", "cms.max_step_norm": "2.5",
    "cms.retention": "(0.9, 0.8, 1.0)", "cms.meta_gradient": "first_order",
    "cms.chunk_backward": "manual",
    "smt.memory_hidden": "12", "smt.gate_hidden": "6", "smt.activation": "gelu",
    "smt.rule": "gd", "smt.momentum": "False", "smt.mu_max": "0.5", "smt.adaptive_q": "False",
    "smt.static_projections": "('k',)", "smt.chunk_size": "16", "smt.proj_chunk_size": "4",
    "smt.read_at": "post", "smt.eta_max": "0.5", "smt.alpha_min": "0.25",
    "smt.memory_init_scale": "0.5", "smt.eta_bias_init": "-1.0", "smt.alpha_bias_init": "6.0",
    "smt.stop_target_grad": "True",
    "smt.value_norm": "l2", "smt.anchored_step": "mean_all", "smt.output_error": "current",
    "smt.targets": "shared", "smt.chunk_backward": "manual", "smt.conv_width": "2",
    "smt.one_scan": "False",
    "smt.implementation": "sequential", "sliding_window": "32", "attention_block_size": "64",
    "titans.memory_depth": "1", "titans.memory_expansion": "3",
    "titans.memory_activation": "gelu", "titans.inner_rule": "dgd",
    "titans.memory_semantics": "exact", "titans.chunk_size": "8", "titans.momentum": "False",
    "titans.eta_max": "0.5", "titans.alpha_min": "0.25", "titans.mu_max": "0.5",
    "titans.conv_width": "2", "titans.memory_implementation": "sequential",
    "titans.memory_kernel": "xla", "titans.first_order": "True", "titans.value_norm": "none",
    "titans.anchored_step": "sum", "titans.chunk_backward": "manual",
    "titans.eta_bias_init": "-1.0", "titans.alpha_bias_init": "6.0",
    "titans.mu_bias_init": "0.5",
}

# Fields whose value above conflicts with another's there (the hand-written CMS backward is for
# the exact meta-gradient): each is set on a command line of its own.
APART = ("cms.chunk_backward",)


@pytest.mark.parametrize("name", ["hope", "hope_attention", "titans"])
def test_every_field_of_the_nested_configs_round_trips_through_the_command_line(
    monkeypatch, name):
  """Each field of every level, set by its dotted name on the command line, reaches the model
  config (and through it the layer configs); a field added later must be listed here."""
  paths = config_tree.field_paths(registry.config_class(name))
  assert set(paths) <= set(EVERY_FIELD), sorted(set(paths) - set(EVERY_FIELD))
  tiny = config_tree.flatten(config_tree.to_dict(registry.model_config(name, "tiny")))
  cfg = _cli_model(monkeypatch, name, *(f"--config.model.{p}={EVERY_FIELD[p]}" for p in paths
                                        if p not in APART))
  flat = config_tree.flatten(config_tree.to_dict(cfg))
  assert set(flat) == set(paths)
  for path in paths:
    got = flat[path] if path not in APART else config_tree.flatten(config_tree.to_dict(
        _cli_model(monkeypatch, name, f"--config.model.{path}={EVERY_FIELD[path]}")))[path]
    want = ast.literal_eval(EVERY_FIELD[path]) if EVERY_FIELD[path][0] in "(-0123456789TF" \
        else EVERY_FIELD[path]
    assert got == want, path
    assert got != tiny[path], path
  if name == "titans":
    assert cfg.layer_config("titans").memory_depth == 1
    assert cfg.layer_config("titans").d_model == 96
    return
  assert cfg.cms_config().meta_gradient == "first_order" and cfg.cms_config().d_model == 96
  if name == "hope":
    assert (cfg.smt_config().chunk_backward, cfg.smt_config().head_dim) == ("manual", 24)


def test_paper_scale_configs_and_the_ablation_reference_are_one_model():
  ablations = _load(ROOT / "experiments" / "ablations" / "run.py", "_ablations_run")
  lm = _load(ROOT / "experiments" / "configs" / "lm.py", "_lm_configs")
  for size in ("760m", "1_3b"):
    got = registry.config_from_dict("hope", lm.get_config(f"hope,{size}").model.to_dict())
    ref = registry.model_config("hope", size, **ablations.REFERENCE)
    assert (got.profile, got.choices()) == (ref.profile, ref.choices())
    assert got.choices()["smt.momentum"] and got.choices()["smt.adaptive_q"]
  # every ablation row is a difference from that reference (dotted field names)
  assert ablations.ROWS["hope"] == {}
  fields = config_tree.field_paths(hope.HopeConfig)
  assert all(row == "no_cms" or set(row) <= set(fields) for row in ablations.ROWS.values())


# ---------------------------------------------------------------------------------------------
# Self-modifying Titans = eqs. 84, 88, 90, 94 token by token (float64)
# ---------------------------------------------------------------------------------------------

def _silu(z):
  return z / (1.0 + np.exp(-z))


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _mem(w, x, residual):
  """Eq. 89: M(x) = x + W1 silu(W2 x) (scalar memories: W1 silu(W2 x), no residual)."""
  y = w[0] @ _silu(w[1] @ x)
  return y + x if residual else y


def _inner_grad(w, k, target, residual):
  """Gradient of 0.5 ||M(k) - target||^2 w.r.t. (W1, W2) (eq. 93 drops the factor 2)."""
  z = w[1] @ k
  s = _sigmoid(z)
  err = _mem(w, k, residual) - target
  return np.outer(err, _silu(z)), np.outer((w[0].T @ err) * s * (1.0 + z * (1.0 - s)), k)


def _l2norm(x):
  return x / np.sqrt(x @ x + 1e-6)  # the layer's epsilon


def _write(w, s, anchor, k, target, eta, alpha, mu, residual):
  """Eq. 88 with eq. 90's anchored gradient, no 1/C: M (alpha I - eta k k^T) on the input-side
  weight W2 (spec 9.4), plus Titans' momentum S <- mu S - eta grad (spec 9.7)."""
  g = _inner_grad(anchor, k, target, residual)
  s = (mu * s[0] - eta * g[0], mu * s[1] - eta * g[1])
  decay = (alpha * w[0], alpha * w[1] - eta * np.outer(w[1] @ k, k))
  return (decay[0] + s[0], decay[1] + s[1]), s


def _smt_reference(init, bias, xk, xv, xq, mu, eta_max, alpha_min, cp, co):
  """One sequence and head. init: name -> (W1, W2) for k, v, q, eta, alpha, out; x* [T, d].

  Returns (o [T, d], name -> (W1, W2) at the end)."""
  residual = {"k": True, "v": True, "q": True, "eta": False, "alpha": False, "out": True}
  w = dict(init)
  anchor = dict(init)
  mom = {n: (np.zeros_like(a), np.zeros_like(b)) for n, (a, b) in init.items()}
  out = []
  for t in range(xk.shape[0]):
    # eq. 90 (causal anchor, spec 9.3): k, v, q, eta, alpha and every target from the state
    # at the end of the previous chunk.
    k = _l2norm(_mem(anchor["k"], xk[t], True))
    v = _mem(anchor["v"], xv[t], True)        # the paper normalises only q and k
    q = _l2norm(_mem(anchor["q"], xq[t], True))  # q is a memory too
    eta = eta_max * _sigmoid(_mem(anchor["eta"], xk[t], False)[0] + bias[0])
    alpha = alpha_min + (1 - alpha_min) * _sigmoid(_mem(anchor["alpha"], xk[t], False)[0]
                                                   + bias[1])
    out.append(_mem(w["out"], q, True))       # eq. 94: o_t = M_{memory, t-1}(q_t)
    for n in w:
      vhat = _mem(anchor[n], v, residual[n])  # eq. 84: each memory's own target
      w[n], mom[n] = _write(w[n], mom[n], anchor[n], k, vhat, eta, alpha, mu[t], residual[n])
    for n in w:
      if (t + 1) % (co if n == "out" else cp) == 0:
        anchor[n] = w[n]
  return np.stack(out), w


def _smt_setup(seed, b=2, t=11):
  cfg = registry.model_config("hope", "tiny", profile="paper", d_model=8, n_heads=2, head_dim=4,
                              smt=dict(chunk_size=4, proj_chunk_size=2)).smt_config()
  cfg = dataclasses.replace(cfg, dtype="float64", param_dtype="float64")
  params = SelfModifyingTitans(cfg, rngs=nnx.Rngs(seed)).params()
  # Larger memory weights than at init, so every memory's state matters to the outputs.
  params = params._replace(proj_init=jax.tree.map(lambda w: 2.0 * w, params.proj_init),
                           gate_init=jax.tree.map(lambda w: 4.0 * w, params.gate_init),
                           out_init=jax.tree.map(lambda w: 3.0 * w, params.out_init))
  ks = jax.random.split(jax.random.key(seed + 100), 4)
  xk, xv, xq = (jax.random.normal(k, (b, 2, t, 4), jnp.float64) for k in ks[:3])
  mu = 0.8 * jax.nn.sigmoid(jax.random.normal(ks[3], (b, 2, t), jnp.float64))
  return cfg, params, SMTInputs(xk, xv, xq, mu, jnp.zeros((b, t), bool))


def test_smt_under_the_paper_profile_equals_eqs_88_90_token_by_token():
  """Chunk sizes 4 (output memory) and 2 (the others), T = 11 (ragged), float64: both paths
  of the layer equal the token loop above (fails under the default profile: 1/C, DGD's
  normalised step, no momentum, static q, normalised v)."""
  with jax.enable_x64(True):
    cfg, params, inp = _smt_setup(0)
    state = init_memory_state(cfg, params, 2)
    got = {impl: jax.jit(lambda s, i, impl=impl: memory_scan(cfg, params, s, i, impl)[:2])(
        state, inp) for impl in ("chunked", "sequential")}
  p = jax.tree.map(np.asarray, params)
  for bi in range(2):
    for h in range(2):
      init = {n: (p.proj_init.w1[i, h], p.proj_init.w2[i, h]) for i, n in enumerate("kvq")}
      init.update({n: (p.gate_init.w1[i, h], p.gate_init.w2[i, h])
                   for i, n in enumerate(("eta", "alpha"))})
      init["out"] = (p.out_init.w1[h], p.out_init.w2[h])
      o, w = _smt_reference(init, p.gate_bias[:, h], *(np.asarray(x[bi, h]) for x in inp[:3]),
                            np.asarray(inp.mu[bi, h]), cfg.eta_max, cfg.alpha_min,
                            cfg.proj_chunk_size, cfg.chunk_size)
      assert np.abs(o).max() > 0.1
      for impl, (o_got, st) in got.items():
        np.testing.assert_allclose(o_got[bi, h], o, rtol=1e-9, atol=1e-10, err_msg=impl)
        mems = {n: (st.proj.memory.w1[bi, i, h], st.proj.memory.w2[bi, i, h])
                for i, n in enumerate("kvq")}
        mems.update({n: (st.gates.memory.w1[bi, i, h], st.gates.memory.w2[bi, i, h])
                     for i, n in enumerate(("eta", "alpha"))})
        mems["out"] = (st.out.memory.w1[bi, h], st.out.memory.w2[bi, h])
        for n, (w1, w2) in mems.items():
          np.testing.assert_allclose(w1, w[n][0], rtol=1e-9, atol=1e-10, err_msg=f"{impl} {n}")
          np.testing.assert_allclose(w2, w[n][1], rtol=1e-9, atol=1e-10, err_msg=f"{impl} {n}")


# ---------------------------------------------------------------------------------------------
# CMS = eq. 71 with the next-token loss, token by token
# ---------------------------------------------------------------------------------------------

def _rms(x, scale, eps):
  return x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def _token_loss(weights, r, target, mask, norms, final, table, eps):
  """Next-token loss of one token of one sequence: the CMS chain of eq. 70 (pre-norm residual
  SwiGLU levels) on the block's mixer output r [D], then the final norm and tied read-out."""
  for (w_gate, w_up, w_down), scale in zip(weights, norms, strict=True):
    h = _rms(r, scale, eps)
    r = r + (jax.nn.silu(h @ w_gate) * (h @ w_up)) @ w_down
  logits = _rms(r, final, eps) @ table.T
  return mask * -jax.nn.log_softmax(logits)[target], logits


def _cms_reference(model, r_BxTxD, targets, mask):
  """Eq. 71: each level sums its tokens' gradients (at its weights, frozen in its chunk) and
  steps theta <- theta - lr * sum once every C_l tokens, unclipped. Float64, one layer."""
  cfg = model.config
  cms = model.blocks[0].cms.params()
  f64 = lambda x: jnp.asarray(np.asarray(x), jnp.float64)  # noqa: E731
  norms = f64(cms.norm)
  final, table = f64(model.final_norm.scale[...]), f64(model.embed.embedding[...])
  b = r_BxTxD.shape[0]
  weights = [tuple(jnp.broadcast_to(f64(x), (b,) + x.shape) for x in w) for w in cms.init]
  acc = jax.tree.map(jnp.zeros_like, weights)
  grad = jax.jit(jax.vmap(jax.grad(_token_loss, has_aux=True),
                          in_axes=(0, 0, 0, 0, None, None, None, None)), static_argnums=7)
  logits, step_norms = [], []
  for t in range(r_BxTxD.shape[1]):
    g, lg = grad(weights, f64(r_BxTxD[:, t]), targets[:, t], f64(mask[:, t]), norms, final,
                 table, cfg.norm_eps)
    logits.append(lg)
    acc = jax.tree.map(jnp.add, acc, g)
    for lvl, (c, lr) in enumerate(zip(cfg.cms.chunk_sizes, cfg.cms.learning_rates,
                                      strict=True)):
      if (t + 1) % c == 0:
        step_norms.append(lr * jnp.sqrt(sum(jnp.sum(a * a, axis=(1, 2)) for a in acc[lvl])))
        weights[lvl] = tuple(w - lr * a for w, a in zip(weights[lvl], acc[lvl], strict=True))
        acc[lvl] = jax.tree.map(jnp.zeros_like, acc[lvl])
  return jnp.stack(logits, axis=1), weights, acc, jnp.stack(step_norms)


@pytest.mark.parametrize("name", ["hope", pytest.param("hope_attention",
                                                     marks=pytest.mark.slow)])
def test_cms_under_the_paper_profile_equals_eq_71_token_by_token(name):
  """One layer, levels C = (4, 8), T = 12 (level 1 ends with a partial chunk). The layer's
  mixer output (checked by its own tests) feeds both; the model (float32) equals the float64
  token loop within float32 tolerance, and the unclipped steps are far beyond the default
  clip (fails under the default profile: local objective, clip 1.0)."""
  extra = dict(smt=dict(chunk_size=4, proj_chunk_size=2)) if name == "hope" else {}
  cfg = registry.model_config(name, "tiny", profile="paper", vocab_size=32, d_model=16,
                              n_layers=1, n_heads=2, head_dim=8, mlp_hidden=24,
                              cms=dict(chunk_sizes=(4, 8), learning_rates=(0.5, 0.3)), **extra)
  model = registry.build_model(cfg, rngs=nnx.Rngs(0))
  b, t = 2, 12
  tokens = jax.random.randint(jax.random.key(1), (b, t), 0, cfg.vocab_size, jnp.int32)
  targets = jnp.concatenate([tokens[:, 1:], jnp.zeros((b, 1), jnp.int32)], axis=1)
  mask = jnp.ones((b, t), jnp.float32).at[:, -1].set(0.0)
  graphdef, params = nnx.split(model)

  @jax.jit
  def run(params):
    m = nnx.merge(graphdef, params)
    logits, state, _ = m(tokens, targets=targets, loss_mask=mask)
    blk = m.blocks[0]
    x = m.embed(tokens)
    seg = jnp.ones((b, t), jnp.int32)
    if name == "hope":
      y = blk.smt(blk.smt_norm(x), blk.smt.init_memory(b), seg, jnp.zeros((b, t), bool))[0]
    else:
      y = blk.attn(blk.attn_norm(x), jnp.broadcast_to(jnp.arange(t), (b, t)), seg)
    return logits, state["block_0"]["cms"], x + y

  logits, state, r = run(params)
  with jax.enable_x64(True):
    want, weights, acc, step_norms = jax.tree.map(np.asarray, _cms_reference(model, r, targets,
                                                                             mask))
  assert step_norms.min() > 1.0  # the default clip (1.0) would change every step
  scale = np.abs(want).max()
  np.testing.assert_allclose(logits, want, rtol=2e-5, atol=2e-5 * scale)
  for lvl in range(2):
    for f in range(3):
      for got, ref in ((state.weights, weights), (state.acc, acc)):
        ref = ref[lvl][f]
        np.testing.assert_allclose(got[lvl][f], ref, rtol=2e-5, atol=2e-5 * np.abs(ref).max(),
                                   err_msg=f"level {lvl} field {f}")
