"""What a credential looks like: the one list of rules for redacting free text we send or print.

The detection report chooses what it sends by allow-list (``report/evidence.py``), but some text
has to pass as it is: run names and tags, metric keys, our own stderr lines, ``doctor`` and the
status file.  Every such string goes through ``redact_text`` here, which replaces with
``REDACTED`` (rules and examples in docs/detection.md):

* authorization values with their credential: ``Authorization: Basic …``, ``Authorization=Token
  …``, ``Bearer …``, ``Basic <base64 of user:password>`` anywhere;
* the userinfo of any URL: everything but whitespace up to the last ``@`` of the URL, so that
  passwords holding ``/``, ``#`` or ``@`` are caught whole; ``user:password@host`` without a
  scheme too;
* well-known token formats, under whatever name (cloud keys, GitHub, Hugging Face, OpenAI, Slack,
  Google, JWTs, PEM private keys, ...);
* values of secret ``name=value`` / ``name: value`` / ``--name value`` pairs, where a name is
  secret if one of its snake/kebab/camel word parts says so, or it is one word ending in a secret
  word (``dbpass``, ``hftoken``: ``is_secret_key``); in a URL's query also ``code``, ``ticket``,
  ``hmac`` and ``sid``;
* the values of the credential flags of common clients (``mysql -pSECRET``, ``sshpass -p X``,
  ``curl -u user:password``: ``client_secrets``);
* random-looking strings shortly after a secret word (``secret wJalrXUtnFEMI/K7MDENG…``).

``redact_label`` (and ``redact_key``, cached, for metric keys) also replaces every random-looking
word, for names that must pass where a token may stand alone.  ``scrub`` adds the injector's own
secrets (the values of ``PRIMUS_LENS_API_HEADERS`` and of the OTLP sink's headers,
``PRIMUS_LENS_OTLP_HEADERS`` and ``OTEL_EXPORTER_OTLP[_METRICS]_HEADERS``; the userinfo and
secret query values of ``PRIMUS_LENS_API_BASE_URL`` and of the OTLP endpoints), removed by exact
match before the rules run, for every line we print or keep beside the record.  Nothing here
raises on a ``str`` or mutates anything.
"""

from __future__ import annotations

import binascii
import functools
import json
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import unquote

REDACTED = "[REDACTED]"
SCAN_LIMIT = 1 << 20  # longer strings are never inspected: callers describe them instead

# --- secret names ---------------------------------------------------------------------------------

# A name is split into lower-case words at separators and camelCase humps: "WANDB_API_KEY" ->
# wandb/api/key, "xApiKey" -> x/api/key, "OAuth2Token" -> o/auth/2/token, "db-pw" -> db/pw.
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
# Any of these words anywhere in the name.
_SECRET_WORDS = frozenset((
    "apikey", "auth", "authorization", "authentication", "bearer", "cert", "certificate", "certs",
    "cookie", "cookies", "credential", "credentials", "creds", "csrf", "jwt", "oauth", "otp",
    "passcode", "passphrase", "passwd", "password", "passwords", "privkey", "private", "pw",
    "pwd", "secret", "secrets", "session", "sessionid", "sig", "signature", "tok", "xsrf",
))
# These as the name's last word (after qualifiers such as "id" or "2"): the name is a key or a
# token ("api_key", "github_pat", "hf_token_2"), unlike "num_key_value_heads" or "max_tokens".
_SECRET_LAST_WORDS = frozenset(("key", "token", "pass", "pat"))
_QUALIFIERS = frozenset((
    "id", "value", "val", "str", "string", "b64", "base64", "hex", "raw", "env", "var", "file",
    "new", "old", "prev", "previous", "cur", "current", "next", "tmp", "temp", "bak", "backup",
    "orig", "alt", "primary", "secondary", "default", "override", "plain", "enc", "encoded",
))
# Tokenizer settings are "tokens" of another kind: "pad_token", "eos_token_id", ...
_SPECIAL_TOKENS = frozenset(("pad", "bos", "eos", "unk", "sep", "cls", "mask", "sos", "eot",
                             "start", "end", "image", "audio", "video", "special"))
# Secret compounds written without separators ("apikey", "mysecretvalue"), in the joined words.
_SECRET_FRAGMENTS = (
    "accesskey", "accesstoken", "apikey", "authtoken", "bearertoken", "clientsecret",
    "credential", "idtoken", "passphrase", "passwd", "password", "privatekey", "refreshtoken",
    "secret", "sessiontoken", "signature",
)
# Abbreviations of "password" inside one word ("passw", "dbpswd", "Passwort"); within one word
# only, since across words "pass_weight" would hold "passw" too.
_WORD_FRAGMENTS = ("passw", "pswd", "pswrd")
# Compact names, one word ending in a secret word ("dbpass", "sshpass", "rootpw", "adminpwd",
# "apitoken", "hftoken", "wandbkey"): the name's last word with one of these endings is secret
# unless what comes before the ending is one of the listed ordinary beginnings ("bypass",
# "compass", "monkey", "turkey", "padtoken", "maxtoken").
COMPACT_ENDINGS = {
    "pass": frozenset(("by", "com", "encom", "over", "under", "tres", "sur", "multi", "one", "two",
                       "single", "double", "first", "second", "full", "forward", "backward",
                       "fwd", "bwd", "render", "sub", "high", "low", "band", "all")),
    "pw": frozenset(),
    "pwd": frozenset(),
    "key": frozenset(("mon", "don", "tur", "hoc", "joc", "whis", "lac", "flun", "malar", "hot",
                      "turn", "smo", "po", "ho", "mic", "dic")),
    "token": _SPECIAL_TOKENS | frozenset(("per", "max", "min", "num", "total", "avg", "mean",
                                          "next", "prev", "last", "first", "each")),
    "tok": frozenset(("tik",)),
}


# Every secret-looking name contains one of these (lower-cased): a quick first test for text.
_SECRET_PARTS = tuple(sorted(_SECRET_WORDS | _SECRET_LAST_WORDS | set(_SECRET_FRAGMENTS)
                             | set(_WORD_FRAGMENTS) | set(COMPACT_ENDINGS)))


def _mentions_secret(text: str) -> bool:
    """False when no word of ``text`` can be secret-looking (most metric keys and log lines)."""
    lowered = text.lower()
    return any(part in lowered for part in _SECRET_PARTS)


def _compact_secret(word: str) -> bool:
    """One word made of a beginning and a secret ending ("dbpass", "hftoken", "wandbkey")."""
    for ending, ordinary in COMPACT_ENDINGS.items():
        if len(word) > len(ending) and word.endswith(ending) \
                and word[:-len(ending)] not in ordinary:
            return True
    return False


@functools.lru_cache(maxsize=4096)
def is_secret_key(name: str) -> bool:
    """Whether a value stored under ``name`` (a key, a variable, a flag, a header) is a secret."""
    parts = [w.lower() for w in _WORDS.findall(name)]
    if not parts:
        return False
    if any(w in _SECRET_WORDS or any(f in w for f in _WORD_FRAGMENTS) for w in parts):
        return True
    core = list(parts)
    while len(core) > 1 and (core[-1] in _QUALIFIERS or core[-1].isdigit()):
        core.pop()
    if core[-1] in _SECRET_LAST_WORDS:
        return not (core[-1] == "token" and len(core) > 1 and core[-2] in _SPECIAL_TOKENS)
    if _compact_secret(core[-1]):
        return True
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


def _redact_random_words(text: str) -> str:
    """``text`` with every random-looking run of letters and digits replaced (for labels)."""
    return _ALNUM_RUN.sub(lambda m: REDACTED if _random_run(m.group()) else m.group(), text)


# --- secrets inside text --------------------------------------------------------------------------

# Well-known credential formats: (what, lookbehind, prefix, rest).  Each has a prefix and a
# minimum length so that ordinary words, paths, hashes and numbers do not match, and none may
# start inside a word.  The prefixes alone make a quick first test (most text has none).
_WORD, _WORD_DASH, _ALNUM = "[A-Za-z0-9_]", "[A-Za-z0-9_\\-]", "[A-Za-z0-9]"
_TOKEN_FORMATS = (
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
                              for _what, behind, prefix, rest in _TOKEN_FORMATS))
_TOKEN_PREFIX = re.compile("|".join(prefix for _what, _behind, prefix, _rest in _TOKEN_FORMATS))
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
# Query parameters that carry a credential under a name that is ordinary elsewhere: an OAuth
# authorization code or an Azure Functions key (``?code=``), a CAS ticket, an HMAC, a session id.
QUERY_SECRET_NAMES = frozenset(("code", "ticket", "hmac", "sid"))
_QUERY_HINT = re.compile(r"[?&#](?:" + "|".join(sorted(QUERY_SECRET_NAMES)) + r")=",
                         re.IGNORECASE)
# Authorization schemes (IANA registry and common custom ones): after a secret name the
# credential that follows the scheme word belongs to the value too.
_AUTH_SCHEMES = frozenset((
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
    if scheme and scheme.group("scheme").lower() in _AUTH_SCHEMES:
        return scheme.end(), ""
    value = _VALUE.match(text, start)
    if value is None:
        return None
    quote = value.group()[0] if value.group()[0] in "\"'" else ""
    return value.end(), quote


def _secret_pair(text: str, match: re.Match) -> bool:
    """A secret-looking name, or in a URL's query or fragment one of ``QUERY_SECRET_NAMES``."""
    name = match.group("flag") or match.group("name")
    if is_secret_key(name):
        return True
    return match.group("name") is not None and name.lower() in QUERY_SECRET_NAMES \
        and match.start() > 0 and text[match.start() - 1] in "?&#" \
        and text[match.end() - 1] == "="


def _redact_pairs(text: str) -> str:
    if not _mentions_secret(text) and not _QUERY_HINT.search(text):
        return text
    pieces: List[str] = []
    pos = 0
    for match in _PAIR.finditer(text):
        if match.start() < pos or not _secret_pair(text, match):
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
    if not _mentions_secret(text):
        return text

    def replace(match: re.Match) -> str:
        candidate = match.group()
        if candidate == REDACTED or not looks_random(candidate) \
                or not _after_secret_word(text, match.start()):
            return candidate
        return REDACTED

    return _CANDIDATE.sub(replace, text)


# --- arguments of common clients ----------------------------------------------------------------

# Command-line clients whose flags carry a credential under a name that says nothing (``mysql
# -p``, ``curl -u user:password``): the flags whose value is secret, per client.  A one-letter
# flag also takes its value attached (``-pSECRET``); a word without dashes is a subcommand whose
# first argument that is not a flag is the secret if it looks random (``wandb login KEY``).
# Flags with a secret name (``--password``, ``--token``, ``--api-key``) need no entry: the name
# rules catch them.
CLIENT_FLAGS: Dict[str, Tuple[str, ...]] = {
    **dict.fromkeys(("mysql", "mysqldump", "mysqladmin", "mysqlimport", "mysqlcheck",
                     "mysqlshow", "mysqlsh", "mariadb", "mariadb-dump", "mariadb-admin",
                     "sshpass", "mongo", "mongosh", "mongodump", "mongorestore", "mongoexport",
                     "mongoimport", "ncftp", "ncftpget", "ncftpput", "7z", "7za", "rar", "unrar"),
                    ("-p",)),
    **dict.fromkeys(("curl", "smbclient"), ("-u", "--user", "-U", "--proxy-user")),
    **dict.fromkeys(("ldapsearch", "ldapmodify", "ldapadd", "ldapdelete", "ldapwhoami",
                     "ldappasswd"), ("-w",)),
    **dict.fromkeys(("sqlcmd", "bcp", "zip", "unzip"), ("-P",)),
    **dict.fromkeys(("http", "https", "xh"), ("-a",)),
    "redis-cli": ("-a",),
    "lftp": ("-u",),
    "openssl": ("-pass", "-passin", "-passout", "-k"),
    **dict.fromkeys(("wandb", "vault"), ("login",)),
    # wrapped by sshpass, their own "-p" is a port: they end the client before them
    **dict.fromkeys(("ssh", "scp", "sftp", "rsync"), ()),
}
_SEPARATORS = frozenset((";", "&&", "||", "|", "&"))
_CLIENT = re.compile(r"(?<![\w.\-])(?:" + "|".join(
    re.escape(c) for c in sorted(CLIENT_FLAGS, key=lambda c: (-len(c), c))) + r")(?=[ \t])")
_ARGUMENT = re.compile(r"(?:\"[^\"]*\"|'[^']*'|[^\s\"'])+")  # a shell word, quotes and all
_COMMAND_END = re.compile(r"[\n;|&]")


def client_secrets(args: Sequence[Any]) -> Dict[int, int]:
    """The secret arguments of a command line (``args`` as a program receives them, or several
    commands joined by ``;``, ``&&``, ``|``): index -> where the secret starts in that argument
    (``-pSECRET`` at 2, ``--user=u:p`` after its ``=``, a separate value at 0)."""
    found: Dict[int, int] = {}
    flags: Tuple[str, ...] = ()
    pending = ""  # "next": the next argument unless it is a flag; "positional": the next non-flag
    for index, arg in enumerate(args):
        if type(arg) is not str or arg in _SEPARATORS:  # never asks an object anything
            flags, pending = (), ""
            continue
        client = CLIENT_FLAGS.get(arg.rsplit("/", 1)[-1])
        if client is not None:
            flags, pending = client, ""
            continue
        if pending and not arg.startswith("-"):
            if pending == "next" or looks_random(arg):  # "wandb login KEY", not "login page"
                found[index] = 0
            pending = ""
            continue
        if pending == "next":
            pending = ""
        for flag in flags:
            if arg == flag:
                pending = "next" if flag.startswith("-") else "positional"
            elif flag.startswith("-") and arg.startswith(flag + "="):
                found[index] = len(flag) + 1
            elif len(flag) == 2 and flag.startswith("-") and arg.startswith(flag):
                found[index] = 2  # "-pSECRET"
    return found


def _redact_command(match: re.Match, text: str, pieces: List[str], pos: int) -> Tuple[int, int]:
    """Replace the secret arguments of the command starting at ``match`` (up to the end of its
    line or the next ``;``, ``|`` or ``&``); (where the text is written up to, the command's end)."""
    end_match = _COMMAND_END.search(text, match.end())
    end = end_match.start() if end_match else len(text)
    spans = list(_ARGUMENT.finditer(text, match.start(), end))
    for index, offset in sorted(client_secrets([m.group() for m in spans]).items()):
        arg = spans[index]
        word = arg.group()
        quoted = offset == 0 and len(word) > 1 and word[0] in "\"'" and word[-1] == word[0]
        pieces += [text[pos:arg.start() + (1 if quoted else offset)], REDACTED]
        pos = arg.end() - (1 if quoted else 0)
    return pos, end


def _redact_arguments(text: str) -> str:
    pieces: List[str] = []
    pos = search_from = 0
    while True:
        match = _CLIENT.search(text, search_from)
        if match is None:
            break
        pos, search_from = _redact_command(match, text, pieces, pos)
    if not pieces:
        return text
    pieces.append(text[pos:])
    return "".join(pieces)


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
    text = _redact_arguments(text)
    text = _redact_pairs(text)
    return _redact_near_secret_words(text)


def redact_label(text: str) -> str:
    """``redact_text``, then every random-looking word replaced too: for names that must pass
    (metric keys, run names, tags), where a key or token may stand alone with no secret word near."""
    return _redact_random_words(redact_text(text))


@functools.lru_cache(maxsize=8192)
def redact_key(key: str) -> str:
    """``redact_label`` for names that repeat (metric keys): cached per key."""
    return redact_label(key)


# --- the injector's own secrets -------------------------------------------------------------------

_HEADERS_VARIABLE = "PRIMUS_LENS_API_HEADERS"
_BASE_URL_VARIABLE = "PRIMUS_LENS_API_BASE_URL"
_URL_VARIABLES = (_BASE_URL_VARIABLE, "PRIMUS_LENS_OTLP_ENDPOINT", "PRIMUS_LENS_OTLP_METRICS_ENDPOINT",
                  "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
_OTLP_HEADERS_VARIABLES = ("PRIMUS_LENS_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS",
                           "OTEL_EXPORTER_OTLP_METRICS_HEADERS")
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


def _url_secrets(url: str) -> List[str]:
    """The userinfo of ``url`` and its password (the user name alone is an ordinary word), and
    the values of its query that sit under a secret name or look random (``?code=…``)."""
    _scheme, sep, rest = url.strip().partition("://")
    rest = _SPACE.split(rest, maxsplit=1)[0] if rest else ""
    if not sep:
        return []
    out = []
    at = rest.rfind("@")
    if at >= 0:
        userinfo = rest[:at]
        out += [userinfo, userinfo.partition(":")[2]]
    for pair in re.split(r"[&;]", rest[at + 1:].partition("?")[2].partition("#")[0]):
        name, _sep, value = pair.partition("=")
        if is_secret_key(name) or name.lower() in QUERY_SECRET_NAMES or looks_random(value):
            out.append(value)
    return out


def _pieces(value: str) -> List[str]:
    """``value`` and, for a value of several words ("Bearer X", "a=1; b=X"), its long words and
    the right sides of their ``=``; short and scheme words would only blot out ordinary text."""
    out = [value]
    for word in re.split(r"[\s;,]+", value):
        for piece in (word, word.partition("=")[2]):
            if len(piece) >= _MIN_WORD and piece.lower() not in _AUTH_SCHEMES:
                out.append(piece)
    return out


@functools.lru_cache(maxsize=8)
def _own_secrets(headers: str, urls: Tuple[str, ...], otlp_headers: Tuple[str, ...] = ()
                 ) -> Tuple[str, ...]:
    found = {headers.strip(), *(raw.strip() for raw in otlp_headers)}
    otlp_values = [unquote(part.partition("=")[2].strip())  # OTel's key=value,... form
                   for raw in otlp_headers for part in raw.split(",")]
    url_values = [value for url in urls for value in _url_secrets(url)]
    for value in _header_values(headers) + url_values + otlp_values:
        for piece in _pieces(value):
            found.update((piece, unquote(piece)))
    return tuple(sorted((s for s in found if len(s) >= _MIN_OWN), key=lambda s: (-len(s), s)))


def own_secrets(environ: Optional[Mapping[str, str]] = None) -> Tuple[str, ...]:
    """Our configured credentials (header values and their words, the OTLP exporter's header
    values, the userinfo of the Lens and OTLP endpoints and its parts and their secret query
    values, raw and percent-decoded), longest first."""
    env = os.environ if environ is None else environ
    return _own_secrets(env.get(_HEADERS_VARIABLE) or "",
                        tuple(env.get(name) or "" for name in _URL_VARIABLES),
                        tuple(env.get(name) or "" for name in _OTLP_HEADERS_VARIABLES))


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
    return _scrub_with(text, own_secrets(environ))


def _scrub_now(text: str, secrets: Tuple[str, ...]) -> str:
    for secret in secrets:
        if secret[:_MIN_WORD] in text:
            text = _without(text, secret)
    return redact_text(text)


# The status files the pod agent keeps for every record repeat the same few short strings every
# few seconds: those are scrubbed once (a few hundred bytes each at most, so the cache stays small).
_scrub_cached = functools.lru_cache(maxsize=1024)(_scrub_now)
_CACHED_TEXT = 256


def _scrub_with(text: str, secrets: Tuple[str, ...]) -> str:
    return _scrub_cached(text, secrets) if len(text) <= _CACHED_TEXT else _scrub_now(text, secrets)


def scrub_tree(value: Any, environ: Optional[Mapping[str, str]] = None) -> Any:
    """A copy of a small JSON-like tree (a status file, doctor's report) with every string in
    it, keys included, ``scrub``-bed; other values as they are."""
    return _scrub_tree(value, own_secrets(environ))


def _scrub_tree(value: Any, secrets: Tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return _scrub_with(value, secrets)
    if isinstance(value, Mapping):
        return {_scrub_tree(k, secrets): _scrub_tree(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub_tree(v, secrets) for v in value]
    return value
