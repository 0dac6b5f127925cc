"""Writes tutorials/engine.ipynb (outputs stripped). Run: python tools/make_engine_tutorial.py"""

import nbformat as nbf

cells = [
    nbf.v4.new_markdown_cell(
        "# The gpgeom engine in ten minutes\n\n"
        "Every gpgeom model is a thin composition of a few engine mechanisms. This notebook shows three of them:\n\n"
        "1. a Matern GP on a long time series, fitted in O(n) by the Kalman filter (`gpgeom.engine.statespace`),\n"
        "   checked against the dense GP;\n"
        "2. an exact GP that is also a BoTorch model (`gpgeom.botorch.exact_gp.ExactGPModel`) "
        "inside an optimisation loop;\n"
        "3. a spectral (graph) kernel on an eigenbasis (`gpgeom.kernels.spectral.SpectralKernel`)."
    ),
    nbf.v4.new_code_cell(
        "import os\n"
        'SMOKE_TEST = os.environ.get("SMOKE_TEST") is not None\n'
        "import torch\n"
        "torch.set_num_threads(1)  # small GP fits run ~10x slower with 2 threads on 2-core machines\n"
        "torch.manual_seed(0)\n"
        "import matplotlib.pyplot as plt\n"
        "import gpytorch\n"
        "from gpgeom.kernels.markov import MaternMarkovKernel\n"
        "from gpgeom.engine.statespace import log_marginal_likelihood, posterior\n"
        "from gpgeom.botorch.exact_gp import ExactGPModel\n"
        "from gpgeom.engine.fitting import fit"
    ),
    nbf.v4.new_markdown_cell(
        "## 1. State-space GP\n\nA Matern 3/2 kernel is an ordinary GPyTorch kernel *and* a linear SDE. "
        "The Kalman filter evaluates the exact log marginal likelihood in O(n)."
    ),
    nbf.v4.new_code_cell(
        "n = 2_000 if SMOKE_TEST else 20_000\n"
        "t = torch.sort(torch.rand(n, dtype=torch.float64) * n / 50).values\n"
        "f = lambda t: torch.sin(t) + 0.5 * torch.sin(3.1 * t + 1.0)\n"
        "y = f(t) + 0.3 * torch.randn(n, dtype=torch.float64)\n"
        "\n"
        "class Reg(gpytorch.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.kernel = MaternMarkovKernel(nu=1.5)\n"
        "        self.raw_noise = torch.nn.Parameter(torch.tensor(0.0))\n"
        '        self.register_constraint("raw_noise", gpytorch.constraints.GreaterThan(1e-6))\n'
        "    @property\n"
        "    def noise(self):\n"
        "        return self.raw_noise_constraint.transform(self.raw_noise)\n"
        "\n"
        "reg = Reg().double()\n"
        "result = fit(lambda: -log_marginal_likelihood(reg.kernel, t, y, reg.noise) / n, module=reg,\n"
        '             optimizer="lbfgs", max_iter=50 if SMOKE_TEST else 200)\n'
        "print(result)\n"
        'print("lengthscale", reg.kernel.lengthscale.item(), "noise", reg.noise.item())'
    ),
    nbf.v4.new_code_cell(
        "# the same log likelihood from the dense GP on the first 1,000 points\n"
        "m = 1_000\n"
        "with torch.no_grad():\n"
        "    dense = gpytorch.kernels.MaternKernel(nu=1.5).double()\n"
        "    dense.lengthscale = reg.kernel.lengthscale\n"
        "    K = dense(t[:m, None]).to_dense() * reg.kernel.variance + reg.noise * torch.eye(m, dtype=torch.float64)\n"
        "    ll_dense = gpytorch.distributions.MultivariateNormal(torch.zeros(m, dtype=torch.float64), K)"
        ".log_prob(y[:m])\n"
        "    ll_kalman = log_marginal_likelihood(reg.kernel, t[:m], y[:m], reg.noise)\n"
        'print(f"Kalman {ll_kalman.item():.8f}   dense {ll_dense.item():.8f}")\n'
        "\n"
        "t_test = torch.linspace(0, 20, 500, dtype=torch.float64)\n"
        "with torch.no_grad():\n"
        "    post = posterior(reg.kernel, t, y, reg.noise, t_test=t_test)\n"
        "sd = post.test_variance.sqrt()\n"
        "w = t <= 20\n"
        "plt.figure(figsize=(9, 3))\n"
        'plt.plot(t[w], y[w], ".", ms=2, color="0.6")\n'
        'plt.plot(t_test, f(t_test), "k-", lw=1)\n'
        'plt.plot(t_test, post.test_mean, "C0-")\n'
        "plt.fill_between(t_test, post.test_mean - 2 * sd, post.test_mean + 2 * sd, alpha=0.3)\n"
        'plt.title("Kalman/RTS posterior");'
    ),
    nbf.v4.new_markdown_cell(
        "## 2. Exact GP as a BoTorch surrogate\n\n`ExactGPModel` is a GPyTorch `ExactGP` and a BoTorch `Model`: "
        "`predict` and `posterior` agree, and any acquisition function works with it."
    ),
    nbf.v4.new_code_cell(
        "from botorch.acquisition.logei import qLogNoisyExpectedImprovement\n"
        "from botorch.optim import optimize_acqf\n"
        "\n"
        "def objective(X):\n"
        "    return -((X - 0.3) ** 2).sum(-1, keepdim=True) + 0.1 * torch.sin(10 * X[..., :1])\n"
        "\n"
        "bounds = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)\n"
        "X = torch.rand(6, 2, dtype=torch.float64)\n"
        "Y = objective(X)\n"
        "for step in range(2 if SMOKE_TEST else 10):\n"
        "    model = ExactGPModel(X, Y).fit(restarts=1, seed=step, progress=False)\n"
        "    acq = qLogNoisyExpectedImprovement(model, X_baseline=X)\n"
        "    cand, _ = optimize_acqf(acq, bounds=bounds, q=1, num_restarts=2 if SMOKE_TEST else 8, raw_samples=64)\n"
        "    X, Y = torch.cat([X, cand]), torch.cat([Y, objective(cand)])\n"
        "mean, std = model.predict(X[-1:], return_std=True)\n"
        "post = model.posterior(X[-1:])\n"
        'print("best", Y.max().item(), "| predict", mean.item(), "posterior", post.mean.item())'
    ),
    nbf.v4.new_markdown_cell(
        "## 3. A spectral kernel on a graph\n\nWith the eigenpairs of a graph Laplacian, "
        "`SpectralKernel` gives Matern and heat kernels on the graph's nodes (inputs are node indices)."
    ),
    nbf.v4.new_code_cell(
        "from gpgeom.kernels.spectral import SpectralKernel\n"
        "n_nodes = 60\n"
        "A = torch.zeros(n_nodes, n_nodes, dtype=torch.float64)\n"
        "idx = torch.arange(n_nodes)\n"
        "A[idx, (idx + 1) % n_nodes] = A[(idx + 1) % n_nodes, idx] = 1.0  # a ring\n"
        "L = torch.diag(A.sum(1)) - A\n"
        "evals, evecs = torch.linalg.eigh(L)\n"
        'kernel = SpectralKernel(evals, evecs, spectral_filter="matern", nu=1.5, dimension=1).double()\n'
        "kernel.lengthscale = torch.tensor(5.0, dtype=torch.float64)\n"
        "K = kernel(idx[:, None].double()).to_dense().detach()\n"
        'plt.figure(figsize=(4, 3)); plt.plot(K[0]); plt.title("Matern kernel on a ring: k(0, j)");'
    ),
]
nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
nbf.write(nb, "tutorials/engine.ipynb")
print("wrote tutorials/engine.ipynb")
