"""Names and limits every object store adapter applies the same way (no adapter's dependencies)."""

from __future__ import annotations

import re
import unicodedata

from events.errors import InvalidInput, NotFound

MAX_EXPIRES_S = 7 * 24 * 3600  # as SigV4 presigned URLs
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

PARAM_OP = "X-Sluice-Op"
PARAM_EXPIRES = "X-Sluice-Expires"
PARAM_CONTENT_TYPE = "X-Sluice-Content-Type"


def check_bucket(bucket: str) -> None:
    if not BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise InvalidInput(
            f"invalid bucket name {bucket!r}: use 3-63 lowercase letters, digits, `.` and `-`",
            details={"bucket": bucket},
        )


def check_expires(expires_in: int) -> None:
    if not 1 <= expires_in <= MAX_EXPIRES_S:
        raise InvalidInput(
            f"expires_in must be between 1 and {MAX_EXPIRES_S} seconds, not {expires_in}",
            details={"expires_in": expires_in},
        )


def object_not_found(bucket: str, key: str) -> NotFound:
    return NotFound(f"object {key!r} not found in bucket {bucket!r}", details={"bucket": bucket, "key": key})


def bucket_not_found(bucket: str) -> NotFound:
    return NotFound(f"bucket {bucket!r} does not exist", details={"bucket": bucket})


BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def hidden_character(text: str) -> str | None:
    """The first control or bidirectional-text character in `text`, described (`U+202E, a
    bidirectional-text control`), or None. Such characters make a name print as another name."""
    for ch in text:
        if ch in BIDI_CONTROLS:
            return f"U+{ord(ch):04X}, a bidirectional-text control"
        if unicodedata.category(ch) == "Cc":
            return f"U+{ord(ch):04X}, a control character"
    return None
