"""Suite files: load YAML, validate every key, and expand case groups into concrete Cases.

A case group names a workload and gives parameters. A list value is an axis (cartesian product);
`shapes:` is a list of explicit rows, zipped, each crossed with the axes; `model:` expands a preset
into rows the same way, and keys given explicitly override what a preset fills. Every user error
is a ConfigError whose text names the file, the place (`cases[2].heads`), and what is allowed.
A key given twice in one mapping, text that is not UTF-8, and a number that is not finite (.inf,
.nan) are errors too: YAML itself would keep the last key, and inf would hang or fail every case.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from harness import backends, workloads
from harness.errors import UsageError
from harness.measure.timing import TimingSettings, check_setting
from harness.store import ids


class ConfigError(UsageError):
    """A mistake in a suite file, reported as `FILE: PLACE: message` without a traceback."""

    def __init__(self, source: str, place: str, message: str):
        self.source, self.place, self.message = source, place, message
        super().__init__(f"{source}: {place}: {message}" if place else f"{source}: {message}")


@dataclass(frozen=True)
class Case:
    workload: str
    backend: str
    dtype: str
    params: tuple[tuple[str, object], ...]  # in the workload's parameter order

    @property
    def p(self) -> dict:
        return dict(self.params)

    @property
    def problem_id(self) -> str:
        """The problem without the backend: the same inputs go to every backend of a problem."""
        return ids.problem_id(self.workload, self.dtype, self.params)

    @property
    def case_id(self) -> str:
        """Stable across runs and machines, so runs can be matched case by case."""
        return ids.case_id(self.problem_id, self.backend)


@dataclass
class Suite:
    name: str
    source: str  # file path, or "<default-cpu>" for a shipped suite
    text: str  # the suite file as written, for meta.json
    timing: TimingSettings
    cases: list[Case] = field(default_factory=list)


TOP_KEYS = ("suite", "description", "timing", "cases")
GROUP_KEYS = ("workload", "backends", "dtype", "shapes", "model")


def load(path: str | Path) -> Suite:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read suite file ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(str(path), f"line {line}", f"not UTF-8 text: byte offset {exc.start} "
                          f"(0x{data[exc.start]:02x}) cannot be decoded; save the file as UTF-8") from None
    return parse(text, str(path))


class _DuplicateKey(yaml.MarkedYAMLError):
    pass


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (SafeLoader keeps the last)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_line: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                try:
                    if key in first_line:
                        raise _DuplicateKey(problem=f"duplicate key {key!r}: given at line {first_line[key]} and "
                                                    f"again at line {line}; give each key once",
                                            problem_mark=key_node.start_mark)
                    first_line[key] = line
                except TypeError:  # an unhashable key: SafeLoader reports it
                    continue
        return super().construct_mapping(node, deep)


def parse(text: str, source: str) -> Suite:
    try:
        doc = yaml.load(text, Loader=_StrictLoader)
    except _DuplicateKey as exc:
        raise ConfigError(source, f"line {exc.problem_mark.line + 1}", exc.problem) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        raise ConfigError(source, where, f"not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(doc, dict):
        raise ConfigError(source, "", "a suite is a mapping with keys " + _allowed(TOP_KEYS))
    _check_keys(doc, TOP_KEYS, source, "")
    if not isinstance(doc.get("cases"), list) or not doc["cases"]:
        raise ConfigError(source, "cases", "must be a non-empty list of case groups")
    name = doc.get("suite", Path(source).stem)
    if not isinstance(name, str):
        raise ConfigError(source, "suite", f"must be a string (got {name!r})")
    suite = Suite(name, source, text, _timing(doc.get("timing", {}), source))
    seen: set[str] = set()
    for i, group in enumerate(doc["cases"]):
        for case in _expand_group(group, source, f"cases[{i}]"):
            if case.case_id not in seen:  # the same case twice is measured once
                seen.add(case.case_id)
                suite.cases.append(case)
    return suite


def _timing(raw, source: str) -> TimingSettings:
    if not isinstance(raw, dict):
        raise ConfigError(source, "timing", "must be a mapping")
    allowed = {f.name: f for f in fields(TimingSettings)}
    _check_keys(raw, tuple(allowed), source, "timing")
    values = {}
    for key, value in raw.items():
        want = type(getattr(TimingSettings(), key))
        kinds = {bool: (bool,), int: (int,), float: (int, float)}[want]
        ok = isinstance(value, kinds) and (want is bool or not isinstance(value, bool))
        names = {bool: "true or false", int: "an integer", float: "a number"}
        problem = None if ok else f"must be {names[want]} (got {value!r})"
        problem = problem or _finite(value) or check_setting(key, value)
        if problem:
            raise ConfigError(source, f"timing.{key}", problem)
        values[key] = want(value)
    return TimingSettings(**values)


def _finite(value) -> str | None:
    """inf and nan are numbers to YAML (.inf, .nan) but never a usable setting or size."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number (got {value!r})"
    return None


def _check_keys(mapping: dict, allowed, source: str, place: str) -> None:
    for key in mapping:
        if key not in allowed:
            where = f"{place}.{key}" if place else str(key)
            raise ConfigError(source, where, f"unknown key; allowed: {_allowed(allowed)}")


def _allowed(values) -> str:
    return ", ".join(str(v) for v in values)


def _expand_group(group, source: str, place: str) -> list[Case]:
    if not isinstance(group, dict):
        raise ConfigError(source, place, "a case group is a mapping with a `workload` key")
    name = group.get("workload")
    if name not in workloads.REGISTRY:
        raise ConfigError(source, f"{place}.workload", f"must be one of {_allowed(workloads.REGISTRY)} (got {name!r})")
    wl = workloads.REGISTRY[name]
    param_names = [p.name for p in wl.params]
    _check_keys(group, GROUP_KEYS + tuple(param_names), source, place)

    names = backends.names(name)
    chosen_backends = _axis(group.get("backends", names), source, f"{place}.backends", names)
    dtypes = _axis(group.get("dtype", wl.default_dtype), source, f"{place}.dtype", wl.dtypes)

    rows = _rows(group, wl, source, place)
    explicit = {k: v for k, v in group.items() if k in param_names}
    axes = {k: (v if isinstance(v, list) else [v]) for k, v in explicit.items()}
    for key, values in axes.items():
        if not values:
            raise ConfigError(source, f"{place}.{key}", "an empty list leaves no cases")

    cases = []
    for row in rows:
        row_place = row.pop("_place", place)
        for combo in itertools.product(*axes.values()):
            merged = {**row, **dict(zip(axes, combo))}
            params = _validate_params(wl, merged, source, lambda k: row_place if k in row else place)
            for dtype in dtypes:
                for backend in chosen_backends:
                    cases.append(Case(name, backend, dtype, params))
    return cases


def _axis(value, source: str, place: str, allowed) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ConfigError(source, place, f"an empty list leaves no cases; allowed: {_allowed(allowed)}")
    for v in values:
        if v not in allowed:
            raise ConfigError(source, place, f"must be one of {_allowed(allowed)} (got {v!r})")
    return list(dict.fromkeys(values))


def _rows(group: dict, wl, source: str, place: str) -> list[dict]:
    """The explicit rows of a group: from `shapes`, from a `model` preset, or one empty row."""
    if "shapes" in group and "model" in group:
        raise ConfigError(source, place, "give either `shapes` or `model`, not both")
    if "model" in group:
        models = group["model"] if isinstance(group["model"], list) else [group["model"]]
        rows = []
        for m in models:
            if m not in wl.presets:
                raise ConfigError(source, f"{place}.model", f"must be one of {_allowed(wl.presets)} (got {m!r})")
            rows += [{**r, "_place": f"{place}.model[{m}]"} for r in wl.presets[m]()]
        return rows
    if "shapes" not in group:
        return [{}]
    shapes = group["shapes"]
    if not isinstance(shapes, list) or not shapes:
        raise ConfigError(source, f"{place}.shapes", "must be a non-empty list of mappings")
    param_names = [p.name for p in wl.params]
    rows = []
    for j, row in enumerate(shapes):
        row_place = f"{place}.shapes[{j}]"
        if not isinstance(row, dict):
            raise ConfigError(source, row_place, f"must be a mapping of parameters ({_allowed(param_names)})")
        _check_keys(row, param_names, source, row_place)
        clash = [k for k in row if k in group]
        if clash:
            raise ConfigError(source, f"{row_place}.{clash[0]}", "also given for the whole group; give it in one place")
        rows.append({**row, "_place": row_place})
    return rows


def _validate_params(wl, given: dict, source: str, place_of) -> tuple:
    """Check each parameter, fill defaults, then the workload's cross-parameter rules.

    place_of(key) says where a key was written: the group, or one of its shapes/preset rows.
    """
    values = {}
    for p in wl.params:
        if p.name in given:
            error = p.check(given[p.name]) or _finite(given[p.name])
            if error:
                raise ConfigError(source, f"{place_of(p.name)}.{p.name}", error)
            values[p.name] = given[p.name]
        elif p.required:
            raise ConfigError(source, f"{place_of(p.name)}.{p.name}", f"required: {p.help}")
        else:
            values[p.name] = p.default
    values = wl.complete(values)
    problem = wl.validate(values)
    if problem:
        key, message = problem
        raise ConfigError(source, f"{place_of(key)}.{key}", message)
    return tuple(values.items())


def differences(old: Suite, new: Suite) -> list[str]:
    """What makes `new` a different suite from `old`: the cases added and removed and the timing
    settings changed (the name, comments and layout of the file do not count). [] when the same."""
    old_ids, new_ids = [c.case_id for c in old.cases], [c.case_id for c in new.cases]
    old_set, new_set = set(old_ids), set(new_ids)
    found = []
    for word, changed_ids in (("added", [i for i in new_ids if i not in old_set]),
                              ("removed", [i for i in old_ids if i not in new_set])):
        if changed_ids:
            found.append(f"{len(changed_ids)} case{'s' if len(changed_ids) > 1 else ''} {word} (e.g. {changed_ids[0]})")
    old_timing, new_timing = asdict(old.timing), asdict(new.timing)
    changed = [f"{k} {old_timing[k]} -> {new_timing[k]}" for k in old_timing if old_timing[k] != new_timing[k]]
    if changed:
        found.append("timing changed: " + ", ".join(changed))
    return found
