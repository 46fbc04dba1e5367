"""Training: the run's options (``config``), augmentation, the loop with checkpoints/resume/early stopping,
the run orchestration (``runner``), ONNX export, leave-one-source-out and the reproduce commands.

The top of the library below the CLI: it may import ``data``, ``face``, ``models``, ``infer`` and
``evaluate``, and none of them imports it (tests/test_layering.py).
"""
