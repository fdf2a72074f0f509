"""What a score column means: its better side, how a group of images is summed up, where the report shows it.

A score plugin (``ImageScore``, ``SummaryScore``) lists one :class:`ScoreColumn` per column it writes; the
run records them in ``run.json`` (``score_columns``) and the report reads them there, so it names no plugin's
column and needs no plugin to draw a finished run. The model is lm-eval's ``MetricSpec`` (compute,
aggregate, ``higher_is_better``). Runs written before ``run.json`` held them read :data:`LEGACY_COLUMNS`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Iterable

from iqadef.core.errors import ConfigError

#: "higher"/"lower" is better; None: neither side is better (a distance, a raw score).
DIRECTIONS = ("higher", "lower", None)
#: How the report sums up a column over a group's images, each with its 95% interval (analysis/scores.py).
AGGREGATES = ("mean", "median")
#: A column in the defence ranking: its bootstrap "interval" beside the mean, or the "mean" alone.
RANKINGS = (None, "mean", "interval")
#: A column's named meaning, which the report and the analysis ask for instead of a plugin's column name
#: (at most one column per role in a run). The built-ins: ``full-reference`` and ``gain``.
ROLES = {
    "attack_psnr": "PSNR of x_a against x (the attack's visibility)",
    "attack_ssim": "SSIM of x_a against x (the attack's visibility)",
    "defended_psnr": "PSNR of D(x_a) against x",
    "defended_ssim": "SSIM of D(x_a) against x",
    "attack_linf": "L-inf of x_a - x (where the user's attacks fit the protocol's budgets)",
    "paper_gain": "|f(x) - f(D(x_a))| / f(x), the gain per image",
}
#: Where the columns of a plugin without :attr:`report_order` stand in the main table (after the built-ins).
DEFAULT_ORDER = 100


@dataclass(frozen=True)
class ScoreColumn:
    """One column a score plugin writes.

    ``key`` columns are the report's main table (the others are in the full table and summary.csv);
    ``ranking`` puts the column in the defence ranking, where a column with an interval and a direction also
    names the key findings' best defences. ``title`` is how the page names it (default: ``name``); ``role``
    is one of :data:`ROLES`, the meaning the report looks the column up by.
    """

    name: str
    direction: str | None = None
    aggregate: str = "mean"
    key: bool = False
    ranking: str | None = None
    title: str = ""
    role: str | None = None

    def __post_init__(self) -> None:
        where = f"score column {self.name!r}"
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigError(f"{where}: the name must be a column name (letters, digits, _)")
        for field, value, allowed in (
            ("direction", self.direction, DIRECTIONS),
            ("aggregate", self.aggregate, AGGREGATES),
            ("ranking", self.ranking, RANKINGS),
        ):
            if value not in allowed:
                raise ConfigError(
                    f"{where}: {field} {value!r} is not allowed; expected one of {', '.join(repr(a) for a in allowed)}"
                )
        if self.role is not None and self.role not in ROLES:
            raise ConfigError(
                f"{where}: role {self.role!r} is not allowed; expected None or one of {', '.join(map(repr, ROLES))}"
            )
        if not isinstance(self.key, bool):
            raise ConfigError(f"{where}: key {self.key!r} is not allowed; expected true or false")

    @property
    def higher_is_better(self) -> bool | None:
        return None if self.direction is None else self.direction == "higher"

    def to_json(self, plugin: str = "", order: int = DEFAULT_ORDER) -> dict[str, Any]:
        return {**asdict(self), "plugin": plugin, "order": order}


def check_columns(owner: str, columns: Any) -> None:
    """Raise ConfigError unless ``columns`` is a tuple of :class:`ScoreColumn` with distinct names."""
    if not isinstance(columns, tuple) or not all(isinstance(c, ScoreColumn) for c in columns):
        raise ConfigError(f"{owner}: `columns` must be a tuple of iqadef.ScoreColumn")
    names = [c.name for c in columns]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{owner}: score column(s) {twice} declared twice")


class DeclaresColumns:
    """The part of a score plugin's contract that describes its columns (``ImageScore``, ``SummaryScore``)."""

    #: One :class:`ScoreColumn` per column the plugin writes; a column it writes without one is averaged and
    #: listed in the full table, with no better side.
    columns: ClassVar[tuple[ScoreColumn, ...]] = ()
    #: Where its key columns stand in the report's main table, lower first (ties: by plugin name).
    report_order: ClassVar[int] = DEFAULT_ORDER

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_columns(f"score plugin {cls.__name__}", cls.columns)

    @classmethod
    def describe_columns(cls) -> dict[str, Any]:
        """The columns as ``iqadef list`` shows them."""
        return {"columns": [asdict(c) for c in cls.columns], "report_order": cls.report_order}


def record(classes: Iterable[type]) -> dict[str, dict[str, Any]]:
    """``run.json``'s ``score_columns``: every column of the score plugins ``classes``, key columns in the
    order the main table shows them (the plugins' ``report_order``, then their declaration)."""
    entries = []
    roles: dict[str, str] = {}
    for cls in classes:
        order = int(getattr(cls, "report_order", DEFAULT_ORDER))
        for position, column in enumerate(getattr(cls, "columns", ())):
            owner = f"{getattr(cls, 'name', '')!r} ({column.name})"
            if column.role is not None and roles.setdefault(column.role, owner) != owner:
                raise ConfigError(
                    f"score plugins {roles[column.role]} and {owner} both declare role {column.role!r}; "
                    "a run has at most one column per role: drop the role from one of them"
                )
            entries.append(
                ((order, getattr(cls, "name", ""), position), column.to_json(getattr(cls, "name", ""), order))
            )
    return {entry["name"]: entry for _, entry in sorted(entries, key=lambda e: e[0])}


def read(run_info: dict[str, Any] | None) -> dict[str, ScoreColumn]:
    """The score columns ``run.json`` records (column name -> :class:`ScoreColumn`, in the main table's order);
    :data:`LEGACY_COLUMNS` for a run written before they were recorded; an entry recorded before columns had a
    ``role`` takes the built-in column's role of the same name. A malformed entry is a ConfigError naming it."""
    recorded = (run_info or {}).get("score_columns")
    if recorded is None:
        return dict(LEGACY_COLUMNS)
    if not isinstance(recorded, dict):
        raise ConfigError("run.json: score_columns must be a mapping of column name -> its description")
    out = {}
    fields = {"name", "direction", "aggregate", "key", "ranking", "title", "role"}
    for name, entry in recorded.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"run.json: score_columns.{name} must be a mapping")
        if "role" not in entry and name in LEGACY_COLUMNS:  # recorded before columns had roles: the built-in's
            entry = {**entry, "role": LEGACY_COLUMNS[name].role}
        try:
            out[str(name)] = ScoreColumn(**{k: v for k, v in entry.items() if k in fields})
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"run.json: score_columns.{name}: {exc}") from None
    return out


def column_with_role(columns: dict[str, ScoreColumn], role: str) -> str | None:
    """The name of the column that has ``role`` (one of :data:`ROLES`), None when the run has none."""
    if role not in ROLES:
        raise ValueError(f"unknown column role {role!r}")
    return next((name for name, c in columns.items() if c.role == role), None)


def key_columns(columns: dict[str, ScoreColumn]) -> list[str]:
    """The main table's score columns, in order."""
    return [name for name, c in columns.items() if c.key]


def ranking_columns(columns: dict[str, ScoreColumn]) -> list[ScoreColumn]:
    """The columns the defence ranking shows beside the normalised gain, in order."""
    return [c for c in columns.values() if c.ranking is not None]


def finding_column(columns: dict[str, ScoreColumn]) -> ScoreColumn | None:
    """The column the key findings rank defences by besides the gain: the first ranking column with an
    interval and a better side."""
    return next((c for c in ranking_columns(columns) if c.ranking == "interval" and c.direction), None)


def _legacy() -> dict[str, ScoreColumn]:
    """The built-in plugins' columns as the report showed them before ``run.json`` recorded any."""
    lower, higher = "lower", "higher"
    spec: list[tuple[str, str | None, str | None]] = [
        ("gain", lower, None),
        ("gain_clean", lower, None),
        ("quality_score", higher, "interval"),
        ("similarity_score", higher, "mean"),
        ("similarity_score_clean", higher, None),
        *((f"{kind}_gain_{pair}", lower, None) for pair in ("x_dxa", "x_xa", "dx_dxa") for kind in ("rel", "abs")),
        *(
            (f"srocc_{name}", higher, None)
            for name in ("mos_clean", "mos_adv", "mos_def_clean", "mos_def_adv", "clean_def_clean")
        ),
        ("robustness_score", higher, None),
        ("normalized_absolute_gain", lower, None),
        ("normalized_relative_gain", lower, None),
        ("relative_gain_classic", lower, None),
        ("wasserstein_score", None, None),
        ("energy_distance_score", None, None),
    ]
    titles = {"quality_score": "quality score"}  # as the quality plugin declares it
    out = {
        name: ScoreColumn(name, direction, key=True, ranking=ranking, title=titles.get(name, ""))
        for name, direction, ranking in spec
    }
    out["gain"] = ScoreColumn("gain", lower, key=True, role="paper_gain")
    # The full-reference columns the report and the verdict read by name before roles (not in the main table).
    for name, direction, role in (
        ("psnr_x_xa", higher, "attack_psnr"),
        ("ssim_x_xa", higher, "attack_ssim"),
        ("psnr_x_dxa", higher, "defended_psnr"),
        ("ssim_x_dxa", higher, "defended_ssim"),
        ("linf_x_xa", lower, "attack_linf"),
    ):
        out[name] = ScoreColumn(name, direction, role=role)
    return out


#: The fallback for runs without ``score_columns``: the columns the report named before they were declared.
LEGACY_COLUMNS: dict[str, ScoreColumn] = _legacy()
