"""Every config block the documentation shows passes `segcrit check` (the real command).

A ```yaml block of README.md or docs/*.md is checked as it stands when it is a whole config (it has
a `criteo:` section); a list is a fragment of `flows:` and a mapping a fragment of the top level,
each checked inside a small config of its own. `${NAME}` references get fake values. The example of
SPEC §4, which users copy, is checked too when the SPEC is beside the repository.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from segcrit.config_templates import template_env
from tests.integration.test_cli import segcrit

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO.parent / "shared" / "SPEC.md"
BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)

# What a fragment is checked inside, by top-level key: no warning of its own (a bearer token, no
# tracking_api source).
FRAME = {
    "sources": "sources:\n  - {name: engage, type: webhook, shared_secret: fake-secret, bearer_token: fake-token}\n",
    "criteo": 'criteo: {client_id: fake-client, client_secret: fake-client-secret, advertiser_id: "12345"}\n',
}


def doc_blocks() -> list[tuple[str, str]]:
    """(where, YAML text) of every yaml block in README.md and docs/*.md."""
    found = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{path.relative_to(REPO)}:{line}", match.group(1)))
    return found


def as_config(block: str) -> str:
    """The block as a whole config: itself, or framed (see the module docstring). Framed as text,
    not re-serialised: the config's own YAML rules (`on:` stays a word) must read the block."""
    parsed = yaml.safe_load(block)
    if isinstance(parsed, dict) and "criteo" in parsed:
        return block
    if isinstance(parsed, list):
        return "".join(FRAME.values()) + "flows:\n" + "".join(f"  {line}\n" for line in block.splitlines())
    assert isinstance(parsed, dict), f"a yaml block that is no config: {block!r}"
    return "".join(text for key, text in FRAME.items() if key not in parsed) + block


def check(text: str, tmp_path: Path) -> tuple[int, str, str]:
    (tmp_path / "segcrit.yaml").write_text(text)
    env = {name: f"fake-{name.lower()}" for name in template_env(text)}
    result = segcrit("check", "--config", "segcrit.yaml", cwd=tmp_path, env=env)
    return result.returncode, result.stdout.strip(), result.stderr


BLOCKS = doc_blocks()


def test_the_documentation_has_config_blocks() -> None:
    # README's example and a block per flow in docs/flows.md: an empty list would pass everything.
    where = [name for name, _ in BLOCKS]
    assert any(name.startswith("README.md:") for name in where)
    assert sum(name.startswith("docs/flows.md:") for name in where) >= 7


@pytest.mark.parametrize(("where", "block"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_a_documented_config_block_passes_check(where: str, block: str, tmp_path: Path) -> None:
    code, out, err = check(as_config(block), tmp_path)
    assert (code, out) == (0, "config ok"), f"{where}: {err}"


def test_the_readme_example_passes_check_without_a_warning(tmp_path: Path) -> None:
    [(where, example)] = [(w, b) for w, b in BLOCKS if w.startswith("README.md:") and "criteo:" in b]
    assert check(example, tmp_path) == (0, "config ok", ""), where


@pytest.mark.skipif(not SPEC.exists(), reason=f"the SPEC is not at {SPEC}")
def test_the_spec_example_passes_check(tmp_path: Path) -> None:
    section = SPEC.read_text(encoding="utf-8").split("## 4. Configuration", 1)[1]
    example = BLOCK.search(section)
    assert example is not None
    code, out, err = check(example.group(1), tmp_path)
    assert (code, out) == (0, "config ok"), err
