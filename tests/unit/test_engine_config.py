"""Choosing the storage engine in the node configuration."""

from __future__ import annotations

import pytest

from domicile.errors import InvalidArgument
from node.config import MongoSettings, NodeConfig, SQLiteSettings, parse_args


def test_sqlite_is_the_default_and_synchronous_is_its_setting() -> None:
    assert NodeConfig(region="eu-west-1", insecure=True).engine_settings() == SQLiteSettings("FULL")
    cfg = NodeConfig(region="eu-west-1", insecure=True, synchronous="normal")
    assert cfg.engine_settings() == SQLiteSettings("NORMAL")


def test_mongodb_takes_a_uri_and_a_database_named_after_the_region_by_default() -> None:
    cfg = NodeConfig(region="eu-west-1", insecure=True, engine="mongodb", mongodb_uri="mongodb://db:27017/")
    assert cfg.engine_settings() == MongoSettings("mongodb://db:27017/", "domicile_eu_west_1")
    named = parse_args(
        ["--region", "eu-west-1", "--insecure", "--engine", "mongodb", "--mongodb-uri", "mongodb://h/",
         "--mongodb-database", "eu_primary"]
    )  # fmt: skip
    assert named.engine_settings() == MongoSettings("mongodb://h/", "eu_primary")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"engine": "postgres"}, "engine must be one of sqlite, mongodb"),
        ({"engine": "mongodb"}, "needs mongodb_uri"),
        ({"engine": "mongodb", "mongodb_uri": "http://db/"}, "needs mongodb_uri"),
        (
            {"engine": "mongodb", "mongodb_uri": "mongodb://db/", "synchronous": "OFF"},
            "setting of the sqlite",
        ),
        ({"engine": "mongodb", "mongodb_uri": "mongodb://db/", "mongodb_database": "a.b"}, "not allowed"),
        ({"mongodb_uri": "mongodb://db/"}, "settings of the mongodb engine"),
        ({"synchronous": "EXTRA"}, "FULL, NORMAL or OFF"),
    ],
)
def test_engine_settings_that_do_not_fit_are_refused(settings: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        NodeConfig(region="eu-west-1", insecure=True, **settings)  # type: ignore[arg-type]
