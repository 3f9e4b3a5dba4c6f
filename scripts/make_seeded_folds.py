"""Rebuild the default ``models/``: five seeded-random efficientnet_b0 SED folds (NOT trained).

Until trained demo folds exist, the shipped bundle holds these so that the whole pipeline runs and
its speed can be measured. Each fold is initialised from its seed, then its BatchNorm statistics are
re-estimated on real recordings so that the outputs respond to the input (a network fresh from
timm's initialisation outputs nearly the same numbers for any input, and a parity test on it would
prove nothing). The folds are written as ordinary checkpoints and exported by ``bird-infer export``,
the same command users run on their own folds.

    python scripts/make_seeded_folds.py --audio ../shared/data/audio --out models
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from bird_infer.cli import main as cli_main
from bird_infer.export import check_chunks_from_audio
from bird_infer.frontend import LogMelFrontend
from bird_infer.manifest import load_training_config
from bird_infer.nn.sed import build_model, recalibrate_batchnorm

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTION = (
    "SEEDED-RANDOM WEIGHTS, NOT TRAINED: five efficientnet_b0 SED folds (seeds 0-4) with BatchNorm "
    "statistics estimated on real recordings, made by scripts/make_seeded_folds.py. Their predictions "
    "mean nothing; they exist to run and time the pipeline. Labels: the 264 BirdCLEF 2023 species."
)


@torch.no_grad()
def damp_residuals(model: torch.nn.Module, gamma: float = 0.1) -> None:
    """Scale the last BatchNorm of every residual block by ``gamma`` (near zero-init of the branch).

    With unit gammas the 16 residual blocks of a random efficientnet_b0 compound: activations grew
    to ~4000 on some recordings and a 1e-6 change of the input moved outputs by 0.27 (chaos, not a
    model). Damped, the same change moves them by ~1e-4, as a trained network's would.
    """
    for block in model.modules():
        if getattr(block, "has_skip", False):
            last_bn = getattr(block, "bn3", None) or getattr(block, "bn2", None)
            if last_bn is not None:
                last_bn.weight.mul_(gamma)


@torch.no_grad()
def scale_head(model: torch.nn.Module, feats: torch.Tensor, logit_std: float = 1.0, logit_mean: float = -2.0) -> None:
    """Rescale the segment classifier so its logits have ``logit_std`` spread around ``logit_mean``.

    Random heads give logits in the hundreds: every output sits at 0 or 1, where a parity check
    sees nothing. This keeps outputs in the sigmoid's sensitive range, like a trained detector's.
    """
    model.eval()
    cla = model.att_block.cla
    captured: list[torch.Tensor] = []
    handle = cla.register_forward_hook(lambda _m, _i, out: captured.append(out))
    model(feats)
    handle.remove()
    logits = torch.cat(captured)
    scale = logit_std / logits.std().item()
    cla.weight.mul_(scale)
    cla.bias.mul_(scale).add_(logit_mean - logits.mean().item() * scale)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "birdclef2023_b0.json")
    p.add_argument("--audio", type=Path, default=ROOT.parent / "shared" / "data" / "audio")
    p.add_argument("--out", type=Path, default=ROOT / "models")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--calibration-chunks", type=int, default=512)
    args = p.parse_args()

    config = load_training_config(args.config)
    torch.set_num_threads(2)
    # Calibrate on the 32 kHz field recordings, the kind of audio the bundle is for. Statistics
    # pooled with the 22 kHz maad files (nothing above 11 kHz) let activations explode on
    # 32 kHz scenes (~400 sigma at the last BatchNorm), where float32 rounding then shows.
    calib_waves = check_chunks_from_audio([args.audio / "opensoundscape"], config, args.calibration_chunks)
    feats = torch.from_numpy(LogMelFrontend(config.frontend, config.audio.sample_rate)(calib_waves))
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = []
        for seed in range(args.folds):
            torch.manual_seed(seed)
            model = build_model(config.model, config.frontend.n_mels, len(config.labels))
            damp_residuals(model)
            recalibrate_batchnorm(model, list(feats.split(16)))
            scale_head(model, feats)
            path = Path(tmp) / f"fold{seed}.pt"
            torch.save({"state_dict": model.state_dict(), "seed": seed}, path)
            ckpts.append(str(path))
        return cli_main([
            "export", "--config", str(args.config), "--checkpoints", *ckpts, "--out", str(args.out),
            "--check-audio", str(args.audio / "opensoundscape"), "--check-chunks", "16",
            "--description", DESCRIPTION,
        ])


if __name__ == "__main__":
    raise SystemExit(main())
