"""Release signatures: what is signed, which keys are trusted, what is refused — down to
a real signed release whose stored fields are tampered with in the database."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from wrktalk_agent.signing import (
    SCHEME,
    Manifest,
    SignatureError,
    generate_keypair,
    key_id,
    load_private_key,
    load_trusted_keys,
    sign_manifest,
    signed_manifest,
    verify_release,
)
from wrktalk_agent.testing import add_release, make_tarball

DIGEST = hashlib.sha256(b"release 1.2.0").hexdigest()
MANIFEST = Manifest.of(
    artifact_sha256=DIGEST,
    version="1.2.0",
    chart_type="compose",
    env_data="GREETING=hi\n",
    values_data=None,
)


@pytest.fixture
def keypair() -> tuple[bytes, bytes]:
    return generate_keypair()


def _raw_b64(public_pem: bytes) -> str:
    key = serialization.load_pem_public_key(public_pem)
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def test_the_signed_message_is_the_scheme_and_the_canonical_manifest() -> None:
    body = {
        "artifact": DIGEST,
        "chart_type": "compose",
        "env_data": hashlib.sha256(b"GREETING=hi\n").hexdigest(),
        "values_data": None,
        "version": "1.2.0",
    }
    assert MANIFEST.message() == (
        SCHEME.encode() + b"\n" + json.dumps(body, separators=(",", ":")).encode()
    )
    assert Manifest.of(
        artifact_sha256=DIGEST.upper(), version="1.2.0", chart_type="compose",
        env_data="GREETING=hi\n", values_data=None,
    ) == MANIFEST  # fmt: skip
    with pytest.raises(ValueError, match="invalid release version"):
        Manifest.of(
            artifact_sha256=DIGEST, version="1.2.0;rm -rf /", chart_type="compose",
            env_data=None, values_data=None,
        ).message()  # fmt: skip


def test_absent_is_not_empty() -> None:
    absent = Manifest.of(
        artifact_sha256=DIGEST, version="1", chart_type="helm", env_data=None, values_data=None
    )
    empty = Manifest.of(
        artifact_sha256=DIGEST, version="1", chart_type="helm", env_data="", values_data=""
    )
    assert absent.differences(empty) == ["env_data", "values_data"]
    assert absent.describe() == "artifact, version, chart type, env (absent) and values (absent)"
    assert empty.describe() == "artifact, version, chart type, env and values"


def test_sign_and_verify_names_the_key_and_what_it_covered(keypair) -> None:
    private_pem, public_pem = keypair
    private = load_private_key(private_pem)
    stored = sign_manifest(private, MANIFEST)
    verified = verify_release(load_trusted_keys([public_pem.decode()]), stored, MANIFEST)
    assert verified.key == key_id(private) and verified.key.startswith("ed25519:")
    assert verified.describe() == (
        f"artifact, version, chart type, env and values (absent) signed by key {verified.key}"
    )


@pytest.mark.parametrize(
    ("change", "column"),
    [
        ({"artifact_sha256": hashlib.sha256(b"other").hexdigest()}, "artifact_data"),
        ({"version": "1.3.0"}, "release_version"),
        ({"chart_type": "helm"}, "chart_type"),
        ({"env_data": "GREETING=$(id)\n"}, "env_data"),
        ({"env_data": None}, "env_data"),
        ({"values_data": ""}, "values_data"),
    ],
)
def test_every_field_is_covered_and_a_change_is_named(keypair, change, column) -> None:
    private_pem, public_pem = keypair
    stored = sign_manifest(load_private_key(private_pem), MANIFEST)
    fields = {
        "artifact_sha256": DIGEST, "version": "1.2.0", "chart_type": "compose",
        "env_data": "GREETING=hi\n", "values_data": None,
    } | change  # fmt: skip
    actual = Manifest.of(**fields)
    with pytest.raises(SignatureError, match=rf"^release {actual.version}: {column} changed after"):
        verify_release(load_trusted_keys([public_pem.decode()]), stored, actual)


def test_a_forged_manifest_does_not_verify(keypair) -> None:
    """A database writer rewriting the stored manifest to match tampered fields."""
    private_pem, public_pem = keypair
    document = json.loads(sign_manifest(load_private_key(private_pem), MANIFEST))
    document["manifest"]["env_data"] = hashlib.sha256(b"GREETING=$(id)\n").hexdigest()
    forged = Manifest.from_json(document["manifest"])
    with pytest.raises(SignatureError, match="does not verify with any trusted key"):
        verify_release(load_trusted_keys([public_pem.decode()]), json.dumps(document), forged)


def test_co_signing_keeps_other_keys_until_the_content_changes(keypair) -> None:
    vendor = load_private_key(keypair[0])
    installation = load_private_key(generate_keypair()[0])
    stored = sign_manifest(installation, MANIFEST, sign_manifest(vendor, MANIFEST))
    parsed = signed_manifest(stored)
    assert parsed is not None and parsed[1] == [key_id(vendor), key_id(installation)]
    # each key alone verifies the co-signed release
    for key in (vendor, installation):
        assert verify_release([key.public_key()], stored, MANIFEST).key == key_id(key)
    # re-signing other content starts over: the vendor did not vouch for it
    other = Manifest.of(
        artifact_sha256=DIGEST, version="1.2.0", chart_type="compose",
        env_data="GREETING=changed\n", values_data=None,
    )  # fmt: skip
    resigned = signed_manifest(sign_manifest(installation, other, stored))
    assert resigned is not None and resigned[1] == [key_id(installation)]


def test_unsigned_old_scheme_garbage_and_untrusted_are_refused(keypair) -> None:
    keys = load_trusted_keys([keypair[1].decode()])
    with pytest.raises(SignatureError, match=r"^release 1.2.0 is not signed and trusted keys"):
        verify_release(keys, None, MANIFEST)
    old = base64.b64encode(b"x" * 64).decode()
    with pytest.raises(
        SignatureError,
        match=r"^release 1.2.0 has a signature of the old scheme, which covers only the "
        r"artifact and the version .*; re-sign it: wrktalk-agent release sign 1.2.0 --sign-key",
    ):
        verify_release(keys, old, MANIFEST)
    for garbage in ("{", '{"scheme": "x"}', f'{{"scheme": "{SCHEME}", "manifest": {{}}}}'):
        with pytest.raises(SignatureError, match="the signature is unreadable"):
            verify_release(keys, garbage, MANIFEST)
    stranger = sign_manifest(load_private_key(generate_keypair()[0]), MANIFEST)
    with pytest.raises(SignatureError, match="does not verify with any trusted key"):
        verify_release(keys, stranger, MANIFEST)
    bad_sig = json.loads(sign_manifest(load_private_key(keypair[0]), MANIFEST))
    bad_sig["signatures"][0]["sig"] = "not base64!"
    with pytest.raises(SignatureError, match="does not verify with any trusted key"):
        verify_release(keys, json.dumps(bad_sig), MANIFEST)


def test_trusted_keys_as_pem_raw_base64_and_files(keypair, tmp_path: Path) -> None:
    private_pem, public_pem = keypair
    pem_file = tmp_path / "release.pub"
    pem_file.write_bytes(public_pem)
    raw_file = tmp_path / "release.b64"
    raw_file.write_text(_raw_b64(public_pem) + "\n")

    keys = load_trusted_keys(
        [public_pem.decode(), _raw_b64(public_pem), str(pem_file), str(raw_file)]
    )

    stored = sign_manifest(load_private_key(private_pem), MANIFEST)
    assert len(keys) == 4
    for key in keys:
        assert verify_release([key], stored, MANIFEST).key == key_id(key)


def test_bad_entries_are_named(keypair, tmp_path: Path) -> None:
    good = keypair[1].decode()
    with pytest.raises(ValueError, match=r"trusted key #2 \(/nowhere/key.pem\): neither PEM"):
        load_trusted_keys([good, "/nowhere/key.pem"])

    garbage = tmp_path / "garbage.pub"
    garbage.write_text("hello\n")
    with pytest.raises(ValueError, match=r"#1 \(.*garbage.pub\): the file holds neither"):
        load_trusted_keys([str(garbage)])

    with pytest.raises(ValueError, match=r"#1 \(-----BEGIN PUBLIC KEY-----\): not a valid PEM"):
        load_trusted_keys(["-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"])


def test_a_non_ed25519_key_is_refused() -> None:
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValueError, match="is an EC key, not an Ed25519 public key"):
        load_trusted_keys([ec_pem.decode()])
    ec_private = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="is an EC key, not an Ed25519 key"):
        load_private_key(ec_private)


# -- a real signed release, tampered with in the database ---------------------------------

DEPLOY_SCRIPT = """#!/bin/sh
set -a; . ./.env; set +a
echo "deployed $WRKTALK_RELEASE_VERSION greeting=$GREETING" >> {ran}
"""
ENV = "GREETING=hello\n"
VALUES = "replicas: 2\n"


@pytest.fixture
def signing_keys(tmp_path: Path) -> dict[str, tuple[object, str]]:
    """A vendor and an installation key: private key and public key file."""
    keys = {}
    for name in ("vendor", "installation"):
        private_pem, public_pem = generate_keypair()
        (tmp_path / f"{name}.pub").write_bytes(public_pem)
        keys[name] = (load_private_key(private_pem), str(tmp_path / f"{name}.pub"))
    return keys


@pytest.fixture
def script_settings(agent_settings, signing_keys, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WRKTALK_AGENT_SCRIPT_WORKING_DIR", str(tmp_path / "script"))
    return agent_settings.model_copy(
        update={
            "deployer": "script",
            "trusted_keys": [signing_keys["vendor"][1], signing_keys["installation"][1]],
        }
    )


async def _signed_release(repo, tmp_path: Path, signing_keys, version: str = "1.0.0"):
    """Stored as `release add --sign-key` stores it (vendor), co-signed by the installation
    as `release sign` does."""
    data = make_tarball({"deploy": DEPLOY_SCRIPT.format(ran=tmp_path / "ran")})
    manifest = Manifest.of(
        artifact_sha256=hashlib.sha256(data).hexdigest(),
        version=version,
        chart_type="compose",
        env_data=ENV,
        values_data=VALUES,
    )
    vendor, installation = signing_keys["vendor"][0], signing_keys["installation"][0]
    signature = sign_manifest(installation, manifest, sign_manifest(vendor, manifest))
    return await add_release(
        repo, version, data=data, env_data=ENV, values_data=VALUES, signature=signature
    )


async def _deploy(make_agent, settings, repo, release):
    task = await repo.create_task("deploy", release.id)
    code = await (await make_agent(settings)).run(once=True)
    return code, await repo.get_task(task.id), await repo.task_events(task.id)


async def test_an_untampered_release_signed_by_two_trusted_keys_deploys(
    make_agent, script_settings, repo, signing_keys, tmp_path: Path
) -> None:
    release = await _signed_release(repo, tmp_path, signing_keys)
    code, task, events = await _deploy(make_agent, script_settings, repo, release)
    assert (code, task.status) == (0, "completed"), task.error_message
    assert (tmp_path / "ran").read_text() == "deployed 1.0.0 greeting=hello\n"
    vendor_id = key_id(signing_keys["vendor"][0])
    verified = [e.message for e in events if e.message.startswith("verified sha256")]
    assert verified == [
        f"verified sha256 {release.sha256[:12]}…; artifact, version, chart type, env and "
        f"values signed by key {vendor_id}"
    ]


async def test_the_installation_key_alone_verifies_its_co_signature(
    make_agent, script_settings, repo, signing_keys, tmp_path: Path
) -> None:
    release = await _signed_release(repo, tmp_path, signing_keys)
    only_installation = script_settings.model_copy(
        update={"trusted_keys": [signing_keys["installation"][1]]}
    )
    _, task, events = await _deploy(make_agent, only_installation, repo, release)
    assert task.status == "completed", task.error_message
    installation_id = key_id(signing_keys["installation"][0])
    assert any(e.message.endswith(f"signed by key {installation_id}") for e in events)


TAMPERING = {
    # field: (SQL setting it, the column named in the refusal)
    "env_data": ("env_data = $2", "GREETING=$(touch {pwned}; echo hi)\n", "env_data"),
    "values_data": ("values_data = $2", "replicas: 20\n", "values_data"),
    "values_data removed": ("values_data = NULL WHERE $2::text IS NOT NULL AND", "", "values_data"),
    "chart_type": ("chart_type = $2", "helm", "chart_type"),
    "version": ("release_version = $2", "6.6.6", "release_version"),
    "artifact": ("artifact_data = $2::bytea, sha256 = $3", "", "artifact_data"),
}


@pytest.mark.parametrize("field", list(TAMPERING))
async def test_a_tampered_field_is_refused_before_any_command_runs(
    make_agent, script_settings, repo, signing_keys, tmp_path: Path, field: str
) -> None:
    release = await _signed_release(repo, tmp_path, signing_keys)
    assignment, value, column = TAMPERING[field]
    pwned = tmp_path / "pwned"
    if field == "artifact":  # other bytes with a matching sha256: only the signature sees it
        evil = make_tarball({"deploy": f"#!/bin/sh\ntouch {pwned}\n"})
        await repo.pool.execute(
            f"UPDATE release_artifact SET {assignment} WHERE id = $1",
            release.id,
            evil,
            hashlib.sha256(evil).hexdigest(),
        )
    elif "WHERE" in assignment:
        set_part, condition = assignment.split(" WHERE ")
        await repo.pool.execute(
            f"UPDATE release_artifact SET {set_part} WHERE {condition} id = $1", release.id, value
        )
    else:
        await repo.pool.execute(
            f"UPDATE release_artifact SET {assignment} WHERE id = $1",
            release.id,
            value.format(pwned=pwned),
        )
    version = "6.6.6" if field == "version" else "1.0.0"

    code, task, events = await _deploy(make_agent, script_settings, repo, release)

    assert (code, task.status) == (1, "failed")
    assert task.error_message.startswith(f"release {version}: {column} changed after signing")
    assert not (tmp_path / "ran").exists() and not pwned.exists(), "a command ran"
    assert not (tmp_path / "script").exists(), "the deployer was reached"
    steps = {e.step for e in events}
    assert "deploy" not in steps and "validate" not in steps
    assert not any("signed by key" in e.message for e in events)


async def test_a_release_of_the_old_scheme_is_refused_naming_the_fix(
    make_agent, script_settings, repo, signing_keys, tmp_path: Path
) -> None:
    data = make_tarball({"deploy": DEPLOY_SCRIPT.format(ran=tmp_path / "ran")})
    old = base64.b64encode(
        signing_keys["vendor"][0].sign(  # type: ignore[attr-defined]
            b"wrktalk-release-v1\n1.0.0\n" + hashlib.sha256(data).hexdigest().encode()
        )
    ).decode()
    release = await add_release(repo, "1.0.0", data=data, env_data=ENV, signature=old)
    _, task, _ = await _deploy(make_agent, script_settings, repo, release)
    assert task.status == "failed"
    assert "re-sign it: wrktalk-agent release sign 1.0.0 --sign-key KEY" in task.error_message
    assert not (tmp_path / "ran").exists()


# -- the commands: keygen, release add --sign-key, release sign, release list ------------


def test_the_vendor_signs_at_add_the_installation_re_signs_its_values(
    database_url: str, tmp_path: Path, monkeypatch
) -> None:
    """Synchronous: the commands run their own event loop."""
    import asyncio

    import asyncpg
    from click.testing import CliRunner

    from wrktalk_agent.cli import main

    for key in [k for k in __import__("os").environ if k.startswith("WRKTALK_AGENT_")]:
        monkeypatch.delenv(key)
    env = {"WRKTALK_AGENT_DATABASE_URL": database_url, "WRKTALK_AGENT_WORK_DIR": str(tmp_path)}

    def cli(*args: str):
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)

    ids = {}
    for name in ("vendor", "installation"):
        made = cli("release", "keygen", "--out", str(tmp_path / name))
        assert made.exit_code == 0, made.output
        ids[name] = made.output.split("key id:")[1].split()[0]
    tarball, env_file = tmp_path / "r.tgz", tmp_path / "vendor.env"
    tarball.write_bytes(make_tarball({"README": "1.0.0"}))
    env_file.write_text("MODE=vendor\n")

    added = cli(
        "release", "add", str(tarball), "--version", "1.0.0", "--chart-type", "compose",
        "--env-file", str(env_file), "--sign-key", str(tmp_path / "vendor"),
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert f"artifact, version, chart type, env and values signed by key {ids['vendor']}" in (
        added.output
    )

    def sql(query: str, *args: object):
        async def run():
            conn = await asyncpg.connect(database_url)
            try:
                return await conn.fetchrow(query, *args)
            finally:
                await conn.close()

        return asyncio.run(run())

    sql(  # the installation's backend writes its own configuration
        "UPDATE release_artifact SET env_data = $1, values_data = $2 WHERE release_version = $3",
        "MODE=installation\n", "replicas: 3\n", "1.0.0",
    )  # fmt: skip

    signed = cli("release", "sign", "1.0.0", "--sign-key", str(tmp_path / "installation"))
    assert signed.exit_code == 0, signed.output
    assert signed.output.splitlines()[0] == (
        "signed release 1.0.0: artifact, version, chart type, env and values signed by key "
        + ids["installation"]
    )
    env_digest = hashlib.sha256(b"MODE=installation\n").hexdigest()
    assert f"env sha256 {env_digest}" in signed.output
    assert f"dropped the signatures of {ids['vendor']}" in signed.output
    # the vendor checks the installation's values and co-signs: both signatures stay
    cosigned = cli("release", "sign", "1.0.0", "--sign-key", str(tmp_path / "vendor"))
    assert f"signatures: {ids['installation']}, {ids['vendor']}" in cosigned.output
    assert f"{ids['installation']},{ids['vendor']}" in cli("release", "list", "-o", "wide").output

    stored = sql("SELECT sha256, signature FROM release_artifact WHERE release_version = '1.0.0'")
    actual = Manifest.of(
        artifact_sha256=stored["sha256"], version="1.0.0", chart_type="compose",
        env_data="MODE=installation\n", values_data="replicas: 3\n",
    )  # fmt: skip
    for name in ("vendor", "installation"):
        key = load_trusted_keys([str(tmp_path / f"{name}.pub")])
        assert verify_release(key, stored["signature"], actual).key == ids[name]

    missing = cli("release", "sign", "9.9.9", "--sign-key", str(tmp_path / "vendor"))
    assert missing.exit_code == 2 and "no release 9.9.9" in missing.output
