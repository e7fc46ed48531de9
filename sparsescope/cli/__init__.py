"""The ``sparsescope`` command line: thin typer commands over the library, one-line errors, progress bars.

Each command group lives in its own module and registers itself on the one typer ``app`` from ``_common``.
"""

from sparsescope.cli._common import app
from sparsescope.cli import scan, bench, spike, weights, compare  # noqa: F401,E402  (registers the commands)
from sparsescope.cli import sae  # noqa: F401,E402
from sparsescope.cli import plan  # noqa: F401,E402
from sparsescope.cli import circuits  # noqa: F401,E402
from sparsescope.cli import explorer  # noqa: F401,E402  (`sparsescope app`)


def main() -> None:  # pragma: no cover - console entry point
    app()
