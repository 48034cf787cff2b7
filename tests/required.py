"""Tests that need something from outside the repository: skipped on a laptop, failed in CI.

Criteo's OpenAPI documents (`../shared/reference/criteo-openapi/`) and Criteo's official SDK
(`criteo-api-marketingsolutions-sdk`, a dev extra) are what hold segcrit's models and the emulator
to Criteo's real API. A developer without them gets a skip naming what is missing; where the `CI`
environment variable is set (`.ci/run` exports it, as CI services do), the same test fails instead,
so that a CI run can never pass with those checks silently left out.
"""

from __future__ import annotations

import functools
import importlib
import os
import types
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

Test = TypeVar("Test", bound=Callable[..., Any])


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def missing(what: str) -> str:
    """The message of a test that cannot run without `what`."""
    return what + ("; CI is set, so this test fails rather than being skipped" if in_ci() else "")


def needs(available: bool, what: str) -> Callable[[Test], Test]:
    """Decorate a test that needs something: it runs when `available`, else is skipped, or fails in
    CI, with `what` (say what is missing and where it was looked for)."""

    def decorate(test: Test) -> Test:
        if available:
            return test
        if not in_ci():
            return pytest.mark.skip(reason=what)(test)

        @functools.wraps(test)
        def fail(*args: Any, **kwargs: Any) -> None:
            pytest.fail(missing(what))

        return fail  # type: ignore[return-value]

    return decorate


def import_or_skip(module: str, what: str) -> types.ModuleType:
    """`pytest.importorskip`, except that in CI a missing module fails the test module."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if in_ci():
            pytest.fail(missing(what), pytrace=False)
        pytest.skip(what, allow_module_level=True)
