"""``billfold credits ...``"""

from __future__ import annotations

import typer

credits_app = typer.Typer(no_args_is_help=True, help="Prepaid credits.")
