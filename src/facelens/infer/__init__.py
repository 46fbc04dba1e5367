"""Prediction: post-processing maths, model loading (PyTorch and ONNX Runtime), export, batch runs."""
