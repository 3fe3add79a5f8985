"""PutBatch answers in SDK terms: one PutResult or domain error per record."""

from __future__ import annotations

import grpc

from domicile.errors import DataCorruption, DomicileError, PlacementRefused
from domicile.results import PutResult
from domicile.v1 import storage_node_pb2 as spb
from domicile.wire.errors import error_from_status
from domicile.wire.records import put_result_from_pb


def put_batch_results_from_pb(
    msg: spb.PutBatchResponse, region: str, count: int, where: str = ""
) -> list[PutResult | DomicileError]:
    """One result per record: its PutResult, or the error a Put of it alone would have raised."""
    if len(msg.results) != count:
        raise DataCorruption(
            f"{where or 'the node'} answered a batch of {count} records with {len(msg.results)} results"
        )
    results: list[PutResult | DomicileError] = []
    for r in msg.results:
        if r.code == 0:
            results.append(put_result_from_pb(r.put, region))
        elif r.allowed_regions:
            results.append(PlacementRefused(r.message, tuple(r.allowed_regions)))
        else:
            code = next((c for c in grpc.StatusCode if c.value[0] == r.code), grpc.StatusCode.UNKNOWN)
            results.append(error_from_status(code, r.message, None, where))
    return results
