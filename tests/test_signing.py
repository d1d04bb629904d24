"""Release signatures: what is signed, which keys are trusted, what is refused."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from wrktalk_agent.signing import (
    generate_keypair,
    load_private_key,
    load_trusted_keys,
    release_message,
    sign_release,
    verify_release,
)

DIGEST = hashlib.sha256(b"release 1.2.0").hexdigest()


@pytest.fixture
def keypair() -> tuple[bytes, bytes]:
    return generate_keypair()


def _raw_b64(public_pem: bytes) -> str:
    key = serialization.load_pem_public_key(public_pem)
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def test_the_signed_message_binds_digest_and_version() -> None:
    assert release_message(DIGEST.upper(), "1.2.0") == (
        b"wrktalk-release-v1\n1.2.0\n" + DIGEST.encode()
    )
    with pytest.raises(ValueError, match="not a sha256"):
        release_message("abc", "1.2.0")
    with pytest.raises(ValueError, match="invalid release version"):
        release_message(DIGEST, "1.2.0;rm -rf /")


def test_sign_and_verify_round_trip(keypair) -> None:
    private_pem, public_pem = keypair
    signature = sign_release(load_private_key(private_pem), DIGEST, "1.2.0")
    keys = load_trusted_keys([public_pem.decode()])
    assert verify_release(keys, signature, DIGEST, "1.2.0")
    assert verify_release(keys, signature, DIGEST.upper(), "1.2.0")  # hex case is not signed


def test_a_signature_does_not_transfer_to_another_version_or_digest(keypair) -> None:
    private_pem, public_pem = keypair
    signature = sign_release(load_private_key(private_pem), DIGEST, "1.2.0")
    keys = load_trusted_keys([public_pem.decode()])
    assert not verify_release(keys, signature, DIGEST, "1.3.0")
    assert not verify_release(keys, signature, hashlib.sha256(b"other").hexdigest(), "1.2.0")


def test_only_trusted_keys_verify_and_any_of_them_suffices(keypair) -> None:
    private_pem, public_pem = keypair
    _, stranger_pem = generate_keypair()
    signature = sign_release(load_private_key(private_pem), DIGEST, "1.2.0")
    assert not verify_release(
        load_trusted_keys([stranger_pem.decode()]), signature, DIGEST, "1.2.0"
    )
    both = load_trusted_keys([stranger_pem.decode(), public_pem.decode()])
    assert verify_release(both, signature, DIGEST, "1.2.0")
    assert not verify_release([], signature, DIGEST, "1.2.0")


@pytest.mark.parametrize("garbage", ["", "not base64!", base64.b64encode(b"short").decode()])
def test_malformed_signatures_are_false_not_errors(keypair, garbage: str) -> None:
    keys = load_trusted_keys([keypair[1].decode()])
    assert verify_release(keys, garbage, DIGEST, "1.2.0") is False
    assert verify_release(keys, base64.b64encode(b"x" * 64).decode(), "zz", "1.2.0") is False


def test_trusted_keys_as_pem_raw_base64_and_files(keypair, tmp_path: Path) -> None:
    private_pem, public_pem = keypair
    pem_file = tmp_path / "release.pub"
    pem_file.write_bytes(public_pem)
    raw_file = tmp_path / "release.b64"
    raw_file.write_text(_raw_b64(public_pem) + "\n")

    keys = load_trusted_keys(
        [public_pem.decode(), _raw_b64(public_pem), str(pem_file), str(raw_file)]
    )

    signature = sign_release(load_private_key(private_pem), DIGEST, "1.2.0")
    assert len(keys) == 4
    for key in keys:
        assert verify_release([key], signature, DIGEST, "1.2.0")


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
