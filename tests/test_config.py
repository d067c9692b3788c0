import dataclasses
import json

import pytest

from brainjax.config import Config, ConfigError, from_dict, load_config, override, to_dict


def test_override_parses_types():
    cfg = override(Config(), ["model.width=512", "optim.base_lr=3e-4", "train.async_checkpoint=false",
                              "mask.mixture=0.5,0.5,0,0", "data.path=/tmp/x"])
    assert cfg.model.width == 512 and isinstance(cfg.model.width, int)
    assert cfg.optim.base_lr == pytest.approx(3e-4)
    assert cfg.train.async_checkpoint is False
    assert cfg.mask.mixture == (0.5, 0.5, 0.0, 0.0)
    assert cfg.data.path == "/tmp/x"
    assert Config().model.width == 256  # the original is untouched (frozen, replaced)


@pytest.mark.parametrize("item, message", [
    ("model.widht=3", "unknown config key 'model.widht'"),
    ("modle.width=3", "has no field 'modle'"),
    ("model.width=wide", "expected int"),
    ("train.async_checkpoint=maybe", "expected a boolean"),
    ("model=3", "is a section"),
    ("model.width", "not of the form"),
])
def test_override_errors_name_the_key(item, message):
    with pytest.raises(ConfigError, match=message):
        override(Config(), [item])


def test_dict_round_trip_through_json():
    cfg = override(Config(), ["mask.mixture=1,0,0,0", "model.depth=7"])
    back = from_dict(json.loads(json.dumps(to_dict(cfg))))
    assert back == cfg
    with pytest.raises(ConfigError, match="unknown keys"):
        from_dict({**to_dict(cfg), "bogus": 1})


def test_load_config_from_file_and_unknown_preset(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("import dataclasses\nfrom brainjax.config import Config\n"
                    "def config():\n    c = Config(name='mine')\n"
                    "    return dataclasses.replace(c, model=dataclasses.replace(c.model, depth=3))\n")
    cfg = load_config(str(path))
    assert cfg.name == "mine" and cfg.model.depth == 3
    with pytest.raises(ConfigError, match="unknown preset 'no_such_preset'"):
        load_config("no_such_preset")
    bad = tmp_path / "bad.py"
    bad.write_text("def config():\n    return {}\n")
    with pytest.raises(ConfigError, match="expected brainjax.config.Config"):
        load_config(str(bad))


def test_every_config_field_has_a_comment():
    import inspect

    import brainjax.config as module
    source = inspect.getsource(module)
    for section in dataclasses.fields(Config):
        if section.name in ("name", "objective"):
            continue
        for f in dataclasses.fields(section.type if isinstance(section.type, type) else getattr(module, section.type)):
            line = next(line for line in source.splitlines() if line.strip().startswith(f"{f.name}:"))
            assert "#" in line or f.name in ("b1", "b2", "weight_decay", "seed", "log_every", "eval_every",
                                             "checkpoint_every", "async_checkpoint"), f"{section.name}.{f.name}"


@pytest.mark.parametrize("setting, message", [
    ("model.depth=2000", r"model.depth=2000 must be <= 1024"),
    ("model.dec_depth=111111111111111111111111111111", r"model.dec_depth=.* must be <= 1024"),
    ("train.log_every=111111111111111111111111111111", r"train.log_every=.* beyond any real configuration"),
    ("data.window=-99999999999", r"data.window=.* beyond any real configuration"),
])
def test_absurd_sizes_are_refused_before_anything_is_built(setting, message):
    from brainjax.config import check

    with pytest.raises(ConfigError, match=message):
        check(override(load_config("tiny"), [setting]))
