"""What a configured value must look like: the validators the settings' marshmallow fields use, each
raising a ValidationError that says what is allowed."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from marshmallow import ValidationError, validate

ACCOUNT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def header_safe(value: str) -> None:
    # Sent as an HTTP header: printable ASCII only, or every send would fail inside the HTTP library.
    if not value or not value.isascii() or not value.isprintable() or value != value.strip():
        raise ValidationError("must be printable ASCII without surrounding spaces or line breaks")


def http_url(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValidationError("must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8080")
    if parts.query or parts.fragment:
        raise ValidationError("must be a base URL without query or fragment (/1/upload is appended)")


def redis_url(value: str) -> None:
    if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ValidationError("must be a redis://, rediss:// or unix:// URL")


def broker_url(value: str) -> None:
    if urlsplit(value).scheme not in ("redis", "rediss", "sentinel", "unix"):
        raise ValidationError("must be a redis://, rediss://, sentinel:// or unix:// URL (a Redis broker)")


def write_key(value: str) -> None:
    # Sent by SDKs as the user name of HTTP Basic auth: printable ASCII without ':', long enough to guess.
    if len(value) < 16 or not value.isascii() or not value.isprintable() or ":" in value or " " in value:
        raise ValidationError("must be at least 16 printable ASCII characters, without spaces or ':'")


ORIGIN = re.compile(r"^https?://(\*\.)?([a-z0-9-]+\.)*[a-z0-9-]+(:[0-9]{1,5})?$")


def origin(value: str) -> None:
    # What a browser sends as Origin: scheme, host, port; no path, no trailing slash, lower case.
    if not ORIGIN.match(value) or (value.partition("://*.")[1] and "." not in value.partition("://*.")[2]):
        raise ValidationError(
            f"{value[:80]!r} is not an origin: write scheme://host[:port] (http or https, lower case, no "
            "path), or https://*.example.com for every subdomain of example.com (a wildcard needs a domain "
            "of two labels at least: not *.com)"
        )


def network(value: str) -> None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValidationError(f"{value[:80]!r} is not an IP address or network (10.0.0.0/8)") from None


def between(lo: float, hi: float, unit: str = "") -> validate.Range:
    return validate.Range(min=lo, max=hi, error=f"must be between {lo:g} and {hi:g}{unit}")
