"""Exported folds reproduce their torch source; the exporter refuses a model that does not."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from bird_infer.audio.logmel import LogMelFrontend  # noqa: E402
from bird_infer.contract.errors import ExportError  # noqa: E402
from bird_infer.contract.manifest import load_manifest  # noqa: E402
from bird_infer.export import export_folds, non_portable_nodes  # noqa: E402
from bird_infer.nn.frontend import TorchLogMel  # noqa: E402
from bird_infer.runtime.sessions import make_session  # noqa: E402

TOLERANCE = 1e-4


def spread(probs: np.ndarray) -> float:
    """Largest range of any output over the inputs: a model that ignores its input has ~0."""
    return float((probs.max(axis=0) - probs.min(axis=0)).max())


def test_every_exported_fold_matches_torch_on_real_audio(tiny_bundle, tiny_config, real_chunks) -> None:
    manifest, models, result = tiny_bundle
    feats = LogMelFrontend(tiny_config.frontend, tiny_config.audio.sample_rate)(real_chunks)
    for fold, model in zip(manifest.member().folds, models, strict=True):
        with torch.no_grad():
            expected = model(torch.from_numpy(feats))[0].numpy()
        sess = make_session(str(manifest.fold_path(fold)))
        got = sess.run([fold.clipwise.name], {fold.input.name: feats})[0]
        diff = float(np.abs(got - expected).max())
        print(f"{fold.name}: max |onnx - torch| = {diff:.3g}, output spread {spread(expected):.3g}")
        assert diff <= TOLERANCE
        assert spread(expected) > 1000 * TOLERANCE, "the test model must respond to its input"
    assert all(r.max_abs_diff <= TOLERANCE for r in result.reports)


def test_batch_axis_is_dynamic(tiny_bundle, tiny_config, check_chunks) -> None:
    manifest, _, _ = tiny_bundle
    feats = LogMelFrontend(tiny_config.frontend, tiny_config.audio.sample_rate)(check_chunks[:7])
    sess = make_session(str(manifest.fold_path(manifest.member().folds[0])))
    one_by_one = np.concatenate([sess.run(["clipwise"], {"logmel": feats[i : i + 1]})[0] for i in range(7)])
    np.testing.assert_allclose(sess.run(["clipwise"], {"logmel": feats})[0], one_by_one, atol=1e-5)


def test_either_front_end_gives_the_same_outputs(tiny_bundle, tiny_config, check_chunks) -> None:
    _, models, _ = tiny_bundle
    waves = check_chunks
    np_feats = LogMelFrontend(tiny_config.frontend, tiny_config.audio.sample_rate)(waves)
    with torch.no_grad():
        torch_feats = TorchLogMel(tiny_config.frontend, tiny_config.audio.sample_rate)(torch.from_numpy(waves))
        for model in models:
            a = model(torch.from_numpy(np_feats))[0].numpy()
            b = model(torch_feats)[0].numpy()
            assert float(np.abs(a - b).max()) <= TOLERANCE
            assert spread(a) > 1000 * TOLERANCE


def test_saved_models_hold_no_cpu_specific_layout(tiny_bundle) -> None:
    manifest, _, _ = tiny_bundle
    for fold in manifest.member().folds:
        assert non_portable_nodes(manifest.fold_path(fold)) == []


def test_exporter_refuses_a_model_that_disagrees(tmp_path, tiny_bundle, tiny_config, check_chunks) -> None:
    _, models, _ = tiny_bundle
    with pytest.raises(ExportError, match="differs from torch by"):
        export_folds(models[:1], tiny_config, tmp_path, check_chunks[:4], tolerance=1e-12)
    assert not (tmp_path / "fold0.onnx").exists()
    assert not (tmp_path / "manifest.json").exists()


def test_cli_export_from_checkpoints(tmp_path, tiny_bundle, tiny_config) -> None:
    import dataclasses
    import json

    from bird_infer.cli import main

    _, models, _ = tiny_bundle
    ckpts = []
    for i, model in enumerate(models):
        path = tmp_path / f"f{i}.pt"
        # a DataParallel-style checkpoint: nested under state_dict with module. prefixes
        torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, path)
        ckpts.append(str(path))
    cfg = dataclasses.asdict(tiny_config)
    cfg["labels"] = list(cfg["labels"])
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    from tests.conftest import real_audio_dir

    out = tmp_path / "bundle"
    rc = main(
        [
            "export",
            "--config",
            str(tmp_path / "cfg.json"),
            "--checkpoints",
            *ckpts,
            "--out",
            str(out),
            "--check-audio",
            str(real_audio_dir("opensoundscape")),
            "--check-chunks",
            "6",
        ]
    )
    assert rc == 0
    m = load_manifest(out)
    assert [f.name for f in m.member().folds] == ["fold0", "fold1"] and m.member().model.backbone == "test_efficientnet"


def test_checkpoint_that_does_not_fit_is_refused(tmp_path, tiny_config) -> None:
    from bird_infer.export import load_fold_checkpoint

    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "bad.pt")
    with pytest.raises(ExportError, match="does not fit model"):
        load_fold_checkpoint(tmp_path / "bad.pt", tiny_config)
