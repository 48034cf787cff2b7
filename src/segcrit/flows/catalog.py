"""catalog: product data seen in product events -> Criteo catalog `insert` entries, pure.

Each product event carries product objects (`products[]`, or the flat properties of a
single-product event). The fields segcrit keeps per product are `product_id`, `name`, `url`,
`image_url`, `price`, `currency`, `brand`, `category`, `sku`; a product is sent again only when
that data changed (the store compares a fingerprint). Criteo requires `id`, `title`, `link` and
`imageLink`: a product without them is kept but not sent, with the reason shown by `segcrit status`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from segcrit.flows.commerce import lookup, number, text_id

PRODUCT_FIELDS = ("product_id", "name", "url", "image_url", "price", "currency", "brand", "category", "sku")
MAX_FIELD_CHARS = {"name": 500, "url": 1000, "image_url": 2000, "brand": 100, "category": 750, "sku": 100}
MAX_PRODUCTS_PER_EVENT = 200


@dataclass(frozen=True, slots=True)
class ProductData:
    product_id: str
    fields: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(orjson.dumps(self.fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _clean(name: str, value: Any) -> Any:
    if name == "price":
        return number(value)
    if name == "currency":
        return value.strip().upper()[:3] if isinstance(value, str) and value.strip() else None
    if isinstance(value, str) and value.strip():
        return value.strip()[: MAX_FIELD_CHARS.get(name, 256)]
    return None


def products_in(message: Mapping[str, Any]) -> list[ProductData]:
    """The products an event describes (products[] or the flat properties), unique by id."""
    properties = message.get("properties")
    if not isinstance(properties, Mapping):
        return []
    raw = properties.get("products")
    candidates = raw[:MAX_PRODUCTS_PER_EVENT] if isinstance(raw, list) else [properties]
    currency = properties.get("currency")
    found: dict[str, ProductData] = {}
    for product in candidates:
        if not isinstance(product, Mapping):
            continue
        product_id = text_id(lookup(product, "product_id|sku|id"))
        if product_id is None:
            continue
        fields = {name: _clean(name, product.get(name)) for name in PRODUCT_FIELDS if name != "product_id"}
        if fields.get("currency") is None and fields.get("price") is not None:
            fields["currency"] = _clean("currency", currency)
        fields = {k: v for k, v in fields.items() if v is not None}
        found[product_id] = ProductData(product_id, fields)
    return list(found.values())


def missing_required(data: ProductData) -> list[str]:
    """Criteo's required product fields this product lacks (by Criteo's names)."""
    missing = []
    if "name" not in data.fields:
        missing.append("title")
    if "url" not in data.fields:
        missing.append("link")
    if "image_url" not in data.fields:
        missing.append("imageLink")
    return missing


def criteo_product(data: ProductData) -> dict[str, Any]:
    """The `product` of a catalog `insert` entry (Google-Merchant-like field names)."""
    f = data.fields
    product: dict[str, Any] = {
        "id": data.product_id,
        "title": f["name"],
        "link": f["url"],
        "imageLink": f["image_url"],
        "channel": "online",  # required by Criteo's schema; segcrit syncs web shops
    }
    if "price" in f and "currency" in f:
        product["price"] = {"value": f"{f['price']:.2f}", "currency": f["currency"]}
    if "brand" in f:
        product["brand"] = f["brand"]
    if "category" in f:
        product["productTypes"] = [f["category"]]
    if "sku" in f:
        product["mpn"] = f["sku"]
    return product


def merge_fields(old: Mapping[str, Any] | None, new: ProductData) -> ProductData:
    """Fields seen before stay unless the new event sends them again (events often carry subsets)."""
    merged = dict(old or {})
    merged.update(new.fields)
    return ProductData(new.product_id, merged)
