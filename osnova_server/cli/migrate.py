"""`migrate`: bring the database to this version's schema, explicitly (what a cluster upgrade runs).

A single server migrates its SQLite database itself at start; a cluster's processes would all
try at once on their shared PostgreSQL, so its operator runs `osnova-server migrate` once, before
restarting them (they also migrate at start, serialised by an advisory lock, so forgetting it
is safe). For SQLite, the state dir's lock keeps this from running beside a server.
"""

from __future__ import annotations

import argparse
from typing import Any

from osnova_server.cli.common import EXIT_FAILURE, EXIT_OK, CommandError, load_config


def cmd_migrate(args: argparse.Namespace) -> int:
    """Migrate the configured store and print the schema version it is at."""
    config = load_config(args)
    import asyncio

    from osnova_server.statelock import StateDirBusy, StateDirLockError, StateLock
    from osnova_server.store import SCHEMA_VERSION, Store, StoreError

    async def migrate() -> tuple[int, int]:
        store = await Store.open(config.state_dir, config.store.url, migrate=False)
        try:
            before = await store.schema_version()
            await store.migrate()
            return before, await store.schema_version()
        finally:
            await store.close()

    try:
        if config.store.url:
            before, after = asyncio.run(migrate())
        else:
            config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            with StateLock.acquire(config.state_dir, "migrate"):
                before, after = asyncio.run(migrate())
    except StateDirBusy as err:
        raise CommandError(f"{err} (a single server migrates at start anyway)") from None
    except (StateDirLockError, StoreError) as err:
        raise CommandError(str(err), EXIT_FAILURE) from None
    if before == after:
        print(f"database already at schema version {after} (this version's); nothing to do")
    else:
        print(f"database migrated from schema version {before} to {after}")
    assert after == SCHEMA_VERSION
    return EXIT_OK


def register(commands: Any) -> None:
    """Add `migrate`."""
    migrate = commands.add_parser(
        "migrate", help="migrate the database to this version's schema",
        description="Migrate the database ([store] url, else SQLite in state_dir) to this version's schema.",
    )
    migrate.set_defaults(func=cmd_migrate)
