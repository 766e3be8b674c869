"""The money units at run time: :data:`Cents` and :data:`Pico` are ``typing.NewType`` over int.

Calling one returns its argument unchanged (no object, no conversion), so typing amounts costs the
hot paths nothing. What keeps the units apart is the type checker: ``units.pyi``, which mypy reads
instead of this file, declares them as ``int`` subclasses whose arithmetic accepts only the same
unit. SQLAlchemy maps the NewTypes to BIGINT (``kit.db.Base.type_annotation_map``).
"""

from typing import NewType

Cents = NewType("Cents", int)
Pico = NewType("Pico", int)
