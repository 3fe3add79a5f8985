"""YAML text -> plain data, with every way PyYAML refuses text reported as InvalidArgument.

PyYAML raises YAMLError for most malformed text, but not for all of it: a date it recognises
but that does not exist (2026-13-01) is a ValueError from datetime, an integer of more than 4,300
digits a ValueError from int(), and collections nested a few hundred deep a RecursionError from
its recursive composer. A configuration file with any of them is the operator's mistake, to be
reported as one, not a crash.
"""

from __future__ import annotations

from typing import Any

import yaml

from domicile.errors import InvalidArgument


def load_yaml(text: str, what: str) -> Any:
    """The document in `text`; `what` names it in the error ("cluster config deploy/cluster.yaml")."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"{what} is not valid YAML: {exc}") from None
    except RecursionError:
        raise InvalidArgument(f"{what} is not valid YAML: collections are nested too deeply") from None
    except ValueError as exc:
        raise InvalidArgument(f"{what} is not valid YAML: {exc}") from None
