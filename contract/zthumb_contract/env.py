"""Environment variable names that cross a boundary between the parts.

The deploy stage patches ``LORA_PATH``/``LORA_SCALE`` into the server's Deployment;
the server also accepts the ``ZTHUMB_`` aliases. The operator fills
``RUN_NAME``/``NAMESPACE`` from the downward API so the train pod can report progress
into the LoRAFinetune's status (the local runner leaves them unset).

Multi-node training (``spec.resources.nodes`` > 1): each train pod of the Indexed Job finds
its node rank in ``NODE_RANK`` (set by Kubernetes itself) and the static rendezvous of pod 0
in ``MASTER_ADDR``/``MASTER_PORT`` (set by the operator); the trainer CLI reads them as the
defaults of ``--node-rank``/``--master-addr``/``--master-port``.
"""

from __future__ import annotations

LORA_PATH = "Z_LORA_PATH"
LORA_SCALE = "Z_LORA_SCALE"
LORA_PATH_ALIAS = "ZTHUMB_LORA_PATH"
LORA_SCALE_ALIAS = "ZTHUMB_LORA_SCALE"
# What the deploy stage sets on the server (and restores on a rollback).
LORA_ENV = (LORA_PATH, LORA_SCALE)

RUN_NAME = "ZTHUMB_RUN_NAME"
NAMESPACE = "ZTHUMB_NAMESPACE"

# Kubernetes sets this in every container of an Indexed Job's pod: the pod's completion index.
NODE_RANK = "JOB_COMPLETION_INDEX"
MASTER_ADDR = "ZTHUMB_MASTER_ADDR"
MASTER_PORT = "ZTHUMB_MASTER_PORT"

# The server's API key (its bearer token). The chart renders it from a Secret (valueFrom.secretKeyRef);
# the operator gives the eval Job the same secretKeyRef, read from the server's Deployment, and never
# the key itself; the eval step sends it as ``Authorization: Bearer``. The local runner generates one
# for the server it starts and its eval step.
API_KEY = "ZTHUMB_API_KEY"

# The server's directory of eval reports (steps.EVAL_REPORTS_DIR under the data root), served as
# HTML pages under steps.REPORTS_URL_PREFIX; set by the chart and the local runner.
REPORTS_DIR = "ZTHUMB_REPORTS_DIR"

# A remote dataset's credentials (spec.dataset.source), given to the prepare step from a Secret:
# the HTTP archive's bearer token, and the S3 keys under the names every S3 client reads.
DATASET_TOKEN = "ZTHUMB_DATASET_TOKEN"
AWS_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
AWS_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
