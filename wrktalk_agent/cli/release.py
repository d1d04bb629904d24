"""`wrktalk-agent release add|sign|keygen|diff|list`: release artifacts and their keys."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from wrktalk_agent.cli.common import (
    Failure,
    _format,
    _time,
    load_settings,
    main,
    output_options,
    print_json,
    print_table,
    run_async,
    with_repo,
)
from wrktalk_agent.cli.release_params import ReleaseType, version_callback
from wrktalk_agent.safe_text import visible

if TYPE_CHECKING:
    from wrktalk_agent.db.repository import Repository


# -- releases --------------------------------------------------------------------------
@main.group()
def release() -> None:
    """Store release artifacts and manage signing keys."""


@release.command("add")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--version", "version", required=True, callback=version_callback, help="Release version."
)
@click.option(
    "--chart-type",
    type=ReleaseType(),
    required=True,
    help="Release type: one the installed deployers declare (see `wrktalk-agent plugins`).",
)
@click.option("--env-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--values-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--sign-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Ed25519 private key (PEM) to sign the release with.",
)
def release_add(
    file: Path,
    version: str,
    chart_type: str,
    env_file: Path | None,
    values_file: Path | None,
    sign_key: Path | None,
) -> None:
    """Store FILE (.tar, .tar.gz, .tgz) as release VERSION."""
    import hashlib
    import tarfile

    import asyncpg

    from wrktalk_agent.signing import Manifest, key_id, sign_manifest

    settings = load_settings()
    if not tarfile.is_tarfile(file):
        raise Failure(f"{file} is not a tar archive (.tar, .tar.gz or .tgz)", exit_code=2)
    # The backend normally writes releases; this command is for operators and tests and
    # reads the file whole (the agent itself streams artifacts).
    data = file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    env_data, values_data = (
        _text_file(env_file, "--env-file"),
        _text_file(values_file, "--values-file"),
    )
    signature = signer = None
    if sign_key is not None:
        manifest = Manifest.of(
            artifact_sha256=digest,
            version=version,
            chart_type=chart_type,
            env_data=env_data,
            values_data=values_data,
        )
        private_key = _private_key(sign_key)
        signature, signer = sign_manifest(private_key, manifest), key_id(private_key)

    async def add(repo: Repository) -> Any:
        if await repo.release_by_version(version) is not None:
            raise Failure(f"release {version} already exists", exit_code=2)
        try:
            return await repo.add_release(
                version=version,
                chart_type=chart_type,
                data=data,
                sha256=digest,
                env_data=env_data,
                values_data=values_data,
                signature=signature,
            )
        except asyncpg.UniqueViolationError:
            raise Failure(f"release {version} already exists", exit_code=2) from None

    info = run_async(with_repo(settings, add))
    signed = f", artifact, version, chart type, env and values signed by key {signer}"
    click.echo(
        f"stored release {version} ({info.size} bytes, sha256 {digest[:12]}…"
        f"{signed if signature else ''}) as {info.id}"
    )


def _private_key(path: Path) -> Any:
    from wrktalk_agent.signing import load_private_key

    try:
        return load_private_key(path.read_bytes())
    except (ValueError, TypeError) as exc:  # TypeError: an encrypted key (no passphrase)
        raise Failure(f"--sign-key {path}: {exc}", exit_code=2) from None


@release.command("sign")
@click.argument("version", callback=version_callback)
@click.option(
    "--sign-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Ed25519 private key (PEM) to sign with.",
)
def release_sign(version: str, sign_key: Path) -> None:
    """Sign release VERSION as it is stored now: its artifact (hashed as read), version,
    chart type, env and values. Signatures by other keys are kept while the content is
    unchanged (a vendor and an installation key, or an old and a new key)."""
    import tempfile

    from wrktalk_agent.artifacts import ArtifactError, fetch_artifact
    from wrktalk_agent.signing import Manifest, key_id, sign_manifest, signed_manifest

    settings = load_settings()
    private_key = _private_key(sign_key)

    async def sign(repo: Repository) -> tuple[Manifest, list[str], list[str]]:
        found = await repo.release_by_version(version)
        if found is None:
            raise Failure(
                f"no release {visible(version)}; store it first with `wrktalk-agent release add`",
                exit_code=2,
            )
        with tempfile.TemporaryDirectory(prefix="wrktalk-sign-") as scratch:
            try:
                fetched = await fetch_artifact(
                    repo, found, Path(scratch), max_bytes=settings.max_artifact_bytes
                )
            except ArtifactError as exc:
                raise Failure(visible(str(exc))) from None
        env_data, values_data = await repo.release_secrets(found.id)
        manifest = Manifest.of(
            artifact_sha256=fetched.sha256,
            version=found.release_version,
            chart_type=found.chart_type,
            env_data=env_data,
            values_data=values_data,
        )
        before = signed_manifest(found.signature)
        dropped = []
        if before is not None and before[0] != manifest:
            dropped = [k for k in before[1] if k != key_id(private_key)]
        text = sign_manifest(private_key, manifest, found.signature)
        if not await repo.set_release_signature(found.id, text, found.signature):
            raise Failure(f"release {version} changed while it was signed; sign it again")
        after = signed_manifest(text)
        assert after is not None
        return manifest, after[1], dropped

    manifest, keys, dropped = run_async(with_repo(settings, sign))
    click.echo(
        f"signed release {version}: {manifest.describe()} signed by key {key_id(private_key)}"
    )
    click.echo(f"  artifact sha256 {manifest.artifact}, chart type {visible(manifest.chart_type)}")
    for label, digest in (("env", manifest.env_data), ("values", manifest.values_data)):
        click.echo(f"  {label} sha256 {digest if digest is not None else '(absent)'}")
    click.echo(f"  signatures: {', '.join(keys)}")
    if dropped:
        click.echo(f"  dropped the signatures of {', '.join(dropped)}: they covered other content")


def _signed(signature: str | None) -> str:
    """The SIGNED column: the signing key ids, ``old scheme`` (refused by agents with
    trusted keys) or ``no``. Not verified here: the agent verifies before deploying."""
    from wrktalk_agent.signing import signed_manifest

    if not signature or not signature.strip():
        return "no"
    parsed = signed_manifest(signature)
    if parsed is None:
        return "old scheme" if not signature.strip().startswith("{") else "unreadable"
    return ",".join(parsed[1]) or "no"


def _text_file(path: Path | None, option: str) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text("utf-8")
    except UnicodeDecodeError as exc:
        raise Failure(
            f"{option} {path} is not UTF-8 text: {exc.reason} at byte {exc.start}", 2
        ) from None


@release.command("keygen")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("wrktalk-release-key"),
    show_default=True,
    help="Writes OUT (private key, 0600) and OUT.pub.",
)
def release_keygen(out: Path) -> None:
    """Create an Ed25519 key pair for signing releases."""

    from wrktalk_agent.signing import generate_keypair

    public_path = out.with_name(out.name + ".pub")
    for path in (out, public_path):
        if path.exists():
            raise Failure(f"{path} exists; refusing to overwrite a key", exit_code=2)
    private_pem, public_pem = generate_keypair()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem)
    from wrktalk_agent.signing import key_id, load_private_key

    click.echo(f"private key: {out} (keep it secret)\npublic key:  {public_path}")
    click.echo(f"key id:      {key_id(load_private_key(private_pem))}")
    click.echo(f"agents verify with WRKTALK_AGENT_TRUSTED_KEYS={public_path.resolve()}")


@release.command("diff")
@click.argument("versions", nargs=-1, required=True)
def release_diff(versions: tuple[str, ...]) -> None:
    """What deploying TO over FROM changes: release diff [FROM] TO (FROM: the current
    release). Asks the configured deployer (services, resources, images, ports)."""
    from wrktalk_agent.artifacts import ArtifactError, make_private_dir, materialize, secure_delete
    from wrktalk_agent.bootstrap import make_registry, plugin_context
    from wrktalk_agent.contract import DEPLOYER
    from wrktalk_agent.db.models import ArtifactInfo
    from wrktalk_agent.interfaces import BackendError
    from wrktalk_agent.signing import load_trusted_keys

    if len(versions) > 2:
        raise Failure("give at most two versions: [FROM] TO", exit_code=2)
    settings = load_settings()

    async def diff(repo: Repository) -> list[str]:
        registry = make_registry(settings)
        deployer = registry.instantiate(
            "deployer", settings.deployer_name, plugin_context(settings, repo)
        )
        describe = DEPLOYER.optional_method(deployer, "describe_changes")
        if describe is None:
            raise Failure(f"deployer {deployer.name!r} cannot describe changes", exit_code=2)
        releases: list[ArtifactInfo | None] = []
        for version in versions:
            found = await repo.release_by_version(version)
            if found is None:
                raise Failure(f"no release {visible(version)}", exit_code=2)
            releases.append(found)
        if len(releases) == 1:
            releases.insert(0, await repo.current_release())
        try:
            keys = load_trusted_keys(settings.trusted_keys)
        except ValueError as exc:
            raise Failure(f"WRKTALK_AGENT_TRUSTED_KEYS: {exc}", exit_code=2) from None
        workdirs: list[Path] = []
        try:
            roots: list[Path | None] = []
            for release in releases:
                if release is None:
                    roots.append(None)
                    continue
                workdir = make_private_dir(settings.work_dir, "diff-")
                workdirs.append(workdir)
                done = await materialize(
                    repo,
                    release,
                    workdir,
                    trusted_keys=keys,
                    max_artifact_bytes=settings.max_artifact_bytes,
                    max_members=settings.max_members,
                    max_extracted_bytes=settings.max_extracted_bytes,
                )
                roots.append(done.root)
            target = roots[1]
            assert target is not None
            return [str(line) for line in await describe(roots[0], target)]
        except (ArtifactError, BackendError) as exc:
            raise Failure(visible(str(exc))) from None
        finally:
            for workdir in workdirs:
                secure_delete(workdir)

    lines = run_async(with_repo(settings, diff))
    for line in lines or ["no change"]:
        click.echo(visible(line))


@release.command("list")
@output_options
def release_list(output: str, as_json: bool) -> None:
    """List stored releases (newest first)."""
    settings = load_settings()
    releases = run_async(with_repo(settings, lambda r: r.list_releases()))
    fmt = _format(output, as_json)
    if fmt == "json":
        print_json([r.model_dump(mode="json") for r in releases])
        return
    wide = fmt == "wide"
    columns = ["VERSION", "TYPE", "SIZE", "SHA256", "STATE"]
    if wide:
        columns += ["SIGNED", "ENV", "VALUES", "APPLIED", "CREATED", "ID"]
    rows = []
    for r in releases:
        state = "current" if r.is_current else "previous" if r.is_previous else "-"
        row: list[Any] = [r.release_version, r.chart_type, r.size, r.sha256[:12], state]
        if wide:
            row += [
                _signed(r.signature),
                "yes" if r.has_env else "no",
                "yes" if r.has_values else "no",
                _time(r.applied_at),
                _time(r.created_at),
                str(r.id),
            ]
        rows.append(row)
    print_table(columns, rows)
