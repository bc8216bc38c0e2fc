"""Duplicate keys in study and config YAML files are errors naming the file, the key and the line."""

import pytest
import yaml

from imbcompress.study.spec import load_study
from imbcompress.yamlio import DuplicateKeyError, find_duplicate_key, load_yaml_text


def test_duplicates_are_found_at_any_depth_with_their_lines():
    assert find_duplicate_key("a: 1\nb: 2\n") is None
    assert find_duplicate_key("a: 1\nb: 2\na: 3\n") == ("a", 3, 1)
    nested = "methods:\n  fp32: {}\n  q: {init_from: fp32}\n  fp32: {label: x}\n"
    assert find_duplicate_key(nested) == ("fp32", 4, 2)
    in_list = "callbacks:\n  - {class_path: A, init_args: {bits: 3, bits: 4}}\n"
    assert find_duplicate_key(in_list) == ("bits", 2, 2)
    assert find_duplicate_key("same: {a: 1}\nother: {a: 1}\n") is None  # one key per mapping
    with pytest.raises(DuplicateKeyError, match=r"f\.yaml: duplicate key 'a' at line 2 \(first at line 1\)"):
        load_yaml_text("a: 1\na: 2\n", "f.yaml")
    assert load_yaml_text("a: [1, 2]\n") == {"a": [1, 2]}


def test_study_file_with_a_duplicate_method_is_refused(tmp_path):
    (tmp_path / "s.yaml").write_text("name: s\nmethods:\n  fp32: {}\n  fp32: {label: FP32}\n")
    with pytest.raises(ValueError, match=r"study file .*s\.yaml: duplicate key 'fp32' at line 4 \(first at line 3\)"):
        load_study(tmp_path / "s.yaml")
    (tmp_path / "bad.yaml").write_text("name: [s\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_study(tmp_path / "bad.yaml")


def test_config_file_with_a_duplicate_key_is_refused_by_the_cli(tmp_path, capsys):
    from imbcompress.cli import run_cli

    config = tmp_path / "dup.yaml"
    config.write_text("trainer:\n  max_epochs: 1\n  max_epochs: 2\n")
    with pytest.raises(SystemExit):
        run_cli(["fit", "--config", str(config), "--print_config"])
    assert "dup.yaml: duplicate key 'max_epochs' at line 3 (first at line 2)" in capsys.readouterr().err
    assert yaml.safe_load(config.read_text()) == {"trainer": {"max_epochs": 2}}  # what PyYAML alone would do
