"""Datasets: readers for the supported layouts, hygiene checks, label-noise estimates, seeded splits,
and ``prepare`` (read, clean and split exactly as training does, for training, evaluation and export)."""
