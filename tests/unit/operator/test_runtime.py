"""The operator's wiring: kopf's settings, the objects kopf's startup builds, the resync loop,
the cleanup, and the run-phase gauge."""

from __future__ import annotations

import asyncio
import logging

import kopf
import pytest
from kubernetes import client
from zthumb_operator import metrics, runtime
from zthumb_operator.config import OperatorConfig


def test_kopf_posts_no_info_events_scans_nothing_and_batches_briefly() -> None:
    settings = kopf.OperatorSettings()
    runtime.tune(settings)
    assert settings.posting.level == logging.WARNING
    assert settings.scanning.disabled is True
    assert settings.batching.batch_window == 0.02
    # The client waits longer than the server holds a watch open.
    assert (settings.watching.server_timeout, settings.watching.client_timeout) == (300, 330)


def test_startup_wires_the_controller_and_resyncs_until_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    workers: list[int] = []

    def client_config(count: int) -> client.ApiClient:
        workers.append(count)
        return client.ApiClient(client.Configuration(host="http://127.0.0.1:9"))

    monkeypatch.setattr(runtime, "load_client_config", client_config)
    config = OperatorConfig(resync_seconds=0.01, api_workers=3)

    async def scenario() -> None:
        settings = kopf.OperatorSettings()
        memo = kopf.Memo(config=config)
        await runtime.start(settings, memo)
        assert settings.scanning.disabled is True  # tuned
        assert workers == [3]
        assert memo.api._pool._max_workers == 3
        assert memo.controller.config is config and memo.controller.api is memo.api
        resyncs: list[int] = []
        memo.controller.resync = lambda: resyncs.append(1)
        for _ in range(2000):
            if len(resyncs) >= 2:
                break
            await asyncio.sleep(0.005)
        assert len(resyncs) >= 2
        task = memo.resync_task
        stopped: list[bool] = []
        queue_stop = memo.controller.stop
        memo.controller.stop = lambda: (stopped.append(True), queue_stop())
        runtime.stop(memo)
        assert stopped == [True]  # the work queue's timers and workers are cancelled
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()
        # The API's thread pool is shut down: no new request can start.
        with pytest.raises(RuntimeError):
            memo.api._pool.submit(int)

    asyncio.run(scenario())


def test_stop_before_startup_finished_is_harmless() -> None:
    runtime.stop(kopf.Memo())


def test_the_phase_gauge_counts_every_phase_and_a_new_run_as_pending() -> None:
    metrics.set_run_phases(["Training", "Training", None, "Succeeded"])
    value = {
        p: metrics.RUNS.labels(phase=p)._value.get() for p in ("Training", "Pending", "Succeeded", "Failed")
    }
    assert value == {"Training": 2, "Pending": 1, "Succeeded": 1, "Failed": 0}
    metrics.set_run_phases([])
    assert metrics.RUNS.labels(phase="Training")._value.get() == 0


def test_no_metrics_port_serves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[int] = []
    monkeypatch.setattr(metrics, "start_http_server", served.append)
    metrics.serve(0)
    assert served == []
    metrics.serve(9100)
    assert served == [9100]
