"""Ed25519 release signatures over everything that shapes a deploy.

A signature covers a *manifest* of every field of ``release_artifact`` the agent uses:

========================  ===================================================
``artifact``              sha256 of ``artifact_data`` (lowercase hex)
``version``               ``release_version``
``chart_type``            ``chart_type``
``env_data``              sha256 of the ``.env`` text (UTF-8), or ``null`` when absent
``values_data``           sha256 of the ``values.yaml`` text, or ``null`` when absent
========================  ===================================================

Absent is not empty: a signed release without ``.env`` cannot be given one, and an empty
one cannot be removed. The signed bytes are :data:`SCHEME` and a newline, followed by the
manifest as JSON with sorted keys and no spaces (:meth:`Manifest.message`).

``release_artifact.signature`` stores a JSON document: the scheme, the manifest (so a
refusal can name the field that changed) and one or more signatures, each with the id of
the key that made it (:func:`key_id`). Several signatures let a vendor and an installation
both sign, and let a key be rotated without a moment where releases verify with neither.
A release verifies when a signature by any trusted key verifies over the stored manifest
*and* the manifest matches the row as it is now.

Signatures of the first scheme (``wrktalk-release-v1``: a bare base64 signature over the
sha256 and the version only) are refused with the fix named: ``release sign`` re-signs.

Trusted public keys come from ``WRKTALK_AGENT_TRUSTED_KEYS``: each entry is PEM text, a
base64 raw 32-byte key, or a path to a file holding either.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from wrktalk_agent.interfaces import validate_version

__all__ = [
    "SCHEME",
    "Manifest",
    "SignatureError",
    "Verified",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_trusted_keys",
    "sign_manifest",
    "signed_manifest",
    "text_digest",
    "verify_release",
]

SCHEME = "wrktalk-release-v2"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
#: Manifest fields and the ``release_artifact`` columns they stand for (named in refusals).
FIELD_COLUMNS: dict[str, str] = {
    "artifact": "artifact_data",
    "version": "release_version",
    "chart_type": "chart_type",
    "env_data": "env_data",
    "values_data": "values_data",
}


class SignatureError(ValueError):
    """A release cannot be trusted; the message names why and, when it can, the fix."""


def text_digest(text: str | None) -> str | None:
    """sha256 (hex) of a ``.env`` or ``values.yaml`` text; ``None`` stays ``None``."""
    if text is None:
        return None
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """What a release signature vouches for (see the module docstring)."""

    artifact: str
    version: str
    chart_type: str
    env_data: str | None
    values_data: str | None

    @classmethod
    def of(
        cls,
        *,
        artifact_sha256: str,
        version: str,
        chart_type: str,
        env_data: str | None,
        values_data: str | None,
    ) -> Manifest:
        """The manifest of a release's fields (``env_data``/``values_data`` as text)."""
        return cls(
            artifact=artifact_sha256.strip().lower(),
            version=version,
            chart_type=str(chart_type),
            env_data=text_digest(env_data),
            values_data=text_digest(values_data),
        )

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        if not isinstance(data, dict) or set(data) != set(FIELD_COLUMNS):
            raise ValueError(
                f"the manifest must have exactly the fields {', '.join(FIELD_COLUMNS)}"
            )
        for name in ("artifact", "version", "chart_type"):
            if not isinstance(data[name], str):
                raise ValueError(f"manifest field {name} is not text")
        for name in ("artifact", "env_data", "values_data"):
            value = data[name]
            if value is not None and (not isinstance(value, str) or not _SHA256_HEX.match(value)):
                raise ValueError(f"manifest field {name} is not a sha256 hex digest")
        if data["artifact"] is None:
            raise ValueError("manifest field artifact is empty")
        return cls(**data)

    def message(self) -> bytes:
        """The exact bytes that are signed."""
        if not _SHA256_HEX.match(self.artifact):
            raise ValueError(f"not a sha256 hex digest: {self.artifact!r}")
        validate_version(self.version)
        body = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return SCHEME.encode() + b"\n" + body.encode()

    def differences(self, other: Manifest) -> list[str]:
        """The columns whose value differs between ``self`` and ``other``."""
        return [
            column
            for name, column in FIELD_COLUMNS.items()
            if getattr(self, name) != getattr(other, name)
        ]

    def describe(self) -> str:
        """What a signature over this manifest vouches for, in words."""
        env = "env" if self.env_data is not None else "env (absent)"
        values = "values" if self.values_data is not None else "values (absent)"
        return f"artifact, version, chart type, {env} and {values}"


@dataclass(frozen=True)
class Verified:
    """A verified release: which trusted key signed it, and what was covered."""

    key: str
    manifest: Manifest

    def describe(self) -> str:
        """For the timeline: exactly what was verified, never more."""
        return f"{self.manifest.describe()} signed by key {self.key}"


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """A short name of a key: ``ed25519:`` and 16 hex digits of the sha256 of its raw
    public bytes (what ``release keygen`` prints and refusals show)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def sign_manifest(
    private_key: Ed25519PrivateKey, manifest: Manifest, existing: str | None = None
) -> str:
    """The text to store in ``release_artifact.signature``. When ``existing`` is a
    document over the same manifest, its other keys' signatures are kept (co-signing,
    rotation); this key's earlier signature is replaced."""
    signatures: list[dict[str, str]] = []
    previous = _parse_document(existing) if existing else None
    if previous is not None and previous[0] == manifest:
        signatures = [s for s in previous[1] if s.get("key") != key_id(private_key)]
    signature = base64.b64encode(private_key.sign(manifest.message())).decode("ascii")
    signatures.append({"key": key_id(private_key), "sig": signature})
    document = {"scheme": SCHEME, "manifest": asdict(manifest), "signatures": signatures}
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def signed_manifest(stored: str | None) -> tuple[Manifest, list[str]] | None:
    """The manifest and the signing key ids of a stored document (``None`` when
    ``stored`` is not a readable document of the current scheme), unverified."""
    parsed = _parse_document(stored) if stored else None
    if parsed is None:
        return None
    return parsed[0], [s.get("key", "?") for s in parsed[1]]


def verify_release(
    keys: Sequence[Ed25519PublicKey], stored: str | None, actual: Manifest
) -> Verified:
    """Check a stored signature against the release's fields as they are now. Raises
    :class:`SignatureError` naming the problem; never another exception for bad input."""
    version = actual.version
    if not stored or not stored.strip():
        raise SignatureError(f"release {version} is not signed and trusted keys are configured")
    text = stored.strip()
    if not text.startswith("{"):
        raise SignatureError(
            f"release {version} has a signature of the old scheme, which covers only the "
            "artifact and the version (not chart type, env or values); re-sign it: "
            f"wrktalk-agent release sign {version} --sign-key KEY"
        )
    try:
        manifest, signatures = _load_document(text)
    except ValueError as exc:
        raise SignatureError(f"release {version}: the signature is unreadable: {exc}") from None
    by_id = {key_id(key): key for key in keys}
    signer = None
    for entry in signatures:
        key = by_id.get(entry.get("key", ""))
        if key is None:
            continue
        try:
            key.verify(base64.b64decode(entry.get("sig", ""), validate=True), manifest.message())
        except (InvalidSignature, ValueError, binascii.Error):
            continue
        signer = entry["key"]
        break
    if signer is None:
        raise SignatureError(f"release {version}: signature does not verify with any trusted key")
    changed = manifest.differences(actual)
    if changed:
        raise SignatureError(
            f"release {version}: {', '.join(changed)} changed after signing "
            f"(the signature by key {signer} covers other content); re-sign the release "
            "if the change is intended"
        )
    return Verified(signer, manifest)


def _load_document(text: str) -> tuple[Manifest, list[dict[str, str]]]:
    try:
        document = json.loads(text)
    except ValueError:
        raise ValueError("not JSON") from None
    if not isinstance(document, dict) or document.get("scheme") != SCHEME:
        raise ValueError(f"not a {SCHEME} document")
    manifest = Manifest.from_json(document.get("manifest"))
    signatures = document.get("signatures")
    if not isinstance(signatures, list) or not all(
        isinstance(s, dict) and all(isinstance(v, str) for v in s.values()) for s in signatures
    ):
        raise ValueError("signatures must be a list of {key, sig} objects")
    return manifest, signatures


def _parse_document(text: str | None) -> tuple[Manifest, list[dict[str, str]]] | None:
    try:
        return _load_document(text or "")
    except ValueError:
        return None


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
