"""`domicile up`: the process layout and the supervision of children (with stand-in children;
tests/system runs it with the real daemons)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from domicile.cli.main import main
from domicile.cli.up import ChildSpec, StartupFailed, StopRequest, Supervisor, busy_ports, plan_children
from domicile.cluster import load_cluster
from domicile.errors import InvalidArgument
from domicile.identity.credentials import Dialer

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "deploy" / "cluster.yaml"


def test_plan_puts_the_coordinator_on_the_base_port_and_regions_after_it(tmp_path):
    cluster = load_cluster(SAMPLE)
    specs = plan_children(
        cluster,
        config_path=SAMPLE,
        data_dir=tmp_path,
        host="127.0.0.1",
        base_port=17400,
        metrics_base_port=19400,
        log_level="info",
        tls_dir=tmp_path / "tls",
        python="py",
    )
    assert [s.name for s in specs] == ["coordinator", *cluster.region_names()]
    assert [s.address for s in specs] == [f"127.0.0.1:{17400 + i}" for i in range(8)]
    assert specs[3].metrics_url == "https://127.0.0.1:19403/metrics"
    assert specs[0].argv[:3] == ("py", "-m", "coordinator")
    node = specs[3].argv
    assert node[:3] == ("py", "-m", "node")
    flags = dict(zip(node[3::2], node[4::2], strict=True))
    assert flags == {
        "--region": "eu-west-1",
        "--node-id": "eu-west-1",
        "--listen": "127.0.0.1:17403",
        "--metrics-port": "19403",
        "--data-dir": str(tmp_path / "eu-west-1"),
        "--coordinator": "127.0.0.1:17400",
        "--cluster-config": str(SAMPLE),
        # Every node gets the one cluster key for context tokens.
        "--context-key-file": str(tmp_path / "context.key"),
        "--log-level": "info",
        "--tls-dir": str(tmp_path / "tls"),
    }
    assert specs[3].log_path == tmp_path / "logs" / "eu-west-1.log"
    assert specs[3].role == "node (EU)"


def test_plan_with_two_daemons_per_region_shares_the_region_directory(tmp_path):
    cluster = load_cluster(SAMPLE)
    regions = cluster.region_names()
    specs = plan_children(
        cluster,
        config_path=SAMPLE,
        data_dir=tmp_path,
        host="127.0.0.1",
        base_port=17400,
        metrics_base_port=0,
        log_level="info",
        tls_dir=None,
        node_args=("--engine", "mongodb", "--mongodb-uri", "mongodb://127.0.0.1:17499/"),
        nodes_per_region=2,
    )
    assert [s.name for s in specs] == ["coordinator", *regions, *(f"{r}-2" for r in regions)]
    assert [s.address for s in specs] == [f"127.0.0.1:{17400 + i}" for i in range(1 + 2 * len(regions))]
    second = specs[len(regions) + 3]  # eu-west-1-2
    flags = dict(zip(second.argv[3:-5:2], second.argv[4:-5:2], strict=True))
    assert flags["--node-id"] == "eu-west-1-2" and flags["--region"] == "eu-west-1"
    assert flags["--data-dir"] == str(tmp_path / "eu-west-1-2")
    assert flags["--region-dir"] == str(tmp_path / "eu-west-1")
    assert second.argv[-4:] == ("--engine", "mongodb", "--mongodb-uri", "mongodb://127.0.0.1:17499/")
    assert second.peer is not None and second.peer.node_id == "eu-west-1-2"


def test_up_refuses_several_daemons_per_region_without_a_shared_database(capsys, tmp_path):
    code = main(["up", "--config", str(SAMPLE), "--data-dir", str(tmp_path), "--nodes-per-region", "2"])
    assert code != 0
    assert "--nodes-per-region 2 needs --tiers" in capsys.readouterr().err


def test_plan_without_metrics_and_with_impossible_ports(tmp_path):
    cluster = load_cluster(SAMPLE)
    common = {
        "config_path": SAMPLE,
        "data_dir": tmp_path,
        "host": "127.0.0.1",
        "log_level": "info",
        "tls_dir": None,
    }
    specs = plan_children(cluster, base_port=17400, metrics_base_port=0, **common)
    assert all(s.metrics_url == "-" and "0" in s.argv for s in specs)
    # Without a TLS directory every child is told, explicitly, to run in plaintext.
    assert all(s.argv[-1] == "--insecure" for s in specs)
    with pytest.raises(InvalidArgument, match=r"--base-port 65529: 8 ports from it must fit in 1\.\.65535"):
        plan_children(cluster, base_port=65529, metrics_base_port=0, **common)


def test_busy_ports_finds_a_listener():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert busy_ports("127.0.0.1", [port]) == [port]
    assert busy_ports("127.0.0.1", [port]) == []


def test_up_refuses_a_missing_config_and_busy_ports(capsys, tmp_path):
    assert main(["up", "--config", str(tmp_path / "none.yaml"), "--data-dir", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        argv = ["up", "--config", str(SAMPLE), "--data-dir", str(tmp_path), "--base-port", str(port)]
        assert main([*argv, "--metrics-base-port", "0"]) == 2
    err = capsys.readouterr().err
    assert f"ports already in use on 127.0.0.1: {port}" in err
    assert "--base-port" in err


# -- supervision, with small Python programs standing in for the daemons


def child(tmp_path: Path, name: str, code: str) -> ChildSpec:
    return ChildSpec(
        name=name,
        role="node (XX)",
        argv=(sys.executable, "-c", code),
        address="127.0.0.1:1",
        metrics_url="-",
        log_path=tmp_path / "logs" / f"{name}.log",
    )


# The log starts with the command line, so the marker is spelt so that only its output matches.
SLEEPER = "import time; print('rea' + 'dy', flush=True); time.sleep(60)"
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('rea' + 'dy', flush=True); time.sleep(60)"
)


def wait_logged(spec: ChildSpec, text: str) -> None:
    end = time.monotonic() + 30
    while text not in spec.log_path.read_text():
        if time.monotonic() > end:
            raise AssertionError(f"{spec.name} never logged {text!r}")
        time.sleep(0.02)


def test_stop_terminates_every_child_and_kills_the_stubborn(tmp_path):
    specs = [child(tmp_path, "a", SLEEPER), child(tmp_path, "b", STUBBORN)]
    said: list[str] = []
    supervisor = Supervisor(specs, StopRequest(), said.append, Dialer.plaintext())
    supervisor.start_all()
    for spec in specs:
        wait_logged(spec, "ready")
    supervisor.stop_all(timeout_s=0.5)
    assert all(c.process.poll() is not None for c in supervisor.children)
    assert "stopped a (exit code -15)" in said
    assert any(line.startswith("b (pid") and "killing it" in line for line in said), said
    assert "stopped b (exit code -9)" in said
    assert "--- " in specs[0].log_path.read_text()


def test_a_child_that_dies_is_reported_with_its_exit_code(tmp_path):
    specs = [child(tmp_path, "a", SLEEPER), child(tmp_path, "b", "raise SystemExit(3)")]
    supervisor = Supervisor(specs, StopRequest(), lambda _: None, Dialer.plaintext())
    supervisor.start_all()
    try:
        died = supervisor.watch()
        assert died is not None and died.spec.name == "b" and died.process.returncode == 3
    finally:
        supervisor.stop_all(timeout_s=5)
    assert all(c.process.poll() is not None for c in supervisor.children)


def test_startup_fails_when_a_child_exits_or_never_gets_healthy(tmp_path):
    supervisor = Supervisor(
        [child(tmp_path, "a", "raise SystemExit(4)")], StopRequest(), lambda _: None, Dialer.plaintext()
    )
    supervisor.start_all()
    supervisor.children[0].process.wait()
    try:
        with pytest.raises(StartupFailed, match=r"a \(pid \d+\) exited with code 4; its log: .*a\.log"):
            supervisor.wait_healthy(timeout_s=30)
    finally:
        supervisor.stop_all(timeout_s=5)

    supervisor = Supervisor(
        [child(tmp_path, "b", SLEEPER)], StopRequest(), lambda _: None, Dialer.plaintext()
    )
    supervisor.start_all()
    try:
        with pytest.raises(StartupFailed, match=r"not healthy after 0.3s: b; see .*b\.log"):
            supervisor.wait_healthy(timeout_s=0.3)
    finally:
        supervisor.stop_all(timeout_s=5)


def test_a_stop_request_interrupts_startup(tmp_path):
    stop = StopRequest()
    supervisor = Supervisor([child(tmp_path, "a", SLEEPER)], stop, lambda _: None, Dialer.plaintext())
    supervisor.start_all()
    try:
        stop(2, None)
        with pytest.raises(KeyboardInterrupt):
            supervisor.wait_healthy(timeout_s=30)
        assert supervisor.watch() is None
    finally:
        supervisor.stop_all(timeout_s=5)


def test_children_stop_when_the_supervisor_is_killed_outright(tmp_path):
    # A supervisor in its own process, SIGKILLed: it gets no chance to stop its child.
    script = f"""
import sys
from pathlib import Path
from domicile.cli.up import ChildSpec, StopRequest, Supervisor
from domicile.identity.credentials import Dialer
log = Path({str(tmp_path)!r}) / "a.log"
spec = ChildSpec("a", "node", (sys.executable, "-c", {SLEEPER!r}), "-", "-", log)
supervisor = Supervisor([spec], StopRequest(), print, Dialer.plaintext())
supervisor.start_all()
print(supervisor.children[0].pid, flush=True)
supervisor.watch()
"""
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child_pid = int(parent.stdout.readline())
        wait_logged(ChildSpec("a", "", (), "", "", tmp_path / "a.log"), "ready")
    finally:
        parent.kill()
        parent.wait()
    end = time.monotonic() + 30
    while alive(child_pid):
        assert time.monotonic() < end, f"child {child_pid} outlived its supervisor"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
