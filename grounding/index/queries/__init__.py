"""Tree-sitter queries as data: one <language>.scm of definition captures per language, read by languages.py."""
