"""Training: augmentation, the loop with checkpoints/resume/early stopping, calibration."""
