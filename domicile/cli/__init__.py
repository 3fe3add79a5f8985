"""The `domicile` command: run a local cluster (`up`), run one daemon (`node`, `coordinator`),
and read, write and inspect records (`put`, `get`, `delete`, `scan`, `status`)."""
