"""The configuration file: its schema, `${ENV}` resolution, and every problem with its key path.

`load_config(path)` reads YAML, replaces `${NAME}` from the environment, validates against the
schema (unknown keys are errors) and raises ConfigError listing *every* problem found, each as
`key.path: message`. Secrets are `SecretStr`: they print as '**********'.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from segcrit.criteo.constants import SignalEvent
from segcrit.errors import ConfigError
from segcrit.flows.lookalike_seed import validate_expression

ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
DEFAULT_CONFIG_NAME = "segcrit.yaml"

IdentifierKind = Literal["email", "madid", "gum", "identityLink", "phoneNumber"]
EmailHash = Literal["sha256", "md5", "sha256_md5", "none"]


MAX_SERVE_WORKERS = 64
SQLITE_WORKERS_PROBLEM = "more than 1 process needs a PostgreSQL store (on SQLite one `segcrit serve` owns the file)"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8088, ge=0, le=65535)
    # `segcrit serve` processes on this machine sharing the port (PostgreSQL store only; SPEC §4.1).
    workers: int = Field(1, ge=1, le=MAX_SERVE_WORKERS)
    admin_token: SecretStr | None = None
    max_request_bytes: int = Field(500_000, ge=1024, description="decompressed body limit")
    max_message_bytes: int = Field(32_768, ge=256)
    max_batch_messages: int = Field(2_500, ge=1)
    # Segment's Webhooks (Actions) destination batches up to 4,000 events; a 400 would make it drop
    # them for good, so webhook requests get their own, larger limits.
    webhook_max_request_bytes: int = Field(4_000_000, ge=1024)
    webhook_max_batch_messages: int = Field(4_000, ge=1)
    # When set, GET /metrics needs `Authorization: Bearer <metrics_token>` (SPEC §3.3).
    metrics_token: SecretStr | None = None

    @field_validator("metrics_token")
    @classmethod
    def _token_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError("must not be empty (leave the key out to serve /metrics without a token)")
        return value


class SourceConfig(_Model):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    type: Literal["tracking_api", "webhook"]
    write_key: SecretStr | None = None
    shared_secret: SecretStr | None = None
    # Webhook sources: also require `Authorization: Bearer <bearer_token>`, which authenticates the
    # whole body where Segment's signature covers only element 0 of an array (SPEC §3.2).
    bearer_token: SecretStr | None = None

    @model_validator(mode="after")
    def _credentials(self) -> SourceConfig:
        if self.type == "tracking_api" and not self.write_key:
            raise ValueError("write_key: required for a tracking_api source")
        if self.type == "webhook" and not self.shared_secret:
            raise ValueError("shared_secret: required for a webhook source")
        if self.bearer_token is not None and self.type != "webhook":
            raise ValueError("bearer_token: only a webhook source takes one (a tracking_api source has its write_key)")
        if self.bearer_token is not None and not self.bearer_token.get_secret_value():
            raise ValueError("bearer_token: must not be empty (leave the key out to go without one)")
        return self


class CriteoConfig(_Model):
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    advertiser_id: str = Field(pattern=r"^[0-9]+$")
    api_url: str = "https://api.criteo.com"
    api_version: str = Field("2026-07", pattern=r"^(\d{4}-\d{2}|preview)$")
    events_url: str = "https://widget.criteo.com/m/event?version=s2s_v0"
    partner_id: str | None = None
    caller_id: str | None = None
    gum_caller_id: int | None = None
    rate_limit_per_minute: int = Field(250, ge=1, le=100_000)
    # The Events API host is limited separately from the Marketing API (SPEC §7).
    events_rate_limit_per_minute: int = Field(1_000, ge=1, le=1_000_000)
    timeout_secs: float = Field(30.0, gt=0)

    @field_validator("api_url", "events_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if "?" not in value else value


class IdentityConfig(_Model):
    send: list[IdentifierKind] = Field(default_factory=lambda: ["email", "madid"], min_length=1)  # type: ignore[arg-type]
    email_hash: EmailHash = "sha256"
    # Region for phone numbers sent without +country (ISO 3166 code such as FR or US); without
    # it, such numbers are not used.
    phone_region: str | None = Field(None, pattern=r"^[A-Z]{2}$")
    # Merge limits: how many identifiers of one kind a profile may hold, so that one shared value
    # (a family tablet, a support desk email) cannot glue thousands of people together.
    max_per_profile: dict[str, int] = Field(
        default_factory=lambda: {
            "user_id": 1,
            "email": 5,
            "phone": 5,
            "anonymous_id": 100,
            "madid": 10,
            "gum": 20,
            "identity_link": 5,
        }
    )


class ConsentConfig(_Model):
    category: str = Field("Advertising", min_length=1)
    when_missing: Literal["allow", "deny"] = "allow"


class AudienceConfig(_Model):
    segment_id: str | None = Field(None, pattern=r"^[0-9]+$")
    auto_create: bool = True
    description: str | None = None


class AudienceSyncFlow(_Model):
    type: Literal["audience_sync"]
    # Only messages from these sources change audiences (None: every source, SPEC §4.1); messages
    # from the others are processed for everything else and counted as ignored audience messages.
    sources: list[str] | None = None
    auto_create: bool = True
    # New audience keys admitted per UTC day; past it a key gets no Criteo segment until an operator
    # lists it under `audiences:` or a later day's allowance admits it. Named audiences never count.
    max_new_audiences_per_day: int = Field(50, ge=0)
    entered_event: str = "Audience Entered"
    exited_event: str = "Audience Exited"
    # Optional renaming: Engage audience key -> our audience name.
    audiences: dict[str, str] = Field(default_factory=dict)

    @field_validator("sources")
    @classmethod
    def _some_source(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("an empty list lets no message change audiences; name a source, or leave the key out")
        return value


class CommerceMapping(_Model):
    """Where the commerce facts are in a Segment event: dotted paths from the message root, with
    alternatives separated by `|` (the first present wins). Item paths are relative to one item."""

    order_id: str = "properties.order_id|properties.checkout_id"
    value: str = "properties.revenue|properties.total|properties.value"
    currency: str = "properties.currency"
    items: str = "properties.products"
    item_id: str = "product_id|sku|id"
    price: str = "price"
    quantity: str = "quantity"

    @field_validator("*")
    @classmethod
    def _paths(cls, value: str) -> str:
        if not value or any(not part.strip() for alt in value.split("|") for part in alt.split(".")):
            raise ValueError("should be a dotted path such as properties.order_id (alternatives with |)")
        return value


class ConversionsFlow(_Model):
    type: Literal["conversions"]
    events: list[str] = Field(
        default_factory=lambda: ["Order Completed", "Lead Submitted", "Subscription Started"], min_length=1
    )
    mapping: CommerceMapping = Field(default_factory=CommerceMapping)


class SuppressionFlow(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    type: Literal["suppression"]
    on: list[str] = Field(default_factory=lambda: ["Order Completed"], min_length=1)
    remove_from: list[str] | Literal["all"] = Field(default_factory=list)
    add_to: str | None = None
    for_days: float = Field(30, gt=0)


class ProductSignalsFlow(_Model):
    type: Literal["product_signals"]
    # Segment event name -> Criteo event; merged over the defaults (segcrit.flows.commerce).
    events: dict[str, SignalEvent] = Field(default_factory=dict)
    mapping: CommerceMapping = Field(default_factory=CommerceMapping)
    home_paths: list[str] = Field(default_factory=lambda: ["/"])


class CatalogFlow(_Model):
    type: Literal["catalog"]
    merchant_id: str = Field(pattern=r"^[0-9]+$")

    @field_validator("merchant_id")
    @classmethod
    def _int32(cls, value: str) -> str:
        if int(value) > 2**31 - 1:  # Criteo's merchantId is an int32
            raise ValueError("should be at most 2147483647 (Criteo's merchantId is a 32-bit number)")
        return value

    events: list[str] = Field(
        default_factory=lambda: [
            "Product Viewed",
            "Product Added",
            "Product Clicked",
            "Product List Viewed",
            "Products Searched",
            "Cart Viewed",
            "Checkout Started",
            "Order Completed",
        ]
    )
    max_wait_secs: float = Field(60, ge=0)
    max_batch_products: int = Field(1_000, ge=1, le=10_000)


class LookalikeConfig(_Model):
    name: str = Field(min_length=1)
    target_size: int = Field(gt=0)


class LookalikeSeedFlow(_Model):
    type: Literal["lookalike_seed"]
    audience: str = Field(min_length=1)
    when: str = Field(min_length=1)
    every_minutes: float = Field(60, gt=0)
    lookalike: LookalikeConfig | None = None


class LifecycleFlow(_Model):
    type: Literal["lifecycle"]
    stages: dict[str, str] = Field(min_length=1)
    dormant_after_days: float | None = Field(None, gt=0)
    dormant: str | None = None


Flow = Annotated[
    AudienceSyncFlow
    | ConversionsFlow
    | SuppressionFlow
    | ProductSignalsFlow
    | CatalogFlow
    | LookalikeSeedFlow
    | LifecycleFlow,
    Field(discriminator="type"),
]


# ------------------------------------------------------------------------------------- enrichment

LookupKey = Literal["user_id", "anonymous_id", "email"]
# Where a column of a `sql` lookup's answer may go (`columns:`); every other column is a trait.
LookupField = Literal["email", "phone", "madid", "gum", "identityLink", "consent"]
_LOOKUP_NAME = r"^[A-Za-z0-9_.-]+$"


class SqlLookup(_Model):
    """A CRM or warehouse table, read through SQLAlchemy Core (segcrit.enrichment.sql)."""

    name: str = Field(min_length=1, max_length=64, pattern=_LOOKUP_NAME)
    type: Literal["sql"]
    # The whole URL is a secret: it usually carries the database password.
    url: SecretStr
    key: LookupKey = "user_id"
    query: str = Field(min_length=1, max_length=20_000)
    columns: dict[LookupField, str] = Field(default_factory=dict)
    ttl_minutes: float = Field(1440, gt=0)
    max_per_second: int = Field(10, ge=1, le=10_000, description="queries per second")
    batch_size: int = Field(500, ge=100, le=10_000, description="keys per query")
    timeout_secs: float = Field(30, gt=0)

    @field_validator("query")
    @classmethod
    def _expanding_keys(cls, value: str) -> str:
        if not re.search(r"(?<![:\w]):keys\b", value):
            raise ValueError("must use the parameter :keys for the keys looked up, e.g. WHERE customer_id IN :keys")
        return value

    @field_validator("url")
    @classmethod
    def _sqlalchemy_url(cls, value: SecretStr) -> SecretStr:
        from segcrit.enrichment.sql import url_problem  # imports SQLAlchemy: only when a sql lookup exists

        problem = url_problem(value.get_secret_value())
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("columns")
    @classmethod
    def _column_names(cls, value: dict[str, str]) -> dict[str, str]:
        if any(not column.strip() for column in value.values()):
            raise ValueError("each column name must be non-empty")
        return value


class SegmentProfilesLookup(_Model):
    """Segment's Profile API (reference/segment.md §9.1), read by segcrit.enrichment.profiles."""

    name: str = Field(min_length=1, max_length=64, pattern=_LOOKUP_NAME)
    type: Literal["segment_profiles"]
    space_id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_-]+$")
    access_token: SecretStr
    url: str = "https://profiles.segment.com"
    key: LookupKey = "user_id"
    external_ids: bool = True
    traits: list[str] = Field(default_factory=list, max_length=200)
    ttl_minutes: float = Field(1440, gt=0)
    # The Profile API allows 100 requests/s per space.
    max_per_second: int = Field(100, ge=1, le=1_000, description="requests per second")
    timeout_secs: float = Field(10, gt=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _something_to_read(self) -> SegmentProfilesLookup:
        if self.key == "email":
            # Segment advises against PII in Profile API URLs (they end up in server logs).
            raise ValueError(
                "key: email is not offered for segment_profiles (it would put emails in URLs); "
                "use user_id or anonymous_id"
            )
        if not self.external_ids and not self.traits:
            raise ValueError("traits: nothing to read; list traits or set external_ids: true")
        return self


Lookup = Annotated[SqlLookup | SegmentProfilesLookup, Field(discriminator="type")]


class IngestConfig(_Model):
    dedupe_hours: float = Field(24, ge=0)
    max_backlog: int = Field(1_000_000, ge=1)


class DeliveryConfig(_Model):
    max_wait_secs: float = Field(2, ge=0)
    retry_window_hours: float = Field(24, gt=0)
    backoff_initial_secs: float = Field(1, gt=0)
    backoff_max_secs: float = Field(300, gt=0)


class RetentionConfig(_Model):
    """How long what no work drains is kept (SPEC §4.1, §8); housekeeping applies it."""

    failed_events_days: float = Field(30, gt=0)  # events set aside by processing
    dead_letters_days: float = Field(90, gt=0)  # then dropped and counted, never silently
    anonymous_profiles_days: float = Field(395, gt=0)  # profiles with only an anonymousId, unseen that long


def filled_audiences(flows: list[Any]) -> dict[str, list[int]]:
    """Audience -> the positions of the flows that decide who is in it, for the audiences known from
    the config alone (audience_sync fills whatever Engage sends, so only its renamings count)."""
    fillers: dict[str, list[int]] = {}

    def add(audience: str, index: int) -> None:
        where = fillers.setdefault(audience, [])
        if index not in where:
            where.append(index)

    for index, flow in enumerate(flows):
        if isinstance(flow, AudienceSyncFlow):
            for audience in flow.audiences.values():
                add(audience, index)
        elif isinstance(flow, SuppressionFlow) and flow.add_to:
            add(flow.add_to, index)
        elif isinstance(flow, LookalikeSeedFlow):
            add(flow.audience, index)
        elif isinstance(flow, LifecycleFlow):
            for audience in lifecycle_stage_audiences(flow):
                add(audience, index)
    return fillers


def lifecycle_stage_audiences(flow: LifecycleFlow) -> list[str]:
    """The stage audiences of a lifecycle flow, dormant last, each once."""
    audiences = list(dict.fromkeys(flow.stages.values()))
    if flow.dormant and flow.dormant not in audiences:
        audiences.append(flow.dormant)
    return audiences


def _seed_problems(flow: LookalikeSeedFlow) -> list[str]:
    problem = validate_expression(flow.when)
    return [] if problem is None else [f"when: {problem}"]


def _lifecycle_problems(flow: LifecycleFlow) -> list[str]:
    problems: list[str] = []
    events_of: dict[str, list[str]] = {}
    for event, audience in flow.stages.items():
        events_of.setdefault(audience, []).append(event)
    for audience, events in events_of.items():
        if len(events) > 1:
            problems.append(
                f"stages: the stage {audience!r} is mapped twice ({', '.join(map(repr, events))}); "
                "give each event its own stage audience, or keep one of the events"
            )
    if flow.dormant is not None and flow.dormant in events_of:
        problems.append(
            f"dormant: {flow.dormant!r} is also the stage of {events_of[flow.dormant][0]!r}; "
            "the dormant stage needs an audience of its own"
        )
    if flow.dormant is not None and flow.dormant_after_days is None:
        problems.append("dormant_after_days: required with dormant (after how many days unseen someone moves)")
    if flow.dormant_after_days is not None and flow.dormant is None:
        problems.append("dormant: required with dormant_after_days (the stage audience of dormant people)")
    return problems


def flow_problems(flows: list[Any], sources: list[str] | None = None) -> list[str]:
    """What the schema cannot see: an invalid `when`, a stage mapped twice, a dormant stage half
    configured, flows that contradict each other, an audience_sync flow naming an unknown source
    (`sources` are the configured names; None when that section is itself invalid). Checked
    together, so that `segcrit check` lists all of them at once, in the order of the flows.

    Each problem starts with its key path (`flows[i]...`). An audience a flow names without
    `audiences:` listing it is no problem: it is found or created by that name (SPEC §4);
    `config_warnings` may mention it.
    """
    found: list[tuple[int, str]] = []

    def report(index: int, problem: str) -> None:
        found.append((index, f"flows[{index}].{problem}"))

    for index, flow in enumerate(flows):
        if isinstance(flow, LookalikeSeedFlow):
            for problem in _seed_problems(flow):
                report(index, problem)
        elif isinstance(flow, LifecycleFlow):
            for problem in _lifecycle_problems(flow):
                report(index, problem)
        elif isinstance(flow, AudienceSyncFlow) and flow.sources is not None and sources is not None:
            for name in dict.fromkeys(flow.sources):
                if name not in sources:
                    report(index, f"sources: unknown source {name!r}; the sources are: {', '.join(sources)}")

    fillers = filled_audiences(flows)
    first_flow_of_event: dict[str, int] = {}
    for index, flow in enumerate(flows):
        for event in flow.stages if isinstance(flow, LifecycleFlow) else ():
            first = first_flow_of_event.setdefault(event, index)
            if first != index:
                report(
                    index,
                    f"stages: the event {event!r} is mapped twice, here and in flows[{first}].stages; "
                    "keep it in one lifecycle flow",
                )
    for audience, where in fillers.items():
        # A person is in one stage per lifecycle flow: two flows sharing a stage would undo each other.
        lifecycles = [i for i in where if isinstance(flows[i], LifecycleFlow)]
        if len(lifecycles) > 1:
            report(
                lifecycles[1],
                f"stages: the stage {audience!r} is mapped twice, here and in flows[{lifecycles[0]}]; "
                "give each lifecycle flow stage audiences of its own",
            )

    first_flow_of_lookalike: dict[str, int] = {}
    for index, flow in enumerate(flows):
        if not isinstance(flow, LookalikeSeedFlow):
            continue
        # The cohort recomputes the whole seed audience on every run: another flow filling it would
        # be undone each time, and the lookalike would be built on a mix of both.
        others = [f"flows[{i}]" for i in fillers.get(flow.audience, []) if i != index]
        if others:
            report(
                index,
                f"audience: the seed audience {flow.audience!r} is also filled by {', '.join(others)}; "
                "a lookalike needs a seed that only its cohort fills: give this flow an audience of its own",
            )
        if flow.lookalike is not None:
            first = first_flow_of_lookalike.setdefault(flow.lookalike.name, index)
            if first != index:
                report(
                    index,
                    f"lookalike.name: {flow.lookalike.name!r} is already the lookalike of flows[{first}]; "
                    "a lookalike is created once, on one seed: give it a name of its own",
                )
    return [problem for _, problem in sorted(found, key=lambda item: item[0])]


class Config(_Model):
    store: str = "sqlite:///segcrit.db"
    server: ServerConfig = Field(default_factory=ServerConfig)  # type: ignore[arg-type]
    sources: list[SourceConfig] = Field(min_length=1)
    criteo: CriteoConfig
    identity: IdentityConfig = Field(default_factory=IdentityConfig)  # type: ignore[arg-type]
    consent: ConsentConfig = Field(default_factory=ConsentConfig)  # type: ignore[arg-type]
    audiences: dict[str, AudienceConfig] = Field(default_factory=dict)
    flows: list[Flow] = Field(default_factory=list)
    ingest: IngestConfig = Field(default_factory=IngestConfig)  # type: ignore[arg-type]
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)  # type: ignore[arg-type]
    retention: RetentionConfig = Field(default_factory=RetentionConfig)  # type: ignore[arg-type]
    enrichment: list[Lookup] = Field(default_factory=list)

    @field_validator("store")
    @classmethod
    def _store_url(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgres://")):
            raise ValueError("must be sqlite:///PATH or postgresql://USER:PASS@HOST:PORT/DB")
        return value

    @field_validator("audiences", mode="before")
    @classmethod
    def _null_audiences(cls, value: Any) -> Any:
        # `name: {}` and a bare `name:` (null in YAML) both mean "find or create by name".
        if isinstance(value, dict):
            return {k: ({} if v is None else v) for k, v in value.items()}
        return value

    @field_validator("flows")
    @classmethod
    def _flows_fit_together(cls, flows: list[Any], info: ValidationInfo) -> list[Any]:
        # A field check, not a model check: it runs whenever the flows are valid, so its problems
        # are listed with those of any other section.
        sources = info.data.get("sources")
        problems = flow_problems(flows, [source.name for source in sources] if sources is not None else None)
        if problems:
            # Relative to `flows`, where pydantic reports a problem of this field.
            raise ValueError("\n".join(p.removeprefix("flows") for p in problems))
        return flows

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        problems: list[str] = []
        names = [s.name for s in self.sources]
        for name in {n for n in names if names.count(n) > 1}:
            problems.append(f"sources: the name {name!r} is used twice")
        lookups = [lookup.name for lookup in self.enrichment]
        for name in sorted({n for n in lookups if lookups.count(n) > 1}):
            problems.append(f"enrichment: the lookup name {name!r} is used twice")
        if self.server.workers > 1 and self.store.startswith("sqlite"):
            problems.append(f"server.workers: {SQLITE_WORKERS_PROBLEM}")
        if "gum" in self.identity.send and self.criteo.gum_caller_id is None:
            problems.append("criteo.gum_caller_id: required when identity.send includes gum")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def source(self, name: str) -> SourceConfig | None:
        return next((s for s in self.sources if s.name == name), None)

    def flows_of(self, kind: type[Any]) -> list[Any]:
        return [f for f in self.flows if isinstance(f, kind)]


# --------------------------------------------------------------------------------------- loading


class _ConfigLoader(yaml.SafeLoader):
    """YAML with YAML 1.2 booleans: only true/false are booleans.

    Why: under YAML 1.1 rules the key `on:` of a suppression flow (SPEC §4) would become the boolean
    True, and `yes`/`no`/`on`/`off` in a value (an event or audience name) would silently turn into
    booleans. Boolean fields still accept those words: pydantic reads "yes"/"on" as True.
    """


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def substitute_env(value: Any, env: Mapping[str, str], path: str, problems: list[str]) -> Any:
    """Replace `${NAME}` in every string of a YAML tree; a missing variable is a problem."""
    if isinstance(value, str):

        def repl(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                problems.append(f"{path or '<root>'}: environment variable {name} is not set")
                # Keep the placeholder: an empty value would add follow-on problems for one mistake.
                return match.group(0)
            return env[name]

        return ENV_PATTERN.sub(repl, value)
    if isinstance(value, dict):
        return {k: substitute_env(v, env, _join(path, str(k)), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, env, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    return value


def _join(path: str, key: str) -> str:
    if key.startswith("["):
        return f"{path}{key}"  # a list position: flows + [2] -> flows[2]
    return f"{path}.{key}" if path else key


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in {
            "audience_sync",
            "conversions",
            "suppression",
            "product_signals",
            "catalog",
            "lookalike_seed",
            "lifecycle",
            "sql",
            "segment_profiles",
        } and out.endswith("]"):
            continue  # pydantic names the union branch; users think in list positions
        else:
            out = _join(out, str(part))
    return out or "<root>"


def format_validation_error(error: ValidationError) -> list[str]:
    """One `key.path: message` line per problem, worded for someone editing the YAML file."""
    problems: list[str] = []
    for item in error.errors():
        loc = tuple(item["loc"])
        if loc and loc[-1] == "[key]":
            # pydantic reports a bad mapping key at (..., key, "[key]"); name the mapping instead.
            path, message = _loc_to_path(loc[:-2]), f"the key {loc[-2]!r} should be text (quote it)"
        else:
            path, message = _loc_to_path(loc), _message(item)
        for line in message.split("\n"):
            # A model check may name the key it is about ("write_key: ..."), relative to its model.
            relative = item["type"] in {"value_error", "union_tag_invalid", "union_tag_not_found"}
            match = _RELATIVE_PROBLEM.match(line) if relative else None
            if match:
                problems.append(f"{_join('' if path == '<root>' else path, match.group(1))}: {match.group(2)}")
            else:
                problems.append(f"{path}: {line}")
    return problems


_RELATIVE_PROBLEM = re.compile(r"^((?:[A-Za-z_]|\[[0-9]+\])[A-Za-z0-9_.\[\]]*): (.+)$")
_LOOKUP_TYPES = "sql, segment_profiles"
_FLOW_TYPES = "audience_sync, conversions, suppression, product_signals, catalog, lookalike_seed, lifecycle"


def _message(item: Any) -> str:
    """pydantic's wording, rephrased where it speaks of Python rather than of the YAML file."""
    kind, ctx, given = item["type"], item.get("ctx") or {}, item.get("input")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required, but missing"
    if kind in {"union_tag_invalid", "union_tag_not_found"} and item["loc"][:1] == ("enrichment",):
        what = f"unknown lookup type {ctx.get('tag')!r}; expected" if kind == "union_tag_invalid" else "required,"
        return f"type: {what} one of: {_LOOKUP_TYPES}"
    if kind == "union_tag_invalid":
        return f"type: unknown flow type {ctx.get('tag')!r}; expected one of: {_FLOW_TYPES}"
    if kind == "union_tag_not_found":
        return f"type: required, one of: {_FLOW_TYPES}"
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        return "should be a mapping of keys (key: value)"
    if kind == "string_type" and isinstance(given, int | float) and not isinstance(given, bool):
        # YAML reads 12345 as a number; ids are text in Criteo's API.
        return 'should be text: quote it, e.g. "12345"'
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == "^[0-9]+$":
        return "should contain digits only"
    return str(item["msg"]).removeprefix("Value error, ").removeprefix("Input ")


def _load_yaml(text: str) -> tuple[Any, list[str]]:
    """The YAML document, and a problem for every key given twice in one mapping."""
    loader = _ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        return loader.construct_document(node), duplicate_keys(node)
    finally:
        loader.dispose()


def duplicate_keys(node: yaml.Node, path: str = "", seen_nodes: set[int] | None = None) -> list[str]:
    """`key.path: the key 'k' appears twice` for every mapping in the tree that repeats a key."""
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:  # an alias (*anchor): its node was checked where it was defined
        return []
    seen_nodes.add(id(node))
    problems: list[str] = []
    if isinstance(node, yaml.MappingNode):
        lines: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            first = lines.get((key_node.tag, key))
            if first is not None and key != "<<":
                where = f"line {line}" if first == line else f"lines {first} and {line}"
                problems.append(
                    f"{path or '<root>'}: the key {key!r} appears twice ({where}); "
                    "YAML would keep only the last one, so remove or merge one of them"
                )
            lines.setdefault((key_node.tag, key), line)
            problems += duplicate_keys(value_node, _join(path, key), seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            problems += duplicate_keys(item, f"{path}[{index}]", seen_nodes)
    return problems


def parse_config(text: str, *, env: Mapping[str, str] | None = None, base_dir: Path | None = None) -> Config:
    """Parse and validate config text; raise ConfigError with every problem."""
    try:
        raw, duplicates = _load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        raise ConfigError([f"<file>: not valid YAML{where}" + (f": {problem}" if problem else "")]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["<root>: the config must be a mapping of keys"])
    # YAML keeps the last of two equal keys without a word: a stage or an audience would vanish.
    problems: list[str] = duplicates
    resolved = substitute_env(raw, os.environ if env is None else env, "", problems)
    try:
        config = Config.model_validate(resolved)
    except ValidationError as exc:
        # A value whose variable is missing was already reported; its placeholder failing
        # validation (not a number, not a URL, ...) would be the same mistake twice.
        unresolved = {problem.split(": ", 1)[0] for problem in problems}
        problems.extend(p for p in format_validation_error(exc) if p.split(": ", 1)[0] not in unresolved)
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return _resolve_lookup_paths(_resolve_store_path(config, base_dir), base_dir)


def _resolve_lookup_paths(config: Config, base_dir: Path | None) -> Config:
    """A `sql` lookup on a relative SQLite file finds it next to the config file, as `store` does."""
    prefix = "sqlite:///"
    lookups = []
    for lookup in config.enrichment:
        url = lookup.url.get_secret_value() if isinstance(lookup, SqlLookup) else ""
        path = url[len(prefix) :]
        if base_dir is None or not url.startswith(prefix) or path in {"", ":memory:"} or Path(path).is_absolute():
            lookups.append(lookup)
        else:
            lookups.append(lookup.model_copy(update={"url": SecretStr(prefix + str((base_dir / path).resolve()))}))
    return config.model_copy(update={"enrichment": lookups}) if lookups != config.enrichment else config


def _resolve_store_path(config: Config, base_dir: Path | None) -> Config:
    """A relative sqlite path is relative to the config file's folder (SPEC §4)."""
    prefix = "sqlite:///"
    if base_dir is None or not config.store.startswith(prefix):
        return config
    path = config.store[len(prefix) :]
    if path in {"", ":memory:"} or Path(path).is_absolute():
        return config
    return config.model_copy(update={"store": prefix + str((base_dir / path).resolve())})


def config_path(explicit: str | None) -> Path:
    """--config, else $SEGCRIT_CONFIG, else ./segcrit.yaml."""
    return Path(explicit or os.environ.get("SEGCRIT_CONFIG") or DEFAULT_CONFIG_NAME)


def load_config(explicit: str | None = None) -> Config:
    path = config_path(explicit)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: not found (name the file with --config or SEGCRIT_CONFIG)"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        return parse_config(text, base_dir=path.resolve().parent)
    except ConfigError as exc:
        # parse_config knows no file name; name the file the user has to open.
        raise ConfigError([_name_file(problem, path) for problem in exc.problems]) from None


def _name_file(problem: str, path: Path) -> str:
    return f"{path}{problem.removeprefix('<file>')}" if problem.startswith("<file>") else problem


def audience_names(config: Config) -> set[str]:
    """Every audience the config names: listed, referenced by a flow, or an audience_sync renaming.
    Only audience_sync adds others, from the Engage audience keys that traffic carries."""
    names = set(config.audiences)
    for flow in config.flows:
        if isinstance(flow, AudienceSyncFlow):
            names.update(flow.audiences.values())
        elif isinstance(flow, SuppressionFlow):
            if isinstance(flow.remove_from, list):
                names.update(flow.remove_from)
            if flow.add_to:
                names.add(flow.add_to)
        elif isinstance(flow, LookalikeSeedFlow):
            names.add(flow.audience)
        elif isinstance(flow, LifecycleFlow):
            names.update(lifecycle_stage_audiences(flow))
    return names


# --------------------------------------------------------------------------------------- warnings


def config_warnings(config: Config) -> list[str]:
    """What `segcrit check` points out without refusing the config, each as `key.path: why`."""
    warnings: list[str] = []
    if config.identity.email_hash == "none":
        warnings.append(
            "identity.email_hash: none would need raw emails, which segcrit never stores; sha256 is sent instead"
        )
    for index, source in enumerate(config.sources):
        if source.type == "webhook" and source.bearer_token is None:
            warnings.append(
                f"sources[{index}].bearer_token: not set, so only what Segment's signature covers (a single "
                "message, or element 0 of a batch) is authenticated, and a delete past element 0 is refused; "
                "set bearer_token and send it from the Webhooks (Actions) destination as the header "
                "`Authorization: Bearer <token>`"
            )
    tracking = [source.name for source in config.sources if source.type == "tracking_api"]
    for index, flow in enumerate(config.flows):
        if isinstance(flow, AudienceSyncFlow) and flow.sources is None and tracking:
            warnings.append(
                f"flows[{index}].sources: not set, so messages through the tracking_api source(s) "
                f"{', '.join(map(repr, tracking))} can change audiences, and a browser write key is public; "
                "list the sources Engage sends through (e.g. `sources: [engage]`)"
            )
    for index, lookup in enumerate(config.enrichment):
        if lookup.key == "email":
            warnings.append(
                f"enrichment[{index}].key: email: segcrit keeps emails only as hashes, so it can look people up "
                "only by the emails this process has received since it started (held in memory); prefer "
                "user_id where the source has it"
            )
    return warnings + _unfilled_audience_warnings(config)


def _unfilled_audience_warnings(config: Config) -> list[str]:
    """An audience that `remove_from` names while nothing can ever fill it: likely a misspelling.
    With an audience_sync flow any name may be an Engage key, known only at run time (SPEC §4)."""
    if config.flows_of(AudienceSyncFlow):
        return []
    known = set(config.audiences) | set(filled_audiences(config.flows))
    warnings = []
    for index, flow in enumerate(config.flows):
        if isinstance(flow, SuppressionFlow) and isinstance(flow.remove_from, list):
            for audience in dict.fromkeys(flow.remove_from):
                if audience not in known:
                    warnings.append(
                        f"flows[{index}].remove_from: no flow fills {audience!r} and `audiences:` does not list "
                        "it; it is found in Criteo by that name (or created empty)"
                    )
    return warnings
