"""Errors vlmzip raises. All are ``ValueError`` subclasses so callers can catch bad input uniformly."""


class VlmzipError(ValueError):
    """Base class of every error vlmzip raises for bad input."""


class PolicyError(VlmzipError):
    """A policy string or object is malformed: unknown method or parameter, value out of range."""


class UnsupportedModelError(VlmzipError):
    """The model (family, attention backend, cache type) is not supported by vlmzip or by a method."""


class InputError(VlmzipError):
    """The inputs given to a compressed model are inconsistent (e.g. placeholder count vs images)."""
