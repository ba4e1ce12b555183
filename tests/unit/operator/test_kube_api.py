"""KubeApi's requests for the runs' identities and the Secrets' labels, against a stand-in API
server on 127.0.0.1: the paths, the bodies, and a Secret read as metadata only."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from kubernetes import client
from lft_helpers import make_run
from zthumb_operator import identity
from zthumb_operator.api import METADATA_ONLY, ConflictError, KubeApi

SECRET_PATH = "/api/v1/namespaces/ml/secrets/"


class StandIn(BaseHTTPRequestHandler):
    """Answers what the tests put into ``objects`` (path -> JSON); records every request."""

    objects: ClassVar[dict[str, Any]] = {}
    requests: ClassVar[list[tuple[str, str, dict[str, str], Any]]] = []

    def _answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.requests.append(("GET", self.path, dict(self.headers), None))
        found = self.objects.get(self.path.split("?")[0])
        if found:
            self._answer(200, found)
        else:
            self._answer(404, {"kind": "Status", "code": 404})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(("POST", self.path, dict(self.headers), body))
        path = f"{self.path.split('?')[0]}/{body['metadata']['name']}"
        if path in self.objects:
            self._answer(409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"})
            return
        self.objects[path] = body
        self._answer(201, body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api() -> Iterator[KubeApi]:
    StandIn.objects.clear()
    StandIn.requests.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    configuration = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    kube = KubeApi(client.ApiClient(configuration), workers=2)
    try:
        yield kube
    finally:
        kube.close()
        server.shutdown()
        thread.join(timeout=5)


def test_a_secrets_labels_are_read_as_metadata_only(api: KubeApi) -> None:
    StandIn.objects[SECRET_PATH + "hf"] = {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"name": "hf", "namespace": "ml", "labels": {"zthumb.io/allow-runs": "true"}},
    }
    assert asyncio.run(api.get_secret_labels("ml", "hf")) == {"zthumb.io/allow-runs": "true"}
    (_, path, headers, _) = StandIn.requests[-1]
    assert path.startswith(SECRET_PATH + "hf")
    assert headers["Accept"] == METADATA_ONLY
    assert asyncio.run(api.get_secret_labels("ml", "missing")) is None


@pytest.mark.parametrize(
    ("build", "collection"),
    [
        (identity.build_service_account, "/api/v1/namespaces/ml/serviceaccounts"),
        (identity.build_role, "/apis/rbac.authorization.k8s.io/v1/namespaces/ml/roles"),
        (identity.build_role_binding, "/apis/rbac.authorization.k8s.io/v1/namespaces/ml/rolebindings"),
    ],
)
def test_identity_objects_are_created_read_and_conflict_where_kubernetes_keeps_them(
    api: KubeApi, build: Any, collection: str
) -> None:
    body = build(make_run())
    kind, name = body["kind"], body["metadata"]["name"]
    assert asyncio.run(api.get_namespaced(kind, "ml", name)) is None
    asyncio.run(api.create_namespaced(kind, "ml", body))
    (method, path, _, sent) = StandIn.requests[-1]
    assert (method, path.split("?")[0]) == ("POST", collection)
    assert "fieldManager=zthumb-operator" in path
    assert sent == body
    assert asyncio.run(api.get_namespaced(kind, "ml", name)) == body
    with pytest.raises(ConflictError):
        asyncio.run(api.create_namespaced(kind, "ml", body))
