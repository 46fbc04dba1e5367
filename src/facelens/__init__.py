"""facelens: age from face photos and sex from the eye region, as honest calibrated estimates."""

__version__ = "0.1.0"
