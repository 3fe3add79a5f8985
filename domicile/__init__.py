"""Domicile: a geo-distributed record store that keeps every record where the law says it belongs."""

__version__ = "0.1.0"
