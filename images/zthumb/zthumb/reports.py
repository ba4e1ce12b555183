"""The eval reports as pages a browser opens (``kubectl port-forward svc/zthumb 8080:8080``).

``GET /reports/`` lists the newest runs (at most ``report_store.MAX_INDEX_RUNS``) with their key
numbers and a thumbnail, ``GET /reports/<run>/`` renders one report's ``summary.json`` (gate
verdict, metrics per scale, training numbers and curves, the pairs side by side, the validation
grids in step order) and ``GET /reports/<run>/files/<path>`` serves its images. Read-only and confined to
``ZTHUMB_REPORTS_DIR`` (``outputs/lora_eval`` on the volume): a run name is a Kubernetes object
name, a file path stays inside its run's directory after resolving symlinks, and only image and
report types are served.

Behind the API key like the rest of the API (``middleware.ApiKeyMiddleware``). ``curl`` sends the
bearer header; a browser cannot, so a page without a valid key answers 401 with a login form, and
``POST /reports/login`` checks the key (throttled per client address) and sets an HttpOnly,
SameSite=Strict session cookie that expires (``sessions``), Secure when the page was served over
https (directly or behind a TLS-terminating proxy).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from zthumb_contract.eval_report import EvalReport
from zthumb_contract.scale_sweep import GROUP_TITLES, IN_DISTRIBUTION, METRIC_TITLES
from zthumb_contract.steps import REPORTS_URL_PREFIX

from zthumb.auth import REPORTS_LOGIN_PATH, REPORTS_STYLESHEET_PATH, configured_key, matches
from zthumb.errors import LoginRequiredError, LoginThrottledError, ReportNotFoundError
from zthumb.report_store import (
    FILE_TYPES,
    MAX_INDEX_RUNS,
    index_entries,
    read_summary,
    report_file,
    run_directory,
)
from zthumb.sessions import SESSION_COOKIE, SESSION_SECONDS, LoginThrottle, SessionCookies

STYLESHEET = Path(__file__).with_name("templates") / "report.css"
# No script anywhere; styles and images from this server only; forms post only here.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# The login form's body (key and return path); the body limit holds this path to it.
LOGIN_BODY_BYTES = 4096

templates = Environment(loader=PackageLoader("zthumb", "templates"), autoescape=select_autoescape())


def _served_over_https(request: Request) -> bool:
    # Behind a TLS-terminating ingress the app sees http; the proxy says https. Trusting the header
    # can only add the Secure flag, which a browser on plain http would then not send back.
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def reports_root(request: Request) -> Path:
    root: Path | None = request.app.state.settings.reports_dir
    if root is None:
        raise ReportNotFoundError("this server serves no reports (ZTHUMB_REPORTS_DIR is not set)")
    return root.resolve()


def _page(
    template: str, code: int = 200, headers: Mapping[str, str] | None = None, **context: Any
) -> Response:
    html = templates.get_template(template).render(prefix=REPORTS_URL_PREFIX, **context)
    return HTMLResponse(
        html, status_code=code, headers={**SECURITY_HEADERS, "Cache-Control": "no-store", **(headers or {})}
    )


def error_page(
    request: Request, status: int, body: dict[str, Any], headers: Mapping[str, str] | None
) -> Response:
    """Any error under /reports/ as a page; a 401 carries the login form."""
    login = status == 401
    return _page(
        "error.html", status, headers, status=status, message=body["message"], login=login,
        next=request.url.path if request.method == "GET" else f"{REPORTS_URL_PREFIX}/",
    )  # fmt: skip


def _scale_key(scale: float) -> str:
    return f"{scale:g}"


def metrics_rows(report: EvalReport) -> list[dict[str, Any]]:
    """One row per scale compared: pixel difference vs the reference, latency, CLIP-T, CLIP-I, DINO
    and the aesthetic score."""
    clip = report.clip.by_scale if report.clip else {}
    dino = report.dino.by_scale if report.dino else {}
    aesthetic = report.aesthetic.by_scale if report.aesthetic else {}
    rows = []
    for scale in report.scales:
        key = _scale_key(scale)
        # As the summary's number: the in-distribution prompts' (the sweep's tables have each group's).
        differences = [
            p.mean_pixel_difference[key]
            for p in report.pairs
            if key in p.mean_pixel_difference and p.group == IN_DISTRIBUTION
        ]
        latencies = [p.latency_s[key] for p in report.pairs if key in p.latency_s]
        rows.append(
            {
                "scale": key,
                "reference": scale == report.reference_scale,
                "served": scale == report.served_scale,
                "pixel_difference": round(sum(differences) / len(differences), 3) if differences else None,
                "latency_s": round(sum(latencies) / len(latencies), 3) if latencies else None,
                "clip_t": (clip.get(key) or {}).get("clip_t"),
                "clip_i": (clip.get(key) or {}).get("clip_i"),
                "dino": (dino.get(key) or {}).get("dino"),
                "aesthetic": (aesthetic.get(key) or {}).get("aesthetic"),
            }
        )
    return rows


def sweep_tables(report: EvalReport) -> list[dict[str, Any]]:
    """The scale sweep as one table per group: its metrics' titles and a row per scale (a cell per
    metric, None where not measured), whatever metrics the report holds."""
    sweep = report.sweep
    if sweep is None:
        return []
    tables = []
    for group, by_metric in sweep.groups.items():
        metrics = list(by_metric)
        scales = sorted({key for values in by_metric.values() for key in values}, key=float)
        rows = [
            {
                "scale": scale,
                "reference": float(scale) == sweep.reference_scale,
                "recommended": float(scale) == sweep.recommended_scale,
                "values": [by_metric[metric].get(scale) for metric in metrics],
            }
            for scale in scales
        ]
        titles = [METRIC_TITLES.get(metric, metric) for metric in metrics]
        tables.append(
            {"group": group, "title": GROUP_TITLES.get(group, group), "metrics": titles, "rows": rows}
        )
    return tables


router = APIRouter(tags=["reports"], include_in_schema=False)


@router.get(REPORTS_STYLESHEET_PATH)
async def stylesheet() -> Response:
    return FileResponse(STYLESHEET, media_type="text/css", headers={"Cache-Control": "max-age=3600"})


@router.get(f"{REPORTS_URL_PREFIX}/")
async def index(request: Request) -> Response:
    entries = index_entries(reports_root(request))
    return _page("index.html", runs=entries, most=MAX_INDEX_RUNS)


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.post(REPORTS_LOGIN_PATH)
async def login(request: Request) -> Response:
    settings = request.app.state.settings
    key = configured_key(settings)
    throttle: LoginThrottle = request.app.state.login_throttle
    address = _client_address(request)
    if key is not None and (wait := throttle.retry_after(address)) is not None:
        raise LoginThrottledError(
            f"too many wrong API keys from {address}; try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    form = parse_qs((await request.body()).decode("utf-8", "replace"))  # at most LOGIN_BODY_BYTES
    next_url = (form.get("next") or [""])[0]
    if not next_url.startswith(f"{REPORTS_URL_PREFIX}/") or next_url.startswith("//"):
        next_url = f"{REPORTS_URL_PREFIX}/"
    response = RedirectResponse(next_url, status_code=303)
    if key is None:
        return response
    if not matches((form.get("api_key") or [""])[0], key):
        throttle.failed(address)
        raise LoginRequiredError("wrong API key")
    throttle.succeeded(address)
    sessions: SessionCookies = request.app.state.report_sessions
    response.set_cookie(
        SESSION_COOKIE, sessions.issue(), max_age=SESSION_SECONDS, path=REPORTS_URL_PREFIX,
        httponly=True, samesite="strict", secure=_served_over_https(request),
    )  # fmt: skip
    return response


@router.get(REPORTS_URL_PREFIX + "/{run}/")
async def report(run: str, request: Request) -> Response:
    directory = run_directory(reports_root(request), run)
    report = read_summary(directory)
    # The template reads the summary as summary.json spells it (snake_case keys).
    return _page(
        "report.html", run=run, summary=report.model_dump(), rows=metrics_rows(report),
        sweep_tables=sweep_tables(report),
    )  # fmt: skip


@router.get(REPORTS_URL_PREFIX + "/{run}/files/{path:path}")
async def report_asset(run: str, path: str, request: Request) -> Response:
    file = report_file(run_directory(reports_root(request), run), path)
    return FileResponse(
        file,
        media_type=FILE_TYPES[file.suffix.lower()],
        headers={**SECURITY_HEADERS, "Cache-Control": "private, max-age=60"},
    )
