"""Dask engine benchmark: the same ten-minute soundscapes through the process pool and through a Dask
LocalCluster (one single-threaded worker process per core), in one run; chunks per second and the overhead.

    python -m benchmarks.dask_engine --soundscapes 4

Each engine runs the whole job (``run_predict``: decode, front-end, the folds, CSV), cluster start-up
included for Dask (a LocalCluster is started and closed inside the run, as ``--engine dask`` does).
The target: the LocalCluster within 10 % of the pool's chunks per second on ten-minute files.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_OVERHEAD = 0.10


def main(argv: list[str] | None = None) -> int:
    from benchmarks.soundscapes import write_soundscapes
    from bird_infer.contract.manifest import load_manifest
    from bird_infer.jobs.predict import run_predict
    from bird_infer.run.options import RunOptions, limit_native_threads

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--soundscapes", type=int, default=4)
    p.add_argument("--audio-dir", type=Path, default=Path(tempfile.gettempdir()) / "bird_infer_bench_soundscapes")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    limit_native_threads(1)
    manifest = load_manifest(args.models)
    write_soundscapes(args.audio_dir, args.soundscapes, manifest.audio)
    result: dict = {}
    from distributed import LocalCluster

    from bird_infer.runtime.machine import available_cores

    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster(
            n_workers=available_cores(), threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as running,
    ):
        runs = {
            "pool": RunOptions(),
            "dask": RunOptions(engine="dask"),
            # the cluster already up: what is left is the engine's own cost per file
            "dask_running_cluster": RunOptions(engine="dask", scheduler=running.scheduler_address),
        }
        for name, options in runs.items():
            t0 = time.perf_counter()
            summary = run_predict(args.audio_dir, args.models, Path(tmp) / f"{name}.csv", options=options)
            wall = time.perf_counter() - t0
            result[name] = {
                "chunks": summary.n_chunks,
                "wall_s": round(wall, 2),
                "chunks_per_s": round(summary.n_chunks / wall, 2),
            }
        same = all((Path(tmp) / f"{n}.csv").read_text() == (Path(tmp) / "pool.csv").read_text() for n in runs)
    overhead = result["pool"]["chunks_per_s"] / result["dask"]["chunks_per_s"] - 1
    result["dask_overhead"] = round(overhead, 4)
    result["dask_overhead_running_cluster"] = round(
        result["pool"]["chunks_per_s"] / result["dask_running_cluster"]["chunks_per_s"] - 1, 4
    )
    result["csv_identical"] = same
    result["target_met"] = overhead <= TARGET_OVERHEAD
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    print(
        f"dask LocalCluster: {result['dask']['chunks_per_s']} chunks/s against the pool's "
        f"{result['pool']['chunks_per_s']} ({overhead:+.1%} with its start-up; "
        f"{result['dask_overhead_running_cluster']:+.1%} on a cluster already running; "
        f"target <= {TARGET_OVERHEAD:.0%}), CSVs identical: {same}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
