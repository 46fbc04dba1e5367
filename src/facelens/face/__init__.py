"""Face pipeline: detection with landmarks, alignment to canonical crops, eye-crop geometry."""
