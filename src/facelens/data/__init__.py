"""Datasets: readers for the supported layouts, hygiene checks and seeded splits."""
