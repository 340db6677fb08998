"""FL algorithms: a server half (a Flower strategy) and a client half (:class:`ClientAlgorithm`),
selected together by ``strategy=<name>``. See :mod:`runner.algorithms.base` for the API."""

from runner.algorithms.base import ClientAlgorithm, ClientContext, Payload

__all__ = ["ClientAlgorithm", "ClientContext", "Payload"]
