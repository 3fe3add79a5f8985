"""The Node.js example client (clients/node) against a real node: the contract in protos/ is
enough for another language to write, read, and understand a placement refusal.

The client is installed with `npm ci` into a copy laid out like the repository (clients/node
next to protos/), so the test neither touches the working tree nor races another run.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import LocalCluster

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
CLIENT_DIR = REPO / "clients" / "node"
# index.js uses util.parseArgs with default values (Node.js 18.11).
NODE_VERSION_MIN = (18, 11)
NPM_TIMEOUT_S = 100.0
CLIENT_TIMEOUT_S = 30.0
INSTALL_HINT = (
    "install Node.js (18.11 or later) and npm, e.g. `apt-get install -y nodejs npm` on Debian/Ubuntu; "
    "`make test` installs them when they are missing"
)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not on PATH: the Node.js client test needs it; {INSTALL_HINT}", pytrace=False
        )
    return path


def _check_node_version(node: str) -> None:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=False)
    match = re.match(r"v(\d+)\.(\d+)\.", out.stdout.strip())
    version = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if out.returncode != 0 or version < NODE_VERSION_MIN:
        pytest.fail(
            f"`node --version` reported {out.stdout.strip() or out.stderr.strip()!r}; "
            f"Node.js {'.'.join(map(str, NODE_VERSION_MIN))} or later is needed; {INSTALL_HINT}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def node_client(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(path of `node`, path of the installed index.js)."""
    node = _tool("node")
    npm = _tool("npm")
    _check_node_version(node)
    root = tmp_path_factory.mktemp("node-client")
    client = root / "clients" / "node"
    client.mkdir(parents=True)
    for name in ("package.json", "package-lock.json", "index.js"):
        shutil.copy2(CLIENT_DIR / name, client / name)
    # index.js finds the protos at ../../protos by default, as in the repository.
    (root / "protos").symlink_to(REPO / "protos", target_is_directory=True)
    # No install scripts are needed (protobufjs's only checks its own CLI), and none should run.
    command = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--prefer-offline"]
    try:
        done = subprocess.run(
            command, cwd=client, capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`npm ci` did not finish in {NPM_TIMEOUT_S:g} s (is the npm registry reachable?)")
    if done.returncode != 0:
        pytest.fail(f"`npm ci` failed with exit code {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return node, client / "index.js"


@pytest.fixture
async def eu_node(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, ["eu-west-1"])
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.stop()


def tls_args(cluster: LocalCluster) -> list[str]:
    """Mutual TLS as the tests' client of the session CA, with grpc-js's own TLS stack."""
    assert cluster.pki is not None
    files = cluster.pki.client()
    return ["--tls-ca", str(files.ca), "--tls-cert", str(files.cert), "--tls-key", str(files.key)]


async def run_client(
    node_client: tuple[str, Path], *args: str, tls: list[str] | None = None
) -> tuple[int, dict[str, Any], str]:
    node, script = node_client
    tls = tls if tls is not None else []
    # NODE_OPTIONS and GRPC_* could change how the client runs; a proxy must not see loopback.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRPC_", "NODE_"))}
    for name in ("no_proxy", "NO_PROXY"):
        env[name] = ",".join(filter(None, (env.get(name), "127.0.0.1", "localhost")))
    process = await asyncio.create_subprocess_exec(
        node,
        str(script),
        *args,
        *tls,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), CLIENT_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"the Node.js client did not finish in {CLIENT_TIMEOUT_S:g} s")
    text = stdout.decode()
    try:
        result = json.loads(text)
    except json.JSONDecodeError:
        pytest.fail(
            f"the Node.js client printed no JSON (exit code {process.returncode}):\n"
            f"stdout: {text}\nstderr: {stderr.decode()}"
        )
    if not isinstance(result, dict):
        pytest.fail(f"the Node.js client printed {result!r}, not a JSON object")
    return process.returncode or 0, result, stderr.decode()


async def test_put_then_get_round_trips_from_nodejs(
    node_client: tuple[str, Path], eu_node: LocalCluster
) -> None:
    address = f"127.0.0.1:{eu_node.ports['eu-west-1']}"
    value = "Grüße aus Node.js ✓"
    code, result, stderr = await run_client(
        node_client,
        "--address", address,
        "--namespace", "customers_eu",
        "--key", "c-node-1",
        "--value", value,
        "--subject-id", "c-node-1",
        "--subject-jurisdiction", "DE",
        tls=tls_args(eu_node),
    )  # fmt: skip
    assert code == 0, f"exit code {code}; stderr: {stderr}; output: {result}"
    assert "error" not in result

    put = result["put"]
    assert put["region"] == "eu-west-1"
    assert int(put["lsn"]) >= 1
    assert put["version"]["dot"]["node_id"] == "eu-west-1"
    assert put["version"]["origin_region"] == "eu-west-1"

    got = result["get"]
    assert got["found"] is True
    assert got["region"] == "eu-west-1"
    assert len(got["versions"]) == 1
    version = got["versions"][0]
    assert version["value"] == value
    assert base64.b64decode(version["value_base64"]) == value.encode("utf-8")
    assert version["content_type"] == "text/plain"
    assert version["subject_id"] == "c-node-1"
    assert version["subject_jurisdiction"] == "DE"
    # The namespace default applies when the client leaves the classification unset.
    assert version["classification"] == "CLASSIFICATION_PERSONAL"
    assert version["dot"] == put["version"]["dot"]

    # What Node.js wrote is what the Python stubs read: the bytes are the same on the wire.
    assert await eu_node.values("eu-west-1", "customers_eu", "c-node-1") == {value.encode("utf-8")}


async def test_a_put_sent_again_with_its_request_id_is_written_once(
    node_client: tuple[str, Path], eu_node: LocalCluster
) -> None:
    """What a retry after a lost answer does: the same write, with the same request id."""
    address = f"127.0.0.1:{eu_node.ports['eu-west-1']}"
    args = ["--address", address, "--namespace", "prefs_eu", "--key", "once", "--request-id", "node-req-1"]
    first = await run_client(node_client, *args, tls=tls_args(eu_node))
    again = await run_client(node_client, *args, tls=tls_args(eu_node))
    for code, result, stderr in (first, again):
        assert code == 0, f"exit code {code}; stderr: {stderr}; output: {result}"
        assert result["put"]["request_id"] == "node-req-1"
    assert again[1]["put"]["version"]["dot"] == first[1]["put"]["version"]["dot"]
    assert again[1]["put"]["lsn"] == first[1]["put"]["lsn"]
    state = eu_node.nodes["eu-west-1"].engine.get("prefs_eu", "once")
    assert state is not None and len(state.versions) == 1
    # Without --request-id each run is a new write with a new random id.
    _, other, _ = await run_client(
        node_client, "--address", address, "--namespace", "prefs_eu", "--key", "once", tls=tls_args(eu_node)
    )
    assert other["put"]["request_id"] not in ("", "node-req-1")
    assert other["put"]["version"]["dot"] != first[1]["put"]["version"]["dot"]


async def test_put_outside_scope_is_refused_with_allowed_regions(
    node_client: tuple[str, Path], eu_node: LocalCluster
) -> None:
    address = f"127.0.0.1:{eu_node.ports['eu-west-1']}"
    code, result, stderr = await run_client(
        node_client,
        "--address", address,
        "--namespace", "customers_jp",
        "--key", "c-jp-1",
        tls=tls_args(eu_node),
    )  # fmt: skip
    assert code == 1, f"exit code {code}; stderr: {stderr}; output: {result}"
    assert "put" not in result
    error = result["error"]
    assert error["rpc"] == "Put"
    assert error["code_name"] == "FAILED_PRECONDITION"
    assert error["code"] == 9
    assert error["allowed_regions"] == ["ap-northeast-1"]
    assert "ap-northeast-1" in error["details"]
    assert "FAILED_PRECONDITION" in stderr

    # Nothing was written by the refused call.
    response = await eu_node.get("eu-west-1", "customers_jp", "c-jp-1")
    assert not response.found
    assert list(response.versions) == []


async def test_bad_arguments_exit_with_usage(node_client: tuple[str, Path]) -> None:
    node, script = node_client
    done = await asyncio.create_subprocess_exec(
        node,
        str(script),
        "--address",
        "no-port",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(done.communicate(), CLIENT_TIMEOUT_S)
    assert done.returncode == 2
    assert "--address must be HOST:PORT" in stderr.decode()


async def test_a_plaintext_nodejs_client_is_refused_by_a_tls_node(
    node_client: tuple[str, Path], eu_node: LocalCluster
) -> None:
    address = f"127.0.0.1:{eu_node.ports['eu-west-1']}"
    code, result, stderr = await run_client(
        node_client, "--address", address, "--insecure", "--deadline-ms", "3000"
    )
    assert code == 1, f"exit code {code}; stderr: {stderr}; output: {result}"
    assert result["error"]["code_name"] == "UNAVAILABLE", result
    assert "put" not in result


async def test_nodejs_without_tls_files_or_insecure_is_a_usage_error(node_client: tuple[str, Path]) -> None:
    node, script = node_client
    done = await asyncio.create_subprocess_exec(
        node,
        str(script),
        "--address",
        "127.0.0.1:1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(done.communicate(), CLIENT_TIMEOUT_S)
    assert done.returncode == 2
    assert b"or --insecure for a plaintext cluster" in stderr


async def test_a_purpose_the_nodes_would_refuse_is_a_usage_error(node_client: tuple[str, Path]) -> None:
    """Regression: a --purpose that is not a legal metadata value made grpc-js throw inside the
    call: a stack trace, no JSON, exit 1 as if a server had answered."""
    node, script = node_client
    for purpose in ("größe", "Not-A-Purpose"):
        done = await asyncio.create_subprocess_exec(
            node, str(script), "--address", "127.0.0.1:1", "--insecure", "--attempts", "1",
            "--purpose", purpose,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, stderr = await asyncio.wait_for(done.communicate(), CLIENT_TIMEOUT_S)
        assert done.returncode == 2, stderr.decode()[:300]
        assert b"--purpose must be" in stderr
