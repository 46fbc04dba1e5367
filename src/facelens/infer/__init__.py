"""Prediction: post-processing maths, model loading (PyTorch and ONNX Runtime), batch runs and shards.

Uses ``data``, ``face`` and ``models`` only (tests/test_layering.py); the ONNX export lives in
``facelens.train.export`` and the Ray engine, which runs the ``Analyzer``, in ``facelens.ray_engine``.
"""
