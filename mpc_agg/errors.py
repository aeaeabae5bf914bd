"""Typed errors.

Two families, as in h11: errors the *local caller* caused (bad input, misuse of an
API — :class:`EncodingError`, :class:`HeadroomError`, :class:`ProtocolMisuseError`) and
errors a *remote party* caused (malformed or forged bytes — :class:`DecodeError`,
:class:`SignatureError`, :class:`VerificationError`). Protocol machines turn the second
family into ``PeerExcluded`` / ``MessageIgnored`` effects; they never escape a machine.
"""

from __future__ import annotations


class MpcAggError(Exception):
    """Base class of every error raised by this project."""


class EncodingError(MpcAggError, ValueError):
    """A local value cannot be encoded: NaN/inf, wrong shape or dtype, out of range."""


class HeadroomError(EncodingError):
    """The sum of n encoded values could overflow the ring; nothing was wrapped or clipped."""


class ProtocolMisuseError(MpcAggError, RuntimeError):
    """The local caller used an API in a way its contract forbids (e.g. begin() twice)."""


class DecodeError(MpcAggError, ValueError):
    """Bytes from outside are malformed: truncated, trailing data, oversize, unknown version."""


class SignatureError(MpcAggError):
    """A signature does not verify under the claimed sender's long-term key."""


class VerificationError(MpcAggError):
    """A cryptographic check failed (share vs. commitment, AEAD tag, proof, digest)."""
