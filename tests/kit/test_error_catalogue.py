"""The catalogue of machine codes (kit/error_codes.py) holds every code the source sends, with the
status it is sent with, and docs/errors.md is the catalogue as generated.

The source is read, not run: every string literal in a place that carries a code is found --
``code=`` and ``failure_code=`` arguments, a ``"code"`` key of a body, an assignment to ``code``,
an argument at a parameter named ``code`` of a function or class of the source (``fail``,
``Rejection``, ``ProviderError``, ...), and the first argument of a raised built-in exception
used as a code carrier (``raise ValueError("invalid_event", ...)``).
"""

from __future__ import annotations

import ast
import builtins
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import billfold
import billfold.app
from billfold.kit import errors
from billfold.kit.error_codes import CODES, DOC_COMMAND, markdown

SRC = Path(billfold.__file__).parent
ROOT = SRC.parent.parent
CATALOGUE = SRC / "kit" / "error_codes.py"
CODE_PARAMS = {"code", "failure_code"}
CODE_KEYS = {"code", "failure_code", "failureCode"}
SNAKE = re.compile(r"[a-z]+(_[a-z0-9]+)+")
# Callables whose code is an item rejected alone (ingestion, cancellation, import).
REJECTIONS = {"Rejection", "LineRejection", "Unreadable", "_Invalid", "reject"}


@dataclass(frozen=True)
class Site:
    code: str
    where: str  # path:line
    status: int | None = None  # raised with a BillfoldError subclass of this status
    rejection: bool = False
    failure: bool = False
    cli: bool = False


def _error_classes() -> dict[str, type[errors.BillfoldError]]:
    found: dict[str, type[errors.BillfoldError]] = {}
    stack: list[type[errors.BillfoldError]] = [errors.BillfoldError]
    while stack:
        cls = stack.pop()
        found[cls.__name__] = cls
        stack.extend(cls.__subclasses__())
    return found


ERROR_CLASSES = _error_classes()


def _sources() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(SRC.rglob("*.py")):
        if path != CATALOGUE:
            yield path, ast.parse(path.read_text(), str(path))


def _code_positions(trees: list[tuple[Path, ast.Module]]) -> dict[str, dict[int, str]]:
    """Callable name -> the positions (of positional arguments) of its parameters that carry a
    code, and their names."""
    positions: dict[str, dict[int, str]] = defaultdict(dict)
    for _, tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names = [a.arg for a in node.args.posonlyargs + node.args.args]
                names = names[1:] if names[:1] in (["self"], ["cls"]) else names
                name = node.name
            elif isinstance(node, ast.ClassDef):
                init = next(
                    (
                        n
                        for n in node.body
                        if isinstance(n, ast.FunctionDef) and n.name == "__init__"
                    ),
                    None,
                )
                if init is not None:
                    names = [a.arg for a in init.args.args][1:]
                else:  # a dataclass or NamedTuple: its annotated fields, in order
                    names = [
                        n.target.id
                        for n in node.body
                        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
                    ]
                name = node.name
            else:
                continue
            for index, param in enumerate(names):
                if param in CODE_PARAMS:
                    positions[name][index] = param
    return positions


def _literals(node: ast.expr) -> Iterator[str]:
    """The codes a code-carrying expression may hold: its string literals, also in ``x or "a"``
    and ``"a" if c else "b"``; nothing for an expression computed otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value:
        yield node.value
    elif isinstance(node, ast.BoolOp):
        for value in node.values:
            yield from _literals(value)
    elif isinstance(node, ast.IfExp):
        yield from _literals(node.body)
        yield from _literals(node.orelse)


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _call_sites(call: ast.Call, where: str, positions: dict[str, dict[int, str]]) -> Iterator[Site]:
    name = _name(call.func)
    error = ERROR_CLASSES.get(name)
    carried = [(kw.arg, kw.value) for kw in call.keywords if kw.arg in CODE_PARAMS]
    params = positions.get(name, {}) if error is None else {}
    carried += [(params[i], arg) for i, arg in enumerate(call.args) if i in params]
    for param, value in carried:
        for code in _literals(value):
            yield Site(
                code,
                where,
                status=error.status_code if error is not None and param == "code" else None,
                rejection=name in REJECTIONS,
                failure=param == "failure_code",
                cli=name == "fail",
            )


def sites() -> list[Site]:
    trees = list(_sources())
    positions = _code_positions(trees)
    found: list[Site] = []
    for path, tree in trees:
        relative = path.relative_to(ROOT)
        for node in ast.walk(tree):
            where = f"{relative}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call):
                found += _call_sites(node, where, positions)
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value in CODE_KEYS:
                        found += [
                            Site(c, where, failure=key.value != "code") for c in _literals(value)
                        ]
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    found += _assigned(target, node.value, where)
            elif isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                call = node.exc
                builtin = isinstance(call.func, ast.Name) and hasattr(builtins, call.func.id)
                if builtin and call.args:
                    first = call.args[0]
                    if isinstance(first, ast.Constant) and SNAKE.fullmatch(str(first.value)):
                        found.append(Site(str(first.value), where))
    return found


def _assigned(target: ast.expr, value: ast.expr | None, where: str) -> Iterator[Site]:
    if value is None:
        return
    if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
        for t, v in zip(target.elts, value.elts, strict=False):
            yield from _assigned(t, v, where)
        return
    name = _name(target) if isinstance(target, ast.Name | ast.Attribute) else ""
    if name in CODE_PARAMS:
        for code in _literals(value):
            yield Site(code, where, failure=name == "failure_code")


# --- the tests ----------------------------------------------------------------------------------


def test_the_walk_finds_the_code_carriers() -> None:
    """The walk itself can fail: it must see codes of every kind of carrier."""
    found = {(s.code, s.status, s.rejection, s.failure, s.cli) for s in sites()}
    assert ("invalid_time_unit", 400, False, False, False) in found  # InvalidField(code=)
    assert ("busy", 503, False, False, False) in found  # ServiceUnavailable(code=)
    assert ("credit_expired", None, True, False, False) in found  # reject(key, code, error)
    assert ("timestamp_in_future", None, True, False, False) in found  # _Invalid(code, ...)
    assert ("line_too_long", None, True, False, False) in found  # Unreadable(code, ...)
    assert ("unknown_team", None, False, False, False) in found  # code, error = "...", ...
    assert ("invalid_event", None, False, False, False) in found  # raise ValueError("...")
    assert ("file_unreadable", None, False, False, True) in found  # fail(code, ...)
    assert ("no_default_payment_method", None, False, True, False) in found  # failure_code=
    assert ("card_declined", 402, False, False, False) in found  # PaymentFailed(code=x or "...")
    assert ("incorrect_number", None, False, False, False) in found  # ProviderError(msg, code)
    assert ("internal", None, False, False, False) in found  # {"code": "internal"}
    assert ("payload_too_large", None, False, False, False) in found  # class attribute


def test_every_code_the_source_sends_is_catalogued_with_its_status() -> None:
    problems = []
    for site in sites():
        entry = CODES.get(site.code)
        if entry is None:
            problems.append(f"{site.where}: {site.code!r} is not in kit/error_codes.py")
            continue
        if site.status is not None and entry.status != site.status:
            problems.append(
                f"{site.where}: {site.code!r} raised as {site.status}, catalogued as {entry.status}"
            )
        if site.rejection and not entry.rejection:
            problems.append(f"{site.where}: {site.code!r} is a rejection; catalogue says not")
        if site.failure and not entry.failure:
            problems.append(f"{site.where}: {site.code!r} is a failureCode; catalogue says not")
        if site.cli and not (entry.cli or entry.status is not None):
            problems.append(f"{site.where}: {site.code!r} is said by the CLI; catalogue says not")
    assert not problems, "\n".join(problems)


def test_every_catalogued_code_is_sent_by_the_source() -> None:
    from billfold.payments import sandbox

    sent = {site.code for site in sites()}
    sent |= set(errors._HTTP_CODES.values()) | set(sandbox._BEHAVIOUR.values())
    stale = sorted(set(CODES) - sent)
    assert not stale, f"catalogued but sent nowhere in src/ (remove them?): {stale}"


def test_error_classes_and_http_codes_match_the_catalogue() -> None:
    for cls in ERROR_CLASSES.values():
        if cls is errors.BillfoldError:
            continue
        assert CODES[cls.code].status == cls.status_code, cls
    for status, code in errors._HTTP_CODES.items():
        assert CODES[code].status == status, code
        assert errors.http_code(status) == code
    # a status Starlette never raises here still gets a catalogued code of its class
    assert errors.http_code(418) == "bad_request"
    assert errors.http_code(502) == "internal"


def test_each_code_has_one_status() -> None:
    """The same code is never raised with two statuses (a client could not tell them apart)."""
    statuses: dict[str, set[int]] = defaultdict(set)
    for site in sites():
        if site.status is not None:
            statuses[site.code].add(site.status)
    assert {code: s for code, s in statuses.items() if len(s) > 1} == {}


def test_the_sandbox_providers_codes_are_catalogued() -> None:
    from billfold.payments import sandbox

    declines = {code for code in sandbox._BEHAVIOUR.values() if code != "timeout"}
    assert declines
    for code in declines:
        assert CODES[code].status == 402 and CODES[code].failure, code


def test_the_codes_of_issue_15_are_documented() -> None:
    doc = (ROOT / "docs" / "errors.md").read_text()
    for code in ("invalid_time_unit", "busy"):
        assert f"| `{code}` |" in doc


def test_docs_errors_md_is_generated_from_the_catalogue() -> None:
    path = ROOT / "docs" / "errors.md"
    assert path.read_text() == markdown(), (
        f"docs/errors.md is out of date with kit/error_codes.py; regenerate it: {DOC_COMMAND}"
    )
    for entry in CODES.values():
        assert f"| `{entry.code}` | {entry.where()} |" in path.read_text()
