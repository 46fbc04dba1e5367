"""Errors a user can act on: each names the file (or input) and what was wrong with it."""

from __future__ import annotations


class FacelensError(Exception):
    """Base class for every error facelens raises on purpose."""


class ImageLoadError(FacelensError):
    """An input could not be decoded as an image (empty, truncated, not an image, too big...).

    ``reason`` is a short machine-friendly tag so the REST service can map it to a status code
    and the batch runner can count failures by kind: ``empty``, ``missing`` (no such file, or a
    broken symbolic link), ``unreadable`` (permissions, link loops, unreadable file objects),
    ``not_an_image`` (not one of the allowed formats), ``truncated``, ``corrupt`` (any other
    decoder failure), ``too_large`` (pixel or decoded-byte limit), ``too_small`` and
    ``unsupported_mode`` (colour modes, array dtypes or shapes, input types we cannot read).
    """

    def __init__(self, source: str, message: str, reason: str = "unreadable") -> None:
        super().__init__(f"{source}: {message}")
        self.source = source
        self.message = message
        self.reason = reason


class DatasetError(FacelensError):
    """A dataset folder or manifest cannot be used (no images, unknown layout, bad labels)."""


class ModelLoadError(FacelensError):
    """A model file is missing, corrupt, or of the wrong kind for the task."""


class DeviceError(FacelensError):
    """A ``--device`` name is unknown, or the GPU it asks for cannot be used here."""


class DistributedError(FacelensError):
    """The processes of a torchrun job cannot work together (e.g. they do not see the same run folder)."""
