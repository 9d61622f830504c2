"""Which language a path is written in, and which of them have a tree-sitter definitions query."""

from __future__ import annotations

from importlib import resources
from pathlib import PurePosixPath

# Languages chunked along their syntax tree; the value is the tree-sitter-language-pack name.
SYNTAX_LANGUAGES: dict[str, str] = {
    "python": "python",
    "javascript": "javascript",
    "typescript": "typescript",
    "tsx": "tsx",
    "java": "java",
    "go": "go",
    "rust": "rust",
    "c": "c",
    "cpp": "cpp",
    "csharp": "csharp",
    "ruby": "ruby",
    "php": "php",
    "kotlin": "kotlin",
    "scala": "scala",
    "swift": "swift",
    "markdown": "markdown",
}

_EXTENSIONS: dict[str, str] = {
    ".py": "python",
    ".pyi": "python",
    ".pyw": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".tsx": "tsx",
    ".java": "java",
    ".go": "go",
    ".rs": "rust",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".c++": "cpp",
    ".hpp": "cpp",
    ".hh": "cpp",
    ".hxx": "cpp",
    ".cs": "csharp",
    ".rb": "ruby",
    ".rake": "ruby",
    ".gemspec": "ruby",
    ".php": "php",
    ".kt": "kotlin",
    ".kts": "kotlin",
    ".scala": "scala",
    ".sc": "scala",
    ".swift": "swift",
    ".md": "markdown",
    ".markdown": "markdown",
    ".mdx": "markdown",
    # Line-window languages: named so that search can filter on them.
    ".rst": "rst",
    ".txt": "text",
    ".toml": "toml",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".json": "json",
    ".cfg": "ini",
    ".ini": "ini",
    ".sh": "shell",
    ".bash": "shell",
    ".sql": "sql",
    ".html": "html",
    ".htm": "html",
    ".css": "css",
    ".scss": "css",
    ".xml": "xml",
    ".proto": "protobuf",
    ".lua": "lua",
    ".r": "r",
    ".pl": "perl",
}

_FILENAMES: dict[str, str] = {
    "Makefile": "make",
    "Dockerfile": "dockerfile",
    "Rakefile": "ruby",
    "Gemfile": "ruby",
    "CMakeLists.txt": "cmake",
}


def detect_language(path: str) -> str:
    """The language of a repository path, from its name; "text" when nothing matches."""
    p = PurePosixPath(path)
    if p.name in _FILENAMES:
        return _FILENAMES[p.name]
    return _EXTENSIONS.get(p.suffix.lower(), "text")


# A query is one or more .scm files: TSX is TypeScript's grammar plus JSX, and module-level assignments
# (CommonJS, prototypes) read the same in JavaScript and TypeScript.
_QUERY_FILES = {
    "javascript": ("javascript", "module_assignments"),
    "typescript": ("typescript", "module_assignments"),
    "tsx": ("typescript", "module_assignments"),
}


def definitions_query(language: str) -> str | None:
    """The `.scm` query that captures a language's definitions, or None for line-window languages."""
    if language not in SYNTAX_LANGUAGES:
        return None
    queries = resources.files("grounding.index.queries")
    parts = [queries.joinpath(f"{name}.scm") for name in _QUERY_FILES.get(language, (language,))]
    return "\n".join(p.read_text(encoding="utf-8") for p in parts) if parts[0].is_file() else None
