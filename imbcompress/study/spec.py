"""Study files: read and validate a study YAML into a :class:`Study` (expanding it into runs is ``plan.py``).

A study is (balanced + imbalance variants) x methods x remedies x seeds. Everything is checked before any run
starts: unknown or duplicate keys, bad values, missing fragment files, unknown dependency names and dependency cycles
all raise a ``ValueError`` that names the key and the value. A method is a fit, or (with ``ptq``) an int8
post-training quantization of another method's checkpoint by ``imbcompress ptq``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imbcompress.names import HEADS, PROFILES
from imbcompress.study.fields import NAME_PATTERN, as_list, callback_list, check_keys, check_name, fragments, numbers
from imbcompress.study.fields import field_error as _err
from imbcompress.study.fields import str_list as _str_list
from imbcompress.study.remedies import BASELINE, Remedy, parse_remedies
from imbcompress.yamlio import DuplicateKeyError, load_yaml_file

TOP_KEYS = ("name", "description", "base", "args", "imbalance", "methods", "remedies", "reference", "seeds")
VARIANT_KEYS = ("profile", "ratio", "minority_classes", "head")
METHOD_KEYS = ("fragments", "callbacks", "init_from", "teacher", "distill", "args", "bits", "label", "ptq")
PTQ_METHOD_KEYS = ("ptq", "init_from", "bits", "label")
PTQ_KEYS = ("calibration", "calibration_size", "calibration_seed")
PTQ_CALIBRATIONS = ("imbalanced", "balanced")  # imbcompress.deploy.ptq.CALIBRATIONS (that module imports torch)
PTQ_DEFAULT_CALIBRATION_SIZE = 500  # imbcompress.deploy.command.DEFAULT_CALIBRATION_SIZE
DISTILL_KEYS = ("alpha", "temperature")
KD_CLASS_PATH = "imbcompress.callbacks.KnowledgeDistillation"
LAST_CKPT = "checkpoints/last.ckpt"


@dataclass(frozen=True)
class Variant:
    """One training-data setting; ``key`` is its stable id (``balanced``, ``step-r100-m5``, ``exponential-r10``)."""

    key: str
    profile: str
    ratio: float = 1.0
    minority_classes: int | None = None
    head: str = "first"

    def cli_args(self) -> list[str]:
        """Data-module arguments of this variant (all four always given, overriding a data fragment's own)."""
        minority = "null" if self.minority_classes is None else str(self.minority_classes)
        return [
            f"--data.init_args.profile={self.profile}",
            f"--data.init_args.imbalance_ratio={fmt_num(self.ratio)}",
            f"--data.init_args.minority_classes={minority}",
            f"--data.init_args.head={self.head}",
        ]


@dataclass(frozen=True)
class Method:
    """One configuration (model + compression setting) as named in the study file."""

    name: str
    fragments: tuple[str, ...] = ()
    callbacks: tuple[dict, ...] = ()
    init_from: str | None = None
    teacher: str | None = None
    distill: dict = field(default_factory=dict)
    args: tuple[str, ...] = ()
    bits: int | None = None
    label: str | None = None
    ptq: dict | None = None

    @property
    def kind(self) -> str:
        """``fit``, or ``ptq`` for a post-training quantization of ``init_from``'s checkpoint."""
        return "fit" if self.ptq is None else "ptq"

    def dependencies(self) -> list[str]:
        """Names of the methods whose checkpoints this one needs."""
        return list(dict.fromkeys(dep for dep in (self.init_from, self.teacher) if dep is not None))


@dataclass(frozen=True)
class Study:
    """A validated study file."""

    name: str
    path: str
    base: tuple[str, ...]
    args: tuple[str, ...]
    variants: tuple[Variant, ...]
    methods: dict[str, Method]
    reference: str
    seeds: tuple[int, ...]
    description: str = ""
    remedies: dict[str, Remedy] = field(default_factory=lambda: {BASELINE: Remedy(BASELINE)})


def fmt_num(value: float) -> str:
    """A ratio as written in run ids, command lines and tables: ``100`` not ``100.0``."""
    return str(int(value)) if float(value).is_integer() else str(value)


def _variant_key(profile: str, ratio: float, minority: int | None, head: str) -> str:
    key = profile if profile == "balanced" else f"{profile}-r{fmt_num(ratio)}"
    if minority is not None:
        key += f"-m{minority}"
    return key if head == "first" else f"{key}-head{head}"


def _parse_variant(path: str, index: int, data: Any) -> list[Variant]:
    where = f"imbalance[{index}]"
    data = check_keys(path, where, data, VARIANT_KEYS)
    profile = data.get("profile")
    if profile not in PROFILES:
        raise _err(path, f"{where}.profile", f"invalid value {profile!r} (allowed: {', '.join(PROFILES)})")
    head = data.get("head", "first")
    if head not in HEADS:
        raise _err(path, f"{where}.head", f"invalid value {head!r} (allowed: {', '.join(HEADS)})")
    if profile == "balanced":
        return [Variant(_variant_key(profile, 1.0, None, head), profile, head=head)]
    if "ratio" not in data:
        raise _err(path, f"{where}.ratio", f"required for profile {profile!r}")
    ratios = numbers(path, f"{where}.ratio", data["ratio"], 1, integer=False)
    if profile == "step":
        if "minority_classes" not in data:
            raise _err(path, f"{where}.minority_classes", "required for profile 'step'")
        minorities: list = numbers(path, f"{where}.minority_classes", data["minority_classes"], 1, integer=True)
    elif "minority_classes" in data:
        raise _err(path, f"{where}.minority_classes", f"only allowed for profile 'step', not {profile!r}")
    else:
        minorities = [None]
    return [
        Variant(_variant_key(profile, float(r), m, head), profile, float(r), m, head)
        for r in ratios
        for m in minorities
    ]


def _parse_variants(path: str, data: Any) -> tuple[Variant, ...]:
    variants = [Variant("balanced", "balanced")]
    for index, entry in enumerate(as_list(data if data is not None else [])):
        variants.extend(_parse_variant(path, index, entry))
    unique = {variant.key: variant for variant in variants}
    return tuple(unique.values())


def _parse_distill(path: str, where: str, data: Any, teacher: Any) -> dict:
    if data is None:
        return {}
    if teacher is None:
        raise _err(path, f"{where}.distill", "only allowed together with 'teacher'")
    data = check_keys(path, f"{where}.distill", data, DISTILL_KEYS)
    for key, value in data.items():
        numbers(path, f"{where}.distill.{key}", value, 0, integer=False)
    return dict(data)


def _parse_ptq(path: str, where: str, data: dict) -> dict:
    """The settings of a PTQ method (``ptq: {calibration, calibration_size, calibration_seed}``), defaults filled in."""
    extra = [key for key in data if key not in PTQ_METHOD_KEYS]
    if extra:
        raise _err(path, f"{where}.{extra[0]}", f"not allowed for a PTQ method (allowed: {', '.join(PTQ_METHOD_KEYS)})")
    if data.get("init_from") is None:
        raise _err(path, f"{where}.init_from", "required for a PTQ method: the method whose checkpoint it quantizes")
    settings = check_keys(path, f"{where}.ptq", data["ptq"] if data["ptq"] is not None else {}, PTQ_KEYS)
    calibration = settings.get("calibration", PTQ_CALIBRATIONS[0])
    if calibration not in PTQ_CALIBRATIONS:
        allowed = ", ".join(PTQ_CALIBRATIONS)
        raise _err(path, f"{where}.ptq.calibration", f"invalid value {calibration!r} (allowed: {allowed})")
    size = settings.get("calibration_size", PTQ_DEFAULT_CALIBRATION_SIZE)
    numbers(path, f"{where}.ptq.calibration_size", size, 1, integer=True)
    seed = settings.get("calibration_seed")
    if seed is not None:
        numbers(path, f"{where}.ptq.calibration_seed", seed, 0, integer=True)
    return {"calibration": calibration, "calibration_size": size, "calibration_seed": seed}


def _parse_method(path: str, name: Any, data: Any, study_dir: Path, check_files: bool) -> Method:
    where = f"methods.{check_name(path, 'methods', name, 'method')}"
    data = check_keys(path, where, data if data is not None else {}, METHOD_KEYS)
    bits = data.get("bits")
    if bits is not None:
        numbers(path, f"{where}.bits", bits, 1, integer=True)
    if "ptq" in data:
        ptq = _parse_ptq(path, where, data)
        return Method(name=name, init_from=data["init_from"], bits=bits, label=data.get("label"), ptq=ptq)
    return Method(
        name=name,
        fragments=fragments(path, f"{where}.fragments", data.get("fragments"), study_dir, check_files),
        callbacks=callback_list(path, f"{where}.callbacks", data.get("callbacks")),
        init_from=data.get("init_from"),
        teacher=data.get("teacher"),
        distill=_parse_distill(path, where, data.get("distill"), data.get("teacher")),
        args=_str_list(path, f"{where}.args", data.get("args")),
        bits=bits,
        label=data.get("label"),
    )


def _check_dependencies(path: str, methods: dict[str, Method]) -> None:
    for method in methods.values():
        for key in ("init_from", "teacher"):
            dep = getattr(method, key)
            if dep is not None and dep not in methods:
                allowed = ", ".join(methods)
                raise _err(path, f"methods.{method.name}.{key}", f"unknown method {dep!r} (allowed: {allowed})")
            if dep is not None and methods[dep].ptq is not None:
                allowed = ", ".join(name for name, m in methods.items() if m.ptq is None)
                raise _err(
                    path,
                    f"methods.{method.name}.{key}",
                    f"{dep!r} is a PTQ method, which writes no checkpoint to start from (allowed: {allowed})",
                )
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = " -> ".join(trail[trail.index(name) :] + [name])
            raise _err(path, "methods", f"dependency cycle: {cycle}")
        state[name] = 1
        for dep in methods[name].dependencies():
            visit(dep, trail + [name])
        state[name] = 2

    for name in methods:
        visit(name, [])


def _parse_seeds(path: str, data: Any) -> tuple[int, ...]:
    seeds = numbers(path, "seeds", data if data is not None else [0], 0, integer=True)
    if not seeds or len(set(seeds)) != len(seeds):
        raise _err(path, "seeds", f"expected a non-empty list of distinct integers, got {data!r}")
    return tuple(seeds)


def parse_study(data: Any, path: str = "<study>", check_files: bool = True) -> Study:
    """Validate a loaded study mapping.

    Args:
        data: the YAML content (a mapping).
        path: the study file's path; relative fragment paths are resolved against its directory first.
        check_files: whether a missing fragment file is an error.

    Returns:
        The validated study.
    """
    data = check_keys(path, "top level", data, TOP_KEYS)
    name = data.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise _err(path, "name", f"invalid value {name!r} (allowed: a non-empty name of letters, digits, _ . + -)")
    study_dir = Path(path).resolve().parent
    methods_data = data.get("methods")
    if not isinstance(methods_data, dict) or not methods_data:
        raise _err(path, "methods", f"expected a non-empty mapping of method name -> settings, got {methods_data!r}")
    methods = {key: _parse_method(path, key, value, study_dir, check_files) for key, value in methods_data.items()}
    _check_dependencies(path, methods)
    reference = data.get("reference", next(iter(methods)))
    if reference not in methods:
        raise _err(path, "reference", f"unknown method {reference!r} (allowed: {', '.join(methods)})")
    return Study(
        name=name,
        path=str(Path(path).resolve()) if path != "<study>" else path,
        base=fragments(path, "base", data.get("base"), study_dir, check_files),
        args=_str_list(path, "args", data.get("args")),
        variants=_parse_variants(path, data.get("imbalance")),
        methods=methods,
        reference=reference,
        seeds=_parse_seeds(path, data.get("seeds")),
        description=str(data.get("description", "")),
        remedies=parse_remedies(path, data.get("remedies"), study_dir, check_files),
    )


def load_study(path: str | Path, check_files: bool = True) -> Study:
    """Read and validate a study YAML file (see ``docs/study.md``)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"study file {path}: not found")
    try:
        data = load_yaml_file(path)
    except DuplicateKeyError as error:  # the message names the file, the key and the line
        raise ValueError(f"study file {error}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"study file {path}: not valid YAML: {error}") from None
    return parse_study(data, str(path), check_files)
