"""``billfold cycle ...`` and ``billfold limit ...``"""

from __future__ import annotations

import typer

cycle_app = typer.Typer(no_args_is_help=True, help="Billing cycles.")
limit_app = typer.Typer(no_args_is_help=True, help="Spending limits.")
