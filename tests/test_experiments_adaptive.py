"""Tests for the adaptive-weighting and meta-distillation experiments and notebooks/adaptive.ipynb.

The notebook runs both experiments at the small size (nbclient, MTKD_NOTEBOOK_SIZE=small, in a
temporary directory laid out like notebooks/ next to experiments/); the test asserts on the
figures it wrote, the numbers it printed and the results against tests/data/results_small/.
"""

import ast
import json
import os
import re

import _processes
import nbformat
import numpy as np
import pytest
import results_compare
from nbclient import NotebookClient

from mtkd_jax import configs, train
from mtkd_jax.experiments import adaptive, common, meta_distillation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name, arg=""):
  return configs.load(os.path.join(ROOT, "experiments", "configs", f"{name}.py{arg}"))


@pytest.mark.parametrize(
  ("field", "value"),
  [
    ("class_subsets", ((0, 1, 2), (3, 4, 5))),  # classes 6..9 have no teacher
    ("schemes", ("static", "oracle")),
    ("safety_schemes", ("learned",)),
    ("unsafe_class", 3),  # a sensitive class
    ("safety_floor", 1.5),
    ("confidence_tau", 0.0),
    ("gate_learning_rates", (1e-3, 0.0)),
  ],
)
def test_adaptive_config_errors_name_the_field(field, value):
  config = _config("adaptive")
  adaptive.validate_config(config)
  config[field] = value
  with pytest.raises(ValueError, match=rf"config\.{field}"):
    adaptive.validate_config(config)


def test_meta_config_errors_name_the_field():
  meta_distillation.validate_config(_config("meta_distillation"))
  config = _config("meta_distillation", ":small")
  meta_distillation.validate_config(config)
  config.alphas = (0.5, 1.5)
  with pytest.raises(ValueError, match=r"config\.alphas"):
    meta_distillation.validate_config(config)


def test_average_teacher_uses_per_example_weights():
  """Σ_k w_k(x) ℓ_k(x) averaged over x: one-hot weights pick a teacher per example; fixed
  weights give Σ_k w_k times each teacher's own accuracy and log-loss."""
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 50, 4)).astype(np.float32)  # [K, N, V]
  y = rng.integers(0, 4, 50)
  per_teacher = [train.evaluate(z, y) for z in logits]
  fixed = np.array([0.2, 0.3, 0.5])
  got = common.average_teacher(logits, y, np.repeat(fixed[:, None], 50, 1))
  for key in ("accuracy", "log_loss"):
    assert got[key] == pytest.approx(np.dot(fixed, [e[key] for e in per_teacher]), rel=1e-5)
  pick = rng.integers(0, 3, 50)  # teacher of each example
  got = common.average_teacher(logits, y, np.eye(3)[pick].T)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  assert got["log_loss"] == pytest.approx(-np.mean(log_p[pick, np.arange(50), y]), rel=1e-5)
  assert got["accuracy"] == pytest.approx(np.mean(logits[pick, np.arange(50)].argmax(-1) == y))


def test_average_teacher_row_follows_each_schemes_weights():
  """In the :small results: static weights (uniform) give the mean of the specialists; adaptive
  schemes put their weight on the right teacher, so their average teacher is far better."""
  with open(os.path.join(ROOT, "tests", "data", "results_small", "adaptive.json")) as f:
    results = json.load(f)
  avg, teachers = results["average_teacher"], results["teachers"]
  specialists = [teachers[f"teacher_{k}"] for k in range(3)]
  for key in ("accuracy", "log_loss"):
    assert avg["static"][key] == pytest.approx(np.mean([t[key] for t in specialists]), rel=1e-5)
  assert avg["label_aware"]["log_loss"] < 0.5 * avg["static"]["log_loss"]
  text = adaptive.format_table(results)  # the verdict compares with the scheme's own row
  assert re.search(r"static .* 3\.2071 +yes", text) and re.search(r"label_aware .* NO", text)


def _png(path):
  assert os.path.getsize(path) > 5000, path
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_adaptive_notebook_runs_both_experiments(tmp_path, monkeypatch):
  monkeypatch.setenv("MTKD_NOTEBOOK_SIZE", "small")
  monkeypatch.setenv("MTKD_NOTEBOOK_WORKDIR", str(tmp_path / "runs"))
  monkeypatch.setenv("XLA_FLAGS", _processes.CHEAP_XLA_FLAGS)  # one CPU device
  (tmp_path / "experiments").symlink_to(os.path.join(ROOT, "experiments"))  # ../experiments
  (tmp_path / "nb").mkdir()
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "adaptive.ipynb"), as_version=4)
  for cell in nb.cells:  # the committed outputs are those of the full-size run: start afresh
    if cell.cell_type == "code":
      cell.outputs = []
  client = NotebookClient(
    nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path / "nb")}}
  )
  client.execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  text = "\n".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
  _png(tmp_path / "runs" / "adaptive.png")
  _png(tmp_path / "runs" / "meta_distillation.png")
  for name in ("adaptive", "meta_distillation"):  # the old code's results, to 1e-6
    with open(tmp_path / "runs" / name / "results.json") as f:
      results = json.load(f)
    with open(os.path.join(ROOT, "tests", "data", "results_small", f"{name}.json")) as f:
      assert results_compare.differences(json.load(f), results) == [], name
  assert "Adaptive weighting, class-specialist teachers" in text
  summary = ast.literal_eval(text.strip().splitlines()[-1])
  ll = summary["log_loss"]
  assert set(ll) == {"static", "confidence", "label_aware", "learned", "hierarchical"}
  # Even at 60 steps, label-aware weighting beats fixed weights on specialists.
  assert ll["label_aware"] < ll["static"] - 0.05, ll
  # The floor holds on every sensitive training input.
  assert summary["min_floored_safety_weight"] >= summary["floor"] - 1e-6
  # Meta-distillation: the per-step bound always holds, and anchoring contracts.
  assert summary["step_bound_held"]
  kl = summary["kl_target_base_last"]
  assert kl["0.5"] < 0.5 * kl["0"], kl
