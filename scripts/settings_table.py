"""Print the README's configuration table from `Settings` (one row per FOUNDRY_* variable).

`tests/unit/platform/test_settings.py` fails when the README's table and this output differ, so the
documentation cannot drift from the code: run `python scripts/settings_table.py` and paste the output.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, SecretStr

from services.platform.settings import Settings


def _default(value: Any) -> str:
    if isinstance(value, SecretStr):
        return "(dev value; required in production)"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if value is None:
        return "(unset)"
    return str(value)


def rows(model: type[BaseModel] = Settings, prefix: str = "FOUNDRY_") -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.extend(rows(annotation, f"{prefix}{name.upper()}__"))
            continue
        default = field.get_default(call_default_factory=True)
        out.append((f"{prefix}{name.upper()}", _default(default), field.description or ""))
    return out


def table() -> str:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{var}` | `{default}` | {doc} |" for var, default, doc in rows()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
