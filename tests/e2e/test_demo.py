"""`segcrit demo`, as a user runs it: it needs no account and no network, and it shows what each
part did, enrichment included (SPEC §2)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.e2e.conftest import segcrit_command

pytestmark = pytest.mark.e2e


def test_the_demo_shows_an_enrichment_reaching_criteo() -> None:
    result = subprocess.run(
        segcrit_command("demo"),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert result.returncode == 0, result.stderr
    [enrichment] = [line for line in result.stdout.splitlines() if line.startswith("Enrichment: ")]
    assert "user-101 arrived with a userId only and is in cart_abandoners by the CRM's email hash" in enrichment
    assert enrichment.count(": yes") == 3 and "NO" not in enrichment
    assert "maria.crm@example.com" not in result.stdout  # shown as a hash, never in the clear
