"""Settings base for the three services, and the CLI flags generated from them.

Every setting comes from a flag, an environment variable (``COSMA_<SERVICE>_<NAME>``) or
its default, and is validated once at start. The cluster token is read only from
``COSMA_TOKEN`` or a token file, never from a flag (flags show up in ``ps``).
"""

from __future__ import annotations

import argparse
import socket
import typing
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.auth import load_token

_NO_CLI = {"cli": False}


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(populate_by_name=True, extra="forbid")

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(0, ge=0, le=65535, description="port to listen on")
    node_id: str = Field(default_factory=socket.gethostname, description="name of this node")
    token: SecretStr | None = Field(
        None, validation_alias="COSMA_TOKEN", description="cluster token", json_schema_extra=_NO_CLI
    )
    token_file: Path | None = Field(None, description="file holding the cluster token")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    log_format: Literal["text", "json"] = Field("text", description="log lines as text or one JSON object each")

    def resolved_token(self) -> str:
        return load_token(self.token.get_secret_value() if self.token else None, self.token_file)


def _env_name(cls: type[BaseSettings], name: str, field) -> str:
    if isinstance(field.validation_alias, str):
        return field.validation_alias
    return (cls.model_config.get("env_prefix", "") + name).upper()


def _is_list(annotation) -> bool:
    return typing.get_origin(annotation) in (list, typing.List)


def _scalar_type(annotation):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (list, typing.List, typing.Union) or len(args) == 1:
        annotation = args[0] if args else str
    if typing.get_origin(annotation) is typing.Literal:
        return str
    return annotation if annotation in (int, float, str, Path) else str


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type[ServiceSettings]) -> None:
    """One ``--flag`` per setting; the help says its default and environment variable."""
    for name, field in cls.model_fields.items():
        extra = field.json_schema_extra or {}
        if isinstance(extra, dict) and extra.get("cli") is False:
            continue
        flag = "--" + name.replace("_", "-")
        default = field.default_factory() if field.default_factory else field.default
        shown = default if not isinstance(default, list) else (", ".join(map(str, default)) or "none")
        help_text = f"{field.description or name} (default: {shown}; env: {_env_name(cls, name, field)})"
        kwargs: dict = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif _is_list(field.annotation):
            parser.add_argument(flag, action="append", type=_scalar_type(field.annotation), **kwargs)
        else:
            parser.add_argument(flag, type=_scalar_type(field.annotation), **kwargs)


def settings_from_args(cls: type[ServiceSettings], args: argparse.Namespace) -> ServiceSettings:
    """Build settings from parsed flags over the environment; exit with a readable message."""
    given = {k: v for k, v in vars(args).items() if k in cls.model_fields}
    try:
        settings = cls(**given)
        settings.resolved_token()
    except ValidationError as exc:
        lines = [f"  --{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}" for e in exc.errors()]
        raise SystemExit("invalid settings:\n" + "\n".join(lines)) from None
    except ValueError as exc:
        raise SystemExit(f"cannot start: {exc}") from None
    return settings
