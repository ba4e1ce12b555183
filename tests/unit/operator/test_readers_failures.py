"""readers.failed_node / failure_message: which node a failed multi-node Job blames, and the
bounds of the termination message it quotes."""

from __future__ import annotations

from typing import Any

from zthumb_operator import readers


def failed_pod(name: str | None, index: str | None, finished: str, message: str = "") -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if name is not None:
        meta["name"] = name
    if index is not None:
        meta["annotations"] = {readers.COMPLETION_INDEX_ANNOTATION: index}
    term = {"exitCode": 1, "message": message, "finishedAt": finished}
    return {"metadata": meta, "status": {"containerStatuses": [{"state": {"terminated": term}}]}}


def quoted(text: str | None) -> str:
    """The termination message part of failed_node's text."""
    assert text is not None
    return text.split("exit code 1: ", 1)[1]


def test_a_message_of_exactly_the_bound_is_quoted_whole() -> None:
    message = "first line\n" + "x" * 989
    assert len(message) == 1000
    assert quoted(readers.failed_node([failed_pod("p", "0", "t", message)])) == message


def test_a_longer_message_is_cut_to_its_tail_from_a_line_start() -> None:
    # One character over: the cut falls inside the first line, which goes whole.
    message = "first line\n" + "x" * 990
    assert quoted(readers.failed_node([failed_pod("p", "0", "t", message)])) == "x" * 990
    lines = [f"line {i:04d} of a long torchrun traceback" for i in range(100)]
    tail = quoted(readers.failed_node([failed_pod("p", "0", "t", "\n".join(lines))]))
    # Every whole line of the last 1000 characters, and no more.
    assert tail == "\n".join(lines[-25:])


def test_every_other_failed_node_is_listed() -> None:
    pods = [
        failed_pod("j-0", "0", "2026-01-01T00:00:01Z"),
        failed_pod("j-1", "1", "2026-01-01T00:00:02Z"),
        failed_pod("j-2", "2", "2026-01-01T00:00:03Z"),
    ]
    assert (readers.failed_node(pods) or "").endswith("; also failed: node 1, 2")


def test_a_pod_without_index_or_name_is_named_with_a_question_mark() -> None:
    assert (readers.failed_node([failed_pod(None, None, "t")]) or "").startswith(
        "node ? (pod ?) failed first"
    )


def test_the_jobs_verdict_outweighs_the_earlier_finish() -> None:
    pods = [
        failed_pod("j-0", "0", "2026-01-01T00:00:01Z"),
        failed_pod("j-1", "1", "2026-01-01T00:00:09Z"),
    ]
    verdict = "Container train for pod ml/j-1 failed with exit code 1 matching FailJob rule at index 0"
    job = {
        "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "X", "message": verdict}]}
    }
    assert readers.failure_message(job, pods).startswith(f"{verdict}; node 1 (pod j-1) failed first")


def test_a_failure_without_a_message_ends_at_its_exit_code() -> None:
    pod = failed_pod("p", "0", "2026-01-01T00:00:01Z")
    del pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    assert readers.failed_node([pod]) == "node 0 (pod p) failed first: exit code 1"
    assert (
        readers.failed_node([failed_pod("p", "0", "t", "  \n")]) == "node 0 (pod p) failed first: exit code 1"
    )
