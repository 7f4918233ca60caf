"""``ceexp.tensorboard``: what TensorBoard shows, read back with TensorBoard's own plugins from real event files.

The HParams experiment comes from the hparams plugin's ``get_experiment`` handler over an ``EventMultiplexer``
(as ``tensorboard --logdir`` builds it), the Custom Scalars charts from its plugin matching each chart's regular
expressions against the run's scalar tags; the expected values are written here by hand.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from ceexp import tensorboard as ctb

PARAMS = {"loss": "focal", "loss.gamma": 2.5, "seed": 1, "model.hidden_sizes": "[128, 128]",
          "temperature_scaling": True}


def _context(logdir: Path):
    """TensorBoard's plugin context over ``logdir`` (an EventMultiplexer and its data provider, as the server)."""
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    return base_plugin.TBContext(logdir=str(logdir), data_provider=provider, multiplexer=mux,
                                 plugin_name_to_instance={})


def experiment_of(logdir: Path, hparams_limit: int = 0):
    """The HParams experiment TensorBoard serves for ``logdir`` (``hparams_limit``: the first that many
    hyperparameters, as TensorBoard sorts them: those that differ first)."""
    from tensorboard import context
    from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment

    request = api_pb2.GetExperimentRequest(hparams_limit=hparams_limit)
    return get_experiment.Handler(context.RequestContext(), backend_context.Context(_context(logdir)), "",
                                  request).run()


def domain(info) -> set:
    """An HParamInfo's discrete domain as Python values."""
    from google.protobuf.json_format import MessageToDict

    return set(MessageToDict(info.domain_discrete)) if info.HasField("domain_discrete") else set()


def chart_tags(logdir: Path) -> dict[str, dict[str, set[str]]]:
    """run -> chart title -> the scalar tags TensorBoard's Custom Scalars tab draws on it for that run."""
    from tensorboard import context
    from tensorboard.plugins.custom_scalar.custom_scalars_plugin import CustomScalarsPlugin
    from tensorboard.plugins.scalar.scalars_plugin import ScalarsPlugin

    tb = _context(logdir)
    tb.plugin_name_to_instance["scalars"] = ScalarsPlugin(tb)
    plugin = CustomScalarsPlugin(tb)
    ctx = context.RequestContext()
    layout = json.loads(plugin.layout_impl(ctx, ""))
    out: dict[str, dict[str, set[str]]] = {}
    for run in tb.multiplexer.Runs():
        charts = out.setdefault(run, {})
        for category in layout["category"]:
            for chart in category["chart"]:
                drawn = charts.setdefault(chart["title"], set())
                for regex in chart["multiline"]["tag"]:
                    response = plugin.scalars_impl(ctx, run, regex, "")
                    assert response["regex_valid"], regex
                    drawn.update(response["tag_to_events"])
    return out


def _logger(folder: Path):
    from pytorch_lightning.loggers import TensorBoardLogger

    return TensorBoardLogger(save_dir=str(folder), name="", version="", default_hp_metric=False)


def test_log_hparams_writes_hparams_yaml_at_the_end_and_the_session(tmp_path, monkeypatch):
    import ceexp.files
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    written = []
    atomic = ceexp.files.atomic_write_bytes
    monkeypatch.setattr(ceexp.files, "atomic_write_bytes", lambda path, data: written.append(Path(path).name)
                        or atomic(path, data))
    logger = _logger(tmp_path)
    logger.log_metrics({"test/acc": 0.75, "test/ece": 0.125}, step=3)
    logger.save()  # what Lightning does when the run starts: hparams.yaml = {}
    assert yaml.safe_load((tmp_path / "hparams.yaml").read_text()) == {}
    ctb.log_hparams(logger, PARAMS, {"test/acc": 0.75, "test/ece": 0.125})
    logger.finalize("success")

    text = (tmp_path / "hparams.yaml").read_text()
    assert yaml.safe_load(text) == PARAMS and list(yaml.safe_load(text)) == list(PARAMS)  # the columns' order
    assert "hparams.yaml" in written  # through ceexp.files (temporary file + rename)
    assert not list(tmp_path.glob(".hparams.yaml*"))

    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["loss"].string_value == "focal" and start.hparams["loss.gamma"].number_value == 2.5
    assert start.hparams["seed"].number_value == 1 and start.hparams["temperature_scaling"].bool_value is True
    assert "_hparams_/session_end_info" in content
    # no experiment summary per run: TensorBoard would take one run's for the whole folder
    assert "_hparams_/experiment" not in content


def test_log_hparams_ignores_other_loggers(tmp_path):
    ctb.log_hparams(object(), PARAMS, {})
    assert list(tmp_path.iterdir()) == []


def test_custom_scalars_charts_draw_exactly_their_tags(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    logger = _logger(tmp_path)
    ctb.log_custom_scalars(logger)
    tags = ["train/loss", "train/loss_epoch", "train/nll", "val/nll", "val/nll_bits", "val/ece", "val/ece_ts",
            "val/ece_debiased", "val/ece_signed", "val/adaece", "val/cwece", "val/acc", "val/acc_ts",
            "val/confidence", "val/confidence_ts", "test/nll", "xval/nll"]
    for step in range(2):
        logger.log_metrics({t: 0.1 * step for t in tags}, step=step)
    logger.finalize("success")
    assert isinstance(logger.experiment, SummaryWriter)

    (run,) = chart_tags(tmp_path).values()
    assert run == {
        "cross-entropy (nats): train vs validation": {"train/nll", "val/nll"},
        "calibration error: ECE, AdaECE, classwise ECE": {"val/ece", "val/adaece", "val/cwece"},
        "accuracy vs mean confidence (the gap is over-confidence)": {"val/acc", "val/confidence"},
        "training objective vs its cross-entropy": {"train/loss_epoch", "train/nll"},
    }


def test_hparam_infos_domains_and_differs():
    from tensorboard.plugins.hparams import api_pb2

    runs = [{"loss": "ce", "seed": 0, "flag": True, "lr": 0.1, "mixed": 1, "same": "x"},
            {"loss": "focal", "loss.gamma": 2.0, "seed": 0, "flag": False, "lr": 0.2, "mixed": "a", "same": "x"},
            {"loss": "focal", "loss.gamma": 3.0, "seed": 0, "flag": True, "lr": 0.3, "mixed": 1, "same": "x"}]
    runs += [{**runs[1], "lr": 0.01 * k} for k in range(4, 15)]  # lr: 14 values in all
    infos = {i.name: i for i in ctb.hparam_infos(runs)}
    assert list(infos) == ["loss", "seed", "flag", "lr", "mixed", "same", "loss.gamma"]  # first appearance
    expect = {  # name: (type, discrete domain, differs)
        "loss": (api_pb2.DATA_TYPE_STRING, {"ce", "focal"}, True),
        "seed": (api_pb2.DATA_TYPE_FLOAT64, {0.0}, False),
        "flag": (api_pb2.DATA_TYPE_BOOL, {True, False}, True),
        "mixed": (api_pb2.DATA_TYPE_STRING, {"1", "a"}, True),
        "same": (api_pb2.DATA_TYPE_STRING, {"x"}, False),
        "loss.gamma": (api_pb2.DATA_TYPE_FLOAT64, {2.0, 3.0}, True),  # and the ce run lacks it
    }
    for name, (kind, values, differs) in expect.items():
        assert (infos[name].type, domain(infos[name]), infos[name].differs) == (kind, values, differs), name
    lr = infos["lr"]  # more than 12 numbers: an interval
    assert lr.type == api_pb2.DATA_TYPE_FLOAT64 and lr.differs and not lr.HasField("domain_discrete")
    assert (lr.domain_interval.min_value, lr.domain_interval.max_value) == (0.04, 0.3)
    only_one = ctb.hparam_infos([{"loss.gamma": 2.0}, {"loss": "ce"}])
    assert [(i.name, i.differs) for i in only_one] == [("loss.gamma", True), ("loss", True)]


def _fake_job(folder: Path, params: dict, record: dict) -> None:
    """A job folder as a run leaves it: its scalars, the HParams session, hparams.yaml, metrics.json."""
    from ceexp.files import write_json

    logger = _logger(folder)
    logger.log_metrics({k: v for k, v in record.items() if "/" in k and isinstance(v, float)}, step=5)
    ctb.log_hparams(logger, params, record)
    logger.finalize("success")
    write_json(folder / "metrics.json", {"status": "completed", **record, "time/seconds": 3.0})


def test_sweep_summary_lists_every_metric_and_what_differs(tmp_path):
    sweep = tmp_path / "sweep"
    common = {"data": "digits", "model": "mlp", "optimizer.lr": 0.001, "trainer.max_epochs": 2}
    jobs = [  # (folder, hyperparameters, metrics): the second job alone has test/ece_vector
        ("0_loss=ce,seed=0", {"loss": "ce", "seed": 0, **common}, {"test/acc": 0.9, "test/ece": 0.05}),
        ("1_loss=focal,seed=0", {"loss": "focal", "loss.gamma": 2.0, "seed": 0, **common},
         {"test/acc": 0.8, "test/ece": 0.02, "test/ece_vector": 0.01}),
        ("2_loss=focal,seed=1", {"loss": "focal", "loss.gamma": 2.0, "seed": 1, **common},
         {"test/acc": 0.85, "test/ece": 0.03}),
    ]
    for name, params, record in jobs:
        _fake_job(sweep / name, params, record)
    failed = sweep / "3_loss=focal,seed=2"  # no hparams.yaml: left out of the summary
    failed.mkdir()
    (failed / "metrics.json").write_text(json.dumps({"status": "failed", "error": "x", "test/never": 1.0}))

    # before: each run's own session only, and TensorBoard derives the experiment from the runs
    path = ctb.write_sweep_hparams(sweep, [sweep / name for name, _, _ in jobs] + [failed])
    assert path.parent == sweep and path.name.endswith(ctb.SWEEP_SUMMARY_SUFFIX)

    experiment = experiment_of(sweep)
    infos = {i.name: i for i in experiment.hparam_infos}
    assert set(infos) == {"loss", "loss.gamma", "seed", *common}
    assert infos["loss"].differs and domain(infos["loss"]) == {"ce", "focal"}
    assert infos["seed"].differs and domain(infos["seed"]) == {0.0, 1.0}
    assert infos["loss.gamma"].differs  # only the focal runs have it
    assert not any(infos[k].differs for k in common)
    assert {m.name.tag for m in experiment.metric_infos} == {"test/acc", "test/ece", "test/ece_vector"}

    # the HParams table's first five columns: those that differ first
    first = [i.name for i in experiment_of(sweep, hparams_limit=5).hparam_infos]
    assert first[:3] == ["loss", "loss.gamma", "seed"] and len(first) == 5

    # written again (a sweep's end re-run): replaced, not added (TensorBoard would keep the first)
    ctb.write_sweep_hparams(sweep, [sweep / name for name, _, _ in jobs[:2]])
    assert len(list(sweep.glob(f"*{ctb.SWEEP_SUMMARY_SUFFIX}"))) == 1
    assert {i.name: i for i in experiment_of(sweep).hparam_infos}["seed"].differs is False
    assert ctb.write_sweep_hparams(sweep, [failed]) is None


def test_without_a_sweep_summary_one_runs_experiment_would_hide_the_others(tmp_path):
    """Why the runs write no experiment summary of their own: TensorBoard keeps one for the whole folder."""
    from torch.utils.tensorboard.summary import hparams

    for name, params, metrics in (("a", {"loss": "ce"}, {"test/acc": 0.9}),
                                  ("b", {"loss": "focal"}, {"test/acc": 0.8, "test/ece_vector": 0.1})):
        logger = _logger(tmp_path / name)
        logger.log_metrics(metrics, step=1)
        writer = logger.experiment._get_file_writer()
        for summary in hparams(params, metrics):  # torch's three summaries, experiment included
            writer.add_summary(summary)
        logger.finalize("success")
    experiment = experiment_of(tmp_path)
    (loss,) = [i for i in experiment.hparam_infos if i.name == "loss"]
    assert not loss.differs  # one run's experiment for the whole folder: loss=ce vs focal is not seen
    assert len(experiment.metric_infos) in (1, 2) and math.isfinite(experiment.time_created_secs)
