"""`domicile up` as a user runs it: the whole cluster from the sample configuration, driven
with the `domicile` command, then stopped with Ctrl-C (SIGINT).

The tests share one cluster (module fixture) and run in file order; the last one stops it.
Each test also works alone, because the fixture starts the cluster on first use.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from domicile import metrics_endpoint
from domicile.cluster import load_cluster
from domicile.errors import NotFound
from domicile.identity.tls_files import TlsFiles
from domicile.ports import free_port_run

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "cluster.yaml"
REGIONS = [
    "us-east-1",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-northeast-1",
    "sa-east-1",
    "ap-northeast-2",
]
EU = ["eu-west-1", "eu-central-1"]
NOT_EU = ["us-east-1", "us-west-2", "ap-northeast-1", "sa-east-1", "ap-northeast-2"]
# Customer profiles must follow deploy/schemas/customer.schema.json.
X = '{"name": "x"}'
GRETA = '{"name": "Greta Example", "country": "DE"}'
STARTUP_S = 120.0
REPLICATION_S = 30.0
CLI_S = 30.0


RECORD_COMMANDS = ("put", "get", "delete", "scan")


def as_owner(namespace: str) -> tuple[str, ...]:
    try:
        spec = load_cluster(CONFIG).namespace(namespace)
    except NotFound:
        return ()
    purpose = ("--purpose", spec.purposes[0]) if spec.purposes else ()
    return ("--identity", spec.owner, *purpose)


def domicile_command() -> list[str]:
    """The installed `domicile` script next to this interpreter, else the module."""
    script = Path(sys.executable).parent / "domicile"
    return [str(script)] if script.exists() else [sys.executable, "-m", "domicile.cli"]


def eventually(check: Callable[[], bool], what: str, timeout_s: float = REPLICATION_S) -> None:
    end = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(0.2)


def pids_using(path: Path) -> list[int]:
    """Processes whose command line mentions path (the test's own data directory)."""
    needle = str(path).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


@dataclass
class UpProcess:
    process: subprocess.Popen[str]
    data_dir: Path
    coordinator: str
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    output: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)

    def pump(self) -> None:
        for line in self.process.stdout or ():
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for_line(self, prefix: str, timeout_s: float) -> str:
        end = time.monotonic() + timeout_s
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"`domicile up` printed no {prefix!r} line in {timeout_s:g}s") from None
            if line is None:
                raise AssertionError("`domicile up` ended early:\n" + "\n".join(self.output) + self.logs())
            self.output.append(line)
            if line.startswith(prefix):
                return line

    def logs(self) -> str:
        parts = []
        for log in sorted((self.data_dir / "logs").glob("*.log")):
            parts.append(
                f"\n--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            )
        return "".join(parts)

    def cli(self, *args: str, tls: tuple[str, ...] | None = None) -> subprocess.CompletedProcess[str]:
        # The certificates `domicile up` made, found the way its printed hint says.
        connect = ("--tls-dir", str(self.data_dir / "tls")) if tls is None else tls
        if tls is None and args[0] in RECORD_COMMANDS and "--namespace" in args:
            # Records are an app's business: the app that owns the namespace, for its first purpose.
            connect += as_owner(args[args.index("--namespace") + 1])
        return subprocess.run(
            [*domicile_command(), *args, "--coordinator", self.coordinator, *connect],
            capture_output=True,
            text=True,
            timeout=CLI_S,
            check=False,
        )

    def get(self, namespace: str, key: str, region: str) -> subprocess.CompletedProcess[str]:
        return self.cli("get", "--namespace", namespace, "--key", key, "--region", region)

    def put(self, namespace: str, key: str, value: str, *extra: str) -> subprocess.CompletedProcess[str]:
        done = self.cli("put", "--namespace", namespace, "--key", key, "--value", value, *extra)
        assert done.returncode == 0, done.stderr
        return done

    def sees(self, namespace: str, key: str, value: str, region: str) -> bool:
        done = self.get(namespace, key, region)
        return done.returncode == 0 and done.stdout == value + "\n"

    def status(self) -> dict:
        done = self.cli("status", "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    seed = random.randrange(1 << 30)
    print(f"port seed={seed}")
    rng = random.Random(seed)
    count = 1 + len(REGIONS)
    base = free_port_run(count, rng=rng)
    metrics = free_port_run(count, rng=rng)
    data_dir = tmp_path_factory.mktemp("domicile-up")
    process = subprocess.Popen(
        [
            *domicile_command(),
            "up",
            "--config",
            str(CONFIG),
            "--data-dir",
            str(data_dir),
            "--base-port",
            str(base),
            "--metrics-base-port",
            str(metrics),
            "--startup-timeout",
            str(STARTUP_S),
        ],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Its own session: only the signals this test sends reach it.
        start_new_session=True,
    )
    cluster = UpProcess(process, data_dir, f"127.0.0.1:{base}")
    threading.Thread(target=cluster.pump, daemon=True).start()
    try:
        header = cluster.wait_for_line("NAME ", STARTUP_S + 30)
        assert header.split()[:4] == ["NAME", "ROLE", "PID", "GRPC"]
        for _ in range(1 + len(REGIONS)):
            row = cluster.wait_for_line("", 5).split()
            cluster.pids[row[0]] = int(row[2 if row[1] == "coordinator" else 3])
        cluster.wait_for_line("ready:", 30)
        yield cluster
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in pids_using(data_dir):
            os.kill(pid, signal.SIGKILL)


def test_up_prints_every_endpoint(up: UpProcess):
    assert sorted(up.pids) == sorted(["coordinator", *REGIONS])
    table = "\n".join(up.output)
    assert f"coordinator     coordinator  {up.pids['coordinator']}" in table
    for i, region in enumerate(["coordinator", *REGIONS]):
        port = int(up.coordinator.rsplit(":", 1)[1]) + i
        row = next(line for line in up.output if line.startswith(region + " "))
        assert f"127.0.0.1:{port}" in row
        assert "/metrics" in row
        assert str(up.data_dir / "logs" / f"{region}.log") in row
    assert (up.data_dir / "logs" / "eu-west-1.log").exists()


def test_up_runs_mutual_tls_and_says_where_the_certificates_are(up: UpProcess):
    tls = up.data_dir / "tls"
    text = "\n".join(up.output)
    assert f"mutual TLS: development CA and certificates in {tls}" in text
    assert f"export DOMICILE_TLS_DIR={tls}" in text
    assert "client cli" in text and "roles app,dpo,auditor,operator" in text
    for name in ("ca.crt", "coordinator.crt", "node-eu-west-1.crt", "client-cli.crt", "client-trading.crt"):
        assert (tls / name).exists(), name
    assert (tls / "client-cli.key").stat().st_mode & 0o077 == 0
    # Plaintext is refused by every port of a secure cluster; no TLS files at all is a usage error.
    plain = up.cli(
        "get", "--namespace", "instruments", "--key", "k", "--region", "eu-west-1", tls=("--insecure",)
    )
    assert plain.returncode == 2 and "unavailable" in plain.stderr.lower(), plain.stderr


def test_every_metrics_port_serves_mutual_tls_to_the_prometheus_certificate_only(up: UpProcess):
    tls = up.data_dir / "tls"
    assert "client prometheus" in "\n".join(up.output) and "roles monitor" in "\n".join(up.output)
    urls = [line.split()[-2] for line in up.output if "/metrics" in line]
    assert len(urls) == 1 + len(REGIONS) and all(u.startswith("https://127.0.0.1:") for u in urls), urls
    prometheus = TlsFiles.in_directory(tls, "client-prometheus")
    for url in (urls[0], urls[3]):  # the coordinator and a node
        page = metrics_endpoint.scrape(url, prometheus, 10.0)
        assert "domicile_" in page
    with pytest.raises(urllib.error.HTTPError) as forbidden:
        metrics_endpoint.scrape(urls[3], TlsFiles.in_directory(tls, "client-trading"), 10.0)
    assert forbidden.value.code == 403
    with pytest.raises(OSError):
        metrics_endpoint.scrape(urls[3].replace("https://", "http://"), None, 10.0)


def test_status_shows_every_region_up(up: UpProcess):
    def all_up() -> bool:
        doc = up.status()
        healthy = {n["region"] for n in doc["nodes"] if n["health"] == "up" and n["reachable"]}
        return healthy == set(REGIONS)

    eventually(all_up, "every region up in `domicile status --json`")
    doc = up.status()
    assert doc["regions"] == REGIONS
    assert all(n["policy_version"] == doc["policy_version"] for n in doc["nodes"])


def test_a_global_record_reaches_every_region(up: UpProcess):
    up.put("instruments", "US0378331005", "Apple Inc. XNAS USD", "--region", "us-west-2")
    for region in REGIONS:
        eventually(
            lambda r=region: up.sees("instruments", "US0378331005", "Apple Inc. XNAS USD", r),
            f"the instruments record in {region}",
        )


def test_get_exit_codes(up: UpProcess):
    up.put("instruments", "DE0007164600", "SAP SE XETR EUR")
    eventually(lambda: up.get("instruments", "DE0007164600", "eu-central-1").returncode == 0, "SAP")
    missing = up.get("instruments", "XX0000000000", "eu-central-1")
    assert (missing.returncode, missing.stdout) == (1, "")
    bad = up.get("no_such_namespace", "k", "eu-central-1")
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: ") and "no_such_namespace" in bad.stderr


def test_eu_trades_stay_in_the_eu(up: UpProcess):
    # trades_eu is scoped to the EU: narrower than what GDPR would allow for a German subject.
    up.put(
        "trades_eu",
        "cust-1001",
        "Erika Mustermann",
        "--region",
        "eu-west-1",
        "--subject-id",
        "cust-1001",
        "--subject-jurisdiction",
        "DE",
    )
    eventually(
        lambda: up.sees("trades_eu", "cust-1001", "Erika Mustermann", "eu-central-1"), "the EU replica"
    )
    # A later global write from the same origin: once it is everywhere, anything the origin
    # would have shipped before it has arrived too, so absence below is meaningful.
    up.put("instruments", "marker-after-cust-1001", "m", "--region", "eu-west-1")
    for region in REGIONS:
        eventually(
            lambda r=region: up.sees("instruments", "marker-after-cust-1001", "m", r), f"marker in {region}"
        )
    for region in NOT_EU:
        done = up.get("trades_eu", "cust-1001", region)
        # Not found, or a read refused by the policy: either way no data left the EU.
        refused = done.returncode == 2 and "eu-west-1" in done.stderr
        assert done.returncode == 1 or refused, (region, done.returncode, done.stdout, done.stderr)
        assert "Erika" not in done.stdout

    # The stores agree: outside the EU a node holds only the global records, the EU nodes one
    # more. (Waited for, because earlier global writes from other origins may still be on
    # their way; a leaked record would keep the counts apart.)
    def counts_agree() -> bool:
        nodes = {n["region"]: n for n in up.status()["nodes"]}
        instruments = nodes["us-east-1"]["records_stored"]
        return all(nodes[r]["records_stored"] == instruments for r in NOT_EU) and all(
            nodes[r]["records_stored"] == instruments + 1 for r in EU
        )

    eventually(counts_agree, "record counts: global records everywhere, the EU record only in the EU")


def test_a_put_at_a_region_that_may_not_hold_the_record_is_refused(up: UpProcess):
    # APPI: a Japanese customer's profile may be in Japan and the EU (a designated country), not
    # in the US.
    jp = ("--subject-id", "cust-2002", "--subject-jurisdiction", "JP")
    done = up.cli(
        "put", "--namespace", "customers", "--key", "cust-2002", "--value", X, "--region", "us-east-1", *jp
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: ")
    assert "APPI" in done.stderr
    assert "allowed regions: eu-west-1, eu-central-1, ap-northeast-1" in done.stderr
    assert up.get("customers", "cust-2002", "us-east-1").returncode in (1, 2)
    # Without --region the client routes the same write to a region that may hold it.
    routed = up.put("customers", "cust-2002", X, *jp)
    assert any(f" region={r} " in routed.stdout for r in ("eu-west-1", "eu-central-1", "ap-northeast-1"))


def test_a_korean_customer_is_kept_in_seoul_and_the_eea(up: UpProcess):
    # PIPA: a Korean customer's profile may be in Korea and the EEA (the PIPC's recognition of
    # the EU), not in Japan or the US without a recorded Art. 28-8 mechanism.
    kr = ("--subject-id", "cust-4004", "--subject-jurisdiction", "KR")
    done = up.cli(
        "put", "--namespace", "customers", "--key", "cust-4004", "--value", X,
        "--region", "ap-northeast-1", *kr,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "PIPA" in done.stderr
    assert "allowed regions: eu-west-1, eu-central-1, ap-northeast-2" in done.stderr
    stored = up.put("customers", "cust-4004", X, "--region", "ap-northeast-2", *kr)
    assert " region=ap-northeast-2 " in stored.stdout, stored.stdout


def test_a_customer_that_fails_the_schema_is_refused(up: UpProcess):
    de = ("--subject-id", "cust-5005", "--subject-jurisdiction", "DE")
    done = up.cli(
        "put", "--namespace", "customers", "--key", "cust-5005",
        "--value", '{"name": "E", "country": "Germany"}', "--region", "eu-west-1", *de,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "at $.country, rule 'pattern'" in done.stderr and "nothing was written" in done.stderr
    assert up.get("customers", "cust-5005", "eu-west-1").returncode == 1


def test_policy_explain_audit_verify_and_compliance_scan(up: UpProcess):
    explained = up.cli(
        "policy", "explain", "--classification", "personal", "--subject-jurisdiction", "DE",
        "--region", "us-west-2", "--action", "replicate", "--json",
    )  # fmt: skip
    assert explained.returncode == 1, explained.stderr
    decision = json.loads(explained.stdout)
    assert decision["decision"] == "refuse" and decision["law"] == "GDPR"
    allowed = up.cli(
        "policy", "explain", "--classification", "personal", "--subject-jurisdiction", "DE",
        "--region", "us-east-1", "--action", "replicate",
    )  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    assert "dpf_certified" in allowed.stdout
    scan = up.cli("compliance", "scan", "--json")
    assert scan.returncode == 0, scan.stdout + scan.stderr
    up.put("instruments", "marker-before-verify", "m", "--region", "eu-central-1")

    def verified() -> bool:
        done = up.cli("audit", "verify", "--region", "eu-central-1", "--json")
        return done.returncode == 0 and json.loads(done.stdout)["verified"]

    # The head is exported after each batch: wait until the coordinator holds one.
    eventually(verified, "a verified, anchored audit log in eu-central-1")
    tail = up.cli("audit", "tail", "--region", "eu-central-1", "-n", "5", "--json")
    assert tail.returncode == 0, tail.stderr
    assert any(e["action"] == "audit_read" for e in json.loads(tail.stdout)["entries"])


def test_export_then_erase_a_customer_through_the_cli(up: UpProcess):
    subject = ("--subject-id", "cust-3003", "--subject-jurisdiction", "DE")
    up.put("customers", "cust-3003", GRETA, "--region", "eu-west-1", *subject)
    up.put("trades", "trade-3003-1", "BUY 10 SAP", "--region", "eu-west-1", *subject)
    eventually(lambda: up.sees("customers", "cust-3003", GRETA, "eu-central-1"), "the EU replica")
    exported = up.cli("export", "--subject", "cust-3003", "--subject-jurisdiction", "DE")
    assert exported.returncode == 0, exported.stderr
    document = json.loads(exported.stdout)
    records = {(r["namespace"], r["key"]): r for r in document["records"]}
    assert set(records) == {("customers", "cust-3003"), ("trades", "trade-3003-1")}
    assert {"eu-west-1", "eu-central-1"} <= set(records[("customers", "cust-3003")]["regions"])

    erased = up.cli(
        "erase", "--subject", "cust-3003", "--reason", "Art. 17 request", "--wait", "60", "--json"
    )
    assert erased.returncode == 0, erased.stdout + erased.stderr
    listed = up.cli("requests", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "cust-3003" in listed.stdout and "completed" in listed.stdout
    for region in ("eu-west-1", "eu-central-1"):
        assert up.get("customers", "cust-3003", region).returncode == 1
    # The trade is kept under MiFID II record keeping.
    assert up.sees("trades", "trade-3003-1", "BUY 10 SAP", "eu-west-1")


def test_ctrl_c_stops_every_child_and_exits_0(up: UpProcess):
    up.process.send_signal(signal.SIGINT)
    assert up.process.wait(90) == 0, "\n".join(up.output)
    while (line := up.lines.get(timeout=5)) is not None:
        up.output.append(line)
    stopped = [line for line in up.output if line.startswith("stopped ")]
    assert len(stopped) == 1 + len(REGIONS), up.output
    assert all(line.endswith("(exit code 0)") for line in stopped), stopped
    assert up.output[-1] == "stopped"
    assert pids_using(up.data_dir) == []
