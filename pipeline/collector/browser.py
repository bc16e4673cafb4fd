"""What the collector needs to take events straight from a website's tag: CORS by each integration's
``allowed_origins``, a rate limit per client address for browser requests, the client's address behind
trusted proxies, the visitor's clock corrected by the receive time, and the settings the two browser SDKs
fetch while loading (so a page's snippet needs only the collector's address).

A request without an ``Origin`` header (a server SDK, the CLI) is touched by none of this but the clock
correction, which Segment documents for every call that carries ``sentAt``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.config import IntegrationConfig
from pipeline.events import parse_timestamp

#: How long a browser may cache a preflight's answer (s): Chromium caps it at 7,200.
PREFLIGHT_MAX_AGE_S = 600
#: Request headers a page's SDK may send: analytics-next, Content-Type; RudderStack's v3, Authorization
#: (the write key), AnonymousId, SentAt and, on its retries, its Rsa-* headers (read from its 3.34 bundle).
#: Anything else asked for in a preflight is not allowed.
ALLOWED_HEADERS = (
    "authorization", "content-type", "anonymousid", "sentat", "rsa-retry-attempt", "rsa-retry-reason",
    "rsa-since-last-attempt", "rsa-since-first-attempt", "rsa-recovered",
)  # fmt: skip
#: Client addresses the rate limiter remembers at most (least recently seen go first): memory stays
#: bounded whatever a flood of addresses.
MAX_TRACKED_CLIENTS = 100_000


def origin_matches(origin: str, allowed: Iterable[str]) -> bool:
    """Whether ``origin`` (as a browser sends it) is one of ``allowed``: exact ``scheme://host[:port]``, or
    ``scheme://*.domain`` for any subdomain of domain (not domain itself)."""
    for pattern in allowed:
        if pattern == origin:
            return True
        scheme, sep, host = pattern.partition("://*.")
        if sep and origin.startswith(scheme + "://") and origin.endswith("." + host):
            label = origin[len(scheme) + 3 : -len(host) - 1]
            if label and "/" not in label and ":" not in label:
                return True
    return False


def preflight_headers(origin: str, requested: str) -> dict[str, str]:
    """The answer's headers to a preflight from an allowed origin: the origin echoed, POST (and GET, for
    the SDKs' settings), the request headers asked for that the SDKs send, a max age. Never credentials,
    never ``*``."""
    asked = [h.strip().lower() for h in requested.split(",") if h.strip()]
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": "POST, GET",
        "Access-Control-Allow-Headers": ", ".join(h for h in asked if h in ALLOWED_HEADERS) or "content-type",
        "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
        "Vary": "Origin, Access-Control-Request-Headers",
    }


def cors_headers(origin: str) -> dict[str, str]:
    """On an answer to an allowed origin's request."""
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


class RateLimit:
    """A token bucket per client address: ``rate`` requests a second, ``burst`` at once. In-process (one
    per collector process: with ``--workers N`` a client gets up to N times the rate), bounded to
    MAX_TRACKED_CLIENTS addresses."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str, rate: float, burst: int) -> float:
        """0 when ``client`` may make this request now; else the seconds until it may."""
        now = self.clock()
        tokens, at = self.buckets.pop(client, (float(burst), now))
        tokens = min(float(burst), tokens + (now - at) * rate)
        if tokens >= 1:
            self.buckets[client] = (tokens - 1, now)
            wait = 0.0
        else:
            self.buckets[client] = (tokens, now)
            wait = (1 - tokens) / rate
        while len(self.buckets) > MAX_TRACKED_CLIENTS:
            self.buckets.popitem(last=False)
        return wait


def client_address(peer: str | None, forwarded_for: str, trusted: Sequence[str]) -> str:
    """The client's address: the socket's peer, or, when the peer is a trusted proxy, the last address in
    ``X-Forwarded-For`` that is not itself a trusted proxy (a client can write the header's start)."""
    if not peer:
        return "unknown"
    networks = _networks(tuple(trusted))
    if not networks or not forwarded_for or not _within(peer, networks):
        return _bucket(peer)
    for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
        if hop and not _within(hop, networks):
            return _bucket(hop)
    return _bucket(peer)


@functools.lru_cache(maxsize=64)
def _networks(trusted: tuple[str, ...]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(t, strict=False) for t in trusted]


@functools.lru_cache(maxsize=4096)  # a page's visitors post again and again: parsed once each
def _bucket(address: str) -> str:
    """What the rate limit counts as one client: an IPv4 address, or an IPv6 /64 (one subscriber's
    network: a client there has billions of addresses)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def from_trusted_proxy(peer: str, trusted: Sequence[str]) -> bool:
    """Whether the socket's peer is one of ``trusted_proxies`` (whose forwarded headers are believed)."""
    return bool(peer) and _within(peer, _networks(tuple(trusted)))


def _within(address: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in n for n in networks)


# ---------------------------------------------------------------------------------------- the clock

_TIME_KEYS = ("timestamp", "originalTimestamp", "sentAt")


def _parse(value: Any) -> datetime | None:
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def corrected(event: dict[str, Any], received: datetime, batch_sent_at: Any = None) -> dict[str, Any]:
    """``event`` with its times corrected for the sender's clock, as Segment documents: when it carries
    ``sentAt`` (its own, or its batch's), ``timestamp`` and ``originalTimestamp`` become ``t + (receivedAt -
    sentAt)``, and ``sentAt`` the receive time. A call without ``sentAt`` is left as it came."""
    own = _parse(event.get("sentAt"))
    sent = own or _parse(batch_sent_at)
    if sent is None:
        return event
    skew = received - sent
    if abs(skew) > MAX_SKEW:  # not a clock that is off: a sentAt that is wrong; the times are left alone
        return event
    out = dict(event)
    received_at = _iso(received)
    for key in _TIME_KEYS:
        value = out.get(key, batch_sent_at if key == "sentAt" else None)
        if value is None:
            continue
        if key == "sentAt" and (own is not None or "sentAt" not in event):
            out[key] = received_at  # the sentAt the skew came from: sent + skew is the receive time
            continue
        at = _parse(value) or _epoch(value)
        if at is not None:
            try:
                out[key] = _iso(at + skew)
            except (OverflowError, ValueError):  # past year 9999: as it came (the mapper says why)
                continue
    out["receivedAt"] = received_at
    return out


#: A sentAt further than this from the receive time is not a visitor's clock: no correction.
MAX_SKEW = timedelta(days=366)


def _epoch(value: Any) -> datetime | None:
    """Epoch seconds or milliseconds (a number, or digits), as events.py reads them."""
    if isinstance(value, str) and not value.strip().isdigit():
        return None
    ts = parse_timestamp(value)
    return datetime.fromtimestamp(ts, UTC) if ts is not None else None


def _iso(at: datetime) -> str:
    if at.tzinfo is not UTC:
        at = at.astimezone(UTC)
    return at.isoformat(timespec="milliseconds")[:-6] + "Z"  # without its "+00:00"


# ------------------------------------------------------------------------------------ SDK settings

_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?$")


def public_host(host_header: str) -> str | None:
    """The Host a page reached the collector at, when it is a plain host[:port] (else None)."""
    host = host_header.strip()
    return host if _HOST.match(host) else None


def segment_settings(config: IntegrationConfig, write_key: str, host: str, scheme: str) -> dict[str, Any]:
    """What analytics-next fetches from ``{cdnURL}/v1/projects/{writeKey}/settings``: its Segment.io
    destination pointed back at this collector, and nothing else to load (no device-mode destinations,
    no middleware)."""
    return {
        "integrations": {
            "Segment.io": {"apiKey": write_key, "apiHost": f"{host}/v1", "protocol": scheme},
        },
        "plan": {"track": {"__default": {"enabled": True}}, "identify": {"__default": {"enabled": True}}},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
        "edgeFunction": {},
        "analyticsNextEnabled": True,
    }


def rudderstack_source_config(config: IntegrationConfig) -> dict[str, Any]:
    """What RudderStack's JS SDK (v3) fetches from ``{configUrl}/sourceConfig``: an enabled source with no
    device-mode destinations, so it sends everything to its data plane (this collector)."""
    return {
        "isHosted": False,
        "source": {
            "id": f"clevertap-pipeline-{config.name}",
            "name": config.name,
            "writeKey": "",
            "enabled": True,
            "workspaceId": "clevertap-pipeline",
            "updatedAt": "2026-01-01T00:00:00.000Z",
            "config": {"statsCollection": {"errors": {"enabled": False}, "metrics": {"enabled": False}}},
            "destinations": [],
        },
    }


def origin_allowed_anywhere(origin: str, integrations: Mapping[str, IntegrationConfig]) -> bool:
    """For a preflight, which names no write key yet: whether any integration with a write key allows it
    (the request that follows is held to its own integration's list)."""
    return any(
        c.write_key is not None and origin_matches(origin, c.allowed_origins) for c in integrations.values()
    )
