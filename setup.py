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
  # The Pallas and export APIs move every month: pin jax exactly.
  install_requires=[
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "chex==0.1.92",
    "ml-collections==1.1.0",
    "numpy",
    "scikit-learn",
    "tqdm",
    "matplotlib",
  ],
  extras_require={
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
