"""The W&B mode rule shared by training runs and report runs: WANDB_MODE wins, else online only with credentials
on this machine (never asking the network)."""

import pytest
import torch

from detlab.training.tracking import wandb_mode


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path


def test_offline_without_credentials(home):
    assert wandb_mode() == "offline"


def test_online_with_a_netrc_entry_or_an_api_key(home, monkeypatch):
    (home / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    (home / ".netrc").chmod(0o600)
    assert wandb_mode() == "online"
    (home / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    assert wandb_mode() == "online"


def test_an_unreadable_netrc_is_not_a_login(home):
    (home / ".netrc").mkdir()  # a folder where the file should be: IsADirectoryError, not FileNotFoundError
    assert wandb_mode() == "offline"


def test_wandb_mode_in_the_environment_wins(home, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


@pytest.mark.parametrize("configured", ["auto", "offline", "online"])
def test_a_wandb_mode_that_wandb_refuses_is_named(home, monkeypatch, tmp_path, configured):
    """WANDB_MODE=invalid: detlab-report --wandb stopped with pydantic's traceback from inside wandb.init, and a
    training run silently went offline (Lightning set WANDB_MODE=dryrun over it)."""
    from detlab.errors import ConfigError
    from detlab.training.tracking import wandb_logger

    monkeypatch.setenv("WANDB_MODE", "invalid")
    with pytest.raises(ConfigError, match=r"^WANDB_MODE='invalid' in the environment is not a W&B mode: set online, "
                                          r"offline or disabled"):
        wandb_mode(configured)
    with pytest.raises(ConfigError, match="WANDB_MODE='invalid'"):
        wandb_logger(str(tmp_path), project="p", mode=configured)
    monkeypatch.delenv("WANDB_MODE")
    assert wandb_mode(configured) == {"auto": "offline"}.get(configured, configured)  # no credentials in this HOME


def test_wandb_mode_disabled_writes_no_run(home, monkeypatch, tmp_path):
    """WANDB_MODE=disabled (W&B's switch: every call a no-op) wrote an offline run anyway: Lightning's offline flag
    set WANDB_MODE=dryrun over it."""
    import wandb

    from detlab.training.tracking import logger_summary, wandb_logger

    wandb.teardown()  # W&B keeps the settings of a process's first run (an earlier test's offline) for later runs
    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = wandb_logger(str(tmp_path / "run"), project="p", mode="auto")
    try:
        assert logger.experiment.disabled
        logger.log_metrics({"val/AP": 0.5}, step=1)
        assert logger_summary(logger) == ("none (WANDB_MODE=disabled): the numbers are in results.json", None)
    finally:
        wandb.finish()
        wandb.teardown()  # and this one's (disabled) for the next tests'
    assert not (tmp_path / "run").exists() or list((tmp_path / "run").iterdir()) == []


def test_logged_image_is_the_input_in_0_255_with_both_box_sets():
    """The PNG W&B writes holds the input's own pixels (not [0, 1] floats cast to a black image), and the
    boxes sit in its pixels: predictions mapped from original pixels by input = original * scale + offset."""
    import numpy as np
    import torchvision.transforms.functional as TF
    from PIL import Image

    from detlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from detlab.structures import Detections
    from detlab.training.tracking import wandb_images
    from tests.conftest import make_batch

    rgb = torch.randint(0, 256, (2, 3, 12, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    images = TF.normalize(rgb.float() / 255, IMAGENET_MEAN, IMAGENET_STD)  # the eval transform's normalisation
    batch = make_batch(
        torch.tensor([[[1.0, 2.0, 9.0, 10.0], [0, 0, 0, 0]], [[3.0, 3.0, 5.0, 6.0], [4.0, 1.0, 15.0, 11.0]]]),
        torch.tensor([[1, 0], [0, 1]]),
        torch.tensor([[True, False], [True, True]]),
        images=images,
        image_ids=torch.tensor([7, 9]),
        orig_sizes=torch.tensor([[6, 8], [12, 16]]),
        scales=torch.tensor([[2.0, 2.0], [1.0, 1.0]]),
        offsets=torch.tensor([[0.0, 1.0], [0.0, 0.0]]),
    )
    detections = [
        Detections(torch.tensor([[1.0, 1.0, 3.0, 4.0]]), torch.tensor([0.9]), torch.tensor([1])),
        Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64)),
    ]
    logged = wandb_images(batch, detections, ["circle", "square"], num_images=2)
    assert len(logged) == 2
    for image, expected in zip(logged, rgb.permute(0, 2, 3, 1).numpy()):
        pixels = np.asarray(Image.open(image._path).convert("RGB"))
        assert pixels.dtype == np.uint8 and np.array_equal(pixels, expected)
    predicted = logged[0]._boxes["predictions"]._val
    assert [b["position"] for b in predicted] == [{"minX": 2.0, "minY": 3.0, "maxX": 6.0, "maxY": 9.0}]
    assert predicted[0]["class_id"] == 1 and predicted[0]["scores"]["score"] == pytest.approx(0.9)
    assert [b["position"]["maxX"] for b in logged[1]._boxes["ground_truth"]._val] == [5.0, 15.0]
    assert logged[0]._boxes["ground_truth"]._val[0]["position"] == {"minX": 1.0, "minY": 2.0, "maxX": 9.0, "maxY": 10.0}
    assert logged[1]._boxes["predictions"]._val == []


def test_error_analysis_as_wandb_charts():
    import wandb

    from detlab.training.tracking import wandb_analysis

    dap = {"Cls": 0.5, "Loc": 0.07, "Both": 0.006, "Dupe": 0.006, "Bkg": 0.006, "Miss": 0.05, "FP": 0.09, "FN": 0.16}
    result = {
        "pr_curves": {"recall": [0.0, 0.5, 1.0], "AP50": {"a": [1.0, 0.3, 0.0], "b": [0.0, 0.0, 0.0]}, "AP75": {}},
        "errors": {"AP50": 0.16, "dAP": dap, "counts": {k: 1 for k in ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")}},
        "confusion_matrix": {"classes": ["a", "b", "background"], "matrix": [[2, 0, 2], [1, 0, 0], [4, 0, 0]]},
        "calibration": {"ECE": 0.49, "bins": [{"confidence": 0.9, "precision": 1.0, "count": 1},
                                              {"confidence": 0.5, "precision": 0.0, "count": 0}]},
    }
    logged = wandb_analysis(result)
    assert logged["val/ECE"] == 0.49 and {k: logged[f"val/dAP_{k}"] for k in dap} == dap
    table = logged["val/confusion_matrix"]
    assert isinstance(table, wandb.Table)
    assert table.columns == ["ground truth", "predicted a", "predicted b", "predicted background"]
    assert table.data == [["a", 2, 0, 2], ["b", 1, 0, 0], ["background", 4, 0, 0]]
    assert "val/pr_curve_AP75" not in logged  # no class with ground truth: no chart
    for key in ("val/pr_curve_AP50", "val/errors", "val/calibration"):
        assert type(logged[key]).__name__ == "CustomChart", key
    assert logged["val/errors"].table.data[0] == ["Cls", 0.5, 1]
    assert logged["val/calibration"].table.data == [[0.9, 1.0, 1]]  # empty bins left out
    assert wandb_analysis({"pr_curves": result["pr_curves"]}).keys() == {"val/pr_curve_AP50"}  # other engines


def test_only_ddp_rank_zero_names_the_wandb_run(tmp_path, monkeypatch):
    """Every DDP rank builds the logger, but only rank 0's starts a W&B run: rank 1 made up an id of its own and
    wrote it over rank 0's in <run dir>/wandb_run_id, which then named no run."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    from detlab.training.tracking import wandb_logger

    monkeypatch.setattr(rank_zero_only, "rank", 0)
    wandb_logger(str(tmp_path), project="p", mode="offline", run_id="run0abcd")
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    wandb_logger(str(tmp_path), project="p", mode="offline")  # rank 1's stand-in, a fresh id
    assert (tmp_path / "wandb_run_id").read_text() == "run0abcd\n"


@pytest.mark.parametrize(("logger", "target"), [("csv", "pytorch_lightning.loggers.CSVLogger"),
                                                 ("wandb", "detlab.training.tracking.wandb_logger")])
def test_a_logger_argument_its_class_refuses_names_the_key(tmp_path, logger, target):
    """As the trainer's and the callbacks' (run._build): before, exit 1 and Hydra's wrapper of the TypeError."""
    from detlab.config import compose_train
    from detlab.errors import ConfigError
    from detlab.training.run import _logger

    cfg = compose_train([f"logger={logger}", "+logger.flush_every=5"])
    with pytest.raises(ConfigError, match=rf"logger \({target}\) rejects its arguments: .*'flush_every'"):
        _logger(cfg, tmp_path, wandb_id=None)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # validation_step outside a Trainer
def test_logged_images_are_the_detections_that_validation_scores(tmp_path, monkeypatch):
    """An EMA (callbacks.ema) validates the averaged weights and swaps the trained ones back in at the epoch's end,
    before on_validation_end: the images carry the first batch's detections as validation_step scored them, the
    model whose AP the tables log (they were predicted again after the swap: another model's boxes)."""
    from types import SimpleNamespace

    from pytorch_lightning.loggers import WandbLogger

    from detlab.inference import Predictor
    from detlab.training import tracking
    from tests.conftest import TINY, detection_module, make_batch

    module = detection_module(tmp_path, [*TINY, "model.postprocess.score_thresh=0.0"])  # a random model's boxes, all kept
    batch = make_batch(torch.tensor([[[8.0, 8.0, 40.0, 40.0]], [[20.0, 10.0, 60.0, 50.0]]]), size=64, seed=0,
                       image_ids=torch.tensor([1, 1]))  # the annotation file's one image

    logged: dict[str, list] = {}
    wb = WandbLogger.__new__(WandbLogger)  # no run: the three calls the callback makes are recorded
    wb.log_table = lambda *args, **kwargs: None
    wb.log_metrics = lambda *args, **kwargs: None
    wb.log_image = lambda key, images: logged.setdefault(key, images)
    monkeypatch.setattr(tracking, "wandb_analysis", lambda evaluation: {})
    trainer = SimpleNamespace(loggers=[wb], sanity_checking=False, is_global_zero=True, global_step=1,
                              val_dataloaders=[batch])  # what the callback predicted from before
    callback = tracking.EvaluationLogger(num_images=2)

    with torch.no_grad():
        scored = module.validation_step(batch, 0)  # what the evaluator is given
        callback.on_validation_batch_end(trainer, module, scored, batch, 0)
        for p in module.parameters():  # the swap back to other weights at the epoch's end
            p.mul_(0.5)
        swapped = Predictor.from_module(module).predict_batch(batch)
    module.last_eval = {"metrics": {"AP": 0.0}, "per_class_AP": {}}
    callback.on_validation_end(trainer, module)

    def boxes(image):
        return [b["position"] for b in image._boxes["predictions"]._val]

    drawn = [boxes(image) for image in logged["val/predictions"]]
    expected = [boxes(image) for image in tracking.wandb_images(batch, scored, ["c1", "c2", "c3"], 2)]
    other = [boxes(image) for image in tracking.wandb_images(batch, swapped, ["c1", "c2", "c3"], 2)]
    assert expected[0] and expected != other  # the two models draw different boxes
    assert drawn == expected
