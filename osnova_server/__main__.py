"""Let `python -m osnova_server` behave exactly like the `osnova-server` script."""

from __future__ import annotations

from osnova_server.cli import main

raise SystemExit(main())
