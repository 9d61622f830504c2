"""Secrets in source text (pure): find them with precise patterns and redact them, every line kept in place.

A secret is replaced by `[REDACTED:<kind>]` followed by the line breaks it spanned, so a redacted file
has exactly the lines of the original and every line without a secret is unchanged: chunk line numbers
and citations stay those of the file on disk. Byte offsets after a redaction on the same line, and
after a multi-line block, are offsets into the redacted text, which is the text that is stored. A
multi-line PEM private key therefore becomes its marker on the BEGIN line and empty lines down to
the END line, whatever follows END on that line staying where it was.

Tokens with a fixed shape (AWS, GitHub, Slack, Google, Stripe, JWT, ...) are matched as they are;
values assigned to names such as `password`, `secret`, `token` or `api_key` only when they look
random (length, character classes and Shannon entropy) and are not placeholders (`changeme`,
`<token>`, `${VAR}`, `xxx`, words).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

RULES_VERSION = 2  # bump when the patterns change: what was derived from files under older rules is rebuilt

__all__ = ["RULES_VERSION", "SecretFinding", "redact", "redact_bytes", "find_secrets", "is_secret_file"]


@dataclass(frozen=True)
class SecretFinding:
    """One secret in a text: its kind, the 1-based line it starts on, its [start, end) character offsets."""

    kind: str
    line: int
    start: int
    end: int


# --- patterns ----------------------------------------------------------------------------------

# Every pattern starts with a literal, so the scan is quick; the boundary before a token is checked
# apart (a leading look-behind would make the regex engine try every position).
_B64_RUN = re.compile(r"[A-Za-z0-9+/]{32,}")
_PEM = re.compile(
    r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY( BLOCK|)-----"
    r"((?:(?!-----BEGIN ).){0,20000}?)"  # the body, from the last BEGIN before the END
    r"-----END \1PRIVATE KEY\2-----",
    re.S,
)
# A key cut off before its END line: the BEGIN line, the whole base64 lines under it, and a last
# shorter one if it reads as base64 (padding, a digit, + or /) rather than as a word of code.
_PEM_TRUNCATED = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
    r"(?:[ \t]*\r?\n[ \t]*[A-Za-z0-9+/=]{16,}[ \t]*(?=\r?\n|$))+"
    r"(?:\r?\n[ \t]*(?=[A-Za-z0-9+/=]*[0-9+/=])[A-Za-z0-9+/=]{1,15}[ \t]*(?=\r?\n|$))?"
)

_WORD = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_"
# Fixed-shape tokens: (kind, pattern, characters that may not come right before it).
_TOKENS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("aws-access-key-id", re.compile(r"(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])"), _WORD),
    ("github-token", re.compile(r"(?:ghp|gho|ghs|ghu|ghr)_[A-Za-z0-9]{36,255}(?![A-Za-z0-9])"), _WORD),
    ("github-token", re.compile(r"github_pat_[A-Za-z0-9_]{50,255}(?![A-Za-z0-9_])"), _WORD),
    ("gitlab-token", re.compile(r"glpat-[A-Za-z0-9_-]{20,}(?![A-Za-z0-9_-])"), _WORD),
    ("huggingface-token", re.compile(r"hf_[A-Za-z0-9]{34,}(?![A-Za-z0-9])"), _WORD),
    ("slack-token", re.compile(r"xox[baprs]-[0-9]{4,}-[A-Za-z0-9-]{8,}(?![A-Za-z0-9-])"), _WORD),
    ("slack-webhook", re.compile(r"https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]{16,}"), ""),
    ("google-api-key", re.compile(r"AIza[0-9A-Za-z_-]{35}(?![A-Za-z0-9_-])"), _WORD + "-"),
    ("stripe-key", re.compile(r"(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{24,}(?![A-Za-z0-9])"), _WORD),
    ("npm-token", re.compile(r"npm_[A-Za-z0-9]{36}(?![A-Za-z0-9])"), _WORD),
    ("pypi-token", re.compile(r"pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}"), _WORD),
    ("openai-key", re.compile(r"sk-(?:proj-)?[A-Za-z0-9_-]{20,}T3BlbkFJ[A-Za-z0-9_-]{20,}"), _WORD + "-"),
    ("anthropic-key", re.compile(r"sk-ant-[a-z0-9]+-[A-Za-z0-9_-]{80,}"), _WORD + "-"),
    ("sendgrid-key", re.compile(r"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])"), _WORD),
    ("jwt", re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"), _WORD + "-"),
)

# Values that look random count only when assigned to a name that says they are secret. The scan
# finds the name's last word, then reads the assignment after it.
_NAME_WORD = re.compile(r"password|passwd|passphrase|pwd|pass|secret|token|key|credential")
_NAME_WORD_ANY_CASE = re.compile(_NAME_WORD.pattern, re.IGNORECASE)
_SECRET_NAME = re.compile(
    r"(?i)(?:password|passwd|passphrase|pwd|(?:^|[_-])pass|secret|token|credentials?|apikey|"
    r"(?:api|access|secret|private|auth|encryption|signing|master)[_-]?key)$"
)
_AWS_SECRET_NAME = re.compile(r"(?i)(?:aws_?secret_?(?:access_?)?key|secret_?access_?key)")
_AWS_SECRET = re.compile(r"[A-Za-z0-9/+=]{40}")
_ASSIGNMENT = re.compile(
    r"s?[\"']?\]?"  # a plural, a quoted key ("password": ...), env["TOKEN"]
    r"(?:[ \t]*:[ \t]*[A-Za-z_][\w.\[\]]*)?"  # a type annotation: password: str = ...
    r"[ \t]*(?::=|=>|=|:)[ \t]*"
    # Possessive ({8,256}+): a shorter run is followed by a character of the run, never by the quote or line end
    # that must come next, so backtracking into it finds nothing, and cost 256 tries at every `key:` of a file.
    r"(?:[rbuRBU]{0,2}(?P<q>[\"'`])(?P<quoted>[^\"'`\\\n]{8,256}+)(?P=q)"  # a string literal
    r"|(?P<bare>[^\s\"'`#;,(){}\[\]<>$%]{8,256}+)(?=[ \t]*(?:#[^\n]*)?(?:\r?\n|$)))"  # KEY=value on its own line
)
_LINE_HEAD = re.compile(r"[ \t]*(?:export[ \t]+)?")
_NAME_CHARS = frozenset(_WORD + ".-")
_URL_PASSWORD = re.compile(r"://[^\s:/@\"'`]+:(?P<value>[^\s:/@\"'`]{8,256})@")
_BEARER = re.compile(r"bearer[ \t]+(?P<value>[A-Za-z0-9._~+/-]{20,}=*)", re.IGNORECASE)
_BASIC = re.compile(r"(?<![A-Za-z])basic[ \t]+(?P<value>[A-Za-z0-9+/]{12,}={0,2})(?![A-Za-z0-9+/=])", re.IGNORECASE)
# Azure storage and service-bus connection strings: `...;AccountKey=<base64>;...`.
_AZURE_KEY = re.compile(r"(?:AccountKey|SharedAccessKey)[ \t]*=[ \t]*(?P<value>[A-Za-z0-9+/]{20,}={0,2})")
# A secret-named setting's fallback: os.getenv("DB_PASSWORD", "<value>"), environ.get(...), config.get(...).
_ENV_DEFAULT = re.compile(
    r"""(?:getenv|\.get)\([ \t]*[rbuRBU]{0,2}["'](?P<name>[A-Za-z_][\w.-]{0,100})["'][ \t]*,[ \t]*"""
    r"""[rbuRBU]{0,2}(?P<q>["'])(?P<value>[^"'\\\n]{8,256})(?P=q)"""
)

_PLACEHOLDER_WORDS = (
    "example",
    "sample",
    "placeholder",
    "changeme",
    "change_me",
    "change-me",
    "dummy",
    "redacted",
    "your_",
    "your-",
    "yourpass",
    "xxxx",
    "****",
    "....",
    "<",
    "{{",
    "${",
    "$(",
    "%(",
    "%s",
    "todo",
    "fixme",
    "insert",
    "replace",
    "secret",
    "password",
)
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")  # settings.SECRET_KEY: code, not a value
_WORDS = re.compile(r"[a-z]+(?:[_.-][a-z0-9]+)+")  # snake_case or kebab-case words


def _entropy(value: str) -> float:
    """Shannon entropy of the characters, in bits per character."""
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def _looks_random(value: str) -> bool:
    """A credential someone generated, rather than a word, a placeholder or an expression."""
    lowered = value.lower()
    if any(word in lowered for word in _PLACEHOLDER_WORDS) or any(c.isspace() for c in value):
        return False
    if "://" in value or _DOTTED.fullmatch(value) or _WORDS.fullmatch(value) or len(set(value)) < 6:
        return False
    classes = sum(
        (any(c.islower() for c in value), any(c.isupper() for c in value), any(c.isdigit() for c in value))
    ) + (not value.isalnum())
    has_letter_and_digit = any(c.isalpha() for c in value) and any(c.isdigit() for c in value)
    # Random strings of this length almost always hold a digit; long ones without need three classes.
    if not (has_letter_and_digit or (len(value) >= 24 and classes >= 3)):
        return False
    return _entropy(value) >= min(3.5, 0.8 * math.log2(len(value)))


def _is_basic_credential(value: str) -> bool:
    """Whether `value` is base64 of `user:password` with a password that is not a word or a placeholder."""
    try:
        decoded = base64.b64decode(value + "=" * (-len(value) % 4), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    user, colon, password = decoded.partition(":")
    return bool(colon) and decoded.isprintable() and len(password) >= 6 and _looks_random(password)


# --- finding and redacting ---------------------------------------------------------------------


def _assignments(text: str) -> Iterator[tuple[str, int, int, int]]:
    """(kind, start, end, priority) of values assigned to secret-sounding names."""
    lowered = text.lower()
    # lower() keeps offsets unless a character expands (İ); then search the text itself, more slowly.
    words = _NAME_WORD.finditer(lowered) if len(lowered) == len(text) else _NAME_WORD_ANY_CASE.finditer(text)
    for word in words:
        m = _ASSIGNMENT.match(text, word.end())
        if m is None:
            continue
        start = word.start()
        while start > 0 and text[start - 1] in _NAME_CHARS:
            start -= 1
        name = text[start : word.end()]
        if not _SECRET_NAME.search(name):
            continue
        group = "quoted" if m.group("quoted") is not None else "bare"
        if group == "bare" and not _LINE_HEAD.fullmatch(text, text.rfind("\n", 0, start) + 1, start):
            continue
        value = m.group(group)
        if _AWS_SECRET_NAME.search(name) and _AWS_SECRET.fullmatch(value) and "EXAMPLE" not in value:
            yield "aws-secret-access-key", m.start(group), m.end(group), 1
        elif _looks_random(value):
            yield "secret", m.start(group), m.end(group), 2


def find_secrets(text: str) -> list[SecretFinding]:
    """Every secret in `text`, in order, none overlapping (a fixed-shape match wins over a generic one)."""
    spans: list[tuple[int, int, int, str]] = []  # (start, priority, end, kind)
    for m in _PEM.finditer(text):
        if _B64_RUN.search(m.group(3)):
            spans.append((m.start(), 0, m.end(), "private-key"))
    for m in _PEM_TRUNCATED.finditer(text):
        spans.append((m.start(), 0, m.end(), "private-key"))
    for kind, pattern, before in _TOKENS:
        for m in pattern.finditer(text):
            if (m.start() == 0 or text[m.start() - 1] not in before) and "EXAMPLE" not in m.group():
                spans.append((m.start(), 1, m.end(), kind))
    spans += [(start, priority, end, kind) for kind, start, end, priority in _assignments(text)]
    for kind, pattern in (("password", _URL_PASSWORD), ("bearer-token", _BEARER), ("azure-key", _AZURE_KEY)):
        for m in pattern.finditer(text):
            if _looks_random(m.group("value")):
                spans.append((m.start("value"), 2, m.end("value"), kind))
    for m in _BASIC.finditer(text):  # HTTP basic credentials: base64 of user:password
        if _is_basic_credential(m.group("value")):
            spans.append((m.start("value"), 2, m.end("value"), "basic-auth"))
    for m in _ENV_DEFAULT.finditer(text):
        if _SECRET_NAME.search(m.group("name")) and _looks_random(m.group("value")):
            spans.append((m.start("value"), 2, m.end("value"), "secret"))

    found: list[SecretFinding] = []
    covered = -1
    # Earliest first; at one start the more specific pattern, then the longer span.
    for start, _, end, kind in sorted(spans, key=lambda s: (s[0], s[1], -s[2])):
        if start < covered:
            continue
        found.append(SecretFinding(kind, text.count("\n", 0, start) + 1, start, end))
        covered = end
    return found


def redact(text: str) -> tuple[str, list[SecretFinding]]:
    """`text` with each secret replaced by `[REDACTED:<kind>]` and the line breaks it spanned; the findings."""
    findings = find_secrets(text)
    if not findings:
        return text, findings
    parts: list[str] = []
    at = 0
    for f in findings:
        breaks = "".join(c for c in text[f.start : f.end] if c in "\r\n")
        parts += [text[at : f.start], f"[REDACTED:{f.kind}]", breaks]
        at = f.end
    parts.append(text[at:])
    return "".join(parts), findings


def redact_bytes(data: bytes) -> tuple[bytes, list[SecretFinding]]:
    """`redact` for a file's bytes; bytes that are not UTF-8 pass through unchanged."""
    text = data.decode("utf-8", errors="surrogateescape")
    redacted, findings = redact(text)
    return (redacted.encode("utf-8", errors="surrogateescape") if findings else data), findings


# --- files that are secrets as a whole ---------------------------------------------------------

_SECRET_SUFFIXES = (".pem", ".key", ".p12", ".pfx", ".jks", ".keystore", ".ppk", ".tfstate", ".tfstate.backup")
_SECRET_NAMES = {
    "id_rsa",
    "id_dsa",
    "id_ecdsa",
    "id_ed25519",
    ".netrc",
    "_netrc",
    ".git-credentials",
    ".htpasswd",
    ".pgpass",
}
_TEMPLATE_SUFFIXES = ("example", "sample", "template", "dist", "defaults", "default")
_REGISTRY_AUTH = re.compile(rb"(?im)^\s*(?:[^\s=#;]*:)?(?:_authtoken|_auth|_password|password)\s*[=:]\s*\S")
_REGISTRY_CONFIGS = {".npmrc", ".pypirc", ".yarnrc", ".yarnrc.yml"}


def is_secret_file(path: str, data: bytes | None = None) -> bool:
    """Whether the file at `path` (relative, POSIX) is a secret as a whole: never indexed.

    `.npmrc`-style registry configurations count only when they hold credentials; without `data`
    they are assumed to.
    """
    p = PurePosixPath(path)
    name = p.name.lower()
    if name == ".env" or name.startswith(".env.") or name.endswith(".env"):
        return not set(name.split(".")) & set(_TEMPLATE_SUFFIXES)
    if name in _SECRET_NAMES or name.endswith(_SECRET_SUFFIXES):
        return True
    if name == "credentials" and len(p.parts) >= 2 and p.parts[-2] == ".aws":
        return True
    if name in _REGISTRY_CONFIGS:
        return data is None or bool(_REGISTRY_AUTH.search(data))
    return False
