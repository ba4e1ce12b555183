"""``zthumb-train``: one CLI whose subcommands are the entrypoints of the pipeline's Jobs.

The arguments are exactly those ``zthumb_contract.steps`` builds, so a Job and a local
run execute the same command line. Heavy imports (torch, diffusers) happen inside the
subcommands that need them, so fetch-model and prepare-dataset start quickly.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from zthumb_contract import env
from zthumb_contract.dataset_spec import DatasetSpec
from zthumb_contract.eval_spec import EvalSpec
from zthumb_contract.spec import BaseModelSpec, TrainingSpec
from zthumb_contract.steps import FETCH_MODEL_OWN_FIELDS, RENDEZVOUS_PORT, RENDEZVOUS_TIMEOUT_SECONDS

from zthumb_trainer.launch import Rendezvous, relaunch
from zthumb_trainer.options import spec_options
from zthumb_trainer.settings import TrainerSettings

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="ZThumb trainer: fetch the base model, prepare a dataset, train + export a LoRA, evaluate it.",
)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise in a Job log
    # Weights are never fetched by diffusers/transformers themselves: fetch-model does that.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@app.command("fetch-model")
@spec_options(BaseModelSpec, "base_model", exclude=FETCH_MODEL_OWN_FIELDS)
def fetch_model(  # noqa: PLR0917 - one option per flag
    url: Annotated[str, typer.Option(help="Where to download the checkpoint from.")],
    sha256: Annotated[str, typer.Option(help="Expected SHA256 of the checkpoint.")],
    output: Annotated[Path, typer.Option(help="Destination path of the checkpoint.")],
    config_url: Annotated[
        str | None, typer.Option(help="Base URL of the diffusers config files (model_index.json, …).")
    ] = None,
    config_dir: Annotated[Path | None, typer.Option(help="Where to put the config files.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    *,
    base_model: BaseModelSpec,
) -> None:
    """Download the base model (resumable, SHA256-verified, at most --max-bytes) and its config files."""
    from zthumb_trainer.download import FetchError
    from zthumb_trainer.fetch.model import fetch_base_model

    try:
        result = fetch_base_model(
            url, sha256, output, base_model=base_model, config_url=config_url, config_dir=config_dir,
            progress=progress,
        )  # fmt: skip
    except FetchError as error:
        raise _fail(str(error)) from error
    state = "present" if result.skipped else f"downloaded {result.downloaded_bytes} bytes"
    typer.echo(f"{output}: {state}, sha256 {result.sha256}")


@app.command("prepare-dataset")
@spec_options(DatasetSpec, "spec", exclude={"path", "trigger_word"})
def prepare_dataset(  # noqa: PLR0917 - one option per flag
    dataset: Annotated[Path, typer.Option(help="Directory with images and captions (see DATASETS.md).")],
    output: Annotated[Path, typer.Option(help="The run directory; the dataset goes to <output>/dataset.")],
    trigger_word: Annotated[str, typer.Option(help="Put in front of every caption that lacks it.")] = "",
    dataset_cache: Annotated[
        Path | None, typer.Option(help="Where a remote --source is fetched to: datasets/cache on the volume.")
    ] = None,
    captioning_model: Annotated[
        Path | None, typer.Option(help="Where --captioning's weights are (fetched here when missing).")
    ] = None,
    captioning_config: Annotated[
        Path | None, typer.Option(help="Where --captioning's config files are (fetched here when missing).")
    ] = None,
    *,
    spec: DatasetSpec,
) -> None:
    """Fetch a remote dataset (--source), caption it (--captioning), then validate, normalise and
    bucket it; write the manifest."""
    from zthumb_trainer.dataset.captioning import CaptioningError, CaptioningRun
    from zthumb_trainer.dataset.prepare import DatasetError
    from zthumb_trainer.dataset.prepare import prepare_dataset as prepare
    from zthumb_trainer.dataset.sources import SourceError, fetch_source

    captioning = None
    if spec.captioning.enabled:
        if captioning_model is None or captioning_config is None:
            raise _fail(
                "--captioning with enabled needs --captioning-model and --captioning-config (below models/)"
            )
        captioning = CaptioningRun(spec.captioning, captioning_model, captioning_config)

    if spec.source.remote:
        if dataset_cache is None:
            raise _fail("a remote spec.dataset.source needs --dataset-cache (datasets/cache on the volume)")
        try:
            dataset = fetch_source(spec.source, dataset_cache)
        except SourceError as error:
            raise _fail(str(error)) from error
    try:
        prepared = prepare(
            dataset,
            output,
            spec.resolution,
            trigger_word=trigger_word,
            caption_format=spec.caption_format,
            missing_caption=spec.missing_caption,
            bucketing=spec.bucketing,
            holdout=spec.holdout,
            captioning=captioning,
        )
    except (DatasetError, CaptioningError) as error:
        raise _fail(str(error)) from error
    typer.echo(
        f"{len(prepared.entries)} images ready in {prepared.directory} "
        f"({len(prepared.flagged)} flagged, {len(prepared.holdout_entries)} held out), "
        f"dataset hash {prepared.dataset_hash[:12]}"
    )


@app.command()
@spec_options(TrainingSpec, "training")
def train(  # noqa: PLR0917 - one option per flag
    run_name: Annotated[str, typer.Option(help="The run (LoRAFinetune) name.")],
    base_model: Annotated[Path, typer.Option(help="Single-file checkpoint or diffusers directory.")],
    run_dir: Annotated[Path, typer.Option(help="Checkpoints, cache, logs: outputs/lora/<run>.")],
    model_config: Annotated[Path | None, typer.Option(help="Diffusers config dir for a single file.")] = None,
    export_dir: Annotated[Path | None, typer.Option(help="Export the adapter here when done.")] = None,
    base_model_sha256: Annotated[str, typer.Option(help="Recorded in adapter.json.")] = "",
    trigger_word: Annotated[str, typer.Option()] = "",
    gpus: Annotated[int, typer.Option(help="Data-parallel processes (one per GPU).")] = 1,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    nodes: Annotated[
        int, typer.Option(min=1, help="Nodes training together (>1: a static torchrun rendezvous).")
    ] = 1,
    node_rank: Annotated[
        int, typer.Option(min=0, envvar=env.NODE_RANK, help="This node's rank, 0 .. nodes-1.")
    ] = 0,
    master_addr: Annotated[
        str, typer.Option(envvar=env.MASTER_ADDR, help="Node 0's address: the rendezvous.")
    ] = "127.0.0.1",
    master_port: Annotated[
        int, typer.Option(envvar=env.MASTER_PORT, help="The rendezvous port on node 0.")
    ] = RENDEZVOUS_PORT,
    rendezvous_timeout: Annotated[
        int, typer.Option(min=1, help="Seconds a node waits for node 0's name and for the others.")
    ] = RENDEZVOUS_TIMEOUT_SECONDS,
    *,
    training: TrainingSpec,
) -> None:
    """Train the LoRA (resuming from the newest checkpoint), then export it.

    The training options are the fields of the LoRAFinetune's spec.training. With --nodes > 1
    every node runs this same command; its rank and node 0's address come from the pod's env.
    """
    if (gpus > 1 or nodes > 1) and "LOCAL_RANK" not in os.environ:
        if node_rank >= nodes:
            raise _fail(f"--node-rank {node_rank} is not below --nodes {nodes}", 2)
        rendezvous = (
            Rendezvous(nodes, node_rank, master_addr, master_port, rendezvous_timeout) if nodes > 1 else None
        )
        _relaunch_distributed(gpus, rendezvous)
    import json

    from zthumb_trainer.dataset.prepare import DatasetError
    from zthumb_trainer.train.config import TrainConfig
    from zthumb_trainer.train.loop import TrainingInterrupted, run_training
    from zthumb_trainer.train.optim import OptimizerUnavailable
    from zthumb_trainer.train.resume import DatasetChangedError

    config = TrainConfig(
        **training.model_dump(),
        run_dir=run_dir,
        base_model=base_model,
        model_config_dir=model_config,
        export_dir=export_dir,
        run_name=run_name,
        base_model_sha256=base_model_sha256,
        trigger_word=trigger_word,
        stop_after_step=TrainerSettings().train_stop_after_step,
        progress_bar=progress,
    )
    try:
        summary = run_training(config)
    except (DatasetError, DatasetChangedError, FileNotFoundError, OptimizerUnavailable) as error:
        raise _fail(str(error)) from error
    except TrainingInterrupted as error:
        raise _fail(str(error), 3) from error
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "pairs"}))


def _relaunch_distributed(gpus: int, rendezvous: Rendezvous | None) -> None:
    """Exit with torchrun's status when this command relaunched under it (``launch.relaunch``)."""
    try:
        status = relaunch(gpus, rendezvous, sys.argv[1:])
    except TimeoutError as error:
        assert rendezvous is not None  # only a rendezvous waits for a host
        raise _fail(f"node {rendezvous.node_rank} of {rendezvous.nodes}: {error}") from error
    if status is not None:
        raise typer.Exit(status)


@app.command()
def export(  # noqa: PLR0917 - one option per flag
    run_dir: Annotated[Path, typer.Option(help="The run directory holding checkpoints/.")],
    export_dir: Annotated[Path, typer.Option(help="Where to publish the adapter.")],
    run_name: Annotated[str, typer.Option()] = "lora",
    base_model_sha256: Annotated[str, typer.Option()] = "",
    trigger_word: Annotated[str, typer.Option()] = "",
    checkpoint: Annotated[Path | None, typer.Option(help="A checkpoint dir; default the newest.")] = None,
) -> None:
    """Export a checkpoint (default: the newest) as a servable adapter, without the base model.

    A checkpoint of a run with spec.training.emaDecay exports its EMA weights, as the train step does.
    """
    import json

    from safetensors.torch import load_file

    from zthumb_trainer.export.adapter import AdapterInfo, export_adapter
    from zthumb_trainer.train.checkpoints import EMA_WEIGHTS
    from zthumb_trainer.train.resume import newest_intact

    if checkpoint is None:
        found = newest_intact(run_dir / "checkpoints")
        if found is None:
            raise _fail(f"no intact checkpoint under {run_dir / 'checkpoints'}")
        checkpoint = found.path
    state = json.loads((checkpoint / "state.json").read_text())
    configs = json.loads((checkpoint / "lora_config.json").read_text())
    unet_config = configs["unet"]
    ema_decay = state.get("ema_decay") if (checkpoint / EMA_WEIGHTS).exists() else None
    export_adapter(
        export_dir,
        load_file(str(checkpoint / (EMA_WEIGHTS if ema_decay is not None else "adapter.safetensors"))),
        configs,
        AdapterInfo(
            run_name=run_name,
            base_model_sha256=base_model_sha256,
            rank=int(unet_config["r"]),
            alpha=float(unet_config["lora_alpha"]),
            trigger_word=trigger_word,
            steps=int(state["step"]),
            dataset_hash=str(state.get("dataset_hash", "")),
            ema_decay=ema_decay,
        ),
    )
    typer.echo(f"exported {checkpoint} to {export_dir}")


@app.command("eval")
# spec.training.tracking (--tracking, as train's): the report goes to the train step's MLflow run.
@spec_options(TrainingSpec, "training", exclude=set(TrainingSpec.model_fields) - {"tracking"})
@spec_options(EvalSpec, "evaluation", exclude={"enabled"})
def evaluate(  # noqa: PLR0917 - one option per flag
    server_url: Annotated[str, typer.Option(help="Base URL of the ZThumb server.")],
    output: Annotated[Path, typer.Option(help="Report directory: outputs/lora_eval/<run>.")],
    lora_path: Annotated[str, typer.Option(help="Adapter path relative to the server's LoRA root.")],
    run_name: Annotated[str, typer.Option()] = "lora",
    trigger_word: Annotated[str, typer.Option()] = "",
    ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for /readyz.")] = 600.0,
    train_summary: Annotated[
        Path | None,
        typer.Option(help="The train step's summary.json: its steps/s and peak memory go in the report."),
    ] = None,
    served_scale: Annotated[
        float | None, typer.Option(help="The scale the server is deployed with (spec.deploy.loraScale).")
    ] = None,
    clip_model: Annotated[
        Path | None, typer.Option(help="Where spec.eval.clip's weights live (fetched when missing).")
    ] = None,
    clip_config: Annotated[
        Path | None, typer.Option(help="Where spec.eval.clip's config and tokenizer files live.")
    ] = None,
    dino_model: Annotated[
        Path | None, typer.Option(help="Where spec.eval.dino's weights live (fetched when missing).")
    ] = None,
    dino_config: Annotated[
        Path | None, typer.Option(help="Where spec.eval.dino's config and image processor files live.")
    ] = None,
    aesthetic_model: Annotated[
        Path | None, typer.Option(help="Where spec.eval.aesthetic's head lives (fetched when missing).")
    ] = None,
    *,
    evaluation: EvalSpec,
    training: TrainingSpec,
) -> None:
    """Generate with and without the adapter on the same seeds; write report.md + summary.json.

    The prompts, seeds, scales, steps and size are the fields of the LoRAFinetune's spec.eval.
    """
    from zthumb_trainer.eval.config import EvalConfig
    from zthumb_trainer.eval.run import EvalError, run_eval

    settings = TrainerSettings()
    config = EvalConfig(
        **evaluation.model_dump(),
        server_url=server_url,
        output=output,
        run_name=run_name,
        lora_path=lora_path,
        trigger_word=trigger_word,
        train_summary=train_summary,
        served_scale=served_scale,
        clip_model=clip_model,
        clip_config=clip_config,
        dino_model=dino_model,
        dino_config=dino_config,
        aesthetic_model=aesthetic_model,
        ready_timeout=ready_timeout if settings.eval_ready_timeout is None else settings.eval_ready_timeout,
        api_key=settings.api_key,
        tracking=training.tracking,
    )
    try:
        report = run_eval(config)
    except EvalError as error:
        raise _fail(str(error)) from error
    leakage = f", leakage {report.leakage.leakage}" if report.leakage else ""
    typer.echo(
        f"report: {output / 'report.md'} (mean pixel difference {report.mean_pixel_difference}"
        f"{leakage}, {report.requests} requests)"
    )


@app.command("tiny-model")
def tiny_model(
    output: Annotated[Path, typer.Argument(help="Directory to write the tiny model into.")],
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write the tiny random-weight SDXL (diffusers dir, single file, turbo copy) and the tiny scoring
    models of the eval's metrics (CLIP, DINOv2, an aesthetic head for the tiny CLIP), for demos and tests."""
    from zthumb_trainer.eval.aesthetic import save_random_head
    from zthumb_trainer.tiny.tiny_clip import HEAD_NAME, PROJECTION_DIM, build_tiny_clip
    from zthumb_trainer.tiny.tiny_dino import build_tiny_dino
    from zthumb_trainer.tiny.tiny_model import build_tiny_model

    model = build_tiny_model(output, seed=seed)
    clip, dino = build_tiny_clip(output), build_tiny_dino(output)
    head = save_random_head(output / HEAD_NAME, PROJECTION_DIM)
    typer.echo(
        f"diffusers: {model.diffusers_dir}\nsingle file: {model.single_file}\nturbo: {model.turbo_dir}\n"
        f"clip: {clip.weights} + {clip.config_dir}\ndino: {dino.weights} + {dino.config_dir}\n"
        f"aesthetic: {head}"
    )


@app.command()
def run(
    finetune: Annotated[
        Path | None, typer.Argument(help="A LoRAFinetune YAML; default: the embedded tiny demo.")
    ] = None,
    local: Annotated[bool, typer.Option("--local", help="Run every step as a local process.")] = False,
    workdir: Annotated[Path, typer.Option(help="Plays the shared volume.")] = Path(".zthumb-local"),
    tiny: Annotated[
        bool | None,
        typer.Option(help="Swap the base model for the tiny one (default: on without a YAML)."),
    ] = None,
) -> None:
    """Run the whole pipeline (fetch, prepare, train, deploy, eval) on this machine."""
    from zthumb_trainer.local.run import LocalRunError, run_local

    if not local:
        raise _fail("only --local is supported here; in a cluster, `kubectl apply -f` the LoRAFinetune", 2)
    try:
        result = run_local(finetune, workdir, tiny=finetune is None if tiny is None else tiny)
    except LocalRunError as error:
        raise _fail(str(error)) from error
    typer.echo(
        f"\nadapter: {result.adapter_dir}\nreport:  {result.report}\n"
        f"logs:    tensorboard --logdir {result.logs}\ntook {result.seconds:.0f}s"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
