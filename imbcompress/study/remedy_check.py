"""Check a study's remedies before any run starts: the entries themselves, then every run's parsed configuration.

Imports torch and Lightning (the remedy callbacks), so only ``study run`` uses it, through ``validate.py``. The
checks call the remedies' own validation (their ``__init__``, ``check_one_base_loss``, ``LDAMDRWLoss.start_epoch``,
``check_sampler_for_fit``), so a study refuses exactly what the fit would refuse, but before the first run.
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace
from typing import Any

import yaml

from imbcompress.study.remedies import BASELINE
from imbcompress.yamlio import load_yaml_file

FRAGMENT_RULE = (
    "a remedy fragment may only append remedy callbacks (trainer.callbacks+), set data.init_args.sampler / "
    "sampler_switch_epoch and model.init_args.classifier"
)


def _remedy_bases() -> tuple[type, ...]:
    from imbcompress.callbacks import LossRemedy, PostHocAdjustment

    return (LossRemedy, PostHocAdjustment)


def allowed_remedy_classes() -> list[str]:
    """The class paths of the remedy callbacks the package has."""
    import imbcompress.callbacks as package

    classes = [getattr(package, name) for name in package.__all__ if name != "LossRemedy"]  # the base is no remedy
    return [f"imbcompress.callbacks.{c.__name__}" for c in classes if issubclass(c, _remedy_bases())]


def import_class(class_path: str) -> type | None:
    """The class a ``class_path`` names (a bare name is looked up in ``imbcompress.callbacks``), or None."""
    module_name, _, name = class_path.rpartition(".")
    try:
        module = importlib.import_module(module_name or "imbcompress.callbacks")
    except ImportError:
        return None
    found = getattr(module, name, None)
    return found if isinstance(found, type) else None


def _mapping(path: str, where: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"fragment {path}: {where} is not a mapping; {FRAGMENT_RULE}")
    return dict(value)


def _fragment_contents(path: str) -> tuple[list[dict], dict[str, Any]]:
    """The callbacks a remedy fragment appends and the sampler settings it sets; anything else is an error."""
    try:
        data = _mapping(path, "the file", load_yaml_file(path))
    except yaml.YAMLError as error:
        raise ValueError(f"fragment {path} is not valid YAML: {error}") from None
    trainer = _mapping(path, "trainer", data.pop("trainer", None))
    data_section = _mapping(path, "data", data.pop("data", None))
    init_args = _mapping(path, "data.init_args", data_section.pop("init_args", None))
    model_section = _mapping(path, "model", data.pop("model", None))
    model_args = _mapping(path, "model.init_args", model_section.pop("init_args", None))
    _check_classifier(path, model_args.pop("classifier", "linear"))
    if "callbacks" in trainer:
        raise ValueError(
            f"fragment {path} sets trainer.callbacks, which replaces the run's callbacks (the method's compression "
            "callbacks included); a remedy fragment appends its callbacks with trainer.callbacks+"
        )
    callbacks = list(trainer.pop("callbacks+", None) or [])
    sampler = {key: init_args.pop(key) for key in ("sampler", "sampler_switch_epoch") if key in init_args}
    extra = [f"{key} (top level)" for key in data] + [f"trainer.{key}" for key in trainer]
    extra += [f"data.{key}" for key in data_section] + [f"data.init_args.{key}" for key in init_args]
    extra += [f"model.{key}" for key in model_section] + [f"model.init_args.{key}" for key in model_args]
    if extra:
        raise ValueError(f"fragment {path} sets {', '.join(extra)}; {FRAGMENT_RULE}")
    return callbacks, sampler


def _check_classifier(path: str, kind: Any) -> None:
    from imbcompress.models.heads import CLASSIFIER_KINDS

    if kind not in CLASSIFIER_KINDS:
        raise ValueError(
            f"fragment {path}: model.init_args.classifier={kind!r}; allowed: {', '.join(CLASSIFIER_KINDS)}"
        )


def _instantiate(callback: Any) -> Any:
    if not isinstance(callback, dict) or "class_path" not in callback:
        raise ValueError(f"expected a callback as {{class_path, init_args}}, got {callback!r}")
    class_path = str(callback["class_path"])
    cls = import_class(class_path)
    if cls is None or not issubclass(cls, _remedy_bases()):
        what = "cannot be imported" if cls is None else "is not a remedy callback"
        allowed = ", ".join(allowed_remedy_classes())
        raise ValueError(
            f"callback {class_path!r} {what} (allowed: {allowed}, or a subclass of imbcompress.callbacks.LossRemedy)"
        )
    return cls(**dict(callback.get("init_args") or {}))


def check_remedy(record: dict) -> None:
    """Check one remedy entry of ``plan.json`` (:meth:`Remedy.record`).

    Raises:
        ValueError: naming the setting, the value and what is allowed (e.g. a callback that is not a remedy, a
            remedy's own bad setting, two remedies that both replace the base loss, an unknown sampler).
    """
    from imbcompress.callbacks.loss_remedy import check_one_base_loss
    from imbcompress.remedies.sampling import check_sampler

    callbacks: list[dict] = []
    sampler: dict[str, Any] = {"sampler": None, "sampler_switch_epoch": None}
    for fragment in record.get("fragments") or []:  # in the order of the fit: fragments, then the inline ones
        more_callbacks, more_sampler = _fragment_contents(fragment)
        callbacks += more_callbacks
        sampler.update(more_sampler)
    callbacks += list(record.get("callbacks") or [])
    inline = {key: record.get(key) for key in sampler if record.get(key) is not None}
    sampler.update(inline)  # inline sampler settings are command-line arguments: they come last
    instances = [_instantiate(callback) for callback in callbacks]
    check_one_base_loss(SimpleNamespace(callbacks=instances))  # type: ignore[arg-type]
    if sampler["sampler"] is not None:
        check_sampler(str(sampler["sampler"]), sampler["sampler_switch_epoch"])


def remedy_problems(remedies: dict[str, dict]) -> list[str]:
    """The problem of each remedy entry (``remedies.<name>: ...``); empty when all are fine."""
    problems = []
    for name, record in remedies.items():
        if name == BASELINE:
            continue
        try:
            check_remedy(record)
        except (ValueError, TypeError, OSError) as error:  # TypeError: an init argument the class does not take
            problems.append(f"remedies.{name}: {error}")
    return problems


def _loss_callbacks(config: Any) -> list[Any]:
    """Instances of the configured callbacks that may replace the base loss or depend on the epochs."""
    from imbcompress.callbacks import ClimbQ

    instances = []
    for callback in config.trainer.get("callbacks") or []:
        cls = import_class(str(callback.class_path))
        if cls is not None and issubclass(cls, (*_remedy_bases(), ClimbQ)):
            init_args = callback.get("init_args")
            instances.append(cls(**(init_args.as_dict() if init_args is not None else {})))
    return instances


def config_problem(config: Any) -> str | None:
    """What the fit would refuse at ``setup`` in a parsed fit configuration's remedies, or None.

    Checks: at most one callback replaces the base loss (any loss remedy, ClimbQ+'s HomoVar), an LDAM-DRW start
    epoch inside ``trainer.max_epochs``, and the data module's sampler settings against ``trainer.max_epochs``.
    """
    from imbcompress.callbacks import LDAMDRWLoss
    from imbcompress.callbacks.loss_remedy import check_one_base_loss
    from imbcompress.remedies.sampling import check_sampler_for_fit

    epochs = config.trainer.get("max_epochs")
    max_epochs = epochs if epochs is not None and epochs > 0 else None
    try:
        instances = _loss_callbacks(config)
        check_one_base_loss(SimpleNamespace(callbacks=instances))  # type: ignore[arg-type]
        for callback in instances:
            if isinstance(callback, LDAMDRWLoss):
                callback.start_epoch(max_epochs)
        data = config.get("data", {}).get("init_args") or {}
        if data.get("sampler") is not None:
            check_sampler_for_fit(data["sampler"], data.get("sampler_switch_epoch"), max_epochs)
    except (ValueError, TypeError) as error:
        return str(error)
    return None
