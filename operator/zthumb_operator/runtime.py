"""Operator wiring: kopf settings, the Controller and its resync loop (started from kopf's startup)."""

from __future__ import annotations

import asyncio
import logging

import kopf

from zthumb_operator.api import KubeApi, load_client_config
from zthumb_operator.config import OperatorConfig
from zthumb_operator.reconcile import Controller


def tune(settings: kopf.OperatorSettings) -> None:
    # kopf would post an Event for every INFO log line of a handler; ours post their own.
    settings.posting.level = logging.WARNING
    # No CRD/namespace scanning: saves list/watch permissions on cluster-scoped objects.
    settings.scanning.disabled = True
    # React fast: events of one object are batched for this long.
    settings.batching.batch_window = 0.02
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


async def start(settings: kopf.OperatorSettings, memo: kopf.Memo) -> None:
    config: OperatorConfig = memo.config
    tune(settings)
    api = KubeApi(load_client_config(config.api_workers), workers=config.api_workers)
    controller = Controller(config, api)
    memo.api = api
    memo.controller = controller

    async def resync() -> None:
        while True:
            await asyncio.sleep(config.resync_seconds)
            controller.resync()

    memo.resync_task = asyncio.get_running_loop().create_task(resync())


def stop(memo: kopf.Memo) -> None:
    task = getattr(memo, "resync_task", None)
    if task is not None:
        task.cancel()
    controller = getattr(memo, "controller", None)
    if controller is not None:
        controller.stop()
    api = getattr(memo, "api", None)
    if api is not None:
        api.close()
