"""``python -m coditect``: the same as the ``coditect`` command."""

from coditect.cli.app import main

raise SystemExit(main())
