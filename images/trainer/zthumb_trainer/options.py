"""CLI options generated from a spec model: a spec field is declared once, in ``zthumb_contract.spec``.

``spec_options(TrainingSpec, "training")`` gives a typer command one option per field of
``TrainingSpec`` (name, type, default and choices from the field) and calls it with the
parsed values as one ``TrainingSpec`` in its ``training`` parameter, validated by the
model (bounds included: a bad value exits with code 2 and names the option). The step
definitions write the same flags from the same fields (``zthumb_contract.steps.spec_args``),
so the Job's argv and the CLI cannot drift.

A field that may be None and defaults to None is None when its flag is absent (``spec_args``
leaves None fields out); the others default to the model's default. A nested model
(``TrainingSpec.validation``) is one option holding its JSON; absent means its defaults. A list
that may be empty but defaults to items (``spec.eval.leakagePrompts``) and a field that may be None
but defaults to a value (``spec.training.maxGradNorm``) also get ``--no-<field>``, which empties
the list or sets None (``unset_option``, which ``spec_args`` writes too).
"""

from __future__ import annotations

import functools
import inspect
import json
import types
import typing
from collections.abc import Callable, Collection
from typing import Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from zthumb_contract.steps import option_name, unset_option

F = TypeVar("F", bound=Callable[..., Any])


def _optional(info: FieldInfo) -> bool:
    return typing.get_origin(info.annotation) in (typing.Union, types.UnionType) and type(
        None
    ) in typing.get_args(info.annotation)


def _nested(info: FieldInfo) -> bool:
    return isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)


def _option_type(info: FieldInfo) -> Any:
    """The type typer sees for a field: its annotation without None (typer knows Literal and list);
    a nested model is a JSON string."""
    if _nested(info):
        return str | None
    if _optional(info):
        return next(arg for arg in typing.get_args(info.annotation) if arg is not type(None))
    return info.annotation


def _option_default(info: FieldInfo) -> Any:
    default = info.get_default(call_default_factory=True)
    if _nested(info) or (_optional(info) and default is None):
        return None  # an absent flag is "unset": spec_args leaves None fields out
    return default


def spec_options(model: type[BaseModel], param: str, exclude: Collection[str] = ()) -> Callable[[F], F]:
    """Give the decorated command one option per field of ``model`` (but ``exclude``), passed
    to it as one ``model`` instance in ``param`` (excluded fields keep the model's defaults)."""

    def decorate(func: F) -> F:
        hints = typing.get_type_hints(func, include_extras=True)
        own = [
            parameter.replace(annotation=hints[parameter.name])
            for parameter in inspect.signature(func).parameters.values()
            if parameter.name != param
        ]
        options: dict[str, str] = {}  # CLI parameter name -> field name
        emptiers: dict[str, str] = {}  # --no-<field> parameter name -> field name
        nested = {name for name, info in model.model_fields.items() if _nested(info) and name not in exclude}
        generated = []
        for name, info in model.model_fields.items():
            if name in exclude:
                continue
            option = option_name(name, info)
            options[option] = name
            generated.append(
                inspect.Parameter(
                    option,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=_option_default(info),
                    annotation=typing.Annotated[_option_type(info), typer.Option(help=info.description)],
                )
            )
            emptier = unset_option(name, info)
            if emptier is not None:
                emptiers[emptier] = name
                flag = "--" + option.replace("_", "-")
                generated.append(
                    inspect.Parameter(
                        emptier,
                        inspect.Parameter.KEYWORD_ONLY,
                        default=False,
                        annotation=typing.Annotated[
                            bool, typer.Option(help=f"No {flag} at all (not its default).")
                        ],
                    )
                )

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            values = {field: kwargs.pop(option) for option, field in options.items()}
            for emptier, field in emptiers.items():
                if kwargs.pop(emptier):
                    values[field] = (
                        [] if typing.get_origin(model.model_fields[field].annotation) is list else None
                    )
            for field in nested:
                if values[field] is None:
                    del values[field]  # the model's default
                else:
                    try:
                        values[field] = json.loads(values[field])
                    except ValueError as error:
                        flag = field.replace("_", "-")
                        raise typer.BadParameter(f"not JSON: {error}", param_hint=f"'--{flag}'") from None
            try:
                kwargs[param] = model.model_validate(values)
            except ValidationError as error:
                first = error.errors()[0]
                field = str(first["loc"][0]) if first["loc"] else ""
                if not field:  # a rule over several fields: its message names them
                    raise typer.BadParameter(first["msg"]) from None
                flag = next((o for o, f in options.items() if f == field), field).replace("_", "-")
                # Inside a nested section's JSON: name the key too (``--captioning``: batchSize: ...).
                inner = ".".join(str(part) for part in first["loc"][1:])
                message = f"{inner}: {first['msg']}" if inner else first["msg"]
                raise typer.BadParameter(message, param_hint=f"'--{flag}'") from None
            return func(**kwargs)

        del command.__wrapped__  # typer must see the generated signature, not func's
        signature = inspect.signature(func).replace(parameters=[*own, *generated])
        command.__signature__ = signature  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        return typing.cast(F, command)

    return decorate
