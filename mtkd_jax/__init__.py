"""mtkd_jax: multi-teacher knowledge distillation in the probability domain."""

from mtkd_jax import divergences, losses, operators, temperature, theory

__all__ = ["divergences", "losses", "operators", "temperature", "theory"]
__version__ = "0.1.0"
