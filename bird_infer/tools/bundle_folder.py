"""A bundle's folder as its builders use it: started from a label list (``new-bundle``), opened for adding (one
being built included), and held by one writer at a time."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from bird_infer.contract.bundle import Manifest
from bird_infer.contract.errors import AddMemberError
from bird_infer.contract.manifest import load_manifest, manifest_from_dict, write_manifest
from bird_infer.contract.parse import check_labels
from bird_infer.contract.schema import MANIFEST_NAME


def new_bundle(folder: str | Path, labels: Sequence[str], row_s: float = 5.0, description: str = "") -> Path:
    """Start a bundle in ``folder`` (made, or empty): a manifest with ``labels`` and no member yet, for
    :func:`add_member` to fill. Returns the manifest's path. Raises AddMemberError (a folder that holds files),
    InvalidFieldError (the labels)."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        what = "holds a bundle" if (folder / MANIFEST_NAME).exists() else "is not an empty folder"
        raise AddMemberError(f"{folder} {what}; start a new bundle in a new or empty folder")
    data = {
        "schema_version": 2,
        "description": description,
        "labels": list(check_labels(list(labels), "the bundle's labels")),
        "row_s": row_s,
        "members": [],
    }
    manifest = manifest_from_dict(data, root=folder.absolute(), building=True)
    folder.mkdir(parents=True, exist_ok=True)
    return write_manifest(manifest, folder)


LOCK_NAME = ".bird_infer.lock"
"""The file a writer of a bundle holds a lock on (add-member, add-stage): a second writer at once is refused."""


@contextlib.contextmanager
def bundle_lock(bundle: str | Path) -> Iterator[None]:
    """Hold the bundle's write lock (``fcntl.flock`` on :data:`LOCK_NAME`, released by the kernel if the process
    dies): a second ``add-member`` or ``add-stage`` on the same bundle at once is refused with a message."""
    import fcntl  # deferred: POSIX only

    path = Path(bundle) / LOCK_NAME
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise AddMemberError(
                f"another add-member or add-stage is writing {bundle} right now; run one at a time (the bundle is "
                "unchanged)"
            ) from e
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def open_bundle(bundle: str | Path) -> Manifest:
    """The bundle add-member adds to (one being built included); a folder without a manifest is told how to start
    one."""
    if not (Path(bundle) / MANIFEST_NAME).exists():
        raise AddMemberError(
            f"no {MANIFEST_NAME} in {bundle}: start a bundle there with `bird-infer new-bundle {bundle} --labels "
            "labels.txt` (or --sample-submission sample_submission.csv), then add members"
        )
    return load_manifest(bundle, building=True)
