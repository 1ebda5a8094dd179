"""Prompt templates of `megadoc generate`: chat prompts read from YAML (keys: kind, system, user).

The shipped templates are in `prompts/*.yaml`, each with a note on where its text comes from. A rephrase prompt
carries `{text}`; a rationale prompt `{prefix}` and `{suffix}` (the text before and after a split point).
"""

from dataclasses import dataclass
from pathlib import Path

import yaml

from megadoc.errors import MegadocError

PROMPTS_DIR = Path(__file__).parent / "prompts"
DEFAULT_PROMPTS = {"rephrase": "wikipedia", "rationale": "latent_thoughts"}
PLACEHOLDERS = {"rephrase": ("{text}",), "rationale": ("{prefix}", "{suffix}")}


@dataclass(frozen=True)
class PromptTemplate:
    """A chat prompt read from a YAML file (keys: kind, system, user) with the kind's placeholders."""

    name: str
    """file stem, or the path given"""
    kind: str
    """'rephrase' or 'rationale'"""
    system: str
    """system message ('' for none)"""
    user: str
    """user message with the kind's placeholders ({text}, or {prefix} and {suffix})"""

    def messages(self, **values: str) -> list[dict]:
        """Chat messages with the placeholders filled (str.replace, so braces in documents are safe)."""
        user = self.user
        for key, value in values.items():
            user = user.replace("{" + key + "}", value)
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + [{"role": "user", "content": user}]


def load_prompt(name_or_path: str, kind: str) -> PromptTemplate:
    """A shipped template by name, or a YAML file, checked to be of `kind` and to carry its placeholders."""
    path = Path(name_or_path)
    if not path.exists() and not name_or_path.endswith((".yaml", ".yml")):
        path = PROMPTS_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        shipped = ", ".join(sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml")))
        raise MegadocError(f"{name_or_path}: no such prompt file or shipped template ({shipped})")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise MegadocError(f"{path}: not a readable YAML prompt ({error})".replace("\n", " ")) from None
    if not isinstance(data, dict) or not isinstance(data.get("user"), str):
        raise MegadocError(f"{path}: a prompt needs a 'user' string (and optional 'system', 'kind')")
    if data.get("kind", kind) != kind:
        raise MegadocError(f"{path}: a {data['kind']!r} prompt, not a {kind!r} one")
    missing = [p for p in PLACEHOLDERS[kind] if p not in data["user"]]
    if missing:
        raise MegadocError(f"{path}: the user message lacks {', '.join(missing)}")
    system = data.get("system") or ""
    if not isinstance(system, str):
        raise MegadocError(f"{path}: 'system' must be a string")
    return PromptTemplate(name=path.stem if path.parent == PROMPTS_DIR else str(path), kind=kind,
                          system=system, user=data["user"])
