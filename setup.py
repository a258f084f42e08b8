"""mtkd_jax: multi-teacher knowledge distillation in the probability domain (JAX/Flax)."""

import setuptools

setuptools.setup(
  name="mtkd_jax",
  version="0.1.0",
  description="Multi-teacher knowledge distillation in the probability domain, in JAX/Flax.",
  long_description=open("README.md", encoding="utf-8").read(),
  long_description_content_type="text/markdown",
  python_requires=">=3.11",
  # kernels/ stays a top-level folder in the repo but installs as mtkd_jax.kernels.
  packages=[
    "mtkd_jax",
    "mtkd_jax.experiments",
    "mtkd_jax.kernels",
    "mtkd_jax.sparse",
    "mtkd_jax.weighting",
  ],
  package_dir={"mtkd_jax": "mtkd_jax", "mtkd_jax.kernels": "kernels"},
  # The Pallas and export APIs move every month: a tested range, not one pin. `make test` runs
  # the low end (the exact versions in constraints.txt), `make test-newest` the newest in range.
  install_requires=[
    "jax>=0.10.2,<0.13",
    "jaxlib>=0.10.2,<0.13",
    "flax>=0.12.8,<0.14",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.14",
    "chex>=0.1.92,<0.2",
    "ml-collections>=1.1.0,<2",
    "numpy",
    "scikit-learn",
    "tqdm",
    "matplotlib",
  ],
  extras_require={
    # Accelerators: jax's own extras pull the matching jaxlib plugin (pip install -e '.[cuda]').
    "cuda": ["jax[cuda13]>=0.10.2,<0.13"],
    "cuda12": ["jax[cuda12]>=0.10.2,<0.13"],
    "tpu": ["jax[tpu]>=0.10.2,<0.13"],
    "test": [
      "pytest",
      "pytest-xdist",
      "hypothesis",
      "ruff==0.17.6",
      "nbclient",
      "nbformat",
      "ipykernel",
    ],
  },
)
