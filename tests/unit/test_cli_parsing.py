"""Argument parsing of the `domicile` command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from domicile.cli.main import build_parser, main


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_up_defaults():
    args = parse("up")
    assert args.command == "up"
    assert args.config == "deploy/cluster.yaml"
    assert args.data_dir == ".domicile"
    assert (args.host, args.base_port, args.metrics_base_port) == ("127.0.0.1", 7400, 9400)
    assert args.startup_timeout > 0 and args.stop_timeout > 0


def test_up_options():
    args = parse(
        "up", "--data-dir", "/tmp/d", "--config", "c.yaml", "--base-port", "17400",
        "--metrics-base-port", "0", "--host", "::1", "--log-level", "debug",
    )  # fmt: skip
    assert (args.data_dir, args.config, args.base_port, args.metrics_base_port) == (
        "/tmp/d",
        "c.yaml",
        17400,
        0,
    )
    assert (args.host, args.log_level) == ("::1", "debug")


def test_put_takes_every_record_field():
    args = parse(
        "put", "--namespace", "customers_eu", "--key", "c1", "--value", "v", "--region", "eu-west-1",
        "--subject-id", "s1", "--subject-jurisdiction", "DE", "--classification", "PERSONAL",
        "--content-type", "text/plain", "--coordinator", "h:1", "--deadline", "2.5",
    )  # fmt: skip
    assert (args.namespace, args.key, args.value, args.region) == ("customers_eu", "c1", "v", "eu-west-1")
    assert (args.subject_id, args.subject_jurisdiction) == ("s1", "DE")
    assert (args.classification, args.content_type) == ("personal", "text/plain")
    assert (args.coordinator, args.deadline) == ("h:1", 2.5)


def test_common_options_default_to_the_local_coordinator(monkeypatch):
    monkeypatch.delenv("DOMICILE_COORDINATOR", raising=False)
    args = parse("get", "-n", "instruments", "-k", "AAPL")
    assert (args.coordinator, args.deadline, args.region, args.json) == ("127.0.0.1:7400", 5.0, None, False)
    monkeypatch.setenv("DOMICILE_COORDINATOR", "10.0.0.1:7400")
    assert parse("status").coordinator == "10.0.0.1:7400"


def test_scan_delete_status_options():
    args = parse("scan", "-n", "instruments", "--prefix", "US", "--limit", "5", "--json")
    assert (args.prefix, args.limit, args.json) == ("US", 5, True)
    args = parse("delete", "-n", "instruments", "-k", "AAPL", "--region", "us-east-1")
    assert (args.key, args.region, args.context) == ("AAPL", "us-east-1", None)
    assert parse("status", "--json").json


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["put", "-n", "instruments", "-k", "k"], "one of the arguments --value/-v --value-file is required"),
        (["put", "-n", "i", "-k", "k", "-v", "x", "--value-file", "f"], "not allowed with argument"),
        (["get", "-k", "k"], "the following arguments are required: --namespace"),
        (["get", "-n", "i", "-k", "k", "--deadline", "0"], "must be more than 0 seconds"),
        (["get", "-n", "i", "-k", "k", "--deadline", "soon"], "is not a number of seconds"),
        (["scan", "-n", "i", "--limit", "0"], "must be at least 1"),
        (["up", "--base-port", "70000"], "port 70000 is outside 0..65535"),
        (["put", "-n", "i", "-k", "k", "-v", "x", "--classification", "secret"], "unknown classification"),
        (["frobnicate"], "invalid choice"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_usage_errors_exit_2_and_say_what_is_wrong(capsys, argv, complaint):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err


@pytest.mark.parametrize(("daemon", "flag"), [("node", "--node-id"), ("coordinator", "--cluster-config")])
def test_daemon_commands_run_the_daemon_with_the_remaining_arguments(daemon, flag):
    # `--help` reaches the daemon's own parser, not ours: the daemon's flags show up.
    done = subprocess.run(
        [sys.executable, "-m", "domicile.cli", daemon, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert flag in done.stdout
