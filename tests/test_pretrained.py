"""The hub format: save_pretrained -> from_pretrained gives the same samples for the same seed (class-to-image and a
text model), from a folder and through a Hugging Face cache with HF_HUB_OFFLINE=1; loads never unpickle; damaged,
missing or foreign files are one line naming the file (and the key); the model card names the run's metrics;
push_to_hub uploads through HfApi (mocked); scripts/export_pretrained.py writes the folder. The checkpoints are
tiny and untrained (built, not trained)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from grn.pipeline import GRNPipeline
from grn.sampling.config import SamplerConfig
from grn.text_pipeline import TextPipeline
from script_loader import load_script
from test_official_pipeline import offline_cache, official_release_files, populate

sys.path.insert(0, str(Path(__file__).parent / "entrypoints"))
from eval_fixtures import make_checkpoints  # noqa: E402

SAMPLER = {"num_steps": 2, "cfg_scale": 2.0, "cfg_interval": [0.2, 1.0], "temperature": 0.9}
METRICS = {"conditional_accuracy": 0.625, "digits_fid": 12.25, "settings": {"num_per_class": 5}}
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def c2i_run(tmp_path_factory) -> Path:
    """A run directory as train.py leaves it: runs/<id>/{c2i,tokenizer}/checkpoints/last.ckpt, metrics.json and
    Hydra's record of the config-group choices."""
    run = tmp_path_factory.mktemp("runs") / "quick"
    run.mkdir()
    gen, _ = make_checkpoints(run)
    (run / "metrics.json").write_text(json.dumps(METRICS))
    (run / ".hydra").mkdir()
    (run / ".hydra" / "hydra.yaml").write_text("hydra:\n  runtime:\n    choices:\n      data: digits_shards\n"
                                               "      experiment: quickstart\n")
    return gen


@pytest.fixture(scope="module")
def saved_c2i(c2i_run, tmp_path_factory) -> tuple[GRNPipeline, Path]:
    pipe = GRNPipeline.from_pretrained(c2i_run)
    folder = pipe.save_pretrained(tmp_path_factory.mktemp("saved") / "grn-c2i", sampler=SAMPLER)
    return pipe, folder


@pytest.fixture(scope="module")
def t2i_ckpt(tmp_path_factory) -> Path:

    from grn.lit_modules.t2iv import T2IVLitModule
    from tiny_nets import save_tiny_joint_tokenizer, tiny_t2iv_config, tiny_text_encoder_config

    root = tmp_path_factory.mktemp("t2i")
    cfg = save_tiny_joint_tokenizer(root / "tokenizer.ckpt")
    module = T2IVLitModule(net=tiny_t2iv_config(cfg["latent_dim"], cfg["hbq_rounds"]),
                           text_encoder=tiny_text_encoder_config(), tokenizer_ckpt=str(root / "tokenizer.ckpt"))
    with torch.no_grad():  # the text encoder's weights are saved, not re-drawn: make them differ from a fresh draw
        for p in module.text_encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, root / "t2i.ckpt")
    return root / "t2i.ckpt"


def files_of(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def populate_cache(cache: Path, repo_id: str, folder: Path, drop: tuple[str, ...] = ()) -> None:
    """``folder`` as the cached snapshot of ``repo_id`` in the layout huggingface_hub reads offline."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    shutil.copytree(folder, snap, dirs_exist_ok=True)
    for name in drop:
        (snap / name).unlink()


@pytest.fixture
def offline(tmp_path, monkeypatch):
    with offline_cache(tmp_path / "hub", monkeypatch) as cache:
        yield cache


def test_c2i_round_trip_gives_the_same_samples_and_never_unpickles(saved_c2i, monkeypatch):
    pipe, folder = saved_c2i
    assert files_of(folder) == {"config.json", "model.safetensors", "tokenizer/config.json",
                                "tokenizer/model.safetensors", "README.md", "samples.png"}

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load called while loading the hub format")

    monkeypatch.setattr(torch, "load", no_unpickling)
    loaded = GRNPipeline.from_pretrained(folder)
    monkeypatch.undo()
    assert isinstance(loaded, GRNPipeline) and loaded.sampler == SamplerConfig.build(SAMPLER)
    for a, b in ((pipe.generator, loaded.generator), (pipe.tokenizer, loaded.tokenizer)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    want = pipe([1, 4, 4], seed=7, **SAMPLER)
    got = loaded([1, 4, 4], seed=7)  # the saved sampler is the loaded pipeline's default
    assert torch.equal(want.labels, got.labels) and torch.equal(want.images, got.images)
    assert not torch.equal(loaded([1, 4, 4], seed=8).labels, got.labels)  # the seed matters
    again = loaded.save_pretrained(folder.parent / "again", grid=False)  # a loaded pipeline saves again
    assert json.loads((again / "config.json").read_text())["net"] == json.loads(
        (folder / "config.json").read_text())["net"]


def test_model_card_names_the_metrics_data_and_grid(saved_c2i):
    pipe, folder = saved_c2i
    card = (folder / "README.md").read_text()
    front = card.split("---")[1]
    assert card.startswith("---\n") and "library_name: grn" in front and "digits_shards" in front
    assert "| `conditional_accuracy` | 0.625 |" in card and "| `digits_fid` | 12.25 |" in card
    assert "![samples](samples.png)" in card and "experiment: `quickstart`" in card and "num_steps: 2" in card
    grid = Image.open(folder / "samples.png")
    assert grid.size == (10 * (32 + 2) + 2, 32 + 4)  # ten classes in a row, 2 px padding
    config = json.loads((folder / "config.json").read_text())
    assert config["source"]["ckpt"].endswith("c2i/checkpoints/last.ckpt") and config["task"] == "c2i"


def test_text_model_round_trip_saves_the_small_encoder(t2i_ckpt, tmp_path):
    pipe = GRNPipeline.from_pretrained(t2i_ckpt)
    folder = pipe.save_pretrained(tmp_path / "t2i", sampler={"num_steps": 2, "cfg_scale": 2.0},
                                  metrics={"fid": 3.5}, grid={"prompts": ["a one", "a two"], "height": 16,
                                                              "width": 16})
    assert {"text_encoder/config.json", "text_encoder/model.safetensors"} <= files_of(folder)
    assert Image.open(folder / "samples.png").size == (2 * 18 + 2, 20)
    assert "| `fid` | 3.5 |" in (folder / "README.md").read_text()
    loaded = GRNPipeline.from_pretrained(folder)
    assert isinstance(loaded, TextPipeline) and loaded.task == "t2i"
    te_a, te_b = pipe.text_encoder.state_dict(), loaded.text_encoder.state_dict()
    assert all(torch.equal(te_a[k], te_b[k]) for k in te_a)  # the perturbed weights, not a fresh seeded draw
    kw = dict(seed=3, height=16, width=16)
    want = pipe(["a one", "a two"], num_steps=2, cfg_scale=2.0, **kw)
    assert torch.equal(loaded(["a one", "a two"], **kw).images, want.images)
    clip = GRNPipeline.from_pretrained(folder, task="t2v")(["a one"], frames=5, **kw)
    assert clip.images.shape == (1, 3, 5, 16, 16)
    with pytest.raises(ValueError, match="holds a t2i model"):
        GRNPipeline.from_pretrained(folder, task="c2i")


def test_offline_hub_cache_round_trip_and_missing_files(saved_c2i, offline):
    pipe, folder = saved_c2i
    populate_cache(offline, "someone/grn-c2i", folder)
    loaded = GRNPipeline.from_pretrained("someone/grn-c2i")
    assert torch.equal(loaded([2, 3], seed=1).images, pipe([2, 3], seed=1, **SAMPLER).images)
    populate_cache(offline, "someone/half", folder, drop=("tokenizer/model.safetensors",))
    with pytest.raises(FileNotFoundError) as err:
        GRNPipeline.from_pretrained("someone/half")
    msg = str(err.value)
    assert "tokenizer/model.safetensors of someone/half" in msg and str(offline) in msg and "\n" not in msg
    with pytest.raises(FileNotFoundError, match="config.json of someone/absent .* no local path either"):
        GRNPipeline.from_pretrained("someone/absent")


def test_a_saved_folder_missing_a_file_is_one_line(saved_c2i, tmp_path):
    folder = shutil.copytree(saved_c2i[1], tmp_path / "copy")
    (folder / "tokenizer" / "config.json").unlink()
    with pytest.raises(FileNotFoundError) as err:
        GRNPipeline.from_pretrained(folder)
    assert "tokenizer/config.json not found" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="tokenizer_ckpt= does not apply"):
        GRNPipeline.from_pretrained(saved_c2i[1], tokenizer_ckpt="other.ckpt")


def _edit_config(folder: Path, edit, name: str = "config.json") -> None:
    cfg = json.loads((folder / name).read_text())
    edit(cfg)
    (folder / name).write_text(json.dumps(cfg))


@pytest.mark.parametrize("edit, name, message", [
    (lambda c: c.update(colour="red"), "config.json", "config.json: unknown key 'colour'"),
    (lambda c: c.pop("net"), "config.json", "config.json: missing key 'net'"),
    (lambda c: c.update(grn_format=2), "config.json", "key 'grn_format' is 2"),
    (lambda c: c.update(task="c2v"), "config.json", "key 'task' is 'c2v'"),
    (lambda c: c["sampler"].update(steps=3), "config.json", "key 'sampler': sampler: unknown key\\(s\\) steps"),
    (lambda c: c["net"].update(depth_scale=2), "config.json", "refused net.depth_scale"),
    (lambda c: c["net"].update(_target_="builtins.open"), "config.json", "refused net._target_: 'builtins.open'"),
    (lambda c: c["net"].update(num_classes=11), "config.json",
     "model.safetensors: the weights do not fit the network its config.json builds: .* has shape"),
    (lambda c: c.pop("tokenizer"), "tokenizer/config.json", "tokenizer/config.json: missing key 'tokenizer'"),
])
def test_a_foreign_config_is_one_line_naming_file_and_key(saved_c2i, tmp_path, edit, name, message):
    folder = shutil.copytree(saved_c2i[1], tmp_path / "copy")
    _edit_config(folder, edit, name)
    with pytest.raises(ValueError, match=message) as err:
        GRNPipeline.from_pretrained(folder)
    assert "\n" not in str(err.value)


def test_damaged_weights_are_one_line(saved_c2i, tmp_path):
    folder = shutil.copytree(saved_c2i[1], tmp_path / "copy")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors: cannot read these weights") as err:
        GRNPipeline.from_pretrained(folder)
    assert "\n" not in str(err.value)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not a readable JSON config"):
        GRNPipeline.from_pretrained(folder)


def test_missing_tensor_is_named(saved_c2i, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(saved_c2i[1], tmp_path / "copy")
    state = load_file(folder / "model.safetensors")
    dropped = sorted(state)[0]
    del state[dropped]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ValueError, match=f"1 tensor\\(s\\) missing, e.g. {dropped}"):
        GRNPipeline.from_pretrained(folder)


def test_push_to_hub_uploads_the_saved_folder(saved_c2i, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, repo_type=None, private=None, exist_ok=False):
            calls.append(("create", repo_id, repo_type, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, repo_type=None, commit_message=None):
            calls.append(("upload", repo_id, files_of(Path(folder_path)), commit_message))
            card = (Path(folder_path) / "README.md").read_text()
            assert 'GRNPipeline.from_pretrained("me/grn-digits")' in card
            return type("Info", (), {"commit_url": "https://huggingface.co/me/grn-digits/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = saved_c2i[0].push_to_hub("me/grn-digits", token="hf_x", private=True, grid=False)
    assert url.endswith("/commit/1")
    assert calls[0] == ("init", "hf_x") and calls[1] == ("create", "me/grn-digits", "model", True, True)
    assert calls[2][0] == "upload" and {"config.json", "model.safetensors", "README.md"} <= calls[2][2]


def test_export_script_writes_a_loadable_folder_with_the_runs_sampler(c2i_run, tmp_path, capsys):
    ckpt = torch.load(c2i_run, weights_only=True)
    ckpt["hyper_parameters"]["sampler"] = {"num_steps": 4, "snr_shift": 1.5}  # as an older run stored it
    torch.save(ckpt, tmp_path / "c2i.ckpt")
    load_script("export_pretrained").main([str(tmp_path / "c2i.ckpt"), str(tmp_path / "out"), "--classes", "3", "5"])
    assert "wrote" in capsys.readouterr().out
    loaded = GRNPipeline.from_pretrained(tmp_path / "out")
    assert loaded.sampler == SamplerConfig.build(num_steps=4, keep_prob_shift=1.5)  # the run's, migrated
    assert Image.open(tmp_path / "out" / "samples.png").size == (2 * 34 + 2, 36)


def test_an_official_pipeline_saves_its_umt5_encoder_as_a_hub_reference(offline, tmp_path, monkeypatch):
    """The official T2I files (tiny stand-ins in the offline cache) saved in the hub format: network and tokenizer
    as safetensors, the encoder as where to get it; loading resolves it through the cache and samples the same."""
    from grn.hub import OFFICIAL_REPO
    from grn.models import text_encoder as te

    populate(offline, official_release_files())
    official = GRNPipeline.from_pretrained(hf_repo_id=OFFICIAL_REPO, task="T2I", pn="0.06M")
    with pytest.raises(ValueError, match="neither a small grn encoder nor umT5-XXL"):
        official.save_pretrained(tmp_path / "refused", grid=False)  # the stand-in is 32 wide, not 4096
    monkeypatch.setitem(te.UMT5_XXL, "d_model", 32)  # let the stand-in pass for umT5-XXL
    folder = official.save_pretrained(tmp_path / "official", grid=False)
    assert "text_encoder/model.safetensors" not in files_of(folder)
    ref = json.loads((folder / "text_encoder" / "config.json").read_text())
    assert ref["hub"]["repo_id"] == OFFICIAL_REPO and ref["dim"] == 32
    loaded = GRNPipeline.from_pretrained(folder)
    kw = dict(seed=2, height=16, width=16, num_steps=2)
    assert torch.equal(loaded(["a fox"], **kw).labels, official.pipe(["a fox"], **kw).labels)
