"""Typed errors: every failure a user can cause has its own class and a message that says what to do."""

from __future__ import annotations


class VLICError(Exception):
    """Base class of every error this package raises on purpose."""


class BitstreamError(VLICError):
    """A stream is corrupted, truncated, foreign, or was written by an incompatible model."""


class TruncatedStreamError(BitstreamError):
    """The stream is shorter than its structure requires (cut off in transfer or on disk)."""


class ForeignStreamError(BitstreamError):
    """The data is not a VLIC stream at all (wrong magic bytes, e.g. a PNG or JPEG file)."""


class UnsupportedVersionError(BitstreamError):
    """The stream uses a container format version this package cannot read."""


class ChecksumMismatchError(BitstreamError):
    """The CRC32 over header and payload does not match: the stream was corrupted or cut."""


class CorruptStreamError(BitstreamError):
    """The checksum holds but the entropy-coded payload is inconsistent with the model."""


class ModelMismatchError(BitstreamError):
    """The stream was written by a model with another configuration (config hash) or weights."""


class StreamLimitError(BitstreamError):
    """Decoding the stream would exceed a limit given to ``decompress`` (pixels, evaluations)."""


class DecompressArgumentError(BitstreamError, ValueError):
    """``decompress`` was called with arguments that are not a list of VLIC streams."""


class InvalidTokensError(VLICError, ValueError):
    """Token indices handed to the entropy coder have the wrong shape, dtype or range."""


class ImageReadError(VLICError):
    """An input image could not be read or decoded."""


class ImageTooLargeError(ImageReadError):
    """An image's header declares more pixels than the reader's limit (checked before decoding)."""


class ConfigError(VLICError, ValueError):
    """A configuration value is invalid or inconsistent."""


class CheckpointError(VLICError):
    """A checkpoint is missing, fails its hash check, or does not match the model."""


class AdaptorError(CheckpointError):
    """A vision-encoder adaptor file is missing, malformed, or not an adaptor at all."""


class AdaptorMismatchError(AdaptorError):
    """An adaptor was trained on another base model (vision config or weights differ)."""


class JudgeError(VLICError):
    """A judge backend failed in a way that is not a per-pair abstention (e.g. misconfiguration)."""


class MissingDependencyError(VLICError, ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


class MetricUnavailableError(VLICError):
    """A metric needs weights or packages that are not present on this machine."""


class DatasetError(VLICError):
    """A preference dataset or a human-label set (BAPPS folder, CSV) is malformed or inconsistent."""
