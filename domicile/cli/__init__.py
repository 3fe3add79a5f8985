"""The `domicile` command: run a local cluster (`up`), run one daemon (`node`, `coordinator`),
read, write and inspect records (`put`, `get`, `delete`, `scan`, `status`), and answer for
residency: `policy explain`, `audit verify`, `audit tail`, `compliance scan`."""
