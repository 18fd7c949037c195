"""The private Dagster surface our engine parts (agent_pipeline/engine) rely on, pinned, and the
rule that the project's private `dagster._` imports live there.

Dagster promises nothing about its private functions, methods and attributes: an upgrade may
change one and our part, still importing fine, would then do the wrong thing. So each upstream
object a part calls, overrides, copies the behaviour of, or reads or replaces the attribute of,
has a line in PINS with a fingerprint of it, recomputed here (so do the SQLAlchemy internals
the storages' connection class relies on, `Engine._connection_cls`):

- a function, method or class: `sig:` a hash of its signature, `src:` a hash of its source
  (parsed, docstrings dropped, unparsed: comments and layout do not count);
- a property: `src:` of its getter;
- an enum: `members:` its names and values; a table: `columns:` its columns and their types;
  any other value (a set, a dict): `value:` a hash of its sorted items;
- an attribute a class sets on its instances (`_engine`): `assigned-in:` the methods of the
  class and its bases that assign it;
- a class attribute whose value is a class (`Engine._connection_cls`): `is:` that class.

PINS is a table: a line that starts in the first column names an upstream module, class or
function and the engine module of ours (agent_pipeline/engine/<name>.py) relying on it; each
indented line under it names one of its members, relative to it, and its fingerprint.

When a pin fails (after an upgrade): re-read the upstream object (the message says where it
is) against the lines of our module that use it (the message lists them), fix our part if it
has to change, run its tests, then paste the line the message gives.

To add a pin: add its line with `?` as fingerprint, then print the table as it is now and
paste the line it gives:

    .venv/bin/python -m agent_pipeline_tests.test_engine_private_surface

`make upgrade-check` runs these tests against the newest Dagster core (docs/testing.md)."""

from __future__ import annotations

import ast
import dis
import enum
import functools
import hashlib
import importlib
import inspect
import re
import sys
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "agent_pipeline" / "engine"

PINS = """
dagster._cli.api                                                        run_launcher
    _execute_run_command_body                   sig:ca02957972 src:ac3529d99d
    execute_run_command.callback                sig:e49005c62d src:ab80760d27
dagster._cli.utils                                                      run_launcher
    get_instance_for_cli                        sig:3064ccf572 src:2521aed071
dagster._utils.interrupts                                               run_launcher
    capture_interrupts                          sig:e704c31b67 src:9ec7c4d24a
dagster._utils                                                          run_launcher
    get_run_crash_explanation                   sig:fccfffda24 src:9a5447a372
dagster._grpc.server.DagsterApiServer                                   run_launcher
    _check_for_orphaned_runs                    sig:a669c2c4b1 src:130e9b0070
dagster._serdes                                                         run_launcher
    ConfigurableClass                           sig:ee504799ef src:6dcf80e1a6
    ConfigurableClassData                       sig:37c2739d02 src:cde0cce7e6
dagster._core.launcher                                                  run_launcher
    LaunchRunContext                            sig:62f32ffefc src:940b89ebdc
    CheckRunHealthResult                        sig:2bc082fb61 src:32da7e5145
    WorkerStatus                                members:56056a8afb
dagster._core.launcher.RunLauncher                                      run_launcher
    __init__                                    sig:5aac96b4b2 src:15543d6d7f
    launch_run                                  sig:841e99fad2 src:81fe2ab7e4
    terminate                                   sig:8004fa86fd src:1bebbde1fb
    dispose                                     sig:a669c2c4b1 src:13b09c830a
    supports_check_run_worker_health            src:08f9d0bec6
    check_run_worker_health                     sig:b733f2c735 src:69638df649
    _instance                                   src:cd74d878ae
dagster_postgres.utils                                                  storage
    create_pg_engine                            sig:137f764d7b src:37f7e0d6ae
    get_token_provider_from_config              sig:5e1af03465 src:6a2ca3f01a
    pg_url_from_config                          sig:9baa4ad1ef src:168f626164
dagster_postgres.run_storage.PostgresRunStorage                         storage
    __init__                                    sig:4a50ec9be1 src:e95e98fdbf
    from_config_value                           sig:4fa134b244 src:fcdc542633
    _engine                                     assigned-in:__init__,optimize_for_webserver
    _token_provider                             assigned-in:__init__
    postgres_url                                assigned-in:__init__
    connect                                     sig:37882c05f0 src:be085214a4
    optimize_for_webserver                      sig:bd991a4fbd src:c7955df19f
    dispose                                     sig:a669c2c4b1 src:752c2ec0d7
    _add_snapshot                               sig:534ca03899 src:c267da6298
    add_run                                     sig:45c2143264 src:8aad00d371
    wipe                                        sig:a669c2c4b1 src:f3c95290c6
    has_job_snapshot                            sig:9de1be46d5 src:463b7fb06c
    has_execution_plan_snapshot                 sig:0b9256ffc9 src:af194e0019
    has_run_stats_index_cols                    sig:df46d3f557 src:25b619edac
    has_backfill_id_column                      sig:df46d3f557 src:b0689c2303
    has_bulk_actions_selector_cols              sig:df46d3f557 src:28e9bd4ba6
    has_bulk_action_job_name_column             sig:df46d3f557 src:cb2a152ce8
    has_backfill_tags_table                     sig:df46d3f557 src:a00470efec
dagster_postgres.event_log.PostgresEventLogStorage                      storage
    __init__                                    sig:4a50ec9be1 src:a6c3b2b5ab
    from_config_value                           sig:2095c77fe3 src:c2b8403101
    _engine                                     assigned-in:__init__,optimize_for_webserver
    _token_provider                             assigned-in:__init__
    postgres_url                                assigned-in:__init__
    _connect                                    sig:37882c05f0 src:ca8bbb0051
    optimize_for_webserver                      sig:bd991a4fbd src:5d131f34c2
    dispose                                     sig:a669c2c4b1 src:b3fe9740d2
    store_event                                 sig:3ee8844543 src:2a2320e4b0
    _event_to_row                               sig:8b19d12707 src:d73fefb83f
dagster._core.errors                                                    storage
    DagsterRunAlreadyExists                     sig:3973e022e9 src:d9b52602ae
dagster._core.events                                                    storage
    ASSET_EVENTS                                value:5ddbf947d9
    ASSET_CHECK_EVENTS                          value:08f2b66256
dagster._core.storage.event_log.schema                                  storage
    SqlEventLogStorageTable                     columns:b4c73af2e1
sqlalchemy.engine.Engine                                                storage
    _connection_cls                             is:sqlalchemy.engine.base.Connection
    connect                                     sig:2abc77c078 src:a0e289370e
sqlalchemy.engine.Connection                                            storage
    execute                                     sig:ceaa0e0265 src:e79c066be4
dagster._core.storage.local_compute_log_manager                         compute_logs
    IO_TYPE_EXTENSION                           value:c6a40c650c
    LocalComputeLogManager.__init__             sig:4171e0de70 src:9abf1b2ffa
    LocalComputeLogManager.from_config_value    sig:91f7bf1d59 src:4d98283a41
    LocalComputeLogManager.capture_logs         sig:0fe3c47023 src:1aefbfe111
    LocalComputeLogManager.get_captured_local_path  sig:2390cfcc87 src:3016351f54
    LocalComputeLogManager.complete_artifact_path  sig:de89490a82 src:538c466840
dagster._core.execution.compute_logs                                    compute_logs
    mirror_stream_to_file                       sig:b78358ae09 src:3050f5e745
    redirect_stream                             sig:5aa62a3e9e src:900e84465f
    tail_to_stream                              sig:2c3a637ab8 src:95292927be
dagster._core.storage.compute_log_manager                               compute_logs
    CapturedLogContext                          sig:7db7ea22b8 src:ff96404cea
    ComputeIOType                               members:3b6ab27a52
dagster._utils                                                          compute_logs
    ensure_file                                 sig:9b43fde8c7 src:234aff361f
    touch_file                                  sig:3a37bb4057 src:1f3748c92c
"""

# Names the engine imports from private modules only to annotate or to pass along: their shape
# is not relied on, so they are not pinned (an upgrade that moves one fails the import).
NOT_PINNED = {
    "dagster._core.events.log.EventLogEntry": "store_event's annotation",
    "dagster._core.storage.dagster_run.DagsterRun": "add_run's annotation",
}

# The private `dagster._` imports allowed outside agent_pipeline/engine, each with its reason.
# A line no longer needed fails test_private_dagster_imports_are_in_the_engine: remove it.
PRIVATE_IMPORTS_ELSEWHERE = {
    ("agent_pipeline/ops.py", "dagster._core.errors.DagsterInvalidPropertyError"):
        "what context.run raises for an op invoked on its own (no run); Dagster exports no "
        "public name for it, and catching DagsterError would hide every other error",
    ("agent_pipeline/run_failures.py", "dagster._core.events.RunFailureReason"):
        "the structured reason run monitoring writes on a run-failure event (a lost worker), "
        "which Dagster does not export",
    ("agent_pipeline/schedules.py", "dagster._core.scheduler.instigation.InstigatorType"):
        "the argument instance.all_instigator_state takes to list schedules' states, "
        "not exported",
    ("agent_pipeline/schedules.py", "dagster._time.get_current_datetime"):
        "the daemon's clock, which schedule ticks come from and which the scheduling tests "
        "shift (agent_pipeline_tests/shifted_clock); the standard library's clock is not it",
}

INSTANCE_FILES = ("dagster.yaml", "deploy/dagster.yaml")


# ---------------------------------------------------------------------------------------------
# The table and the fingerprints.


@dataclass(frozen=True)
class Pin:
    owner: str  # the upstream module, class or function the member is found under
    member: str  # relative to owner
    module: str  # ours: agent_pipeline/engine/<module>.py
    fingerprint: str
    line: int  # in PINS

    @property
    def path(self) -> str:
        return f"{self.owner}.{self.member}"


def parse_pins() -> list[Pin]:
    pins, owner, module = [], None, None
    for number, text in enumerate(PINS.splitlines(), start=1):
        if not text.strip():
            continue
        if not text[0].isspace():
            owner, module = text.split()
            continue
        member, _, fingerprint = text.strip().partition(" ")
        assert owner is not None, f"PINS line {number}: a member before any owner: {text!r}"
        pins.append(Pin(owner, member, module, fingerprint.strip(), number))
    return pins


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def resolve(dotted: str) -> Any:
    """The object at a dotted path: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(f"no module in {dotted}")


class _DropDocstrings(ast.NodeTransformer):
    def _drop(self, node: Any) -> Any:
        self.generic_visit(node)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _drop


def normalised_source(obj: Any) -> str:
    """The code alone: a comment, a docstring or a reformatting upstream is no change to us."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
    return ast.unparse(_DropDocstrings().visit(tree))


def _is_upstream(cls: type) -> bool:
    return cls.__module__.split(".")[0] in ("dagster", "dagster_postgres")


def _stored_attributes(code: types.CodeType) -> set[str]:
    # The bytecode, not the source: parsing the storages' classes takes most of a second.
    stored = {instruction.argval for instruction in dis.get_instructions(code)
              if instruction.opname == "STORE_ATTR"}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            stored |= _stored_attributes(const)
    return stored


@functools.cache
def _assigners(cls: type) -> dict[str, list[str]]:
    """For each attribute the class' upstream methods (its own and its bases') assign, which."""
    found: dict[str, list[str]] = {}
    for klass in cls.__mro__:
        if not _is_upstream(klass):
            continue
        for name, value in vars(klass).items():
            function = getattr(value, "fget", None) or getattr(value, "__func__", value)
            code = getattr(inspect.unwrap(function), "__code__", None) \
                if callable(function) else None
            for attribute in _stored_attributes(code) if code is not None else ():
                found.setdefault(attribute, []).append(
                    name if klass is cls else f"{klass.__name__}.{name}")
    return found


def _instance_attribute(cls: type, attribute: str) -> str:
    if attribute not in _assigners(cls):
        raise AttributeError(f"{cls.__qualname__} neither has nor assigns {attribute}")
    return "assigned-in:" + ",".join(_assigners(cls)[attribute])


def normalised_signature(obj: Any) -> str:
    """Names, kinds, annotations and defaults; a default that is an object (a registry, a
    stream) counts as one, its repr and even its type being this process' (sys.stdout under
    pytest is pytest's)."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return "-"

    def default(value: Any) -> str:
        if value is inspect.Parameter.empty:
            return ""
        if isinstance(value, str | int | float | bool | type(None)):
            return f"={value!r}"
        return "=<object>"

    parameters = [f"{p.kind.name} {p.name}: {p.annotation}{default(p.default)}"
                  for p in signature.parameters.values()]
    text = f"({', '.join(parameters)}) -> {signature.return_annotation}"
    return re.sub(r" at 0x[0-9a-f]+", "", text)


def _sorted_items(value: Any) -> str:
    items = value.items() if isinstance(value, dict) else value
    return repr(sorted(repr(item) for item in items))


def fingerprint(pin: Pin) -> str:
    owner_path, _, name = pin.path.rpartition(".")
    owner = resolve(owner_path)
    if inspect.isclass(owner) and name not in dir(owner):
        return _instance_attribute(owner, name)
    obj = getattr(owner, name)
    if inspect.isclass(obj) and obj.__name__ != name:  # a class attribute naming a class
        return f"is:{obj.__module__}.{obj.__qualname__}"
    if isinstance(obj, property):
        return f"src:{_short_hash(normalised_source(obj.fget))}"
    if inspect.isclass(obj) and issubclass(obj, enum.Enum):
        return f"members:{_short_hash(repr([(m.name, m.value) for m in obj]))}"
    if type(obj).__name__ == "Table" and hasattr(obj, "columns"):
        columns = [(c.name, str(c.type), c.nullable, c.primary_key) for c in obj.columns]
        return f"columns:{_short_hash(repr(columns))}"
    if callable(obj):
        signature = normalised_signature(obj)
        # The defining class counts: a method newly overridden upstream is a change.
        source = f"{getattr(obj, '__qualname__', '')}\n{normalised_source(obj)}"
        return f"sig:{_short_hash(signature)} src:{_short_hash(source)}"
    return f"value:{_short_hash(_sorted_items(value=obj))}"


def _where_upstream(pin: Pin) -> str:
    # An attribute or a value has no source of its own: then its class' or its module's.
    for path in (pin.path, pin.path.rpartition(".")[0]):
        try:
            obj = resolve(path)
            obj = inspect.unwrap(obj.fget if isinstance(obj, property) else obj)
            if inspect.ismodule(obj):
                return inspect.getsourcefile(obj) or path
            _, line = inspect.getsourcelines(obj)
            return f"{inspect.getsourcefile(obj)}:{line} ({getattr(obj, '__qualname__', path)})"
        except Exception:  # noqa: BLE001 (a value: try its owner)
            continue
    return pin.owner


def _uses_in_our_module(pin: Pin) -> str:
    name = pin.member.split(".")[-1]
    name = pin.member.split(".")[0] if name == "callback" else name
    path = ENGINE / f"{pin.module}.py"
    lines = [str(number) for number, text in enumerate(path.read_text().splitlines(), start=1)
             if re.search(rf"\b{re.escape(name)}\b", text)]
    return f"agent_pipeline/engine/{pin.module}.py" + (
        f" lines {', '.join(lines)}" if lines else f" (no line names {name})")


def _file_line(pin: Pin) -> int:
    before = Path(__file__).read_text().split('PINS = """', 1)[0]
    return before.count("\n") + pin.line


def pin_line(pin: Pin, fingerprint_now: str) -> str:
    member = f"    {pin.member}"
    return f"{member:<48}{fingerprint_now}" if len(member) < 48 else f"{member}  {fingerprint_now}"


def current_table() -> str:
    """PINS with every fingerprint as it is now: what to paste after checking the changes."""
    lines, owner = [], None
    for pin in parse_pins():
        if (pin.owner, pin.module) != owner:
            owner = (pin.owner, pin.module)
            lines.append(f"{pin.owner:<72}{pin.module}")
        try:
            now = fingerprint(pin)
        except Exception as error:  # noqa: BLE001 (the line says what is gone)
            now = f"GONE({type(error).__name__})"
        lines.append(pin_line(pin, now))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The tests.


KINDS = {
    "sig": "its signature", "src": "its source", "members": "its members",
    "columns": "its columns", "value": "its value", "is": "the class it names",
    "assigned-in": "where it is assigned",
}


def test_every_pin_still_matches_upstream():
    import dagster

    problems = []
    for pin in parse_pins():
        try:
            now = fingerprint(pin)
        except Exception as error:  # noqa: BLE001 (reported with the rest)
            problems.append(
                f"{pin.path} is gone from dagster {dagster.__version__} ({error!r}).\n"
                f"  Relied on by {_uses_in_our_module(pin)}: find what replaced it upstream "
                f"and change the part, then its line in PINS (line {_file_line(pin)} of this "
                "file).")
            continue
        if now == pin.fingerprint:
            continue
        if pin.fingerprint == "?":
            what = "is not pinned yet"
        else:
            changed = [part.split(":")[0] for part in now.split()
                       if part not in pin.fingerprint.split()]
            what = " and ".join(KINDS.get(kind, kind) for kind in changed) + (
                f" changed in dagster {dagster.__version__} (pinned {pin.fingerprint})")
        detail = ""
        if "sig:" in now:
            detail = f"\n  Its signature now: {inspect.signature(resolve(pin.path))}"
        problems.append(
            f"{pin.path}: {what}.{detail}\n"
            f"  Upstream: {_where_upstream(pin)}\n"
            f"  Relied on by {_uses_in_our_module(pin)}: re-read the upstream code against "
            "those lines and fix the part (and its tests) if needed.\n"
            f"  Then paste at line {_file_line(pin)} of this file:\n{pin_line(pin, now)}")
    assert not problems, (
        f"{len(problems)} pinned private object(s) changed upstream "
        "(agent_pipeline_tests/test_engine_private_surface.py explains the pins):\n\n"
        + "\n\n".join(problems))


def test_the_pin_table_is_well_formed():
    pins = parse_pins()
    modules = {path.stem for path in ENGINE.glob("*.py")} - {"__init__"}
    assert {pin.module for pin in pins} <= modules, "PINS names a module not in the engine"
    paths = [(pin.owner, pin.member) for pin in pins]
    assert len(paths) == len(set(paths)), "a line of PINS is there twice"


def _imports(path: Path) -> list[tuple[int, str]]:
    """Each name the file imports, as a dotted path, with its line, inside functions too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _is_private_dagster(dotted: str) -> bool:
    return dotted.startswith("dagster._")


def test_every_private_import_of_the_engine_is_pinned():
    pinned = {pin.path for pin in parse_pins()} | {pin.owner for pin in parse_pins()}
    unpinned = []

    def is_pinned(dotted: str) -> bool:
        return any(path == dotted or path.startswith(dotted + ".") for path in pinned)

    for path in sorted(ENGINE.glob("*.py")):
        for line, dotted in _imports(path):
            if (_is_private_dagster(dotted) or dotted.startswith("dagster_postgres.")) \
                    and not is_pinned(dotted) and dotted not in NOT_PINNED:
                unpinned.append(f"{path.relative_to(ROOT)}:{line} {dotted}")
    assert not unpinned, (
        "The engine imports private objects PINS does not pin; add a line for each (with `?`, "
        "then `python -m agent_pipeline_tests.test_engine_private_surface` gives the "
        "fingerprint), or name it in NOT_PINNED with why its shape does not matter:\n"
        + "\n".join(unpinned))


def _self_attributes(cls: type) -> dict[str, int]:
    """The attributes our class reads, sets, overrides or reaches through super(), by line."""
    source, first = inspect.getsourcelines(cls)
    names: dict[str, int] = {}
    tree = ast.parse(textwrap.dedent("".join(source)))
    for node in tree.body[0].body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.setdefault(node.name, first + node.lineno - 1)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name | ast.Call) and (
                getattr(node.value, "id", None) in ("self", "cls")
                or getattr(getattr(node.value, "func", None), "id", None) == "super"):
            names.setdefault(node.attr, first + node.lineno - 1)
    return names


def test_every_upstream_attribute_our_parts_touch_is_pinned():
    """Each method our parts override, and each attribute of an upstream base they use through
    self, cls or super(): an override or a `self._connect()` added later needs its pin too."""
    importlib.import_module("agent_pipeline.engine")
    pins = parse_pins()
    pinned_members, pinned_whole = set(), set()
    for pin in pins:
        parent_path, _, name = pin.path.rpartition(".")
        try:
            parent, obj = resolve(parent_path), None
            obj = getattr(parent, name, None)
        except Exception:  # noqa: BLE001 (a gone pin fails test_every_pin_still_matches_upstream)
            continue
        if inspect.isclass(parent):
            pinned_members.add((parent, name))
        if inspect.isclass(obj):
            pinned_whole.add(obj)
    unpinned = []
    for path in sorted(ENGINE.glob("*.py")):
        module = importlib.import_module(f"agent_pipeline.engine.{path.stem}")
        for cls in vars(module).values():
            if not (inspect.isclass(cls) and cls.__module__ == module.__name__):
                continue
            upstream = [base for base in cls.__mro__ if _is_upstream(base)]
            if not upstream:
                continue
            ours = [klass for klass in cls.__mro__
                    if klass.__module__.startswith("agent_pipeline.")]
            for klass in ours:
                for name, line in _self_attributes(klass).items():
                    if name.startswith("__") and name != "__init__":
                        continue
                    defined_in = [base for base in upstream if name in vars(base)]
                    if not defined_in and name not in _assigners(upstream[0]):
                        continue  # ours alone
                    if any((base, name) in pinned_members for base in upstream) \
                            or (defined_in and defined_in[0] in pinned_whole):
                        continue
                    where = defined_in[0].__qualname__ if defined_in else upstream[0].__qualname__
                    unpinned.append(f"{path.relative_to(ROOT)}:{line} {klass.__name__} uses "
                                    f"{where}.{name}")
    assert not unpinned, (
        "Our engine classes override or use these upstream attributes, which PINS does not "
        "pin; add a line for each under its class (with `?`, then `python -m "
        "agent_pipeline_tests.test_engine_private_surface` gives the fingerprint):\n"
        + "\n".join(sorted(set(unpinned))))


def _project_files() -> list[Path]:
    return sorted((ROOT / "agent_pipeline").rglob("*.py")) + sorted((ROOT / "deploy").glob("*.py"))


def test_private_dagster_imports_are_in_the_engine():
    outside, used = [], set()
    for path in _project_files():
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith("agent_pipeline/engine/"):
            continue
        for line, dotted in _imports(path):
            if not _is_private_dagster(dotted):
                continue
            if (relative, dotted) in PRIVATE_IMPORTS_ELSEWHERE:
                used.add((relative, dotted))
            else:
                outside.append(f"{relative}:{line} imports {dotted}")
    stale = sorted(set(PRIVATE_IMPORTS_ELSEWHERE) - used)
    problems = []
    if outside:
        problems.append(
            "Private Dagster imports belong in agent_pipeline/engine (DESIGN.md, \"Dagster's own "
            "parts first\"); move these there, use a public name, or add each to "
            "PRIVATE_IMPORTS_ELSEWHERE with its reason:\n" + "\n".join(outside))
    if stale:
        problems.append(
            "PRIVATE_IMPORTS_ELSEWHERE names imports the project no longer has; remove them:\n"
            + "\n".join(f"{file} {dotted}" for file, dotted in stale))
    assert not problems, "\n\n".join(problems)


def _modules_named(config: Any) -> list[str]:
    if isinstance(config, dict):
        named = [config["module"]] if isinstance(config.get("module"), str) else []
        return named + [m for value in config.values() for m in _modules_named(value)]
    if isinstance(config, list):
        return [m for value in config for m in _modules_named(value)]
    return []


@pytest.mark.parametrize("instance_file", INSTANCE_FILES)
def test_the_instance_files_name_parts_of_ours_only_in_the_engine(instance_file):
    modules = _modules_named(yaml.safe_load((ROOT / instance_file).read_text()))
    assert modules, f"{instance_file} names no module: is it still an instance file?"
    elsewhere = [m for m in modules if m.split(".")[0] == "agent_pipeline"
                 and not (m + ".").startswith("agent_pipeline.engine.")]
    assert not elsewhere, (
        f"{instance_file} names modules of ours outside agent_pipeline.engine, where every "
        f"engine part lives: {elsewhere}")


if __name__ == "__main__":
    sys.stdout.write(current_table() + "\n")
