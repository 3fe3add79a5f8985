#!/usr/bin/env node
// A minimal Node.js client of Domicile's StorageNodeService: Put one record on a node, Get it
// back from the same node, print the outcome as one JSON object on stdout.
//
//   node index.js --address 127.0.0.1:7403 --tls-ca ca.crt --tls-cert client-app.crt \
//     --tls-key client-app.key --namespace instruments --key c-1 --value hello
//
// Every Domicile port is mutual TLS: the client presents a certificate of the cluster CA
// (`domicile certs issue --client NAME`). Plaintext is only for a cluster run with --insecure,
// and only when asked for with --insecure here too.
//
// The stubs are built at run time from protos/ with @grpc/proto-loader, so nothing is generated
// or committed for Node.js. 64-bit integers (lsn, counters, hlc) are printed as decimal strings,
// as the proto3 JSON mapping does, because a JavaScript number cannot hold every uint64.
//
// Exit codes: 0 success, 1 the server answered with an error status (the JSON has an "error"
// object with the code and, for a placement refusal, the regions that may hold the record),
// 2 bad command-line arguments.
"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");
const path = require("node:path");
const { parseArgs } = require("node:util");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const ALLOWED_REGIONS_TRAILER = "domicile-allowed-regions";
const DEADLINE_MS_MAX = 600000;
const MESSAGE_BYTES_MAX = 64 * 1024 * 1024;

const USAGE = `usage: node index.js --address HOST:PORT [options]

  --address HOST:PORT         node to call (required), e.g. 127.0.0.1:7403
  --tls-ca FILE               the cluster CA certificate (mutual TLS; with --tls-cert and --tls-key)
  --tls-cert FILE             this client's certificate
  --tls-key FILE              this client's private key
  --server-name NAME          the name the node's certificate must carry (default: the host dialled)
  --insecure                  plaintext, for a cluster run with --insecure (development only)
  --purpose NAME              processing purpose declared with each call (domicile-purpose)
  --namespace NAME            namespace (default: instruments)
  --key KEY                   key (default: node-client-example)
  --value TEXT                value, sent as UTF-8 bytes (default: "hello from Node.js")
  --content-type TYPE         MIME type of the value (default: text/plain)
  --subject-id ID             data subject the record is about (optional)
  --subject-jurisdiction CODE jurisdiction of the subject, e.g. DE or US-CA (optional)
  --deadline-ms N             deadline of each call, 1 to ${DEADLINE_MS_MAX} ms (default: 5000)
  --request-id ID             id of this write, the same for each retry (default: a new random UUID)
  --attempts N                tries of the Put on UNAVAILABLE or DEADLINE_EXCEEDED, 1 to 10 (default: 3)
  --protos DIR                include directory of the .proto files (default: ../../protos)
  --help                      print this text`;

function usageError(message) {
  process.stderr.write(`error: ${message}\n\n${USAGE}\n`);
  process.exit(2);
}

function parseOptions(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: {
        address: { type: "string" },
        "tls-ca": { type: "string" },
        "tls-cert": { type: "string" },
        "tls-key": { type: "string" },
        "server-name": { type: "string" },
        insecure: { type: "boolean", default: false },
        purpose: { type: "string", default: "" },
        namespace: { type: "string", default: "instruments" },
        key: { type: "string", default: "node-client-example" },
        value: { type: "string", default: "hello from Node.js" },
        "content-type": { type: "string", default: "text/plain" },
        "subject-id": { type: "string", default: "" },
        "subject-jurisdiction": { type: "string", default: "" },
        "deadline-ms": { type: "string", default: "5000" },
        "request-id": { type: "string" },
        attempts: { type: "string", default: "3" },
        protos: { type: "string", default: path.join(__dirname, "..", "..", "protos") },
        help: { type: "boolean", default: false },
      },
      strict: true,
      allowPositionals: false,
    }).values;
  } catch (err) {
    usageError(err.message);
  }
  if (parsed.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  if (!parsed.address || !/^[^\s]+:\d{1,5}$/.test(parsed.address)) {
    usageError(`--address must be HOST:PORT, got ${JSON.stringify(parsed.address ?? "")}`);
  }
  const tls = ["tls-ca", "tls-cert", "tls-key"].filter((name) => parsed[name] !== undefined);
  if (tls.length > 0 && tls.length < 3) {
    usageError("--tls-ca, --tls-cert and --tls-key go together");
  }
  if (tls.length === 3 && parsed.insecure) {
    usageError("--insecure and the --tls-* files exclude each other");
  }
  if (tls.length === 0 && !parsed.insecure) {
    usageError("pass --tls-ca, --tls-cert and --tls-key (mutual TLS), or --insecure for a plaintext cluster");
  }
  const deadlineMs = Number(parsed["deadline-ms"]);
  if (!Number.isInteger(deadlineMs) || deadlineMs < 1 || deadlineMs > DEADLINE_MS_MAX) {
    usageError(`--deadline-ms must be an integer from 1 to ${DEADLINE_MS_MAX}, got ${parsed["deadline-ms"]}`);
  }
  const requestId = parsed["request-id"] ?? crypto.randomUUID();
  if (!/^[A-Za-z0-9_.:-]{1,64}$/.test(requestId)) {
    usageError(`--request-id must be 1 to 64 letters, digits, '-', '_', '.' or ':', got ${JSON.stringify(requestId)}`);
  }
  // What the nodes accept as a purpose (domicile/model.py PURPOSE_RE); anything else would be
  // refused there, or not even sendable as metadata.
  if (parsed.purpose && !/^[a-z][a-z0-9_]{0,31}$/.test(parsed.purpose)) {
    usageError(`--purpose must be 1 to 32 of a-z 0-9 '_', starting with a letter, got ${JSON.stringify(parsed.purpose)}`);
  }
  const attempts = Number(parsed.attempts);
  if (!Number.isInteger(attempts) || attempts < 1 || attempts > 10) {
    usageError(`--attempts must be an integer from 1 to 10, got ${parsed.attempts}`);
  }
  return { ...parsed, deadlineMs, requestId, attempts };
}

function loadService(protosDir) {
  const definition = protoLoader.loadSync("domicile/v1/storage_node.proto", {
    includeDirs: [protosDir],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).domicile.v1.StorageNodeService;
}

function credentials(options) {
  if (options.insecure) {
    process.stderr.write("warning: plaintext (--insecure): development only\n");
    return grpc.credentials.createInsecure();
  }
  const read = (name) => {
    try {
      return fs.readFileSync(options[name]);
    } catch (err) {
      usageError(`cannot read --${name} ${options[name]}: ${err.message}`);
    }
  };
  return grpc.credentials.createSsl(read("tls-ca"), read("tls-key"), read("tls-cert"));
}

// Promise form of a unary call, with a deadline and the declared purpose on every call.
function call(client, method, request, deadlineMs, purpose) {
  const metadata = new grpc.Metadata();
  if (purpose) {
    metadata.set("domicile-purpose", purpose);
  }
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + deadlineMs }, (err, response) => {
      if (err) {
        err.rpc = method;
        reject(err);
      } else {
        resolve(response);
      }
    });
  });
}

// A write retried after UNAVAILABLE or DEADLINE_EXCEEDED may have committed already: every
// attempt sends the same request id, so the node writes it once and answers a retry with the
// version the first attempt made.
const RETRIED_CODES = new Set([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED]);

async function callWithRetries(client, method, request, options) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await call(client, method, request, options.deadlineMs, options.purpose);
    } catch (err) {
      if (attempt >= options.attempts || !RETRIED_CODES.has(err.code)) {
        throw err;
      }
      await new Promise((resolve) => setTimeout(resolve, 50 * 2 ** attempt));
    }
  }
}

function versionJson(version) {
  const value = Buffer.from(version.value);
  return {
    dot: { node_id: version.dot ? version.dot.node_id : "", counter: version.dot ? version.dot.counter : "0" },
    value: value.toString("utf8"),
    value_base64: value.toString("base64"),
    content_type: version.content_type,
    tombstone: version.tombstone,
    hlc: version.hlc,
    subject_id: version.subject_id,
    subject_jurisdiction: version.subject_jurisdiction,
    classification: version.classification,
    origin_region: version.origin_region,
  };
}

function errorJson(err) {
  const trailer = err.metadata ? err.metadata.get(ALLOWED_REGIONS_TRAILER) : [];
  const allowed = trailer
    .map((v) => v.toString())
    .join(",")
    .split(",")
    .filter((r) => r.length > 0);
  const codeName = Object.keys(grpc.status).find((name) => grpc.status[name] === err.code) ?? "UNKNOWN";
  return {
    rpc: err.rpc ?? "",
    code: err.code,
    code_name: codeName,
    details: err.details ?? err.message,
    allowed_regions: allowed,
  };
}

async function main() {
  const options = parseOptions(process.argv.slice(2));
  const Service = loadService(options.protos);
  const channelOptions = {
    "grpc.max_receive_message_length": MESSAGE_BYTES_MAX,
    "grpc.max_send_message_length": MESSAGE_BYTES_MAX,
  };
  if (options["server-name"]) {
    channelOptions["grpc.ssl_target_name_override"] = options["server-name"];
  }
  const client = new Service(options.address, credentials(options), channelOptions);
  const out = { address: options.address, namespace: options.namespace, key: options.key };
  let code = 0;
  try {
    const put = await callWithRetries(
      client,
      "Put",
      {
        namespace: options.namespace,
        key: options.key,
        value: Buffer.from(options.value, "utf8"),
        content_type: options["content-type"],
        subject_id: options["subject-id"],
        subject_jurisdiction: options["subject-jurisdiction"],
        request_id: options.requestId,
      },
      options,
    );
    out.put = {
      region: put.region,
      lsn: put.lsn,
      request_id: options.requestId,
      version: versionJson(put.version),
    };
    const got = await call(
      client,
      "Get",
      { namespace: options.namespace, key: options.key },
      options.deadlineMs,
      options.purpose,
    );
    out.get = { found: got.found, region: got.region, versions: got.versions.map(versionJson) };
  } catch (err) {
    if (typeof err.code !== "number") {
      throw err;
    }
    out.error = errorJson(err);
    process.stderr.write(`error: ${out.error.rpc} failed with ${out.error.code_name}: ${out.error.details}\n`);
    code = 1;
  } finally {
    client.close();
  }
  process.stdout.write(`${JSON.stringify(out)}\n`);
  process.exitCode = code;
}

main().catch((err) => {
  process.stderr.write(`error: ${err.stack || err}\n`);
  process.exitCode = 1;
});
