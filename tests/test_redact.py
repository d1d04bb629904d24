"""Secret redaction and the shared escaping function: examples and properties."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from wrktalk_agent.redact import MASK, Redactor
from wrktalk_agent.safe_text import visible, visible_value

ENV = (
    'DB_PASSWORD="pa ss\\"word"\n'
    "export API_TOKEN=tok-123456 # rotated monthly\n"
    "SITE_NAME=acme-production\n"
    "PORT=8080\n"
    "DEBUG=true\n"
    "REDIS_URL=redis://app:redispass@redis:6379/0\n"
)
VALUES = """
image: registry.local/wrktalk/api:1.4.0
replicas: 3
db:
  password: yaml-db-pass
credentials:
  user: admin-user
tls:
  key: |
    -----BEGIN KEY-----
    FIRSTLINEOFTHEKEY
    -----END KEY-----
generated: Zx81HfGq2LmN0pRt5sUv7wXy
"""


def test_every_env_value_and_secret_looking_yaml_scalar_is_masked() -> None:
    r = Redactor(ENV, VALUES, extra=["smtp-pass-9", None, ""])
    output = (
        'password pa ss"word token tok-123456 site acme-production redis redispass '
        "db yaml-db-pass user admin-user key FIRSTLINEOFTHEKEY gen Zx81HfGq2LmN0pRt5sUv7wXy "
        "smtp smtp-pass-9 port 8080 debug true replicas 3 image registry.local/wrktalk/api:1.4.0"
    )
    masked = r.redact(output)
    secrets = [
        'pa ss"word', "tok-123456", "acme-production", "redispass", "yaml-db-pass",
        "admin-user", "FIRSTLINEOFTHEKEY", "Zx81HfGq2LmN0pRt5sUv7wXy", "smtp-pass-9",
    ]  # fmt: skip
    for secret in secrets:
        assert secret not in masked
    # short values, plain numbers/booleans and non-secret YAML stay readable
    assert "port 8080 debug true replicas 3 image registry.local/wrktalk/api:1.4.0" in masked


def test_longest_secret_wins_and_json_escaped_forms_are_masked() -> None:
    r = Redactor("A=abcd\nB=abcdefgh\nC=qu\"ote'x\n")
    assert r.redact("abcdefgh abcd") == f"{MASK} {MASK}"
    assert r.redact('{"c": "qu\\"ote\'x"}') == '{"c": "***"}'


def test_the_result_dict_is_redacted_everywhere() -> None:
    r = Redactor("TOKEN=hunter2-secret\n")
    result = {"deployer": {"output": "x hunter2-secret y", "lines": ["hunter2-secret"]}, "n": 1}
    assert r.redact_value(result) == {"deployer": {"output": "x *** y", "lines": ["***"]}, "n": 1}


def test_hostile_inputs_do_not_raise() -> None:
    r = Redactor(b"A=\xff\xfe-not-utf8\nB=nul\x00byte-secret\n", "{{{ not: [yaml", ["x"])
    assert "nul\x00byte-secret" not in r.redact("see nul\x00byte-secret")
    broken = Redactor(None, "password: line-scanned-pw\n  : : [\n")
    assert broken.redact("line-scanned-pw") == MASK
    bomb = "a: &a [x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    assert Redactor(None, bomb).redact("x") == "x"  # aliases are walked once


def test_ten_megabytes_of_values_is_bounded() -> None:
    big = "".join(f"service{i}:\n  password: pw-{i:07d}\n" for i in range(300_000))
    assert len(big) > 10_000_000
    r = Redactor(None, big)
    assert r.count <= 10_000
    assert r.redact("nothing secret here") == "nothing secret here"


secret_text = st.text(
    alphabet=string.ascii_letters + string.digits + "-_.!@%", min_size=4, max_size=40
)


@settings(max_examples=200, deadline=None)
@given(secrets=st.lists(secret_text, min_size=1, max_size=8), noise=st.text(max_size=200))
def test_no_env_secret_survives_in_any_surrounding_text(secrets: list[str], noise: str) -> None:
    env = "".join(f"K{i}_PASSWORD={s}\n" for i, s in enumerate(secrets))
    r = Redactor(env)
    masked = r.redact(noise + " ".join(secrets) + noise)
    for s in secrets:
        assert s not in masked


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_without_secrets_redaction_changes_nothing(text: str) -> None:
    assert Redactor().redact(text) == text


@given(text=st.text())
def test_visible_leaves_no_control_character_and_is_idempotent(text: str) -> None:
    shown = visible(text)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in shown)
    assert not any(c in shown for c in "\u202e\u2066\u2028")
    assert visible(shown) == shown
    shown.encode("utf-8")  # no lone surrogate left


def test_visible_examples() -> None:
    assert visible("v\x1b[2J1") == "v\\x1b[2J1"
    assert visible("a\r\nb\tc") == "a\\x0d\\x0ab\\x09c"
    assert visible("a\r\nb\tc", newlines=True) == "a\nb\tc"
    assert visible("\u202egnp.exe") == "\\u202egnp.exe"
    assert visible("[/]oops[/bold] ünïcödé 漢字") == "[/]oops[/bold] ünïcödé 漢字"
    assert visible(None) == ""
    assert visible_value({"k\x07": ["\x9b", 1]}) == {"k\\x07": ["\\x9b", 1]}


def test_log_lines_inside_redacting_are_masked_tracebacks_too(capsys) -> None:
    import json as _json

    from wrktalk_agent.log import configure_logging, get_logger, redacting

    configure_logging("info", "json")
    log = get_logger()
    with redacting(Redactor("API_TOKEN=tok-in-the-log\n")):
        try:
            raise RuntimeError("deploy printed tok-in-the-log")
        except RuntimeError:
            log.exception("task.crashed", output="x tok-in-the-log y")
    log.info("after", output="tok-in-the-log")  # outside the block: not this task's secret
    lines = [_json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert "tok-in-the-log" not in _json.dumps(lines[0])
    assert lines[0]["output"] == "x *** y" and "***" in lines[0]["exception"]
    assert lines[1]["output"] == "tok-in-the-log"


def test_console_log_lines_show_escapes(capsys) -> None:
    from wrktalk_agent.log import configure_logging, get_logger

    configure_logging("info", "console")
    get_logger().info("step", message="\x1b[2Jwiped\u202e")
    err = capsys.readouterr().err
    assert "\\x1b[2Jwiped\\u202e" in err and "\x1b" not in err  # no colours: not a tty
