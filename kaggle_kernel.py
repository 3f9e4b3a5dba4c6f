"""bird_infer on Kaggle: paste this file into a notebook cell, or run it as a script.

    python kaggle_kernel.py --audio test_soundscapes

In a notebook (no arguments there: the notebook's own command line is not ours) everything comes
from the defaults: the competition's test_soundscapes and sample_submission.csv under
/kaggle/input, the models folder of the bird_infer bundle, and submission.csv in the working
directory. bird_infer is found whether it is installed, sits next to this script or in the working
directory, or sits in a dataset attached under /kaggle/input. No internet is used.
Set BIRD_INFER_KAGGLE_INPUT to look somewhere other than /kaggle/input.
(No ``from __future__`` import: a pasted cell may follow other code. Needs Python >= 3.10.)
"""

import argparse
import logging
import os
import sys
from pathlib import Path

# BirdCLEF 2023 CPU notebooks have 120 minutes in all; the deadline guard counts from the start of the
# job, so 5 minutes are left for the notebook's start and imports. It plans for 90% of this and
# stops hard at 97% (see bird_infer/deadline.py).
TIME_LIMIT_MIN = 115.0


def kaggle_input() -> Path:
    return Path(os.environ.get("BIRD_INFER_KAGGLE_INPUT", "/kaggle/input"))


def script_dir() -> Path | None:
    """This file's folder, or None when the code was pasted into a notebook cell (no __file__)."""
    return Path(__file__).resolve().parent if "__file__" in globals() else None


def search_roots() -> list[Path]:
    """Where a bundle (bird_infer/ and models/) may sit, in order of preference."""
    roots = [r for r in (script_dir(), Path.cwd()) if r is not None]
    base = kaggle_input()
    if base.is_dir():
        roots += sorted(base.glob("*")) + sorted(base.glob("*/*"))
    return roots


def import_bird_infer() -> Path | None:
    """Import bird_infer (installed or from a bundle folder); returns the bundle folder if one was used."""
    try:
        import bird_infer

        return Path(bird_infer.__file__).resolve().parent.parent
    except ImportError:
        pass
    for root in search_roots():
        if (root / "bird_infer" / "__init__.py").is_file():
            sys.path.insert(0, str(root))  # spawned workers inherit sys.path
            import bird_infer

            return root
    raise SystemExit(
        "bird_infer not found: pip install it, or put the bird_infer/ folder next to this script, "
        "in the working directory, or in a dataset attached under /kaggle/input"
    )


def first_existing(candidates: list[Path]) -> Path | None:
    return next((c for c in candidates if c.exists()), None)


def kaggle_defaults(bundle: Path | None) -> dict[str, object]:
    base = kaggle_input()
    competition = sorted(base.glob("*/test_soundscapes")) if base.is_dir() else []
    # Models next to this script, in the working directory or in an attached dataset come before those of
    # the installed package (the shipped demo folds, trained on synthetic species).
    model_dirs = [r / "models" for r in search_roots() + ([bundle] if bundle else [])]
    defaults: dict[str, object] = {
        "out": Path("submission.csv"),
        "time_limit_min": TIME_LIMIT_MIN,
        "sample_submission": first_existing([c.parent / "sample_submission.csv" for c in competition]),
        "models": first_existing([d for d in model_dirs if (d / "manifest.json").is_file()]) or Path("models"),
    }
    if competition:
        defaults["audio"] = competition[0]
    return defaults


def in_notebook() -> bool:
    return script_dir() is None or "ipykernel" in sys.modules


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = [] if in_notebook() else sys.argv[1:]
    bundle = import_bird_infer()
    from bird_infer.cli import add_predict_arguments, predict_from_args

    parser = argparse.ArgumentParser(prog="kaggle_kernel.py", description="soundscapes -> submission.csv")
    add_predict_arguments(parser, kaggle_defaults(bundle))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    from bird_infer.errors import BirdInferError

    try:
        return predict_from_args(args)
    except (BirdInferError, FileNotFoundError) as e:
        print(f"kaggle_kernel: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    code = main()
    if not in_notebook():
        sys.exit(code)
