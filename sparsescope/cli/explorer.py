"""`sparsescope app`: start the Streamlit explorer on the run store (local only unless --host says otherwise).

(The module is not named `app.py`: that would shadow the typer `app` this package exports.)
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Optional

import typer

from sparsescope.cli._common import app, console, friendly
from sparsescope.errors import UserError

EXPLORER = Path(__file__).resolve().parents[2] / "apps" / "explorer.py"


def check_port(host: str, port: int) -> None:
    """Fail with one line, before Streamlit starts, when `port` cannot be bound on `host`."""
    if not 0 < port < 65536:
        raise UserError(f"--port {port} is not a TCP port; pass one between 1 and 65535, e.g. --port 8501")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror:
        raise UserError(f"--host {host!r} is not an address of this machine; use 127.0.0.1 or 0.0.0.0") from None
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"port {port} on {host} is in use or not allowed ({e.strerror}); "
                            f"pass a free one with --port, e.g. --port {port + 1}") from None


def _preload() -> None:
    """Import what the pages use while the server starts, so the first visitor does not wait for it (seconds)."""
    import duckdb  # noqa: F401
    import plotly.express  # noqa: F401

    from sparsescope.harvest import summary  # noqa: F401
    from sparsescope.show import compare, figures, harvest, report, runs  # noqa: F401


@app.command("app")
@friendly
def explorer(
    runs: Optional[Path] = typer.Option(None, "--runs", "--runs-dir", envvar="SPARSESCOPE_RUNS",
                                        help="Run store to explore (default ./runs)."),
    host: str = typer.Option("127.0.0.1", help="Address to serve on (0.0.0.0 exposes it to the network)."),
    port: int = typer.Option(8501, help="TCP port."),
    browser: bool = typer.Option(False, "--browser/--no-browser", help="Open a browser tab when it starts."),
):
    """Explore the run store in the browser: harvest plan, ID vs OOD, spiking, neurons, SAE features, circuits."""
    root = (runs or Path("runs")).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise UserError(f"--runs {root} is a file, not a folder; pass the folder that holds the run folders")
    if not EXPLORER.is_file():
        raise UserError(f"the explorer app is not next to this package ({EXPLORER} is missing); "
                        "install sparsescope from a source checkout (pip install -e .)")
    check_port(host, port)
    if not root.is_dir():
        console.print(f"[yellow]note:[/] {root} does not exist yet; the explorer shows how to make a first run")
    os.environ["SPARSESCOPE_RUNS"] = str(root)
    from streamlit import config as st_config
    from streamlit.web import bootstrap

    flags = {"server_address": host, "server_port": port, "server_headless": not browser,
             "browser_gatherUsageStats": False, "server_fileWatcherType": "none", "server_runOnSave": False,
             "client_toolbarMode": "viewer", "global_developmentMode": False}
    threading.Thread(target=_preload, name="explorer-preload", daemon=True).start()
    st_config._main_script_path = str(EXPLORER)
    bootstrap.load_config_options(flag_options=flags)
    console.print(f"sparsescope explorer on http://{host}:{port} (runs: {root}); Ctrl-C stops it")
    bootstrap.run(str(EXPLORER), False, [], flags)
