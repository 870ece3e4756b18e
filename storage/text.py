"""Text checks shared by every validator: a string that is not valid Unicode (a lone
surrogate) is a named 400, never an exception escaping apply."""

from __future__ import annotations

from storage.errors import BrokerError


def utf8(text: str, field: str) -> bytes:
    """The UTF-8 bytes of `text`, or BrokerError("invalid_request") naming `field`."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise BrokerError("invalid_request", f"{field}: not valid Unicode text") from None
