"""Ready-made configs (`segcrit init --template NAME`): commented YAML files shipped in the package.

Each template is a complete `segcrit.yaml` for one use case (SPEC §2); secrets appear only as
`${ENV}` references, and the test suite checks every template and runs it against the emulator.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from segcrit.config import ENV_PATTERN
from segcrit.errors import UserError

TEMPLATES = ("audience-sync", "conversions", "suppression", "lookalike", "catalog", "lifecycle", "all")


def template_text(name: str) -> str:
    """The template's YAML text; UserError naming the templates when there is none of that name."""
    if name not in TEMPLATES:
        raise UserError(f"unknown template {name!r}; the templates are: {', '.join(TEMPLATES)}")
    return resources.files("segcrit").joinpath("templates", f"{name}.yaml").read_text(encoding="utf-8")


def template_env(text: str) -> list[str]:
    """The environment variables a config text refers to, in order of first use."""
    return list(dict.fromkeys(ENV_PATTERN.findall(text)))


def write_template(name: str, output: Path, *, force: bool = False) -> list[str]:
    """Write the template to `output` (never over an existing file unless `force`); returns the
    environment variables it needs."""
    text = template_text(name)
    try:
        with output.open("w" if force else "x", encoding="utf-8") as file:
            file.write(text)
    except FileExistsError:
        raise UserError(f"{output} exists already; choose another --output, or add --force to replace it") from None
    except OSError as exc:
        raise UserError(f"cannot write {output}: {exc.strerror}") from None
    return template_env(text)
