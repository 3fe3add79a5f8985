"""The client's error table: gRPC status (and trailers) -> domain error."""

from __future__ import annotations

import grpc
import pytest

from domicile.errors import (
    DataCorruption,
    DeadlineExceeded,
    DomicileError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PlacementRefused,
    ResourceExhausted,
    Unavailable,
)
from domicile.wire.errors import error_from_rpc, error_from_status, metadata_value

TABLE = [
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument, False),
    (grpc.StatusCode.NOT_FOUND, NotFound, False),
    (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition, False),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted, True),
    (grpc.StatusCode.UNAVAILABLE, Unavailable, True),
    (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded, True),
    (grpc.StatusCode.DATA_LOSS, DataCorruption, False),
]


@pytest.mark.parametrize(("code", "kind", "retriable"), TABLE, ids=lambda v: getattr(v, "name", ""))
def test_each_status_code_maps_to_its_domain_error(code, kind, retriable):
    error = error_from_status(code, "what went wrong")
    assert type(error) is kind
    assert error.retriable is retriable
    assert "what went wrong" in error.message


@pytest.mark.parametrize("key", ["domicile-allowed-regions", "allowed-regions"])
def test_failed_precondition_with_the_trailer_is_a_refused_placement(key):
    trailers = ((key, "eu-west-1, eu-central-1"), ("domicile-placement-rule", "namespace-scope"))
    error = error_from_status(grpc.StatusCode.FAILED_PRECONDITION, "not in us-east-1", trailers)
    assert isinstance(error, PlacementRefused)
    assert error.allowed_regions == ("eu-west-1", "eu-central-1")
    assert error.rule == "namespace-scope"
    assert not error.retriable


def test_other_codes_keep_their_name_and_are_not_retried():
    error = error_from_status(grpc.StatusCode.INTERNAL, "boom", where="node x")
    assert type(error) is DomicileError
    assert error.message == "node x: INTERNAL: boom"
    assert not error.retriable


def test_transport_failures_say_which_server_failed_and_validation_errors_do_not():
    assert (
        error_from_status(grpc.StatusCode.UNAVAILABLE, "refused", where="node a").message == "node a: refused"
    )
    assert error_from_status(grpc.StatusCode.INVALID_ARGUMENT, "bad key", where="node a").message == "bad key"


def test_empty_details_still_give_a_message():
    assert error_from_status(grpc.StatusCode.UNAVAILABLE, "").message == "unavailable"


def test_metadata_values_are_read_from_tuples_and_bytes():
    assert metadata_value((("a", "1"), ("b", b"2")), "b") == "2"
    assert metadata_value(None, "a") is None


class _Failed(grpc.RpcError):
    def __init__(self, code, details, trailers=()):
        self._code, self._details, self._trailers = code, details, trailers

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailers


def test_error_from_rpc_reads_code_details_and_trailers():
    failed = _Failed(grpc.StatusCode.FAILED_PRECONDITION, "no", (("domicile-allowed-regions", "sa-east-1"),))
    error = error_from_rpc(failed)
    assert isinstance(error, PlacementRefused)
    assert error.allowed_regions == ("sa-east-1",)
