"""Rebuild the shipped ``models/``: five efficientnet_b0 SED folds trained on the synthetic call corpus.

Every step is a ``bird-infer`` command a user can run by hand; this script runs them in order:

1. ``bird-infer synth`` three corpora (seeds 1, 2, 3): a pre-training set ("earlier years"), a
   fine-tuning set, and held-out 10-minute test soundscapes with their ground truth;
2. ``bird-infer train --all-data`` on the pre-training set -> ``pre/pretrained.pt``, then the same again
   starting from the previous run (``--pretrained``) -> ``pre2/``, ``pre3/`` (chained runs, as the shipped
   folds were made: after each run the loss and the held-out score showed it needed more);
3. ``bird-infer train --pretrained pre3/pretrained.pt`` on the fine-tuning set: 5 stratified folds;
4. ``bird-infer export`` the five folds (parity-checked against torch on the corpus audio);
5. ``bird-infer predict`` on the held-out soundscapes and ``bird-infer score`` (padded cmAP).

    python scripts/make_demo_folds.py --work /tmp/demo --out models

Backgrounds come from ``../shared/data/audio`` (real field recordings). CPU only; about 75 minutes on
2 cores with the defaults below.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bird_infer.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
BACKGROUND = ROOT.parent / "shared" / "data" / "audio"
CONFIG = ROOT / "configs" / "synthetic_b0.json"


def step(args: list[str]) -> float:
    print("$ bird-infer " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    rc = cli(args)
    if rc != 0:
        raise SystemExit(f"step failed with status {rc}: bird-infer {' '.join(args)}")
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="folder for corpora, checkpoints and results")
    p.add_argument("--out", type=Path, default=ROOT / "models")
    p.add_argument("--pretrain-clips", type=int, default=50)
    p.add_argument("--finetune-clips", type=int, default=40)
    p.add_argument(
        "--pretrain-epochs", type=int, nargs="+", default=[4, 8, 8], help="epochs of each chained pre-training run"
    )
    p.add_argument("--finetune-epochs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    w = args.work
    bg = ["--background", str(BACKGROUND)] if BACKGROUND.is_dir() else []
    times = {}
    if not (w / "pretrain" / "train_metadata.csv").exists():
        step(
            [
                "synth",
                "--out",
                str(w / "pretrain"),
                "--clips-per-label",
                str(args.pretrain_clips),
                "--soundscapes",
                "0",
                "--seed",
                "1",
                *bg,
            ]
        )
    if not (w / "finetune" / "train_metadata.csv").exists():
        step(
            [
                "synth",
                "--out",
                str(w / "finetune"),
                "--clips-per-label",
                str(args.finetune_clips),
                "--soundscapes",
                "0",
                "--seed",
                "2",
                *bg,
            ]
        )
    if not (w / "test" / "truth.csv").exists():
        step(["synth", "--out", str(w / "test"), "--clips-per-label", "0", "--soundscapes", "4", "--seed", "3", *bg])
    common = ["--config", str(CONFIG), "--threads", str(args.threads), *bg]
    previous: list[str] = []
    for k, epochs in enumerate(args.pretrain_epochs, start=1):
        run = w / ("pre" if k == 1 else f"pre{k}")
        if not (run / "pretrained.pt").exists():
            times[f"pretrain_{k}_s"] = step(
                [
                    "train",
                    *common,
                    "--data",
                    str(w / "pretrain"),
                    "--out",
                    str(run),
                    "--all-data",
                    "--epochs",
                    str(epochs),
                    *previous,
                ]
            )
        previous = ["--pretrained", str(run / "pretrained.pt")]
    times["finetune_s"] = step(
        [
            "train",
            *common,
            "--data",
            str(w / "finetune"),
            "--out",
            str(w / "folds"),
            *previous,
            "--epochs",
            str(args.finetune_epochs),
        ]
    )
    checkpoints = [str(w / "folds" / f"fold{k}.pt") for k in range(5)]
    step(
        [
            "export",
            "--config",
            str(w / "folds" / "train_config.json"),
            "--checkpoints",
            *checkpoints,
            "--out",
            str(args.out),
            "--check-audio",
            str(w / "test" / "soundscapes"),
            str(w / "finetune" / "train_audio"),
        ]
    )
    step(
        [
            "-q",
            "predict",
            "--audio",
            str(w / "test" / "soundscapes"),
            "--models",
            str(args.out),
            "--out",
            str(w / "test_submission.csv"),
        ]
    )
    step(["score", "--truth", str(w / "test" / "truth.csv"), "--submission", str(w / "test_submission.csv")])
    (w / "timings.json").write_text(json.dumps(times, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(times))


if __name__ == "__main__":
    main()
