"""Evaluation: metrics, post-hoc calibration, figures, HTML reports and model cards.

Submodules are imported explicitly (``from facelens.evaluate.metrics import age_metrics``)
and nothing is imported here, so that training code that only needs the metrics or the
calibration does not pay for matplotlib.

- ``metrics``: age and binary metrics as plain JSON-ready dicts (pure numpy).
- ``calibration``: temperature scaling and interval scaling, fitted on validation data.
- ``plots``: PNG figures (matplotlib Agg).
- ``report``: self-contained HTML reports; ``write_json_atomic``.
- ``model_card``: Hugging Face style model cards.
- ``io``: atomic file writes.
"""
