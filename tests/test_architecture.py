"""The import rule between the stages of ``meterlake`` (see DESIGN.md), checked with ``ast``.

``config`` imports nothing of ours; ``ingest`` and ``storage`` only ``config``; ``analytics`` and
``tariffs`` ``config`` and ``storage``; ``alerts`` may add ``analytics`` and ``tariffs``; ``api``
and ``cli`` (the command and its job composition, with ``__main__.py``, its ``python -m``
twin) may import everything.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import meterlake

PACKAGE = "meterlake"
PACKAGE_DIR = Path(meterlake.__file__).resolve().parent
STAGES = ("config", "ingest", "storage", "analytics", "tariffs", "alerts", "api", "cli")
ALLOWED: dict[str, frozenset[str]] = {
    "config": frozenset(),
    "ingest": frozenset({"config"}),
    "storage": frozenset({"config"}),
    "analytics": frozenset({"config", "storage"}),
    "tariffs": frozenset({"config", "storage"}),
    "alerts": frozenset({"config", "storage", "analytics", "tariffs"}),
    "api": frozenset(STAGES),
    "cli": frozenset(STAGES),
    "__main__": frozenset(STAGES),
    # the package's own __init__ must stay empty of stages: importing any stage would make it
    # a dependency of every other one
    "": frozenset(),
}


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    importer: str
    imported: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.importer} must not import {self.imported}"


def module_name(path: Path, package_dir: Path = PACKAGE_DIR) -> str:
    """``meterlake/storage/writer.py`` -> ``meterlake.storage.writer`` (``__init__`` dropped)."""
    parts = [PACKAGE, *path.relative_to(package_dir).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def stage_of(module: str) -> str:
    """The stage a module of ours belongs to: ``meterlake.storage.x`` -> ``storage``.

    The package itself (``meterlake``) is the stage ``""``.
    """
    parts = module.split(".")
    assert parts[0] == PACKAGE, module
    return parts[1] if len(parts) > 1 else ""


def imported_modules(source: str, module: str, *, is_package: bool) -> list[tuple[int, str]]:
    """Every module of ours that ``source`` (the text of ``module``) imports, with its line.

    Handles ``import meterlake.x``, ``from meterlake.x import y``, ``from meterlake import x``,
    relative imports (``from ..x import y``, ``from . import y``) and literal
    ``importlib.import_module("meterlake.x")`` calls, anywhere in the file.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level - 1 >= len(base_parts):
                    found.append((node.lineno, "<relative import beyond the package>"))
                    continue
                base = ".".join(base_parts[: len(base_parts) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            if target == PACKAGE:  # from meterlake import storage: the names are modules
                found += [(node.lineno, f"{PACKAGE}.{a.name}") for a in node.names]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return [
        (line, name)
        for line, name in found
        if name == PACKAGE or name.startswith(f"{PACKAGE}.") or name.startswith("<")
    ]


def check_source(
    source: str, module: str, file: str, *, is_package: bool = False
) -> list[Violation]:
    """The import-rule violations of one module's source."""
    importer = stage_of(module)
    if importer not in ALLOWED:
        return [Violation(file, 1, importer, "anything: this module is not in the import rule")]
    violations = []
    for line, name in imported_modules(source, module, is_package=is_package):
        if name.startswith("<"):
            violations.append(Violation(file, line, importer, name))
            continue
        target = stage_of(name)
        if target == importer or target == "" or target not in ALLOWED:
            # its own stage; the package itself or a name in it (``__version__``): a module
            # there that is not a stage is reported by the check of its own file
            continue
        if target not in ALLOWED[importer]:
            violations.append(Violation(file, line, importer, name))
    return violations


def check_package(package_dir: Path = PACKAGE_DIR) -> list[Violation]:
    violations = []
    for path in sorted(package_dir.rglob("*.py")):
        violations += check_source(
            path.read_text(encoding="utf-8"),
            module_name(path, package_dir),
            str(path.relative_to(package_dir.parent)),
            is_package=path.name == "__init__.py",
        )
    return violations


def test_the_package_follows_the_import_rule() -> None:
    files = list(PACKAGE_DIR.rglob("*.py"))
    assert len(files) >= 10, "the checker found too few files to be looking at the package"
    violations = check_package()
    assert not violations, "import rule broken:\n" + "\n".join(map(str, violations))


def test_the_checker_sees_every_stage_of_the_package() -> None:
    stages = {stage_of(module_name(p)) for p in PACKAGE_DIR.rglob("*.py")}
    assert stages >= {"", "config", "storage", "ingest", "analytics", "tariffs", "alerts", "api"}


# --- the checker itself catches violations ------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "source", "imported", "line"),
    [
        (
            "meterlake.config.units",
            "import meterlake.storage.layout\n",
            "meterlake.storage.layout",
            1,
        ),
        ("meterlake.config.units", "from meterlake.storage import scan\n", "meterlake.storage", 1),
        (
            "meterlake.config.units",
            "import os\nfrom meterlake import storage\n",
            "meterlake.storage",
            2,
        ),
        ("meterlake.config.units", "from ..storage import scan\n", "meterlake.storage", 1),
        ("meterlake.config.units", "from .. import storage\n", "meterlake.storage", 1),
        ("meterlake.config", "from ..storage import scan\n", "meterlake.storage", 1),
        (
            "meterlake.storage.scan",
            "from meterlake.analytics.vee import x\n",
            "meterlake.analytics.vee",
            1,
        ),
        ("meterlake.storage.scan", "import meterlake.ingest as ing\n", "meterlake.ingest", 1),
        (
            "meterlake.ingest.mqtt",
            "from ..storage.writer import write\n",
            "meterlake.storage.writer",
            1,
        ),
        (
            "meterlake.analytics.vee",
            "from meterlake.tariffs import engine\n",
            "meterlake.tariffs",
            1,
        ),
        ("meterlake.tariffs.engine", "from meterlake.alerts import rules\n", "meterlake.alerts", 1),
        (
            "meterlake.tariffs.engine",
            "from meterlake.analytics import x\n",
            "meterlake.analytics",
            1,
        ),
        ("meterlake.alerts.rules", "from meterlake.api import app\n", "meterlake.api", 1),
        ("meterlake.alerts.rules", "import meterlake.cli\n", "meterlake.cli", 1),
        ("meterlake.ingest.mqtt", "from meterlake import __main__\n", "meterlake.__main__", 1),
        (
            "meterlake.storage.scan",
            "def f():\n    import importlib\n    return importlib.import_module('meterlake.api')\n",
            "meterlake.api",
            3,
        ),
        (
            "meterlake.storage.scan",
            "if TYPE_CHECKING:\n    import os\n    from meterlake.tariffs import T\n",
            "meterlake.tariffs",
            3,
        ),
    ],
)
def test_checker_catches_violations(module: str, source: str, imported: str, line: int) -> None:
    is_package = module == "meterlake.config"
    violations = check_source(source, module, "meterlake/x.py", is_package=is_package)
    assert [(v.line, v.imported) for v in violations] == [(line, imported)]
    assert str(violations[0]).startswith(f"meterlake/x.py:{line}: {stage_of(module)} must not")


def test_checker_reports_file_and_line() -> None:
    source = "import os\n\nfrom meterlake.config import errors\nfrom meterlake.api import app\n"
    violations = check_source(source, "meterlake.storage.writer", "meterlake/storage/writer.py")
    assert [str(v) for v in violations] == [
        "meterlake/storage/writer.py:4: storage must not import meterlake.api"
    ]


@pytest.mark.parametrize(
    ("module", "source"),
    [
        (
            "meterlake.config.settings",
            "import os\nfrom meterlake.config.errors import ConfigError\n",
        ),
        ("meterlake.config.settings", "from .errors import ConfigError\nfrom . import ids\n"),
        (
            "meterlake.storage.writer",
            "from meterlake.config import schemas\nfrom . import layout\n",
        ),
        ("meterlake.ingest.files", "from ..config.ids import validate_meter_id\n"),
        ("meterlake.analytics.vee", "from meterlake.storage.scan import scan\n"),
        ("meterlake.tariffs.engine", "from meterlake import config, storage\n"),
        (
            "meterlake.alerts.rules",
            "from meterlake.analytics import x\nfrom meterlake.tariffs import y\n",
        ),
        ("meterlake.api.app", "from meterlake import alerts, cli, ingest\n"),
        ("meterlake.cli", "from meterlake.api import app\nfrom meterlake.ingest import files\n"),
        ("meterlake.cli", "from .storage import layout\n"),
        ("meterlake.storage.scan", "from meterlake import __version__\n"),
        ("meterlake.storage.scan", "import polars\nfrom polars import col\n"),
        ("meterlake.storage.scan", "import meterlake_extras.x\n"),
    ],
)
def test_checker_accepts_allowed_imports(module: str, source: str) -> None:
    assert check_source(source, module, "f.py") == []


def test_relative_imports_resolve_from_a_package_init() -> None:
    source = "from .writer import write_table\nfrom ..config import ids\nfrom ..api import app\n"
    violations = check_source(
        source, "meterlake.storage", "meterlake/storage/__init__.py", is_package=True
    )
    assert [str(v) for v in violations] == [
        "meterlake/storage/__init__.py:3: storage must not import meterlake.api"
    ]


def test_modules_outside_the_rule_are_reported() -> None:
    violations = check_source("import os\n", "meterlake.helpers", "meterlake/helpers.py")
    assert [v.file for v in violations] == ["meterlake/helpers.py"]
    root = check_source(
        "from meterlake import storage\n", "meterlake", "meterlake/__init__.py", is_package=True
    )
    assert [v.imported for v in root] == ["meterlake.storage"]


def test_checker_on_a_synthetic_package(tmp_path: Path) -> None:
    package = tmp_path / "meterlake"
    for stage in ("config", "storage"):
        (package / stage).mkdir(parents=True)
        (package / stage / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "config" / "bad.py").write_text("x = 1\n\nfrom ..storage import layout\n")
    (package / "storage" / "good.py").write_text("from ..config import bad\n")
    assert [str(v) for v in check_package(package)] == [
        "meterlake/config/bad.py:3: config must not import meterlake.storage"
    ]
