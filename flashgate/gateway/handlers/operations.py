"""What load balancers and tools ask: liveness, readiness, metrics, the API document."""

from __future__ import annotations

from flashgate.gateway import answers
from flashgate.gateway.protocol import build_response


class Operations:
    def __init__(self, gw):
        self.gw = gw

    def livez(self, req, m, who) -> bytes:
        return answers.LIVE

    def readyz(self, req, m, who) -> bytes:
        return answers.READY if self.gw.ready() else answers.NOT_READY

    def metrics(self, req, m, who) -> bytes:
        from flashgate.gateway.metrics import CONTENT_TYPE

        return build_response(200, self.gw.exporter.render(), CONTENT_TYPE)

    def openapi(self, req, m, who) -> bytes:
        from flashgate.gateway.openapi import document_bytes

        return build_response(200, document_bytes())
