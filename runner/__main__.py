"""`python -m runner`: the command line (runner.client.cli)."""

from runner.client.cli import main

raise SystemExit(main())
