"""migrations/schema.sql: the schema all migrations produce, for readers (the migrations stay the
truth; a function redefined by three of them shows here once, as it ends up).

Regenerate it after adding a migration:

    python -m runner.db.schema > migrations/schema.sql

which migrates a throwaway embedded Postgres (or the empty database named as an argument) and
dumps its schema. tests/integration/test_schema_file.py fails when the file and the
migrations disagree.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

HEADER = """\
-- The schema all migrations produce, generated: `python -m runner.db.schema > migrations/schema.sql`.
-- For reading only. Change the schema with a new numbered migration, then regenerate this file.
"""

# The line naming each object in pg_dump's comment block above it.
_OBJECT = re.compile(r"^-- Name: (.+?); Type: ([A-Z ]+);")
# What differs between runs, servers or pg_dump versions, and says nothing about the schema:
# session settings, the version header, and (pg_dump >= 16.10) a random \restrict key.
_VOLATILE = re.compile(
    r"^(SET |SELECT pg_catalog\.set_config|\\(un)?restrict |--$|-- PostgreSQL database dump|-- Dumped )"
)


def clean_dump(dump: str) -> str:
    """pg_dump's output as a stable file: one `-- TYPE name` line above each object, the
    volatile lines gone, at most one blank line in a row."""
    lines = []
    for line in dump.splitlines():
        named = _OBJECT.match(line)
        if named:
            lines.append(f"-- {named.group(2)} {named.group(1)}")
        elif not _VOLATILE.match(line):
            lines.append(line)
    body = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return f"{HEADER}\n{body}\n"


def _pg_dumps() -> list[str]:
    """pg_dump binaries to try, in order: $PG_DUMP, pgserver's (the embedded server's
    version), then the one on PATH (for a newer server pgserver's refuses to dump)."""
    if os.environ.get("PG_DUMP"):
        return [os.environ["PG_DUMP"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs' XDG_RUNTIME_DIR warning
        import pgserver

    found = [str(Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_dump")]
    on_path = shutil.which("pg_dump")
    return [*found, on_path] if on_path else found


async def dump_schema(dsn: str) -> str:
    """The database's schema as schema.sql shows it."""
    failures = []
    for binary in _pg_dumps():
        proc = await asyncio.create_subprocess_exec(
            binary,
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "--dbname",
            dsn,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode == 0:
            return clean_dump(out.decode())
        failures.append(f"{binary}: {err.decode().strip()}")
        if b"version mismatch" not in err:
            break
    raise RuntimeError("pg_dump failed:\n" + "\n".join(failures))


async def migrated_schema(dsn: str) -> str:
    """Migrate the (empty) database, then dump its schema."""
    from runner.db.migrations import migrate

    await migrate(dsn)
    return await dump_schema(dsn)


def main(argv: list[str]) -> None:
    import logging

    from runner.logs import configure_logging

    configure_logging("console", logging.WARNING)  # stderr, and quiet: stdout is the file
    if argv:
        sys.stdout.write(asyncio.run(migrated_schema(argv[0])))
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver import get_server  # type: ignore[attr-defined]

    with tempfile.TemporaryDirectory(prefix="runner-schema-") as tmp:
        server = get_server(Path(tmp) / "pg", cleanup_mode="delete")
        try:
            schema = asyncio.run(migrated_schema(server.get_uri()))
        finally:
            server.cleanup()
    sys.stdout.write(schema)


if __name__ == "__main__":
    main(sys.argv[1:])
