"""Settings of the smtp notifier (``WRKTALK_AGENT_SMTP_*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import DirectoryPath, Field, FilePath, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

TlsMode = Literal["starttls", "tls", "none"]


class SmtpSettings(BaseSettings):
    """Environment settings of the smtp notifier.

    ``host``, ``port``, ``user``, ``password`` and ``sender`` are optional: when set they
    override the matching ``deployment_config`` columns, which are read before each send.
    """

    model_config = SettingsConfigDict(env_prefix="WRKTALK_AGENT_SMTP_", extra="ignore")

    host: str | None = Field(
        default=None, description="SMTP server; overrides deployment_config.smtp_host."
    )
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="SMTP port; overrides deployment_config.smtp_port. Without either: "
        "587 for starttls, 465 for tls, 25 for none.",
    )
    user: str | None = Field(
        default=None, description="Login name for AUTH; overrides deployment_config.smtp_user."
    )
    password: SecretStr | None = Field(
        default=None, description="Password for AUTH; overrides deployment_config.smtp_password."
    )
    sender: str | None = Field(
        default=None,
        description="From address, e.g. 'WrkTalk <noreply@example.com>'; overrides "
        "deployment_config.smtp_from.",
    )
    tls: TlsMode = Field(
        default="starttls",
        description="starttls: plain connect, then a required STARTTLS upgrade; "
        "tls: TLS from the first byte (implicit TLS, usually port 465); none: no encryption.",
    )
    allow_insecure_auth: bool = Field(
        default=False,
        description="Allow sending the password over an unencrypted connection (tls=none).",
    )
    ca_file: FilePath | None = Field(
        default=None, description="PEM file of CA certificates to trust instead of the system's."
    )
    verify_hostname: bool = Field(
        default=True,
        description="Check that the server certificate names the host (the chain is "
        "verified either way).",
    )
    timeout: float = Field(
        default=30.0, gt=0, description="Seconds allowed for each network operation."
    )
    retries: int = Field(
        default=3, ge=0, description="Retries per recipient after a temporary failure."
    )
    retry_backoff: float = Field(
        default=2.0,
        ge=0,
        description="Seconds before the first retry; doubled before each further retry.",
    )
    template_dir: DirectoryPath | None = Field(
        default=None,
        description="Directory whose body.txt.j2 / body.html.j2 replace the shipped templates.",
    )
