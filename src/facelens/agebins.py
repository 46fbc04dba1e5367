"""The age grid shared by the model head and the decoder (torch-free, so ONNX-only use stays light)."""

AGE_MIN, AGE_MAX = 0, 100
NUM_AGE_BINS = AGE_MAX - AGE_MIN + 1
