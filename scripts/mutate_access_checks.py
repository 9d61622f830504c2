"""Remove each access check once and run the access tests: each removal must make them fail.

    .venv/bin/python scripts/mutate_access_checks.py            # every check
    .venv/bin/python scripts/mutate_access_checks.py "search authorize"

Every file is restored after its run. Prints one line per check: the first failing test, or `rc=0` (a
check whose removal no test notices: a hole in the tests).
"""

import os
import pathlib
import subprocess
import sys

root = pathlib.Path(__file__).resolve().parent.parent
M = [
    (
        "search authorize",
        "grounding/search/retrieve.py",
        "    authorize(user, [repo])  # before anything, even whether the repository exists, is revealed\n",
        "",
    ),
    ("ask_stream authorize", "grounding/answer/ask.py", "        authorize(user, names)\n", "        pass\n"),
    (
        "complete authorize",
        "grounding/answer/completion.py",
        "    authorize(user, [repo])\n    if validation.user(user) is not None and (checkpoint",
        "    if validation.user(user) is not None and (checkpoint",
    ),
    (
        "prefix_at authorize",
        "grounding/answer/completion.py",
        "    authorize(user, [repo])\n    path = validation.repo_path(path)",
        "    path = validation.repo_path(path)",
    ),
    (
        "prefix_at indexed-file check",
        "grounding/answer/completion.py",
        '    if data is None or SourceFile(path, data, "").index_hash != stored_hash:',
        "    if data is None:",
    ),
    (
        "repo_scope filter",
        "grounding/service/status.py",
        "visible = tuple(r for r in repos if r.name in allowed)",
        "visible = tuple(repos)",
    ),
    (
        "ingest user check",
        "grounding/index/ingest.py",
        "    shown = sources.display_url(source)\n    if user is not None:",
        "    shown = sources.display_url(source)\n    if False:",
    ),
    (
        "ingest authorizes before the lock",
        "grounding/index/ingest.py",
        "        authorize(user, [name])  # before the lock",
        "        pass  # before the lock",
    ),
    ("copilot link filter", "app/copilot.py", "if name in scope.names]  # ?repo", "]  # ?repo"),
    ("flow passes the user", "flows/ingest.py", "progress=progress, user=user,", "progress=progress,"),
    (
        "ingest page passes the user",
        "grounding/service/jobs.py",
        "user=job.user,\n                replace_source",
        "user=None,\n                replace_source",
    ),
    (
        "complete refuses a user's checkpoint",
        "grounding/answer/completion.py",
        "(checkpoint is not None or device is not None):",
        "False:",
    ),
    (
        "search refuses a user's reranker path",
        "grounding/search/retrieve.py",
        "if validation.user(user) is not None and isinstance(rerank, str):",
        "if False:",
    ),
    (
        "vectors shared within a family only",
        "grounding/store/writes.py",
        "AND c.repo_id IN (SELECT id FROM family)",
        "",
    ),
    (
        "allowed_repos grant match",
        "grounding/store/access.py",
        "WHERE r.id IN (SELECT id FROM granted) OR",
        "WHERE true OR",
    ),
    ("api chunk authorize", "grounding/service/api.py", '            access.authorize(who.user, [row["repo"]])\n', ""),
    ("api repo detail authorize", "grounding/service/api.py", "        access.authorize(who.user, [name])\n", ""),
    ("api repos scope", "grounding/service/api.py", "repo_scope(who.user)", "repo_scope(None)"),
    ("api admin check", "grounding/service/api.py", "        if admin and not who.admin:", "        if False:"),
    ("api search user", "grounding/service/api.py", "            rerank=body.rerank,\n            user=who.user,", "            rerank=body.rerank,"),
    ("token revoked check", "grounding/tokens.py", 'if row is None or row["revoked_at"] is not None:', "if row is None:"),
    ("token expiry check", "grounding/tokens.py", 'if row["expires_at"] is not None and row["expires_at"] <= row["now"]:', "if False:"),
]
only = sys.argv[1:]
for label, rel, old, new in M:
    if only and label not in only:
        continue
    p = root / rel
    text = p.read_text()
    assert text.count(old) == 1, (label, text.count(old))
    p.write_text(text.replace(old, new))
    try:
        r = subprocess.run(
            [
                str(root / ".venv/bin/python"),
                "-m",
                "pytest",
                "-q",
                "-x",
                "-p",
                "no:cacheprovider",
                "tests/test_access_walk.py",
                "tests/test_security.py",
                "tests/test_api.py",
            ],
            cwd=root,
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
        )
        last = [
            line
            for line in r.stdout.splitlines()
            if line.startswith("FAILED") or " passed" in line or " failed" in line
        ]
        print(f"{label:32} rc={r.returncode} {' | '.join(last[-2:])}", flush=True)
    finally:
        p.write_text(text)
