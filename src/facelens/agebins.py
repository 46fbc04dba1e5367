"""The age grid shared by the model head and the decoder (torch-free, so ONNX-only use stays light)."""

AGE_MIN, AGE_MAX = 0, 100
NUM_AGE_BINS = AGE_MAX - AGE_MIN + 1


def head_width(head: str) -> int:
    """Width of a model's raw output: one logit per age bin for ``age-bins``, else one number (a logit or years)."""
    return NUM_AGE_BINS if head == "age-bins" else 1
