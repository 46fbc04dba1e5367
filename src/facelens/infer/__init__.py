"""Prediction: post-processing maths, model loading (PyTorch and ONNX Runtime), the per-task face
models the ``Analyzer`` runs (``face_tasks``), batch runs and shards.

Uses ``data``, ``face`` and ``models`` only (tests/test_layering.py); the ONNX export lives in
``facelens.train.export`` and the Ray engine, which runs the ``Analyzer``, in ``facelens.ray_engine``.
"""
