"""What a credential looks like: the one list of rules for redacting free text we send or print.

The detection report chooses what it sends by allow-list (``redact.py``), but some text has to
pass as it is: run names and tags, metric keys, our own stderr lines, ``doctor`` and the status
file.  Every such string goes through ``redact_text`` here, which replaces with ``REDACTED``
(rules and examples in docs/detection.md):

* authorization values with their credential: ``Authorization: Basic …``, ``Authorization=Token
  …``, ``Bearer …``, ``Basic <base64 of user:password>`` anywhere;
* the userinfo of any URL: everything but whitespace up to the last ``@`` of the URL, so that
  passwords holding ``/``, ``#`` or ``@`` are caught whole; ``user:password@host`` without a
  scheme too;
* well-known token formats, under whatever name (cloud keys, GitHub, Hugging Face, OpenAI, Slack,
  Google, JWTs, PEM private keys, ...);
* values of secret ``name=value`` / ``name: value`` / ``--name value`` pairs, where a name is
  secret if one of its snake/kebab/camel word parts says so (``is_secret_key``);
* random-looking strings shortly after a secret word (``secret wJalrXUtnFEMI/K7MDENG…``).

``scrub`` adds the injector's own secrets (the values of ``PRIMUS_LENS_API_HEADERS`` and of the
OTLP exporter's ``OTEL_EXPORTER_OTLP[_METRICS]_HEADERS``, and the userinfo of
``PRIMUS_LENS_API_BASE_URL``), removed by exact match before the rules run, for every
line we print or keep beside the record.  Nothing here raises on a ``str`` or mutates anything.
"""

from __future__ import annotations

import binascii
import functools
import json
import os
import re
from typing import Any, List, Mapping, Optional, Tuple
from urllib.parse import unquote

REDACTED = "[REDACTED]"
SCAN_LIMIT = 1 << 20  # longer strings are never inspected: callers describe them instead

# --- secret names ---------------------------------------------------------------------------------

# A name is split into lower-case words at separators and camelCase humps: "WANDB_API_KEY" ->
# wandb/api/key, "xApiKey" -> x/api/key, "OAuth2Token" -> o/auth/2/token, "db-pw" -> db/pw.
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
# Any of these words anywhere in the name.
SECRET_WORDS = frozenset((
    "apikey", "auth", "authorization", "authentication", "bearer", "cert", "certificate", "certs",
    "cookie", "cookies", "credential", "credentials", "creds", "csrf", "jwt", "otp", "passcode",
    "passphrase", "passwd", "password", "passwords", "privkey", "private", "pw", "pwd", "secret",
    "secrets", "session", "sessionid", "sig", "signature", "tok", "xsrf",
))
# These as the name's last word (after qualifiers such as "id" or "2"): the name is a key or a
# token ("api_key", "github_pat", "hf_token_2"), unlike "num_key_value_heads" or "max_tokens".
_SECRET_LAST_WORDS = frozenset(("key", "token", "pass", "pat"))
_QUALIFIERS = frozenset(("id", "value", "val", "str", "string", "b64", "base64", "hex", "raw",
                         "env", "var", "file"))
# Tokenizer settings are "tokens" of another kind: "pad_token", "eos_token_id", ...
_SPECIAL_TOKENS = frozenset(("pad", "bos", "eos", "unk", "sep", "cls", "mask", "sos", "eot",
                             "start", "end", "image", "audio", "video", "special"))
# Secret compounds written without separators ("apikey", "mysecretvalue").
_SECRET_FRAGMENTS = (
    "accesskey", "accesstoken", "apikey", "authtoken", "bearertoken", "clientsecret",
    "credential", "idtoken", "passphrase", "passwd", "password", "privatekey", "refreshtoken",
    "secret", "sessiontoken", "signature",
)


# Every secret-looking name contains one of these (lower-cased): a quick first test for text.
_SECRET_PARTS = tuple(sorted(SECRET_WORDS | _SECRET_LAST_WORDS | set(_SECRET_FRAGMENTS)))


def mentions_secret(text: str) -> bool:
    """False when no word of ``text`` can be secret-looking (most metric keys and log lines)."""
    lowered = text.lower()
    return any(part in lowered for part in _SECRET_PARTS)


@functools.lru_cache(maxsize=4096)
def is_secret_key(name: str) -> bool:
    """Whether a value stored under ``name`` (a key, a variable, a flag, a header) is a secret."""
    parts = [w.lower() for w in _WORDS.findall(name)]
    if not parts:
        return False
    if any(w in SECRET_WORDS for w in parts):
        return True
    core = list(parts)
    while len(core) > 1 and (core[-1] in _QUALIFIERS or core[-1].isdigit()):
        core.pop()
    if core[-1] in _SECRET_LAST_WORDS:
        return not (core[-1] == "token" and len(core) > 1 and core[-2] in _SPECIAL_TOKENS)
    joined = "".join(parts)
    return any(fragment in joined for fragment in _SECRET_FRAGMENTS)


# --- what random looks like -----------------------------------------------------------------------

_ALNUM_RUN = re.compile(r"[A-Za-z0-9]+")


_HEX = re.compile(r"[0-9a-fA-F]+")


def _random_run(run: str) -> bool:
    """32+ letters and digits; or 16+ that are hex mixing letters and digits (hashes, keys) or
    that switch case or kind every few characters (a random token: "Xk9QpL2m…"), unlike names
    such as "GPT2BPETokenizer", "HuggingFaceTokenizer" or "Qwen25Coder32BInstruct"."""
    if len(run) >= 32:
        return True
    if len(run) < 16:
        return False
    if _HEX.fullmatch(run) and any(c.isdigit() for c in run) and any(c.isalpha() for c in run):
        return True
    return len(_WORDS.findall(run)) * 3 > len(run)  # humps shorter than 3 on average


_BASE64 = re.compile(r"[A-Za-z0-9+/]{32,}={0,2}")


def looks_random(text: str) -> bool:
    """A run of 16+ letters and digits mixed, any run of 32+, or 32+ characters of base64 (such
    as an AWS secret key) mixing upper case, lower case and digits in long runs (a path such as
    ``/data/Models/Llama3/8B`` has short ones): the shapes of keys, tokens and hashes."""
    runs = _ALNUM_RUN.findall(text)
    if any(_random_run(run) for run in runs):
        return True
    return (_BASE64.fullmatch(text) is not None and len(text) >= 10 * len(runs)
            and any(c.isupper() for c in text) and any(c.islower() for c in text)
            and any(c.isdigit() for c in text))


def redact_random_words(text: str) -> str:
    """``text`` with every random-looking run of letters and digits replaced (for labels)."""
    return _ALNUM_RUN.sub(lambda m: REDACTED if _random_run(m.group()) else m.group(), text)


# --- secrets inside text --------------------------------------------------------------------------

# Well-known credential formats: (what, lookbehind, prefix, rest).  Each has a prefix and a
# minimum length so that ordinary words, paths, hashes and numbers do not match, and none may
# start inside a word.  The prefixes alone make a quick first test (most text has none).
_WORD, _WORD_DASH, _ALNUM = "[A-Za-z0-9_]", "[A-Za-z0-9_\\-]", "[A-Za-z0-9]"
TOKEN_FORMATS = (
    ("PEM private key", "", "-----BEGIN ",
     r"[A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----(?s:.*?)(?:-----END [A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----|\Z)"),
    ("Hugging Face", _WORD, "hf_", r"[A-Za-z0-9]{20,}"),
    ("GitHub", _WORD, "gh[pousr]_", r"[A-Za-z0-9]{20,}"),
    ("GitHub fine-grained", _WORD, "github_pat_", r"[A-Za-z0-9_]{20,}"),
    ("GitLab", _WORD, "glpat-", r"[A-Za-z0-9_\-]{20,}"),
    ("OpenAI, Anthropic and others", _WORD_DASH, "sk-", r"[A-Za-z0-9_\-]{20,}"),
    ("Stripe", _WORD, "[rsp]k_", r"(?:live|test)_[A-Za-z0-9]{16,}"),
    ("AWS access key id", _ALNUM, "(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA)",
     r"[A-Z0-9]{16}(?![A-Za-z0-9])"),
    ("Google API key", _WORD, "AIza", r"[0-9A-Za-z_\-]{35}"),
    ("Google OAuth token", _WORD, "ya29\\.", r"[0-9A-Za-z_\-]{20,}"),
    ("Slack", _WORD, "xox[abeoprs]-", r"[A-Za-z0-9\-]{10,}"),
    ("Slack app", _WORD, "xapp-", r"[A-Za-z0-9\-]{10,}"),
    ("npm", _WORD, "npm_", r"[A-Za-z0-9]{36}"),
    ("PyPI", _WORD, "pypi-", r"[A-Za-z0-9_\-]{50,}"),
    ("DigitalOcean", _WORD, "do[opr]_v1_", r"[a-f0-9]{64}"),
    ("JWT", _WORD_DASH, "eyJ", r"[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]*"),
)
_TOKENS = re.compile("|".join(f"(?<!{behind}){prefix}{rest}" if behind else prefix + rest
                              for _what, behind, prefix, rest in TOKEN_FORMATS))
_TOKEN_PREFIX = re.compile("|".join(prefix for _what, _behind, prefix, _rest in TOKEN_FORMATS))
# "Bearer <credential>" anywhere; "Basic <base64>" when the base64 really encodes "user:password"
# (so that "Basic training" survives).
_BEARER = re.compile(r"(?i:\bbearer\s+)[A-Za-z0-9\-._~+/]{8,}=*")
_BASIC = re.compile(r"(?i:\bbasic\s+)(?P<cred>[A-Za-z0-9+/]{4,}={0,2})(?![A-Za-z0-9+/=])")
# The start of a URL; its userinfo is found by hand (see _redact_userinfo).
_SCHEME = re.compile(r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://")
_SPACE = re.compile(r"\s")
# user:password@host without a scheme (connection strings, "git clone u:token@host:repo").
# Bounded parts keep a long run without "@" linear.
_BARE_USERINFO = re.compile(
    r"(?<![\w.%+\-:/@\[])[A-Za-z0-9._%+\-]{1,256}:(?!//)[^\s@]{1,256}@(?=[A-Za-z0-9\[])")
# name=value, name: value, "name": "value", --name value, --name=value.  Names (and URL schemes)
# start only where a run of name characters starts, and a value is looked at only after its name
# proved secret: trying every position of a long run, or measuring every value, is quadratic.
_PAIR = re.compile(
    r"(?<![\w-])--?(?P<flag>[A-Za-z][\w\-]*)(?:\s*=\s*|\s+(?!-))"
    r"|(?<![\w.\-])(?P<name>[A-Za-z_][\w.\-]*)[\"']?\s*[=:]\s*"
)
# Authorization schemes (IANA registry and common custom ones): after a secret name the
# credential that follows the scheme word belongs to the value too.
AUTH_SCHEMES = frozenset((
    "basic", "bearer", "token", "digest", "negotiate", "ntlm", "hoba", "mutual", "vapid",
    "scram-sha-1", "scram-sha-256", "aws4-hmac-sha256", "apikey", "api-key", "key", "oauth",
    "jwt", "sso", "dpop", "gnap", "privatetoken", "otp", "session", "sharedkey", "signature",
))
_QUOTED = r"\"[^\"]*\"|'[^']*'"
_PLAIN_VALUE = r"(?:" + re.escape(REDACTED) + r"|[^\s&#;,\"'<>)}\]])+"
# scheme, then its credential: token68 or Digest-style params (k="v", k=v, ...).
_SCHEME_VALUE = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9\-]*)[ \t]+(?P<cred>(?:\"[^\"\n]*\"|[^\s\"'<>;&,]|,[ \t]*)+)")
_VALUE = re.compile(_QUOTED + "|" + _PLAIN_VALUE)
# A random-looking credential shortly after a secret word: "secret wJalr...", "password is X".
_CANDIDATE = re.compile(r"(?<![A-Za-z0-9+/=_\-.~])[A-Za-z0-9+/_\-.~]{16,}={0,2}")
_WINDOW = 48
_NEAR_WORDS = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*")


def _redact_userinfo(text: str) -> str:
    """``scheme://userinfo@host`` -> ``scheme://[REDACTED]@host``; the userinfo is everything up
    to the URL's last ``@`` (a URL ends at whitespace), so any character but whitespace may be in
    the password.  Linear: each URL is measured once with C-level searches."""
    pieces: List[str] = []
    pos = 0
    search_from = 0
    while True:
        match = _SCHEME.search(text, search_from)
        if match is None:
            break
        space = _SPACE.search(text, match.end())
        end = space.start() if space else len(text)
        at = text.rfind("@", match.end(), end)
        if at < 0:
            search_from = end
            continue
        pieces.append(text[pos:match.end()])
        pieces.append(REDACTED)
        pos = at
        search_from = at + 1
    if not pieces:
        return text
    pieces.append(text[pos:])
    return "".join(pieces)


def _basic(match: re.Match) -> str:
    """Only a base64 ``user:password`` is a Basic credential."""
    cred = match.group("cred")
    try:
        decoded = binascii.a2b_base64(cred + "=" * (-len(cred) % 4))
    except (binascii.Error, ValueError):
        return match.group()
    if b":" not in decoded:
        return match.group()
    return REDACTED


def _secret_value(text: str, start: int) -> Optional[Tuple[int, str]]:
    """(end, quote) of the value that follows a secret name at ``start``, or None; a value that
    starts with an authorization scheme extends over the credential after it."""
    scheme = _SCHEME_VALUE.match(text, start)
    if scheme and scheme.group("scheme").lower() in AUTH_SCHEMES:
        return scheme.end(), ""
    value = _VALUE.match(text, start)
    if value is None:
        return None
    quote = value.group()[0] if value.group()[0] in "\"'" else ""
    return value.end(), quote


def _redact_pairs(text: str) -> str:
    if not mentions_secret(text):
        return text
    pieces: List[str] = []
    pos = 0
    for match in _PAIR.finditer(text):
        if match.start() < pos or not is_secret_key(match.group("flag") or match.group("name")):
            continue  # inside a value already replaced, or not a secret
        found = _secret_value(text, match.end())
        if found is None:
            continue
        end, quote = found
        pieces.append(text[pos:match.end()])
        pieces.append(quote + REDACTED + quote)
        pos = end
    if not pieces:
        return text
    pieces.append(text[pos:])
    return "".join(pieces)


def _after_secret_word(text: str, start: int) -> bool:
    before = text[max(0, start - _WINDOW):start]
    return any(is_secret_key(w) for w in _NEAR_WORDS.findall(before)[-3:])


def _redact_near_secret_words(text: str) -> str:
    if not mentions_secret(text):
        return text

    def replace(match: re.Match) -> str:
        candidate = match.group()
        if candidate == REDACTED or not looks_random(candidate) \
                or not _after_secret_word(text, match.start()):
            return candidate
        return REDACTED

    return _CANDIDATE.sub(replace, text)


def redact_text(text: str) -> str:
    """``text`` with every credential these rules recognise replaced by ``REDACTED``."""
    if len(text) > SCAN_LIMIT:
        return f"[TRUNCATED: {len(text)} chars, not inspected]"
    if _TOKEN_PREFIX.search(text):
        text = _TOKENS.sub(REDACTED, text)
    text = _BEARER.sub(REDACTED, text)
    text = _BASIC.sub(_basic, text)
    text = _redact_userinfo(text)
    text = _BARE_USERINFO.sub(REDACTED + "@", text)
    text = _redact_pairs(text)
    return _redact_near_secret_words(text)


@functools.lru_cache(maxsize=8192)
def redact_key(key: str) -> str:
    """``redact_text`` for names that repeat (metric keys): cached per key."""
    return redact_text(key)


# --- the injector's own secrets -------------------------------------------------------------------

HEADERS_VARIABLE = "PRIMUS_LENS_API_HEADERS"
BASE_URL_VARIABLE = "PRIMUS_LENS_API_BASE_URL"
OTLP_HEADERS_VARIABLES = ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS")
_MIN_OWN = 4  # shorter values would blot out ordinary text and protect nothing
_MIN_WORD = 8  # the same for single words of a longer value


def _header_values(raw: str) -> List[str]:
    """Every header value ``raw`` may hold, parsed leniently (an invalid setting is still ours)."""
    values = []
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        values += [v for v in parsed.values() if isinstance(v, str)]
    for part in re.split(r"[;\n]", raw):
        values.append(part.partition(":")[2].strip())
    return values


def _passwords(url: str) -> List[str]:
    """The userinfo of ``url`` and its password (the user name alone is an ordinary word)."""
    _scheme, sep, rest = url.strip().partition("://")
    rest = _SPACE.split(rest, maxsplit=1)[0] if rest else ""
    at = rest.rfind("@")
    if not sep or at < 0:
        return []
    userinfo = rest[:at]
    return [userinfo, userinfo.partition(":")[2]]


def _pieces(value: str) -> List[str]:
    """``value`` and, for a value of several words ("Bearer X", "a=1; b=X"), its long words and
    the right sides of their ``=``; short and scheme words would only blot out ordinary text."""
    out = [value]
    for word in re.split(r"[\s;,]+", value):
        for piece in (word, word.partition("=")[2]):
            if len(piece) >= _MIN_WORD and piece.lower() not in AUTH_SCHEMES:
                out.append(piece)
    return out


@functools.lru_cache(maxsize=8)
def _own_secrets(headers: str, base_url: str, otlp_headers: Tuple[str, ...] = ()
                 ) -> Tuple[str, ...]:
    found = {headers.strip(), *(raw.strip() for raw in otlp_headers)}
    otlp_values = [unquote(part.partition("=")[2].strip())  # OTel's key=value,... form
                   for raw in otlp_headers for part in raw.split(",")]
    for value in _header_values(headers) + _passwords(base_url) + otlp_values:
        for piece in _pieces(value):
            found.update((piece, unquote(piece)))
    return tuple(sorted((s for s in found if len(s) >= _MIN_OWN), key=lambda s: (-len(s), s)))


def own_secrets(environ: Optional[Mapping[str, str]] = None) -> Tuple[str, ...]:
    """Our configured credentials (header values and their words, the OTLP exporter's header
    values, base URL userinfo and its parts, raw and percent-decoded), longest first."""
    env = os.environ if environ is None else environ
    return _own_secrets(env.get(HEADERS_VARIABLE) or "", env.get(BASE_URL_VARIABLE) or "",
                        tuple(env.get(name) or "" for name in OTLP_HEADERS_VARIABLES))


def _without(text: str, secret: str) -> str:
    """``text`` without ``secret`` nor any start of it of ``_MIN_WORD`` characters or more (a
    message that shortened a setting's value to 60 characters may have cut it anywhere)."""
    probe = secret[:_MIN_WORD]
    start = text.find(probe)
    while start >= 0:
        end = start + len(probe)
        while end < len(text) and end - start < len(secret) and text[end] == secret[end - start]:
            end += 1
        text = text[:start] + REDACTED + text[end:]
        start = text.find(probe, start + len(REDACTED))
    return text


def scrub(text: str, environ: Optional[Mapping[str, str]] = None) -> str:
    """``redact_text`` after removing our own secrets (and their cut-off starts) by exact match:
    for what we print or keep."""
    for secret in own_secrets(environ):
        if secret[:_MIN_WORD] in text:
            text = _without(text, secret)
    return redact_text(text)


def scrub_tree(value: Any, environ: Optional[Mapping[str, str]] = None) -> Any:
    """A copy of a small JSON-like tree (a status file, doctor's report) with every string in
    it, keys included, ``scrub``-bed; other values as they are."""
    if isinstance(value, str):
        return scrub(value, environ)
    if isinstance(value, Mapping):
        return {scrub_tree(k, environ): scrub_tree(v, environ) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_tree(v, environ) for v in value]
    return value
