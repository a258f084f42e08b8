"""Experiment code behind experiments/configs/*.py: each module has run(config, workdir)."""
