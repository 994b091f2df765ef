"""JSON and TOML documents from untrusted files, parsed within limits into typed errors.

Python's parsers raise RecursionError on deep nesting and ValueError on integer literals
longer than its int-string limit (4300 digits); both are malformed input here, refused with
an InputError naming the file. Documents weissi keeps or writes back (a config, an index's
metadata) are also held to MAX_NESTING levels, so that nothing that walks them recurses deep.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from weissi_cli.errors import InputError

# Safetensors headers and shard indexes need 3 levels, Hugging Face configs about 5.
MAX_NESTING = 32


def _too_long_integer() -> str:
    return f"an integer literal longer than {sys.get_int_max_str_digits()} digits"


def parse_json(
    text: str | bytes,
    refusal: str,
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
) -> Any:
    """`json.loads` of UTF-8 text, with every way it fails on hostile text as one InputError:
    `refusal` (e.g. "FILE: corrupt safetensors header") and what went wrong."""
    try:
        decoded = text.decode("utf-8") if isinstance(text, bytes) else text
        document = json.loads(decoded, object_pairs_hook=object_pairs_hook)
    except RecursionError:
        raise InputError(f"{refusal} (nested too deeply to read)") from None
    except UnicodeDecodeError as error:
        raise InputError(f"{refusal} (not UTF-8: {error.reason})") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{refusal} (not valid JSON: {error})") from None
    except ValueError as error:  # int() refusing a literal over the int-string limit
        if "integer string conversion" in str(error):
            raise InputError(f"{refusal} (holds {_too_long_integer()})") from None
        raise InputError(f"{refusal} ({error})") from None
    # Strict UTF-8 cannot hold a surrogate, so a lone one can only come from a \uD800-style
    # escape: the document is walked only when its text has one.
    if _SURROGATE_ESCAPE.search(decoded):
        lone = _lone_surrogate(document)
        if lone is not None:
            raise InputError(
                f"{refusal} (the string {lone!r} holds a lone surrogate, which is not Unicode text)"
            )
    return document


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _lone_surrogate(value: Any) -> str | None:
    """The first string (key or value) of a parsed document that UTF-8 cannot encode."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return item
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return None


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file as a dict, or an InputError naming it and why it cannot be read."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read the {what} ({error.strerror})") from None
    except RecursionError:
        raise InputError(f"{path}: not valid TOML (nested too deeply to read)") from None
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not valid TOML (not UTF-8: {error.reason})") from None
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"{path}: not valid TOML ({error})") from None
    except ValueError as error:  # int() refusing a literal over the int-string limit
        if "integer string conversion" in str(error):
            raise InputError(f"{path}: not valid TOML (holds {_too_long_integer()})") from None
        raise InputError(f"{path}: not valid TOML ({error})") from None


def nesting(value: Any) -> int:
    """How many containers deep `value` goes (a scalar: 0), without recursing."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if depth > MAX_NESTING:
            break
        pending.extend((child, depth) for child in children)
    return deepest


def check_nesting(value: Any, refusal: str) -> None:
    """Refuse a parsed document nested deeper than MAX_NESTING levels."""
    if nesting(value) > MAX_NESTING:
        raise InputError(f"{refusal} (nested more than {MAX_NESTING} levels deep)")
