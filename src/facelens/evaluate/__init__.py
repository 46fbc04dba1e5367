"""Evaluation: metrics, post-hoc calibration, figures, HTML reports and model cards.

Submodules are imported explicitly (``from facelens.evaluate.metrics import age_metrics``)
and nothing is imported here, so that training code that only needs the metrics or the
calibration does not pay for matplotlib.

- ``metrics``: age and binary metrics as plain JSON-ready dicts (pure numpy).
- ``calibration``: temperature scaling and interval scaling, fitted on validation data.
- ``groups``: the group labels (source, gender, colour, face) metrics are broken down by.
- ``scoring``: calibrate a model on its validation outputs, score it on test (``compute_metrics``, ``headline``).
- ``pipeline``: ``facelens evaluate`` (rebuild a model's split, predict, measure, report).
- ``plots``: PNG figures (matplotlib Agg).
- ``report``: self-contained HTML reports.
- ``model_card``: Hugging Face style model cards.

Evaluation sits above ``data``, ``face``, ``models`` and ``infer`` and below ``train``: it never
imports training code (tests/test_layering.py).
"""
