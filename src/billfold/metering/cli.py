"""``billfold usage ...``"""

from __future__ import annotations

import typer

usage_app = typer.Typer(no_args_is_help=True, help="Usage events.")
