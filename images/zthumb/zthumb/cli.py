"""``zthumb`` command line: ``zthumb serve`` and ``zthumb convert-gguf``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="ZThumb SDXL inference server.")


@app.command()
def serve(  # noqa: PLR0917 - one option per flag
    host: Annotated[
        str | None, typer.Option(help="Listen address [env ZTHUMB_HOST, default 0.0.0.0].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port [env ZTHUMB_PORT, default 8080].")] = None,
    backend: Annotated[
        str | None, typer.Option(help="Default backend: full|turbo|gguf [ZTHUMB_BACKEND].")
    ] = None,
    enabled_backends: Annotated[
        str | None, typer.Option(help="Comma list of backends to load [ZTHUMB_ENABLED_BACKENDS].")
    ] = None,
    model_path: Annotated[Path | None, typer.Option(help="[ZTHUMB_MODEL_PATH]")] = None,
    model_config: Annotated[Path | None, typer.Option(help="[ZTHUMB_MODEL_CONFIG]")] = None,
    turbo_model_path: Annotated[Path | None, typer.Option(help="[ZTHUMB_TURBO_MODEL_PATH]")] = None,
    gguf_unet_path: Annotated[Path | None, typer.Option(help="[ZTHUMB_GGUF_UNET_PATH]")] = None,
    lora_root: Annotated[Path | None, typer.Option(help="[ZTHUMB_LORA_ROOT]")] = None,
    device: Annotated[str | None, typer.Option(help="auto|cpu|cuda[:N] [ZTHUMB_DEVICE]")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto|float32|float16|bfloat16 [ZTHUMB_DTYPE]")] = None,
    log_json: Annotated[bool | None, typer.Option(help="JSON logs [ZTHUMB_LOG_JSON].")] = None,
) -> None:
    """Run the HTTP server (flags override the ZTHUMB_* environment)."""
    import uvicorn

    from zthumb.app import build_app
    from zthumb.logs import configure_logging
    from zthumb.settings import Settings

    overrides: dict[str, Any] = {
        "host": host,
        "port": port,
        "backend": backend,
        "enabled_backends": enabled_backends,
        "model_path": model_path,
        "model_config_dir": model_config,
        "turbo_model_path": turbo_model_path,
        "gguf_unet_path": gguf_unet_path,
        "lora_root": lora_root,
        "device": device,
        "dtype": dtype,
        "log_json": log_json,
    }
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    configure_logging(settings.log_json, settings.log_level)
    uvicorn.run(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )


@app.command("convert-gguf")
def convert_gguf(
    src: Annotated[
        Path, typer.Argument(help="Diffusers dir, UNet dir, UNet .safetensors or single-file SDXL.")
    ],
    dst: Annotated[Path, typer.Argument(help="Output .gguf file.")],
    config: Annotated[
        Path | None, typer.Option(help="Diffusers config dir (needed for single-file checkpoints).")
    ] = None,
    other: Annotated[str, typer.Option(help="Type for convolutions and other tensors: f16|f32.")] = "f16",
) -> None:
    """Write the UNet as GGUF: Q8_0 Linear weights, F16/F32 for the rest."""
    from zthumb.gguf_convert import convert

    if other not in ("f16", "f32"):
        raise typer.BadParameter("--other must be f16 or f32")
    report = convert(src, dst, config=config, other=other)
    typer.echo(json.dumps(report.as_dict(), indent=2))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
