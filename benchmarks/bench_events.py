"""Realistic Segment messages for the benchmarks (shared by ingest.py and processing.py).

The mix, by share of messages:

    30%  track "Product Viewed"   product properties
     8%  track "Order Completed"  order properties with a products array (2 to 5 products)
    25%  page                     page properties and context.page
    22%  identify                 traits with email, name, address, plan...
    15%  track "Audience Entered" Engage: context.personas, context.traits.email, audience_key

Every message carries a full `context` as analytics.js or analytics-ios send it (userAgent, ip,
library, locale, timezone, campaign, device, os, screen). People come from a fixed population, so
the processor sees returning profiles as well as new ones; about a third are on mobile and carry
an advertisingId. On average a message serialises to about 880 bytes, so a batch of 100 is about
88 KB.
"""

from __future__ import annotations

import random
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

FIRST = ["Ada", "Bruno", "Chloé", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Inès", "Jonas", "Kemi", "Liam"]
LAST = ["Martin", "Nguyen", "Okafor", "Petit", "Quinn", "Rossi", "Schmidt", "Tanaka", "Usman", "Varga", "Weber"]
CITIES = [("Paris", "FR", "75011"), ("Lyon", "FR", "69002"), ("Berlin", "DE", "10115"), ("Austin", "US", "78701")]
CATEGORIES = ["Shoes", "Outerwear", "Accessories", "Home & Living", "Kids", "Sportswear"]
BRANDS = ["Northwind", "Contoso", "Fabrikam", "Tailspin", "Wingtip", "Adventure Works"]
AUDIENCES = ["cart_abandoners", "high_intent_shoppers", "lapsed_buyers_90d", "newsletter_engaged", "vip_customers"]
PLANS = ["free", "plus", "premium"]

WEB_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
]
MOBILE_AGENT = "ShopApp/4.12.0 (iPhone; iOS 17.5.1; Scale/3.00)"


class Population:
    """A fixed set of people; person i always has the same ids, email and device."""

    def __init__(self, size: int, seed: int = 7) -> None:
        self.size = size
        self.seed = seed

    def person(self, index: int) -> dict[str, Any]:
        rnd = random.Random(self.seed * 1_000_003 + index)
        first, last = rnd.choice(FIRST), rnd.choice(LAST)
        city, country, postcode = rnd.choice(CITIES)
        mobile = rnd.random() < 0.33
        return {
            "user_id": f"usr_{index:08d}",
            "anonymous_id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
            "email": f"{first.lower()}.{last.lower()}{index}@example.com",
            "first": first,
            "last": last,
            "city": city,
            "country": country,
            "postcode": postcode,
            "mobile": mobile,
            "madid": str(uuid.UUID(int=rnd.getrandbits(128), version=4)).upper() if mobile else None,
            "ip": f"{rnd.randint(2, 223)}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}",
            "agent": MOBILE_AGENT if mobile else rnd.choice(WEB_AGENTS),
            "known": rnd.random() < 0.7,  # logged in: events carry userId as well as anonymousId
        }


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _context(rnd: random.Random, p: dict[str, Any]) -> dict[str, Any]:
    context: dict[str, Any] = {
        "ip": p["ip"],
        "locale": "fr-FR" if p["country"] == "FR" else "en-US",
        "timezone": "Europe/Paris" if p["country"] == "FR" else "America/Chicago",
        "userAgent": p["agent"],
    }
    if rnd.random() < 0.25:  # arrived from a campaign
        context["campaign"] = {
            "name": "summer_sale_2025",
            "source": rnd.choice(["google", "newsletter", "facebook"]),
            "medium": rnd.choice(["cpc", "email", "social"]),
        }
    if p["mobile"]:
        context["library"] = {"name": "analytics-ios", "version": "4.1.8"}
        context["app"] = {"name": "ShopApp", "version": "4.12.0", "build": "4120"}
        context["device"] = {
            "id": p["anonymous_id"],
            "advertisingId": p["madid"],
            "adTrackingEnabled": True,
            "manufacturer": "Apple",
            "model": "iPhone15,2",
            "type": "ios",
        }
        context["os"] = {"name": "iOS", "version": "17.5.1"}
        context["screen"] = {"width": 393, "height": 852, "density": 3}
    else:
        context["library"] = {"name": "analytics.js", "version": "next-1.70.0"}
        context["screen"] = {"width": 1920, "height": 1080, "density": 1}
    return context


def _product(rnd: random.Random, position: int | None = None) -> dict[str, Any]:
    sku = rnd.randint(10_000, 99_999)
    category = rnd.choice(CATEGORIES)
    product: dict[str, Any] = {
        "product_id": f"prod_{sku}",
        "sku": f"SKU-{sku}-{rnd.choice('SMLX')}",
        "category": category,
        "name": f"{rnd.choice(BRANDS)} {category.lower()} item {sku % 97}",
        "brand": rnd.choice(BRANDS),
        "variant": rnd.choice(["black", "navy", "sand", "olive"]),
        "price": round(rnd.uniform(9, 240), 2),
        "quantity": rnd.randint(1, 3),
    }
    if position is not None:
        product["position"] = position
    return product


class EventFactory:
    """Builds messages for a population; `message()` draws one from the mix."""

    def __init__(self, population: Population, seed: int = 11) -> None:
        self.population = population
        self.rnd = random.Random(seed)
        self.now = datetime.now(UTC)

    def message(self) -> dict[str, Any]:
        rnd = self.rnd
        p = self.population.person(rnd.randrange(self.population.size))
        roll = rnd.random()
        if roll < 0.30:
            message = self._product_viewed(p)
        elif roll < 0.38:
            message = self._order_completed(p)
        elif roll < 0.63:
            message = self._page(p)
        elif roll < 0.85:
            message = self._identify(p)
        else:
            message = self._audience_entered(p)
        sent = self.now - timedelta(seconds=rnd.uniform(0, 30))
        message.update(
            {
                "messageId": f"ajs-next-{uuid.UUID(int=rnd.getrandbits(128), version=4).hex}",
                "anonymousId": p["anonymous_id"],
                "timestamp": _iso(sent),
                "integrations": {},
            }
        )
        if p["known"] or message["type"] == "identify":
            message["userId"] = p["user_id"]
        message.setdefault("context", _context(rnd, p))
        return message

    def _product_viewed(self, p: dict[str, Any]) -> dict[str, Any]:
        product = _product(self.rnd)
        product.update({"currency": "EUR", "value": product["price"]})
        return {"type": "track", "event": "Product Viewed", "properties": product}

    def _order_completed(self, p: dict[str, Any]) -> dict[str, Any]:
        rnd = self.rnd
        products = [_product(rnd, i + 1) for i in range(rnd.randint(1, 4))]
        subtotal = round(sum(x["price"] * x["quantity"] for x in products), 2)
        return {
            "type": "track",
            "event": "Order Completed",
            "properties": {
                "checkout_id": f"chk_{rnd.getrandbits(40):x}",
                "order_id": f"ord_{rnd.getrandbits(40):x}",
                "affiliation": "Online Store",
                "subtotal": subtotal,
                "shipping": 4.9,
                "tax": round(subtotal * 0.2, 2),
                "discount": 0,
                "total": round(subtotal * 1.2 + 4.9, 2),
                "revenue": subtotal,
                "currency": "EUR",
                "products": products,
            },
        }

    def _page(self, p: dict[str, Any]) -> dict[str, Any]:
        rnd = self.rnd
        category = rnd.choice(CATEGORIES)
        path = f"/c/{category.lower().replace(' & ', '-').replace(' ', '-')}"
        page = {
            "path": path,
            "referrer": "https://www.google.com/",
            "search": "?utm_source=google&utm_medium=cpc",
            "title": f"{category} | Example Shop",
            "url": f"https://shop.example.com{path}?utm_source=google&utm_medium=cpc",
        }
        context = _context(rnd, p)
        context["page"] = page
        properties = {"path": path, "title": page["title"], "url": page["url"]}
        return {"type": "page", "name": category, "properties": properties, "context": context}

    def _identify(self, p: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "identify",
            "traits": {
                "email": p["email"],
                "firstName": p["first"],
                "lastName": p["last"],
                "plan": self.rnd.choice(PLANS),
                "createdAt": "2024-03-14T09:26:53.000Z",
                "address": {"city": p["city"], "country": p["country"], "postalCode": p["postcode"]},
                "newsletter": self.rnd.random() < 0.5,
            },
        }

    def _audience_entered(self, p: dict[str, Any]) -> dict[str, Any]:
        audience = self.rnd.choice(AUDIENCES)
        context = {
            "library": {"name": "unknown", "version": "unknown"},
            "personas": {
                "computation_class": "audience",
                "computation_id": f"aud_{zlib.crc32(audience.encode()):08x}",
                "computation_key": audience,
                "namespace": "spa_4Fq8mT2qBzr7aXkLw1",
                "space_id": "spa_4Fq8mT2qBzr7aXkLw1",
            },
            "traits": {"email": p["email"]},
        }
        if p["madid"]:
            context["device"] = {"advertisingId": p["madid"], "adTrackingEnabled": True}
        return {
            "type": "track",
            "event": "Audience Entered",
            "properties": {"audience_key": audience, audience: True},
            "context": context,
        }
