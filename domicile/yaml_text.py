"""YAML text -> plain data, with every way PyYAML refuses text reported as InvalidArgument.

PyYAML raises YAMLError for most malformed text, but not for all of it: a date it recognises
but that does not exist (2026-13-01) is a ValueError from datetime, an integer of more than 4,300
digits a ValueError from int(), and collections nested a few hundred deep a RecursionError from
its recursive composer. A configuration file with any of them is the operator's mistake, to be
reported as one, not a crash.

The text is parsed by libyaml (PyYAML's CSafeLoader, in every PyYAML wheel) when PyYAML has it:
about nine times faster than the pure-Python parser on the 34 KB policy pack, which every node and
the coordinator parse at start and at each policy change. Both build the same data with the same
Python constructor. libyaml refuses nesting past 1,000 levels itself (a YAMLError), where the
pure-Python composer would recurse until RecursionError.
"""

from __future__ import annotations

from typing import Any

import yaml

from domicile.errors import InvalidArgument

_LOADER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str, what: str) -> Any:
    """The document in `text`; `what` names it in the error ("cluster config deploy/cluster.yaml")."""
    try:
        return yaml.load(text, Loader=_LOADER)  # a safe loader: plain data only
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"{what} is not valid YAML: {exc}") from None
    except RecursionError:
        raise InvalidArgument(f"{what} is not valid YAML: collections are nested too deeply") from None
    except ValueError as exc:
        raise InvalidArgument(f"{what} is not valid YAML: {exc}") from None
