"""A stand-in for ``imbcompress fit`` (and ``ptq``, ``test``) used by the study tests.

It locks the run directory, checks what a real fit would need (config files and dependency checkpoints
exist), records its call, writes ``config.yaml``, ``checkpoints/last.ckpt`` (a zip archive, as torch.save) and then
an atomic ``metrics.json``. As ``ptq`` it checks that the source run's config and checkpoint exist, records its call
and writes ``metrics.json`` (F1 0.02 below the fit's); as ``test`` (a post-hoc remedy's run) it checks its configs
and ``--ckpt_path`` exist and that the run directory holds nothing of an earlier attempt, records its call and
writes ``config.yaml`` then ``metrics.json`` (F1 0.03 above the tested fit's). Environment switches (substrings
of the run directory): ``FAKE_FIT_FAIL`` exits 3, ``FAKE_FIT_DIE`` SIGKILLs itself after the checkpoint,
``FAKE_FIT_HANG`` sleeps after the checkpoint (until killed) unless resuming. ``FAKE_FIT_SECONDS`` makes every
fit last that long; with ``FAKE_SMI_DIR`` each fit writes a line for the fake ``nvidia-smi`` of the packing test.
"""

import json
import os
import signal
import sys
import time
import zipfile
from pathlib import Path

from imbcompress.locks import LockHeld, hold_run_dir_lock


def option(argv: list[str], name: str) -> str | None:
    """The value of ``name VALUE`` or ``name=VALUE`` (the last one given), or None."""
    value = None
    for index, arg in enumerate(argv):
        if arg == name and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1 :]
    return value


def matches(variable: str, run_dir: str) -> bool:
    pattern = os.environ.get(variable)
    return bool(pattern) and pattern in run_dir


def check_inputs(argv: list[str]) -> str | None:
    configs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--config"]
    for config in configs:
        if not Path(config).is_file():
            return f"config {config} missing"
        text = Path(config).read_text()
        if "teacher_checkpoint" in text:
            teacher = text.split("teacher_checkpoint:")[1].split()[0]
            if not Path(teacher).is_file():
                return f"teacher {teacher} missing"
    init_from = option(argv, "--model.init_args.init_from")
    if init_from and not Path(init_from).is_file():
        return f"init_from {init_from} missing"
    return None


def fake_metrics(argv: list[str], shift: float = 0.0) -> dict:
    ratio = float(option(argv, "--data.init_args.imbalance_ratio") or 1)
    f1 = 0.9 - 0.05 * (ratio > 1) - 0.001 * ratio + shift
    return {
        "schema_version": 1,
        "test": {"macro_f1": f1, "accuracy": f1 + 0.01, "per_class": {"f1": [f1] * 10}},
        "model_size": {"total_params": 100, "nnz": 90, "weight_storage_mib": 0.1, "paper_mibit": 0.5},
        "class_names": [f"c{i}" for i in range(10)],
        "seed": int(option(argv, "--seed_everything") or 0),
    }


def write_metrics(run_dir: Path, metrics: dict) -> None:
    tmp = run_dir / ".metrics.json.tmp"
    tmp.write_text(json.dumps(metrics))
    os.replace(tmp, run_dir / "metrics.json")


def fake_ptq(argv: list[str]) -> int:
    run_dir = Path(option(argv, "--run_dir"))
    with open(os.environ["FAKE_FIT_LOG"], "a") as log:
        log.write(json.dumps({"run_dir": str(run_dir), "resume": None, "argv": argv}) + "\n")
    source = {name: option(argv, name) for name in ("--config", "--ckpt_path")}
    missing = [f"{name} {path}" for name, path in source.items() if not path or not Path(path).is_file()]
    if missing or matches("FAKE_FIT_FAIL", str(run_dir)):
        print(f"fake ptq: missing {', '.join(missing)}" if missing else "boom: simulated failure", file=sys.stderr)
        return 4 if missing else 3
    fit_argv = json.loads(Path(source["--config"]).read_text())["argv"]  # what the fake fit wrote
    metrics = fake_metrics(fit_argv, shift=-0.02)
    metrics["compression"] = [{"method": "ptq_int8", "calibration": option(argv, "--calibration")}]
    run_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(run_dir, metrics)
    print("fake ptq: done")
    return 0


def fake_test(argv: list[str]) -> int:
    run_dir = Path(option(argv, "--run_dir"))
    with open(os.environ["FAKE_FIT_LOG"], "a") as log:
        log.write(json.dumps({"run_dir": str(run_dir), "resume": None, "argv": argv}) + "\n")
    configs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--config"]
    missing = [path for path in [*configs, option(argv, "--ckpt_path")] if not path or not Path(path).is_file()]
    if missing:
        print(f"fake test: missing {', '.join(map(str, missing))}", file=sys.stderr)
        return 4
    if (run_dir / "config.yaml").exists():  # the real test would write to RUN/test-1/ instead
        print(f"fake test: {run_dir} holds a run", file=sys.stderr)
        return 6
    (run_dir / "config.yaml").write_text("{}")
    if matches("FAKE_FIT_FAIL", str(run_dir)):
        print("boom: simulated failure", file=sys.stderr)
        return 3
    fit_argv = json.loads(Path(configs[0]).read_text())["argv"]  # the tested fit's saved configuration
    metrics = fake_metrics(fit_argv, shift=0.03)
    metrics["remedies"] = [{"method": "posthoc_logit_adjustment", "tau": 1.0}]
    write_metrics(run_dir, metrics)
    print("fake test: done")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["ptq"]:
        return fake_ptq(argv)
    if argv[:1] == ["test"]:
        return fake_test(argv)
    run_dir = Path(option(argv, "--run_dir"))
    resume = option(argv, "--ckpt_path")
    try:
        hold_run_dir_lock(run_dir)  # as the real fit does
    except LockHeld as held:
        print(f"fake fit: {held}", file=sys.stderr)
        return 5
    record = {"run_dir": str(run_dir), "resume": resume, "omp": os.environ.get("OMP_NUM_THREADS"), "argv": argv}
    with open(os.environ["FAKE_FIT_LOG"], "a") as log:
        log.write(json.dumps(record) + "\n")
    problem = check_inputs(argv)
    if problem:
        print(f"fake fit: {problem}", file=sys.stderr)
        return 4
    if matches("FAKE_FIT_FAIL", str(run_dir)):
        print("boom: simulated failure", file=sys.stderr)
        return 3
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(json.dumps({"argv": argv}))  # JSON is YAML; the fake ptq reads it
    with zipfile.ZipFile(run_dir / "checkpoints" / "last.ckpt", "w") as ckpt:  # torch.save writes a zip archive
        ckpt.writestr("archive/data.pkl", "half-trained")
    if matches("FAKE_FIT_DIE", str(run_dir)):
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("FAKE_SMI_DIR"):  # what the fake nvidia-smi reports: this process uses 300 MiB
        (Path(os.environ["FAKE_SMI_DIR"]) / str(os.getpid())).write_text(f"{os.getpid()}, 300\n")
    if os.environ.get("FAKE_FIT_SECONDS"):
        time.sleep(float(os.environ["FAKE_FIT_SECONDS"]))
    if matches("FAKE_FIT_HANG", str(run_dir)) and not resume:
        (run_dir / "hanging").write_text("yes")
        time.sleep(120)
    write_metrics(run_dir, fake_metrics(argv))
    print("fake fit: done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
