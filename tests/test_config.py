import pytest

from adasmooth.config import Config, ConfigError, config_from_dict, load_config


def test_shipped_config_loads_and_matches_defaults():
    cfg = load_config("fmnist")  # the packaged file, from any working directory
    assert cfg.threat.eps == 0.1 and cfg.threat.norm == "Linf"
    assert cfg == Config()  # the YAML documents the defaults; drift between them is a bug


def test_unknown_key_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train_standard:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'train_standard\.epochz'"):
        load_config(p)


def test_wrong_type_names_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("threat:\n  eps: fast\n")
    with pytest.raises(ConfigError, match=r"'threat\.eps' must be a number"):
        load_config(p)
    with pytest.raises(ConfigError, match="must be an integer"):
        config_from_dict({"train_standard": {"epochs": 2.5}})
    with pytest.raises(ConfigError, match="must be true or false"):
        config_from_dict({"train_standard": {"augment": "yes"}})


def test_impossible_values():
    with pytest.raises(ConfigError, match="Linf or L2"):
        config_from_dict({"threat": {"norm": "L3"}})
    with pytest.raises(ConfigError, match=r"alphas"):
        config_from_dict({"sweep": {"alphas": [0.5, 1.5]}})
    with pytest.raises(ConfigError, match=r"calibration_autoattack.*\['sqaure'\]"):
        config_from_dict({"mixer": {"calibration_autoattack": ["fab-t", "sqaure"]}})
    with pytest.raises(ConfigError, match="calibration_square_queries"):
        config_from_dict({"mixer": {"calibration_square_queries": 0}})
    assert config_from_dict({"mixer": {"calibration_autoattack": []}}).mixer.calibration_autoattack == ()
    with pytest.raises(ConfigError, match=r"demo\.autoattack_version.*got 'apgd-t'"):
        config_from_dict({"demo": {"autoattack_version": "apgd-t"}})
    for quick in ("apgd", "apgd-ce"):
        assert config_from_dict({"demo": {"autoattack_version": quick}}).demo.autoattack_version == quick


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    p = tmp_path / "x.yaml"
    p.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
