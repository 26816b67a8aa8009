"""The ``patchbank`` command: subcommands registered by the apps, flags generated from options models.

Each app (builder, service, client, demo data, benchmarks) registers its subcommands as entry points in the
group ``patchbank.commands`` (see ``pyproject.toml``), so this library imports none of them. A subcommand is
a :class:`Command`: a name, a one-line help, ``configure(parser)`` and ``run(args) -> exit code``. Its
modules stay light (no torch at import), so ``--help`` answers at once; the engine is imported when a
command runs, and a client-only install gets one line saying which extra to install.

Flags come from pydantic models (:func:`add_model_flags`), as anomalib builds its command line from
constructor signatures: ``--category``, ``--coreset.ratio``, and a part's options in its own namespace
(``--rgb.backbone``, ``--fpfh.window``, ``--svm.nu``). Every :class:`PatchbankError` ends in a one-line
``error: ...`` and exit code 2; tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import logging
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from patchbank.errors import InputError, PatchbankError

GROUP = "patchbank.commands"
ENGINE_MODULES = frozenset(
    [
        "torch",
        "timm",
        "faiss",
        "open3d",
        "numba",
        "scipy",
        "sklearn",
        "safetensors",
        "fastapi",
        "uvicorn",
        "multipart",
        "prometheus_client",
        "redis",
        "starlette",
        "yaml",
        "plyfile",
        "pypcd4",
    ]
)
ENGINE_HINT = "pip install 'patchbank[engine]'"


@dataclass(frozen=True)
class Command:
    """One subcommand: what ``patchbank NAME`` (and a script of its own, if any) runs."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


def commands() -> dict[str, Any]:
    """The registered subcommands, by name (loading an entry point imports only its light CLI module)."""
    found = {}
    for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
        try:
            found[ep.name] = ep.load()
        except ModuleNotFoundError as exc:  # an app that is not installed (e.g. a partial install)
            logging.getLogger(__name__).debug("command %s unavailable: %s", ep.name, exc)
    return found


def parser_for(command: Any, prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog or command.name, description=command.description or command.help)
    command.configure(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``patchbank SUBCOMMAND ...``."""
    found = commands()
    p = argparse.ArgumentParser(
        prog="patchbank",
        description="Anomaly scoring for industrial inspection with RGB + 3D: build banks of good parts, "
        "evaluate them, serve them.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in found.items():
        sp = sub.add_parser(name, help=command.help, description=command.description or command.help)
        command.configure(sp)
    args = p.parse_args(argv)
    return execute(found[args.command], args)


def run_command(command: Any, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run one command with its own parser (the ``build-bank`` script, tests)."""
    return execute(command, parser_for(command, prog).parse_args(argv))


def execute(command: Any, args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("faiss").setLevel(logging.WARNING)
    try:
        return int(command.run(args))
    except PatchbankError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in ENGINE_MODULES:
            raise
        print(
            f"error: 'patchbank {command.name}' needs the engine (module {exc.name!r} is not installed): "
            f"{ENGINE_HINT}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# -- flags from options models -----------------------------------------------------------------------------

SEP = "."  # namespace separator in flags (--rgb.backbone) and in argparse dests
OFF = object()  # what --no-PART stores for an optional part switched off


def flag_name(path: str) -> str:
    """``rgb.image_size`` -> ``--rgb.image-size``."""
    return "--" + path.replace("_", "-")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _sequence_of(tp: Any) -> Any | None:
    """The item type of tuple[X, ...] / list[X], else None."""
    origin = get_origin(tp)
    if origin in (tuple, list):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return args[0] if args else str
    return None


def _splitter(item: Any) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        try:
            return [item(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {item.__name__}s, got {text!r}"
            ) from exc

    return parse


def add_model_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    model: type[BaseModel],
    namespace: str = "",
    skip: Sequence[str] = (),
) -> None:
    """One flag per field of ``model`` (recursing into nested models with dotted names), under
    ``namespace``. Defaults are left to the model: a flag not given is absent from :func:`collect`'s result.
    Fields marked ``json_schema_extra={"cli": False}`` (fitted values) get no flag."""
    for name, info in model.model_fields.items():
        if name in skip or (
            isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("cli") is False
        ):
            continue
        path = f"{namespace}{SEP}{name}" if namespace else name
        tp, optional = _unwrap_optional(info.annotation)
        if _is_model(tp):
            if optional:  # an optional part (e.g. fpfh.background): a switch turns it on with its defaults
                parser.add_argument(
                    flag_name(path),
                    dest=path,
                    action="store_const",
                    const={},
                    default=None,
                    help=f"{_help(info)} (on with defaults; its own flags below also turn it on)",
                )
                parser.add_argument(
                    flag_name(path).replace("--", "--no-", 1),
                    dest=path,
                    action="store_const",
                    const=OFF,
                    help=f"turn {flag_name(path)} off",
                )
            add_model_flags(parser, tp, path)
            continue
        _add_flag(parser, path, tp, info)


def _help(info: FieldInfo) -> str:
    return info.description or ""


def _add_flag(parser: Any, path: str, tp: Any, info: FieldInfo) -> None:
    kwargs: dict[str, Any] = {"dest": path, "default": None, "help": _help(info)}
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    flag = flag_name(str(extra["flag"])) if "flag" in extra else flag_name(path)  # a name of its own
    required = info.is_required()
    if not required and info.default not in (None, PydanticUndefined):
        kwargs["help"] = f"{kwargs['help']} (default {_show(info.default)})".strip()
    if tp is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        return
    if get_origin(tp) is Literal:
        kwargs["choices"] = list(get_args(tp))
        kwargs["type"] = type(get_args(tp)[0])
    elif (item := _sequence_of(tp)) is not None:
        kwargs["type"] = _splitter(item)
        kwargs["metavar"] = f"{item.__name__.upper()},..."
    elif tp in (int, float, str, Path):
        kwargs["type"] = tp
    else:
        kwargs["type"] = str
    parser.add_argument(flag, required=required, **kwargs)


def _show(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ",".join(map(str, value))
    return str(value)


def collect(args: argparse.Namespace, namespace: str = "") -> dict[str, Any]:
    """The flags given under ``namespace`` as a nested dict (``{"coreset": {"ratio": 0.2}}``)."""
    prefix = f"{namespace}{SEP}" if namespace else ""
    out: dict[str, Any] = {}
    for dest, value in sorted(vars(args).items()):
        if value is None or not dest.startswith(prefix) or dest == "command":
            continue
        keys = dest[len(prefix) :].split(SEP)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if node is None:
                raise InputError(f"{flag_name(dest)}: its part is switched off by a --no-... flag")
        if value is OFF:  # an optional part switched off
            node[keys[-1]] = None
        elif isinstance(value, dict):  # an optional part switched on (its own options may fill it)
            node.setdefault(keys[-1], {})
        else:
            node[keys[-1]] = value
    return out


def given(args: argparse.Namespace, namespace: str) -> list[str]:
    """The flags given under ``namespace``, as typed (for messages)."""
    prefix = f"{namespace}{SEP}"
    return sorted(flag_name(d) for d, v in vars(args).items() if v is not None and d.startswith(prefix))


def parse_model(model: type[BaseModel], args: argparse.Namespace, namespace: str = "", **extra: Any) -> Any:
    """``model`` from the flags given (its defaults for the rest); InputError naming the flag that is wrong."""
    values = {k: v for k, v in collect(args, namespace).items() if k in model.model_fields}
    try:
        return model(**{**values, **extra})
    except ValidationError as exc:
        first = exc.errors()[0]
        path = SEP.join(str(p) for p in first["loc"])
        where = flag_name(f"{namespace}{SEP}{path}" if namespace else path)
        raise InputError(f"{where}: {first['msg']}") from exc
