"""Errors raised by the scheduling core.

A batch former that returns an impossible decision is a bug in that former, so the loop
raises instead of repairing it silently (docs/algorithms.md, "The model").
"""


class InvalidDecisionError(ValueError):
    """A batch decision names a request it may not touch (not waiting, not running, twice)."""


class CapacityExceededError(InvalidDecisionError):
    """A decision would hold more KV tokens in this iteration than the cache has."""


class RequestRejectedError(ValueError):
    """A request can never be served under this KV capacity (prompt + planning length > M)."""
