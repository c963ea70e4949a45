"""``python -m coditect``: the same as the ``coditect`` command."""

from coditect.cli import main

raise SystemExit(main())
