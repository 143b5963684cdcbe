import pytest

from defectkit.config import (
    ConfigError,
    RunConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_overrides,
)


def test_defaults_need_no_file():
    config = load_config()
    assert config == RunConfig()
    assert config.model.backbone == "tf_efficientnet_lite0"


def test_yaml_then_overrides_with_types(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  epochs: 3\n  lr: 0.01\ndata:\n  root: /x\n")
    config = load_config(
        str(recipe),
        ["train.epochs=7", "train.amp=false", "split.stratify_by=label,type", "train.lr=1e-4"],
    )
    assert config.train.epochs == 7 and isinstance(config.train.epochs, int)
    assert config.train.lr == pytest.approx(1e-4)
    assert config.train.amp is False
    assert config.split.stratify_by == ("label", "type")
    assert config.data.root == "/x"


def test_unknown_key_names_the_key_and_the_known_ones():
    with pytest.raises(ConfigError, match=r"train\.epochz.*epochs"):
        load_config(None, ["train.epochz=3"])


def test_wrong_type_is_refused():
    with pytest.raises(ConfigError, match="train.epochs: expected an integer"):
        load_config(None, ["train.epochs=2.5"])
    with pytest.raises(ConfigError, match="expected true/false"):
        load_config(None, ["train.amp=maybe"])


def test_override_needs_equals_sign():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["train.lr"])


def test_shipped_recipes_load():
    for name in (
        "neu_classify",
        "neu_frozen",
        "neu_fewshot",
        "elpv_classify",
        "elpv_4class",
        "elpv_demo",
        "synthetic_classify",
    ):
        assert load_config(name).task == "classify"


def test_dict_round_trip():
    config = load_config("elpv_classify")
    assert config_from_dict(config_to_dict(config)) == config


def test_one_registry_refuses_duplicates_and_names_the_known():
    from defectkit.data.formats import _READERS
    from defectkit.models.anomaly import _METHODS, list_methods
    from defectkit.models.backbones import _SOURCES
    from defectkit.registry import Registry
    from defectkit.tasks import _TASKS, _load_builtin

    _load_builtin(), list_methods()  # the built-in entries register on first use
    for registry in (_TASKS, _READERS, _METHODS, _SOURCES):
        assert isinstance(registry, Registry) and len(registry) >= 3
        name = next(iter(registry))
        with pytest.raises(ValueError, match=f"{registry.kind} '{name}' is already registered"):
            registry.add(name, registry[name])
        with pytest.raises(ValueError, match=f"unknown {registry.kind} 'nope'; registered: "):
            registry.lookup("nope")


def test_paired_follows_the_tasks_own_reference_setting():
    """RunConfig.paired: the task's own `reference` (segment, detect); never for a task
    without one, whatever another task's section says."""
    assert load_config("deeppcb_detect").paired
    assert not load_config("deeppcb_detect", ["detect.reference=false"]).paired
    assert not load_config("neudet_detect").paired
    classify = load_config("elpv_classify", ["detect.reference=true"])
    assert not classify.paired
