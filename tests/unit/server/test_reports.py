"""The report pages (zthumb.reports): rendering, the API key (bearer, login form, cookie),
confinement to ZTHUMB_REPORTS_DIR."""

from __future__ import annotations

import pytest
from report_helpers import write_report
from zthumb.sessions import SESSION_COOKIE, SessionCookies

KEY = "s3cret-key"


@pytest.fixture
def reports_dir(tmp_path):
    root = tmp_path / "outputs" / "lora_eval"
    write_report(root, "z-style", gate={"minMeanPixelDifference": 1}, clip=True)
    write_report(root, "plain")
    return root


def test_a_report_page_shows_the_leakage_per_prompt_with_its_pictures(make_client, tmp_path):
    root = tmp_path / "reports"
    write_report(root, "leaky", gate={"maxLeakage": 0.05}, leakage=True)
    client = make_client(reports_dir=root)
    html = client.get("/reports/leaky/").text
    assert "Leakage 0.0825" in html and "served scale 0.8" in html
    assert "<td>a city street</td><td>0.9412</td><td>0.0588</td>" in html
    assert "Quality gate failed" in html and "<td>leakage</td><td>max 0.05</td>" in html
    for image in ("leakage/l0-s0.png", "leakage/l1-s0.png"):
        assert f'src="/reports/leaky/files/{image}"' in html
        assert client.get(f"/reports/leaky/files/{image}").content.startswith(b"\x89PNG")
    assert "<td>0.0825</td>" in client.get("/reports/").text  # the index's leakage column


def test_a_report_page_shows_dino_and_the_aesthetic_score_per_scale(make_client, tmp_path):
    root = tmp_path / "reports"
    write_report(root, "faithful", fidelity=True)
    write_report(root, "plain")
    client = make_client(reports_dir=root)
    html = client.get("/reports/faithful/").text
    assert "<th>DINO</th>" in html and "<th>aesthetic</th>" in html
    assert "<td>0.4123</td>" in html and "<td>0.5234</td>" in html  # DINO at 0 and 0.8
    assert "<td>5.4321</td>" in html and "<td>5.1234</td>" in html  # the aesthetic score at 0 and 0.8
    assert "DINO gain 0.1111" in html and "Aesthetic drop 0.3087" in html
    plain = client.get("/reports/plain/").text
    assert "<th>DINO</th>" not in plain and "Aesthetic drop" not in plain


def test_a_report_of_an_older_version_renders_and_a_bad_value_costs_only_itself(make_client, tmp_path):
    """summary.json as versions before the results model wrote it (no leakage, keys this model does
    not know), with a NaN that a broken metric could have left: the page shows the rest."""
    import json

    directory = write_report(tmp_path / "reports", "old", clip=True)
    summary = json.loads((directory / "summary.json").read_text())
    del summary["leakage"]
    summary["retired_metric"] = {"x": 1}
    summary["mean_latency_s"] = float("nan")
    (directory / "summary.json").write_text(json.dumps(summary))  # NaN, as json.dumps writes it
    html = make_client(reports_dir=tmp_path / "reports").get("/reports/old/").text
    assert "CLIP-I gain 0.0312" in html and "Leakage" not in html
    assert "LoRA evaluation: old" in html


def test_a_report_page_shows_the_gate_the_metrics_and_every_image(make_client, reports_dir):
    client = make_client(reports_dir=reports_dir)
    page = client.get("/reports/z-style/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "Quality gate passed" in html and "meanPixelDifference" in html
    assert "0.2512" in html and "0.6323" in html  # CLIP-T at 0, CLIP-I at 0.8
    assert "0.8 (served)" in html and "0 (reference)" in html
    assert "CLIP-I gain 0.0312" in html
    for image in ("pairs/p0-s0.png", "pairs/p0-s1.png", "samples/step-15.png"):
        assert f'src="/reports/z-style/files/{image}"' in html
        answer = client.get(f"/reports/z-style/files/{image}")
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
        assert answer.content.startswith(b"\x89PNG")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<script" not in html


def test_a_report_without_clip_or_gate_renders_what_it_has(make_client, reports_dir):
    html = make_client(reports_dir=reports_dir).get("/reports/plain/").text
    assert "Quality gate" not in html and "CLIP-I gain" not in html
    assert "LoRA evaluation: plain" in html


def test_the_index_lists_the_runs_newest_first(make_client, reports_dir):
    html = make_client(reports_dir=reports_dir).get("/reports/").text
    assert html.index('href="/reports/plain/"') < html.index('href="/reports/z-style/"')
    assert "passed" in html


@pytest.mark.parametrize(
    "path",
    [
        "/reports/z-style/files/../plain/summary.json",
        "/reports/z-style/files/%2e%2e/plain/summary.json",
        "/reports/z-style/files/%2Fetc%2Fpasswd",
        "/reports/z-style/files/escape.png",  # a symlink out of the report
        "/reports/z-style/files/notes.txt",  # not a report file type
        "/reports/Not_A_Run/",
        "/reports/missing/",
        "/reports/..%2F..%2Fetc/",
    ],
)
def test_nothing_outside_a_report_is_served(make_client, reports_dir, tmp_path, path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG secret")
    (reports_dir / "z-style" / "escape.png").symlink_to(secret)
    (reports_dir / "z-style" / "notes.txt").write_text("x")
    answer = make_client(reports_dir=reports_dir).get(path)
    assert answer.status_code == 404, answer.text
    assert b"secret" not in answer.content


def test_without_a_reports_dir_there_are_no_pages(make_client):
    answer = make_client().get("/reports/")
    assert answer.status_code == 404 and "ZTHUMB_REPORTS_DIR is not set" in answer.text


def test_with_an_api_key_a_browser_gets_the_login_form_then_a_cookie(make_client, reports_dir):
    client = make_client(reports_dir=reports_dir, api_key=KEY)
    page = client.get("/reports/z-style/")
    assert page.status_code == 401 and 'action="/reports/login"' in page.text
    assert 'name="next" value="/reports/z-style/"' in page.text
    wrong = client.post("/reports/login", data={"api_key": "nope", "next": "/reports/z-style/"})
    assert wrong.status_code == 401 and "wrong API key" in wrong.text
    assert SESSION_COOKIE not in client.cookies
    logged_in = client.post(
        "/reports/login", data={"api_key": KEY, "next": "/reports/z-style/"}, follow_redirects=False
    )
    assert logged_in.status_code == 303 and logged_in.headers["location"] == "/reports/z-style/"
    cookie = logged_in.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/reports" in cookie
    assert KEY not in cookie
    assert "Secure" not in cookie  # plain http (kubectl port-forward): a Secure cookie never comes back
    assert client.get("/reports/z-style/").status_code == 200  # the cookie now
    assert client.get("/reports/z-style/files/pairs/p0-s0.png").status_code == 200


def test_with_an_api_key_curl_sends_the_bearer_header(make_client, reports_dir):
    client = make_client(reports_dir=reports_dir, api_key=KEY)
    assert client.get("/reports/", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert client.get("/reports/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    client.cookies.set(SESSION_COOKIE, SessionCookies("another key").issue(), path="/reports")
    assert client.get("/reports/").status_code == 401  # a cookie for another key


def test_login_redirects_only_into_the_reports(make_client, reports_dir):
    client = make_client(reports_dir=reports_dir, api_key=KEY)
    for target in ("https://evil.example/", "//evil.example/reports/", "/generate"):
        answer = client.post("/reports/login", data={"api_key": KEY, "next": target}, follow_redirects=False)
        assert answer.headers["location"] == "/reports/", target


@pytest.mark.parametrize(
    ("base_url", "headers"),
    [("https://zthumb.example", {}), ("http://zthumb", {"X-Forwarded-Proto": "https"})],
    ids=["https", "behind-a-tls-proxy"],
)
def test_over_https_the_session_cookie_is_secure(make_client, reports_dir, base_url, headers):
    client = make_client(reports_dir=reports_dir, api_key=KEY)
    client.base_url = base_url
    logged_in = client.post(
        "/reports/login", data={"api_key": KEY, "next": "/reports/"}, headers=headers, follow_redirects=False
    )
    assert logged_in.status_code == 303 and "Secure" in logged_in.headers["set-cookie"]


def test_another_authorization_scheme_is_refused_not_ignored(make_client, reports_dir):
    client = make_client(reports_dir=reports_dir, api_key=KEY)
    client.cookies.set(SESSION_COOKIE, SessionCookies(KEY).issue(), path="/reports")
    assert client.get("/reports/").status_code == 200
    # A header that is not a valid bearer token is an answer of its own, the cookie aside.
    assert client.get("/reports/", headers={"Authorization": f"Basic {KEY}"}).status_code == 401
    assert client.get("/models", headers={"Authorization": f"Basic {KEY}"}).status_code == 401


def test_a_report_page_shows_the_generated_captions_escaped(make_client, tmp_path):
    import json

    directory = write_report(tmp_path / "reports", "captioned")
    summary = json.loads((directory / "summary.json").read_text())
    summary["captioning"] = {
        "model": {"name": "blip.safetensors", "url": "http://x/blip.safetensors", "sha256": "ef" * 32},
        "mode": "missing",
        "generated": 12,
        "samples": [
            {"source": "cats/001.jpg", "caption": "zt, a cat on a sofa"},
            {"source": "cats/002.jpg", "caption": "zt, <script>alert(1)</script>"},
        ],
    }
    (directory / "summary.json").write_text(json.dumps(summary))
    write_report(tmp_path / "reports", "plain")
    # One app per test: two in one process would load the model on two threads at once.
    client = make_client(reports_dir=tmp_path / "reports")
    html = client.get("/reports/captioned/").text
    assert "12 caption(s) written by blip.safetensors" in html and "mode missing" in html
    assert "<tr><td>cats/001.jpg</td><td>zt, a cat on a sofa</td></tr>" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script" not in html
    assert "Generated captions" not in client.get("/reports/plain/").text


def test_the_scale_sweep_shows_one_table_per_group_with_every_metric(make_client, tmp_path):
    """The sweep's chart, its recommendation and a table per prompt group, with whatever metrics
    the report holds (a metric this page does not know is shown by its key); a report from before
    the sweep has no such section."""
    import json

    directory = write_report(tmp_path / "reports", "swept")
    summary = json.loads((directory / "summary.json").read_text())
    assert summary["sweep"]["chart"] == "curves/scales.png"
    summary["sweep"]["groups"]["out_of_distribution"] = {
        "clip_t": {"0": 0.2811, "0.8": 0.2533},
        "sharpness": {"0": 0.4, "0.8": 0.6172},
        "dino": {"0": 0.5, "0.8": 0.5123},
    }
    summary["sweep"]["recommended_scale"] = None
    summary["sweep"]["rule"] = "no scale has a positive CLIP-I gain with these limits"
    (directory / "summary.json").write_text(json.dumps(summary))
    old = write_report(tmp_path / "reports", "old")
    before = json.loads((old / "summary.json").read_text())
    del before["sweep"]
    (old / "summary.json").write_text(json.dumps(before))
    client = make_client(reports_dir=tmp_path / "reports")
    html = client.get("/reports/swept/").text
    assert 'id="sweep-in_distribution"' in html and 'id="sweep-out_of_distribution"' in html
    assert "<th>sharpness</th>" in html and "<td>0.6172</td>" in html and "<td>0.2533</td>" in html
    assert "<th>DINO (cosine to the training images)</th>" in html and "<td>0.5123</td>" in html
    assert "No recommended scale: no scale has a positive CLIP-I gain" in html
    assert 'src="/reports/swept/files/curves/scales.png"' in html
    assert client.get("/reports/swept/files/curves/scales.png").content.startswith(b"\x89PNG")
    old_html = client.get("/reports/old/").text
    assert "LoRA evaluation: old" in old_html and 'id="sweep"' not in old_html
