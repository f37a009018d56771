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
r"""The paper's Fig. 4 toy (eq. 53): standard vs Delta Momentum on psi(r, theta).

.. math::
  \psi(r, \theta) = r^2 + k\,(r - \theta + a \sin(\omega r))^2,

minimum 0 at (0, 0), started at (r, theta) = (-3.5, 2) as in the paper. The paper gives neither
k, a, omega nor the step sizes; the constants are the flags below and are printed with the
results. Both optimizers are the library's: `optax.sgd(lr, momentum=alpha)` (heavy ball) and
`nl_jax.optim.delta_momentum(lr, alpha, beta)` (eq. 49, normalised key; the parameter is the
vector (r, theta), so the erase is (alpha I - beta g_hat g_hat^T) mu).

Usage:
  python experiments/momentum_toy/run.py [--out experiments/momentum_toy]

Writes results.json and, when matplotlib is importable (the `notebooks` extra), fig4.png.
"""

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nl_jax import optim


def psi(p, k, a, omega):
  r, theta = p[0], p[1]
  return r**2 + k * (r - theta + a * jnp.sin(omega * r))**2


def run(tx, k, a, omega, steps):
  p = jnp.array([-3.5, 2.0], jnp.float64)
  state = tx.init(p)
  loss = lambda x: psi(x, k, a, omega)  # noqa: E731

  @jax.jit
  def step(p, state):
    u, state = tx.update(jax.grad(loss)(p), state, p)
    return optax.apply_updates(p, u), state

  path, losses = [np.asarray(p)], [float(loss(p))]
  for _ in range(steps):
    p, state = step(p, state)
    path.append(np.asarray(p))
    losses.append(float(loss(p)))
  return np.stack(path), np.asarray(losses)


def steps_to(losses, tol):
  hit = np.nonzero(losses < tol)[0]
  return int(hit[0]) if hit.size else None


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--k", type=float, default=10.0)
  parser.add_argument("--a", type=float, default=0.5)
  parser.add_argument("--omega", type=float, default=2.0)
  parser.add_argument("--alpha", type=float, default=0.9, help="momentum retention (both)")
  parser.add_argument("--betas", default="0.1,0.5", help="Delta Momentum erase steps swept")
  parser.add_argument("--plot_beta", type=float, default=0.1)
  parser.add_argument("--lrs", default="0.001,0.003,0.01,0.02,0.03", help="learning rates swept")
  parser.add_argument("--plot_lr", type=float, default=0.03)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--tol", type=float, default=1e-3)
  parser.add_argument("--out", default=str(pathlib.Path(__file__).parent))
  args = parser.parse_args()
  jax.config.update("jax_enable_x64", True)

  betas = [float(x) for x in args.betas.split(",")]
  consts = dict(k=args.k, a=args.a, omega=args.omega, alpha=args.alpha, betas=betas,
                steps=args.steps, tol=args.tol, start=[-3.5, 2.0])
  rows, paths = [], {}
  for lr in [float(x) for x in args.lrs.split(",")]:
    makers = [("momentum", 0.0, optax.sgd(lr, momentum=args.alpha))]
    makers += [("delta_momentum", b, optim.delta_momentum(lr, alpha=args.alpha, beta=b))
               for b in betas]
    for name, beta, tx in makers:
      path, losses = run(tx, args.k, args.a, args.omega, args.steps)
      row = dict(optimizer=name, lr=lr, beta=beta, final_loss=float(losses[-1]),
                 min_loss=float(np.min(losses)), steps_to_tol=steps_to(losses, args.tol),
                 final_point=[float(x) for x in path[-1]])
      rows.append(row)
      print(json.dumps(row))
      if lr == args.plot_lr and beta in (0.0, args.plot_beta):
        paths[name] = (path, losses)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps(dict(constants=consts, rows=rows), indent=1))
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    print("matplotlib not importable: no plot (install the notebooks extra)")
    return
  fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.5))
  rr, tt = np.meshgrid(np.linspace(-4, 1.5, 300), np.linspace(-2.5, 3, 300))  # Zoomed view.
  zz = np.asarray(psi(jnp.stack([rr, tt]), args.k, args.a, args.omega))
  ax0.contour(rr, tt, np.log10(zz + 1e-3), levels=25, cmap="Greys", linewidths=0.6)
  styles = {"momentum": ("tab:blue", "momentum (heavy ball)"),
            "delta_momentum": ("tab:red", "Delta Momentum")}
  for name, (path, losses) in paths.items():
    color, label = styles[name]
    ax0.plot(path[:, 0], path[:, 1], ".-", color=color, ms=2, lw=0.8, label=label)
    ax1.semilogy(losses, color=color, label=label)
  ax0.set_xlim(-4, 1.5)
  ax0.set_ylim(-2.5, 3)
  ax0.plot([-3.5], [2.0], "k*", ms=10)
  ax0.plot([0.0], [0.0], "g*", ms=10)
  ax0.set_xlabel("r")
  ax0.set_ylabel("theta")
  ax0.legend()
  ax0.set_title(f"psi, k={args.k:g}, a={args.a:g}, omega={args.omega:g}")
  ax1.set_xlabel("step")
  ax1.set_ylabel("psi")
  ax1.set_title(f"lr={args.plot_lr:g}, alpha={args.alpha:g}, beta={args.plot_beta:g}")
  ax1.legend()
  fig.tight_layout()
  fig.savefig(out / "fig4.png", dpi=110)
  print("wrote", out / "fig4.png")


if __name__ == "__main__":
  main()
