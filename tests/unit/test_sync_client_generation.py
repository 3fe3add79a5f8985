"""The blocking client is generated from the asyncio one: same API, and the committed file is
what the generator makes."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from types import ModuleType

from domicile.client import AsyncClient, Client

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gen_sync_client.py"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_sync_client", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def public(cls: type) -> set[str]:
    return {name for name in vars(cls) if not name.startswith("_")}


def test_both_clients_have_the_same_calls_with_the_same_parameters():
    assert public(Client) == public(AsyncClient)
    for name in public(Client):
        blocking, asynchronous = (
            inspect.signature(getattr(Client, name)),
            inspect.signature(getattr(AsyncClient, name)),
        )
        assert list(blocking.parameters.values()) == list(asynchronous.parameters.values()), name


def test_unasync_drops_async_and_await_and_renames_only_names():
    gen = generator()
    source = 'async def f(x: AsyncIterator[int]) -> None:\n    """await AsyncClient"""\n    await g(x)\n'
    assert gen.unasync(source) == 'def f(x: Iterator[int]) -> None:\n    """await AsyncClient"""\n    g(x)\n'


def test_the_committed_sync_client_is_up_to_date():
    gen = generator()
    assert (SCRIPT.parents[1] / gen.TARGET).read_text(encoding="utf-8") == gen.generate()
