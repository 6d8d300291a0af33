"""Exceptions with messages meant for the person at the viewer or the terminal."""

from __future__ import annotations


class MedVAEError(Exception):
    """Base class: the message says what was wrong and what is expected."""


class InputError(MedVAEError, ValueError):
    """A volume, mask, index or option that the operation cannot use."""


class ModelError(MedVAEError, ValueError):
    """A model file that cannot be loaded safely or does not match its config."""


class VolumeReadError(MedVAEError, ValueError):
    """A file or directory that cannot be read as a 3D volume."""


class VolumeWriteError(MedVAEError, OSError):
    """An output that cannot be written (path, permissions, format)."""


class Cancelled(MedVAEError):
    """The job was cancelled by the user; nothing was written."""
