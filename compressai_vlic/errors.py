"""Typed errors: every failure a user can cause has its own class and a message that says what to do."""

from __future__ import annotations


class VLICError(Exception):
    """Base class of every error this package raises on purpose."""


class BitstreamError(VLICError):
    """A stream is corrupted, truncated, foreign, or was written by an incompatible model."""


class ImageReadError(VLICError):
    """An input image could not be read or decoded."""


class ConfigError(VLICError, ValueError):
    """A configuration value is invalid or inconsistent."""


class CheckpointError(VLICError):
    """A checkpoint is missing, fails its hash check, or does not match the model."""


class JudgeError(VLICError):
    """A judge backend failed in a way that is not a per-pair abstention (e.g. misconfiguration)."""


class MetricUnavailableError(VLICError):
    """A metric needs weights or packages that are not present on this machine."""
