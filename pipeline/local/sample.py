"""A deterministic sample of realistic Datafly events, for the demo and the benchmarks.

``generate(n, seed)`` gives purchases (the spec's example with varying ids), page views, product events and
identifies; ``edge_cases()`` adds the events a demo should show going wrong: no consent, no identity, a value
over 512 bytes, a nested property.
"""

from __future__ import annotations

import random
from typing import Any

SPEC_PURCHASE: dict[str, Any] = {
    "type": "track",
    "event": "Order Completed",
    "userId": "user-123",
    "messageId": "msg-spec-purchase",
    "timestamp": "2024-01-29T14:53:20Z",
    "context": {
        "traits": {"email": "jane.doe@example.com"},
        "consent": {"categoryPreferences": {"marketing": True}},
    },
    "properties": {
        "order_id": "ORD-001",
        "revenue": 129.99,
        "currency": "USD",
        "products": [
            {"product_id": "SKU-A", "name": "Widget", "price": 49.99, "quantity": 2},
            {"product_id": "SKU-B", "name": "Gadget", "price": 30.01, "quantity": 1},
        ],
    },
}

SPEC_PAYLOAD: dict[str, Any] = {
    "d": [
        {
            "type": "event",
            "identity": "jane.doe@example.com",
            "ts": 1706540000,
            "evtName": "Charged",
            "evtData": {
                "Charged ID": "ORD-001",
                "Amount": 129.99,
                "Currency": "USD",
                "Items": [
                    {"product_id": "SKU-A", "name": "Widget", "price": 49.99, "quantity": 2},
                    {"product_id": "SKU-B", "name": "Gadget", "price": 30.01, "quantity": 1},
                ],
            },
        }
    ]
}

_PRODUCTS = [
    ("SKU-A", "Widget", 49.99),
    ("SKU-B", "Gadget", 30.01),
    ("SKU-C", "Doohickey", 12.5),
    ("SKU-D", "Sprocket", 7.25),
    ("SKU-E", "Gizmo", 99.0),
]
_PAGES = ["/", "/shop", "/shop/widgets", "/cart", "/checkout", "/account", "/blog/how-to-widget"]
_TRACK = [
    "Product Viewed",
    "Product Added",
    "Products Searched",
    "Product Added to Wishlist",
    "Checkout Started",
    "Signed Up",
    "Logged In",
    "Newsletter Subscribed",
]
BASE_TS = 1706540000


def _consent(rng: random.Random, share_without: float) -> dict[str, Any]:
    if rng.random() < share_without:
        return {"categoryPreferences": {"marketing": False, "analytics": True}}
    return {"categoryPreferences": {"marketing": True, "analytics": True}}


def generate(
    n: int, seed: int = 7, users: int = 500, share_without_consent: float = 0.05
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        u = rng.randrange(users)
        user_id, email = f"user-{u}", f"customer{u}@example.com"
        ctx: dict[str, Any] = {
            "consent": _consent(rng, share_without_consent),
            "page": {"path": rng.choice(_PAGES)},
        }
        ts = BASE_TS + i
        roll = rng.random()
        event: dict[str, Any]
        if roll < 0.10:
            event = {
                "type": "identify",
                "userId": user_id,
                "traits": {
                    "email": email,
                    "name": f"Customer {u}",
                    "phone": f"+1415555{u:04d}",
                    "plan": rng.choice(["free", "pro", "team"]),
                },
            }
        elif roll < 0.25:
            items: list[dict[str, Any]] = []
            for _ in range(rng.randint(1, 3)):
                sku, name, price = rng.choice(_PRODUCTS)
                items.append({"product_id": sku, "name": name, "price": price, "quantity": rng.randint(1, 3)})
            revenue = round(sum(p["price"] * p["quantity"] for p in items), 2)
            event = {
                "type": "track",
                "event": "Order Completed",
                "userId": user_id,
                "properties": {
                    "order_id": f"ORD-{seed}-{i}",
                    "revenue": revenue,
                    "currency": "USD",
                    "products": items,
                    "coupon": rng.choice([None, "WELCOME10"]),
                },
            }
            ctx["traits"] = {"email": email}
        elif roll < 0.60:
            path = rng.choice(_PAGES)
            event = {
                "type": "page",
                "name": path.strip("/") or "home",
                "userId": user_id,
                "properties": {
                    "path": path,
                    "url": f"https://shop.example.com{path}",
                    "title": "Example Shop",
                    "referrer": "https://www.google.com/",
                },
            }
        else:
            sku, name, price = rng.choice(_PRODUCTS)
            event = {
                "type": "track",
                "event": rng.choice(_TRACK),
                "userId": user_id,
                "properties": {"product_id": sku, "name": name, "price": price, "category": "Widgets"},
            }
            if rng.random() < 0.5:
                ctx["traits"] = {"email": email}
        event["messageId"] = f"msg-{seed}-{i}"
        event["timestamp"] = ts
        event["anonymousId"] = f"anon-{u}"
        event["context"] = ctx
        out.append(event)
    return out


def edge_cases() -> list[dict[str, Any]]:
    """Events that go wrong, one of each kind the demo explains."""
    consent = {"categoryPreferences": {"marketing": True}}
    return [
        {
            "type": "track",
            "event": "Product Viewed",
            "messageId": "edge-no-identity",  # no userId, email or anonymousId: a malformed event
            "timestamp": BASE_TS,
            "context": {"consent": consent},
            "properties": {"product_id": "SKU-A"},
        },
        {
            "type": "track",
            "event": "Product Viewed",
            "userId": "user-1",
            "messageId": "edge-long-value",
            "timestamp": BASE_TS,
            "context": {"consent": consent},
            "properties": {"product_id": "SKU-A", "description": "x" * 600},
        },
        {
            "type": "track",
            "event": "Product Viewed",
            "userId": "user-2",
            "messageId": "edge-nested",
            "timestamp": BASE_TS,
            "context": {"consent": consent},
            "properties": {"product_id": "SKU-B", "dimensions": {"w": 10, "h": 4}},
        },
        {
            "type": "track",
            "event": "Product Viewed",
            "userId": "user-3",
            "messageId": "edge-no-consent",
            "timestamp": BASE_TS,
            "context": {"consent": {"categoryPreferences": {"marketing": False}}},
            "properties": {"product_id": "SKU-C"},
        },
        {
            "type": "track",
            "event": "App Launched",
            "userId": "user-4",
            "messageId": "edge-reserved",
            "timestamp": BASE_TS,
            "context": {"consent": consent},
        },
    ]
