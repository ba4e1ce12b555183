"""The train pod's identity: one ServiceAccount per run, with a Role that lets it patch its own
run's status and nothing else (``resourceNames: [<run>]``), and the RoleBinding between them.

The train pod reports progress into its LoRAFinetune's status with its ServiceAccount token. A
ServiceAccount shared by every run would let one run's pod (whose image and data the run's author
chooses) write another run's status: its conditions, and so skip that run's training, evaluation
and quality gate. With one identity per run, a token can only touch the run it was made for.

The three objects have deterministic names (``builders.run_service_account``) and are owned by
the run (the garbage collector deletes them with it); creating one that exists (409) adopts it
when it is ours. The operator creates them just before the train Job, and may only grant what it
holds itself: ``patch`` on ``lorafinetunes/status`` (RBAC's escalation check).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf
from zthumb_contract import crd

from zthumb_operator import builders as b
from zthumb_operator.api import Api, ConflictError

RBAC_API_VERSION = "rbac.authorization.k8s.io/v1"
# The one permission of a train pod: its own run's status (reporting.py in the trainer).
STATUS_RESOURCE = f"{crd.PLURAL}/status"
STEP = "train"


def _metadata(run: Mapping[str, Any]) -> dict[str, Any]:
    meta = run["metadata"]
    return {
        "name": b.run_service_account(meta["name"]),
        "namespace": meta["namespace"],
        "labels": b.run_labels(meta["name"], STEP),
        "ownerReferences": [b.owner_reference(run)],
    }


def build_service_account(run: Mapping[str, Any]) -> dict[str, Any]:
    """The run's ServiceAccount. No token by default: the train pod asks for one explicitly."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(run),
        "automountServiceAccountToken": False,
    }


def build_role(run: Mapping[str, Any]) -> dict[str, Any]:
    """``patch`` on this run's status only."""
    return {
        "apiVersion": RBAC_API_VERSION,
        "kind": "Role",
        "metadata": _metadata(run),
        "rules": [
            {
                "apiGroups": [crd.GROUP],
                "resources": [STATUS_RESOURCE],
                "resourceNames": [run["metadata"]["name"]],
                "verbs": ["patch"],
            }
        ],
    }


def build_role_binding(run: Mapping[str, Any]) -> dict[str, Any]:
    """Binds the run's Role to the run's ServiceAccount."""
    meta = _metadata(run)
    return {
        "apiVersion": RBAC_API_VERSION,
        "kind": "RoleBinding",
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": meta["name"]},
        "subjects": [{"kind": "ServiceAccount", "name": meta["name"], "namespace": meta["namespace"]}],
    }


BUILDERS = (build_service_account, build_role, build_role_binding)


async def ensure_identity(api: Api, run: Mapping[str, Any]) -> str:
    """Create (or adopt) the run's ServiceAccount, Role and RoleBinding; return the account's name."""
    for build in BUILDERS:
        body = build(run)
        kind, meta = body["kind"], body["metadata"]
        try:
            await api.create_namespaced(kind, meta["namespace"], body)
            continue
        except ConflictError:
            found = await api.get_namespaced(kind, meta["namespace"], meta["name"])
        if found is None:
            raise kopf.TemporaryError(f"{kind} {meta['name']} vanished while being adopted", delay=1)
        owners = (found.get("metadata") or {}).get("ownerReferences") or []
        if any(ref.get("uid") == run["metadata"]["uid"] for ref in owners):
            continue  # ours, from an earlier pass
        if any(ref.get("kind") == crd.KIND and ref.get("name") == run["metadata"]["name"] for ref in owners):
            raise kopf.TemporaryError(
                f"{kind} {meta['name']} belongs to an earlier LoRAFinetune of the same name and is "
                "still being deleted; waiting for the garbage collector",
                delay=5,
            )
        # Someone else's object under the run's identity name: never adopt (or bind) it.
        raise kopf.PermanentError(
            f"{kind} {meta['name']} already exists and does not belong to this run; the train pod's "
            "identity cannot be created (delete that object, or rename the LoRAFinetune)"
        )
    return b.run_service_account(run["metadata"]["name"])
