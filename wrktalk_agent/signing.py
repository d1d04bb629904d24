"""Ed25519 release signatures.

A signature covers the release's sha256 *and* its version, so a validly signed artifact
cannot be replayed under another version (e.g. an old, vulnerable build stored as a new
version number). The signed message is::

    b"wrktalk-release-v1\\n" + version + b"\\n" + sha256 as lowercase hex

Trusted public keys come from ``WRKTALK_AGENT_TRUSTED_KEYS``: each entry is PEM text, a
base64 raw 32-byte key, or a path to a file holding either.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from wrktalk_agent.interfaces import validate_version

__all__ = [
    "generate_keypair",
    "load_private_key",
    "load_trusted_keys",
    "release_message",
    "sign_release",
    "verify_release",
]

MESSAGE_PREFIX = b"wrktalk-release-v1\n"
_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


def release_message(sha256_hex: str, version: str) -> bytes:
    """The exact bytes that are signed for ``version`` with digest ``sha256_hex``."""
    if not _SHA256_HEX.fullmatch(sha256_hex):
        raise ValueError(f"not a sha256 hex digest: {sha256_hex!r}")
    validate_version(version)
    return MESSAGE_PREFIX + version.encode() + b"\n" + sha256_hex.lower().encode()


def sign_release(private_key: Ed25519PrivateKey, sha256_hex: str, version: str) -> str:
    """The base64 signature to store in ``release_artifact.signature``."""
    signature = private_key.sign(release_message(sha256_hex, version))
    return base64.b64encode(signature).decode("ascii")


def verify_release(
    keys: Sequence[Ed25519PublicKey], signature_b64: str, sha256_hex: str, version: str
) -> bool:
    """True when any of ``keys`` signed this digest and version. Malformed input is
    simply not a valid signature (False), never an exception."""
    try:
        signature = base64.b64decode(signature_b64.strip(), validate=True)
        message = release_message(sha256_hex, version)
    except (ValueError, binascii.Error):
        return False
    for key in keys:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return True
    return False


def generate_keypair() -> tuple[bytes, bytes]:
    """A new key pair as (private PKCS#8 PEM, public SubjectPublicKeyInfo PEM)."""
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def load_private_key(pem: bytes, password: bytes | None = None) -> Ed25519PrivateKey:
    """Parse a PEM private key (for ``release add --sign-key``); must be Ed25519."""
    key = serialization.load_pem_private_key(pem, password=password)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"the private key is an {_key_kind(key)} key, not an Ed25519 key")
    return key


def load_trusted_keys(entries: Iterable[str]) -> list[Ed25519PublicKey]:
    """Parse every entry; raise ``ValueError`` naming the first bad one."""
    keys = []
    for number, entry in enumerate(entries, start=1):
        try:
            keys.append(_parse_public_key(entry.strip()))
        except ValueError as exc:
            raise ValueError(f"trusted key #{number} ({_shorten(entry)}): {exc}") from None
    return keys


def _parse_public_key(entry: str) -> Ed25519PublicKey:
    if "-----BEGIN" in entry:
        return _from_pem(entry.encode())
    raw = _raw_key(entry)
    if raw is not None:
        return Ed25519PublicKey.from_public_bytes(raw)
    path = Path(entry).expanduser()
    if not path.is_file():
        raise ValueError("neither PEM text, nor a base64 32-byte Ed25519 key, nor a readable file")
    try:
        content = path.read_text("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the file: {exc}") from None
    if "-----BEGIN" in content:
        return _from_pem(content.encode())
    raw = _raw_key(content)
    if raw is None:
        raise ValueError("the file holds neither PEM nor a base64 32-byte Ed25519 key")
    return Ed25519PublicKey.from_public_bytes(raw)


def _from_pem(pem: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:  # cryptography's messages are long; keep it short
        raise ValueError(f"not a valid PEM public key ({str(exc).splitlines()[0]})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"is an {_key_kind(key)} key, not an Ed25519 public key")
    return key


def _key_kind(key: object) -> str:
    # cryptography's concrete classes are private (ECPublicKey...); name the algorithm.
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return "EC"
    return "unsupported"


def _raw_key(text: str) -> bytes | None:
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        return None
    return raw if len(raw) == 32 else None


def _shorten(entry: str) -> str:
    """Name an entry without flooding the message with a whole PEM block; a long path
    keeps its end, where the file name is."""
    first = entry.strip().splitlines()[0] if entry.strip() else "<empty>"
    return first if len(first) <= 60 else "..." + first[-57:]
