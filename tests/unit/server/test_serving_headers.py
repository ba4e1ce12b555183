"""``response_format: bytes`` puts the adapters into headers, which carry only Latin-1: an adapter
whose path is in another script must not turn a generated image into a 500."""

from __future__ import annotations

from urllib.parse import unquote

from server_helpers import wait_ready

NAME = "café-日本"


def test_an_adapter_path_in_any_script_reaches_the_headers_percent_encoded(
    make_client, lora_states, tmp_path
):
    from zthumb.testing import write_diffusers_lora

    root = tmp_path / "lora"
    write_diffusers_lora(lora_states["a"], root / NAME)
    write_diffusers_lora(lora_states["b"], root / "plain")
    client = make_client(lora_root=root)
    assert wait_ready(client)["ready"]
    response = client.post(
        "/generate",
        json={"prompt": "a photo of z", "seed": 7, "response_format": "bytes",
              "loras": [{"path": f"{NAME}/", "scale": 0.8}, {"path": "plain", "scale": 0.5}]},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.content.startswith(b"\x89PNG")
    headers = response.headers
    assert headers["x-zthumb-lora-path"].isascii()
    assert unquote(headers["x-zthumb-lora-path"]) == NAME
    assert headers["x-zthumb-loras"] == "caf%C3%A9-%E6%97%A5%E6%9C%AC=0.8,plain=0.5"
    paths = [unquote(item.rsplit("=", 1)[0]) for item in headers["x-zthumb-loras"].split(",")]
    assert paths == [NAME, "plain"]
