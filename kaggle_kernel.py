"""bird_infer on Kaggle: paste this file into a notebook cell, or run it as a script.

    python kaggle_kernel.py --audio test_soundscapes          # or, in a notebook: %run kaggle_kernel.py --audio ...

Pasted into a cell (no arguments there: the notebook's own command line is not ours) everything comes
from the notebook's inputs, old layout (``/kaggle/input/<slug>/``) and today's
(``/kaggle/input/competitions/<slug>/``, ``/kaggle/input/datasets/<owner>/<slug>/``, Kaggle Models at
``/kaggle/input/<model>/<framework>/<variation>/<version>/``) alike:

- the competition: the one folder holding ``test_soundscapes/`` and ``sample_submission.csv`` (two or none:
  an error that lists what was found); its slug gives the time limit (BirdCLEF 2023/2024: 120 minutes,
  2025/2026: 90; an unknown competition gets 90 and the log says so), less 5 minutes for the notebook's start;
- the bundle written by ``bird-infer bundle``: ``bird_infer/``, ``models/`` and ``wheels/``. Python packages
  the notebook lacks (onnxruntime is not in Kaggle's image) are installed from ``wheels/`` with pip, never
  from the network;
- ``submission.csv`` (and ``submission_errors.csv``) in the working directory.

Set the variables below to override what is found. Set BIRD_INFER_KAGGLE_INPUT to look somewhere other
than /kaggle/input. (No ``from __future__`` import: a pasted cell may follow other code. Python >= 3.10.)
"""

import argparse
import importlib
import importlib.util
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

TIME_LIMIT_MIN = None  # minutes for the whole job; None: the competition's own limit less 5 minutes
MODELS = None  # a folder holding manifest.json; None: the one found in the inputs

# What bird_infer imports at run time: module name -> pip name.
RUNTIME_MODULES = {
    "numpy": "numpy",
    "scipy": "scipy",
    "pandas": "pandas",
    "soundfile": "soundfile",
    "soxr": "soxr",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "regex": "regex",
}
# Installed from the bundle's wheels/ when they are there (`bird-infer bundle` carries them unless --no-openvino);
# without them --precision auto runs ONNX Runtime fp32.
OPTIONAL_MODULES = {"openvino": "openvino"}
MAX_DEPTH = 5  # /kaggle/input/<model>/<framework>/<variation>/<version>/models
# Folders that hold data, never a bundle or a competition: not searched (train_audio has thousands of files).
DATA_DIRS = {
    "test_soundscapes",
    "train_audio",
    "train_soundscapes",
    "unlabeled_soundscapes",
    "wheels",
    "__pycache__",
    "bird_infer",
}

log = logging.getLogger("kaggle_kernel")


class KernelError(Exception):
    """Something about the notebook's inputs that the user must fix; the message says what."""


def kaggle_input() -> Path:
    return Path(os.environ.get("BIRD_INFER_KAGGLE_INPUT", "/kaggle/input"))


def script_dir() -> "Path | None":
    """This file's folder, or None when the code was pasted into a notebook cell (no __file__)."""
    return Path(__file__).resolve().parent if "__file__" in globals() else None


def walk_dirs(base: Path, max_depth: int = MAX_DEPTH) -> list:
    """Folders under ``base`` down to ``max_depth`` levels, sorted, without following links or entering data."""
    found, frontier = [], [(base, 0)]
    while frontier:
        folder, depth = frontier.pop()
        found.append(folder)
        if depth == max_depth:
            continue
        try:
            subdirs = sorted(e.path for e in os.scandir(folder) if e.is_dir(follow_symlinks=False))
        except OSError:
            continue
        frontier.extend((Path(p), depth + 1) for p in reversed(subdirs) if Path(p).name not in DATA_DIRS)
    return sorted(found)


def find_competitions(base: Path) -> list:
    """Folders holding ``test_soundscapes/`` and ``sample_submission.csv``."""
    if not base.is_dir():
        return []
    return [d for d in walk_dirs(base) if (d / "test_soundscapes").is_dir() and (d / "sample_submission.csv").is_file()]


def find_bundles(base: Path) -> list:
    """Folders that hold a bundle's parts: ``bird_infer/``, ``models/manifest.json`` or ``wheels/``."""
    roots = [r for r in (script_dir(), Path.cwd()) if r is not None]
    if base.is_dir():
        roots += walk_dirs(base)
    out = []
    for d in roots:
        parts = (d / "bird_infer" / "__init__.py", d / "models" / "manifest.json", d / "wheels")
        if any(p.exists() for p in parts) and d not in out:
            out.append(d)
    return out


def find_model_dirs(base: Path, bundles: list) -> list:
    """Folders under the inputs holding a manifest.json: each attached bundle's ``models/``, and Kaggle Models'
    version folders. (A ``models/`` beside this script or in the working directory is the last resort.)"""
    if not base.is_dir():
        return []
    dirs = [b / "models" for b in bundles if b.is_relative_to(base) and (b / "models" / "manifest.json").is_file()]
    dirs += [d for d in walk_dirs(base) if (d / "manifest.json").is_file()]
    unique = []
    for d in dirs:
        if d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


def wheel_tags(wheels: Path) -> list:
    """The CPython tags (cp311, cp312...) of the wheels in a bundle's wheels/ folder."""
    tags = set()
    for w in wheels.glob("*.whl"):
        tags.update(re.findall(r"-(cp3\d+)-", w.name))
    return sorted(tags)


def wheel_of(wheels: Path, pip: str) -> list:
    """The bundle's wheels of package ``pip`` (wheel names use underscores, any case)."""
    stem = re.sub(r"[-_.]+", "_", pip).lower()
    return [w for w in wheels.glob("*.whl") if re.sub(r"[-_.]+", "_", w.name.split("-")[0]).lower() == stem]


def pip_install(wheels: Path, packages: list) -> "subprocess.CompletedProcess":
    """``pip install`` from the bundle's wheels only (``--no-index``: never the network)."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels)]
    proc = subprocess.run([*cmd, "--disable-pip-version-check", "--quiet", *packages], capture_output=True, text=True)
    importlib.invalidate_caches()
    return proc


def ensure_optional(wheel_dirs: list) -> None:
    """Install the optional engines the bundle carries wheels for; a failure only means fewer modes for auto."""
    here = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for mod, pip in OPTIONAL_MODULES.items():
        if importlib.util.find_spec(mod) is not None or not wheel_dirs:
            continue
        if not any(here in w.name for w in wheel_dirs[0].glob(f"{pip}-*.whl")):
            continue
        proc = pip_install(wheel_dirs[0], [pip])
        ok = proc.returncode == 0 and importlib.util.find_spec(mod) is not None
        print(f"{'installed' if ok else 'could not install'} {pip} from the bundle's wheels (optional)", flush=True)


def ensure_runtime(bundles: list) -> None:
    """Install the runtime packages this Python lacks from a bundle's ``wheels/`` (pip, no network), and the
    optional engines it carries."""
    wheel_dirs = [b / "wheels" for b in bundles if any((b / "wheels").glob("*.whl"))]
    ensure_optional(wheel_dirs)
    missing = [pip for mod, pip in RUNTIME_MODULES.items() if importlib.util.find_spec(mod) is None]
    if not missing:
        return
    here = f"cp{sys.version_info.major}{sys.version_info.minor}"
    if not wheel_dirs:
        raise KernelError(
            f"this notebook lacks {missing} and no bundle with wheels/ is attached; attach the dataset "
            "written by `bird-infer bundle` (it carries them)"
        )
    print(f"installing {missing} from {wheel_dirs[0]} (no network)", flush=True)
    proc = pip_install(wheel_dirs[0], missing)
    still = [m for m, pip in RUNTIME_MODULES.items() if pip in missing and importlib.util.find_spec(m) is None]
    if proc.returncode != 0 or still:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        tags = wheel_tags(wheel_dirs[0])
        if here in tags:  # wheels for this Python are there: name the ones missing, not the version
            lacking = [pip for pip in (still or missing) if not wheel_of(wheel_dirs[0], pip)]
            raise KernelError(
                f"could not install {still or missing} from {wheel_dirs[0]}: the bundle holds wheels for this "
                f"Python ({here}) but none for {lacking or still or missing} (a wheel is missing or was removed); "
                f"rebuild the bundle with `bird-infer bundle` and attach it again.\n{proc.stderr[-2000:]}"
            )
        raise KernelError(
            f"could not install {still or missing} from {wheel_dirs[0]}: this notebook runs Python "
            f"{version} ({here}), and the bundle holds wheels for "
            f"{tags or 'no CPython version'}; rebuild it with "
            f"`bird-infer bundle --python {version}`.\n{proc.stderr[-2000:]}"
        )
    print(f"installed {missing} from the bundle's wheels", flush=True)


def import_bird_infer(bundles: list) -> None:
    """Import bird_infer: installed, or from the first bundle holding it (put on sys.path: workers inherit it)."""
    if importlib.util.find_spec("bird_infer") is None:
        for root in bundles:
            if (root / "bird_infer" / "__init__.py").is_file():
                sys.path.insert(0, str(root))
                importlib.invalidate_caches()
                break
        else:
            raise KernelError(
                "bird_infer not found: attach the dataset written by `bird-infer bundle`, put the bird_infer/ "
                "folder next to this script or in the working directory, or pip install it"
            )
    import bird_infer  # noqa: F401


def only_one(found: list, what: str, holding: str, hint: str) -> Path:
    if len(found) == 1:
        return found[0]
    if not found:
        raise KernelError(f"no {what} ({holding}) found under {kaggle_input()}; {hint}")
    listed = "\n  ".join(str(f) for f in found)
    raise KernelError(f"{len(found)} {what}s ({holding}) found; {hint}:\n  {listed}")


def kaggle_defaults(argv: list, bundles: list) -> dict:
    """Defaults for the predict options, from the notebook's inputs and the variables at the top."""
    from bird_infer.kaggle.editions import NOTEBOOK_START_MIN, STRICTEST_LIMIT_MIN, edition_for

    base = kaggle_input()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--audio", type=Path)
    pre.add_argument("--models", type=Path)
    pre.add_argument("--sample-submission", type=Path)
    known, _ = pre.parse_known_args(argv)
    if known.audio is not None:  # its own competition folder: never a sample submission found elsewhere
        audio = known.audio
        folder = audio.resolve().parent if audio.resolve().is_dir() else audio.resolve().parent.parent
        sample = folder / "sample_submission.csv"
        sample = known.sample_submission or (sample if sample.is_file() else None)
    else:
        comp = only_one(
            find_competitions(base),
            "competition folder",
            "holding test_soundscapes/ and sample_submission.csv",
            "attach exactly one competition, or pass --audio",
        )
        folder, audio, sample = comp, comp / "test_soundscapes", comp / "sample_submission.csv"
    # auto: the fastest precision this CPU offers that the accuracy guard accepts (bird_infer.runtime.precision)
    defaults = {"audio": audio, "sample_submission": sample, "out": Path("submission.csv"), "precision": "auto"}
    models = known.models or (Path(MODELS) if MODELS else None)
    if models is None:
        found = find_model_dirs(base, bundles)
        if found:
            models = only_one(found, "model folder", "holding manifest.json", "set MODELS (or pass --models) to one")
        else:
            local = [r / "models" for r in (script_dir(), Path.cwd()) if r is not None]
            models = next((m for m in local if (m / "manifest.json").is_file()), None)
    if models is not None:
        defaults["models"] = models
    edition = edition_for(folder.name)
    if TIME_LIMIT_MIN is not None:
        defaults["time_limit_min"] = float(TIME_LIMIT_MIN)
        log.info("time limit: %.0f min, from TIME_LIMIT_MIN", TIME_LIMIT_MIN)
    elif edition is not None:
        defaults["time_limit_min"] = edition.job_limit_min
        log.info("%s: %.0f-minute limit, the job gets %.0f min", edition.slug, edition.limit_min, edition.job_limit_min)
    else:
        defaults["time_limit_min"] = STRICTEST_LIMIT_MIN - NOTEBOOK_START_MIN
        log.warning(
            "competition %r is not a known BirdCLEF edition: assuming the strictest limit known, "
            "%.0f minutes (the job gets %.0f); set TIME_LIMIT_MIN to change it",
            folder.name,
            STRICTEST_LIMIT_MIN,
            STRICTEST_LIMIT_MIN - NOTEBOOK_START_MIN,
        )
    return defaults


def main(argv: "list | None" = None) -> int:
    if argv is None:  # a script or %run takes its arguments; a pasted cell (no __file__) takes none
        argv = sys.argv[1:] if script_dir() is not None else []
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    try:
        bundles = find_bundles(kaggle_input())
        ensure_runtime(bundles)
        import_bird_infer(bundles)
        from bird_infer.cli import add_predict_arguments, predict_from_args
        from bird_infer.run.options import restore_interrupts

        restore_interrupts()  # a notebook's interrupt button, or Ctrl-C on a script, stops the run

        parser = argparse.ArgumentParser(prog="kaggle_kernel.py", description="soundscapes -> submission.csv")
        add_predict_arguments(parser, kaggle_defaults(argv, bundles))
        args = parser.parse_args(argv)
        return predict_from_args(args)
    except KernelError as e:
        print(f"kaggle_kernel: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        errors = sys.modules.get("bird_infer.contract.errors")
        if isinstance(e, FileNotFoundError) or (errors is not None and isinstance(e, errors.BirdInferError)):
            print(f"kaggle_kernel: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    code = main()
    if code:
        raise SystemExit(code)
