"""Search filters: which paths, languages and symbol kinds a search may return (pure).

Globs follow .gitignore / ripgrep -g rules and are compiled to regexes that Postgres applies inside
every ranking; `parse_query` reads the same filters written inline in a question.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from grounding import store
from grounding.errors import InvalidArgument
from grounding.roles import ROLES

# Every path glob becomes a regex that Postgres compiles and tries on each row every ranking reads. Its compile
# time grows with the cube of the `**/` segments (1,000 of them: 23 s), and a backend caches 32 compiled
# regexes: 50 globs recompiled each on every row (1.3 s a row). So a search takes at most MAX_PATH_PATTERNS
# globs (paths and exclude_paths together) of at most MAX_PATTERN_CHARS, runs of `**/` count once, and the
# statement has a timeout (GROUNDING_SEARCH_TIMEOUT_S).
MAX_PATH_PATTERNS = 16
MAX_PATTERN_CHARS = 256


@dataclass(frozen=True)
class SearchFilters:
    """Which chunks a search may return; an empty field does not filter.

    `paths` and `exclude_paths` are globs matched like .gitignore patterns (and ripgrep's `-g`):
    `*` and `?` stay within one path segment, `**` spans any number of them (`src/**/*.py` holds
    `src/a.py` and `src/x/y/a.py`); a pattern without a slash matches at any depth (`*.go`,
    `sessions.py`); one with a slash is anchored at the repository root (`docs/*`); a pattern that
    matches a directory matches everything under it (`docs/*` holds `docs/a/b.md`, `src/` all of src).
    A chunk passes if its path matches any of `paths` and none of `exclude_paths`, its file's
    language is one of `languages` (names as detected at ingest: python, go, markdown, ...; common
    aliases such as py or js are accepted) and its kind is one of `kinds` (as stored: function,
    method, class, fragment, section, block, lines) and its file's role is one of `roles`
    (grounding.roles.ROLES: source, test, docs, example, benchmark, config, generated, vendored).
    """

    paths: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    exclude_paths: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            # A bare string would filter on its characters; a list is taken as the tuple it stands for.
            if isinstance(value, str) or not isinstance(value, (tuple, list)):
                raise InvalidArgument(f"SearchFilters.{f.name} takes a tuple of strings, not {value!r}")
            if not all(isinstance(v, str) and v.strip() and "\0" not in v for v in value):
                raise InvalidArgument(f"SearchFilters.{f.name} takes non-empty strings, not {value!r}")
            object.__setattr__(self, f.name, tuple(value))
        globs = self.paths + self.exclude_paths
        if len(globs) > MAX_PATH_PATTERNS:
            raise InvalidArgument(
                f"a search takes at most {MAX_PATH_PATTERNS} path patterns (paths and exclude_paths together), "
                f"not {len(globs)}: combine them (`src/**` instead of one per file)"
            )
        if long := next((g for g in globs if len(g) > MAX_PATTERN_CHARS), None):
            raise InvalidArgument(f"a path pattern is at most {MAX_PATTERN_CHARS} characters, not {len(long)}")
        unknown = [r for r in self.roles if r.lower() not in ROLES]
        if unknown:
            raise InvalidArgument(f"unknown role {unknown[0]!r}: roles are {', '.join(ROLES)}")

    def __bool__(self) -> bool:
        return bool(self.paths or self.languages or self.kinds or self.exclude_paths or self.roles)


LANGUAGE_ALIASES = {
    "py": "python",
    "js": "javascript",
    "jsx": "javascript",
    "ts": "typescript",
    "golang": "go",
    "rs": "rust",
    "c++": "cpp",
    "cs": "csharp",
    "c#": "csharp",
    "rb": "ruby",
    "kt": "kotlin",
    "md": "markdown",
    "sh": "shell",
    "bash": "shell",
    "yml": "yaml",
}


def glob_to_regex(pattern: str) -> str:
    """A path glob (see SearchFilters) as an anchored regex that Python's `re` and Postgres's `~` read alike."""
    glob = pattern.strip()
    anchored = glob.startswith("/") or "/" in glob.strip("/")
    glob = glob.strip("/")
    if glob.startswith("./"):
        glob = glob[2:]
    glob = _REPEATED_ANY_DEPTH.sub("**/", glob)  # `a/**/**/b` is `a/**/b`, and one regex group, not many
    if not glob:
        raise InvalidArgument(f"empty path pattern: {pattern!r}")
    out, i = [], 0
    while i < len(glob):
        ch = glob[i]
        if ch == "*":
            j = i
            while j < len(glob) and glob[j] == "*":
                j += 1
            whole_segment = j - i >= 2 and (i == 0 or glob[i - 1] == "/") and (j == len(glob) or glob[j] == "/")
            if whole_segment and j < len(glob):
                out.append("(?:.*/)?")  # `**/`: zero or more directories
                j += 1
            elif whole_segment:
                out.append(".*")  # a trailing `/**`: everything below
            else:
                out.append("[^/]*")
            i = j
        elif ch == "?":
            out.append("[^/]")
            i += 1
        elif ch == "[" and (end := _class_end(glob, i)) is not None:
            body = glob[i + 1 : end]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            body = body.replace("\\", "\\\\").replace("[", "\\[")  # `[:` would open a POSIX class in Postgres
            out.append("[" + ("^/" if negate else "") + body + "]")
            i = end + 1
        elif ch == "\\" and i + 1 < len(glob):
            out.append(re.escape(glob[i + 1]))
            i += 2
        else:
            out.append(re.escape(ch))
            i += 1
    regex = ("^" if anchored else "^(?:.*/)?") + "".join(out) + "(?:/.*)?$"
    try:  # a reversed range (`[z-a]`) would otherwise reach Postgres as an invalid regular expression
        re.compile(regex)
    except re.error as err:
        raise InvalidArgument(f"path pattern {pattern!r} is not a valid glob ({err})") from None
    return regex


_REPEATED_ANY_DEPTH = re.compile(r"(?<![^/])(?:\*\*/){2,}")  # whole `**/` segments, two or more in a row


def _class_end(glob: str, start: int) -> int | None:
    """The index of the `]` closing the character class opened at `start`, or None if it is not closed."""
    i = start + 1
    if i < len(glob) and glob[i] in "!^":
        i += 1
    if i < len(glob) and glob[i] == "]":
        i += 1  # `[]a]`: a leading `]` is a member
    end = glob.find("]", i)
    return None if end < 0 or "/" in glob[start:end] else end


def chunk_filter(filters: SearchFilters | None) -> store.ChunkFilter:
    """The filters as the store applies them: globs compiled to regexes, languages and kinds normalised."""
    if not filters:
        return store.ChunkFilter()
    return store.ChunkFilter(
        paths=tuple(glob_to_regex(p) for p in filters.paths),
        exclude_paths=tuple(glob_to_regex(p) for p in filters.exclude_paths),
        languages=tuple(dict.fromkeys(LANGUAGE_ALIASES.get(x.lower(), x.lower()) for x in filters.languages)),
        kinds=tuple(dict.fromkeys(x.lower() for x in filters.kinds)),
        roles=tuple(dict.fromkeys(x.lower() for x in filters.roles)),
    )


_FILTER_TOKEN = re.compile(r'(?<!\S)(-path|path|lang|language|kind|role):(?:"([^"]+)"|(\S+))')


def parse_query(text: str) -> tuple[str, SearchFilters]:
    """Split inline filters off a question: `path:GLOB`, `-path:GLOB`, `lang:NAME`, `kind:KIND`, `role:ROLE`.

    A token may repeat; lang, kind and role also take comma-separated values (`lang:python,go`); a glob
    with spaces goes in double quotes (`path:"my docs/*"`). Other words, `foo:bar` included, stay
    in the question.
    """
    found: dict[str, list[str]] = {"path": [], "-path": [], "lang": [], "kind": [], "role": []}
    for key, quoted, bare in _FILTER_TOKEN.findall(text):
        value = quoted or bare
        key = "lang" if key == "language" else key
        found[key].extend([value] if key in ("path", "-path") else [v for v in value.split(",") if v])
    question = " ".join(_FILTER_TOKEN.sub(" ", text).split())
    return question, SearchFilters(
        paths=tuple(found["path"]),
        languages=tuple(found["lang"]),
        kinds=tuple(found["kind"]),
        exclude_paths=tuple(found["-path"]),
        roles=tuple(found["role"]),
    )


def with_inline_filters(question: str, filters: SearchFilters | None) -> tuple[str, SearchFilters | None]:
    """The question without its inline filters, and those filters added to `filters` (each field joined)."""
    if filters is not None and not isinstance(filters, SearchFilters):
        raise InvalidArgument(f"filters must be a grounding.search.filters.SearchFilters, not {type(filters).__name__}")
    text, inline = parse_query(question)
    if not inline:
        return question, filters
    if not text.strip():
        raise InvalidArgument(f"{question!r} holds only filters; add the question itself")
    if not filters:
        return text, inline
    joined = {f.name: getattr(filters, f.name) + getattr(inline, f.name) for f in dataclasses.fields(SearchFilters)}
    return text, SearchFilters(**joined)


# --- merging and expanding citations ------------------------------------------------------------
