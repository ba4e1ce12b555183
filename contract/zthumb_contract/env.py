"""Environment variable names that cross a boundary between the parts.

The deploy stage patches ``LORA_PATH``/``LORA_SCALE`` into the server's Deployment;
the server also accepts the ``ZTHUMB_`` aliases. The operator fills
``RUN_NAME``/``NAMESPACE`` from the downward API so the train pod can report progress
into the LoRAFinetune's status (the local runner leaves them unset).
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
