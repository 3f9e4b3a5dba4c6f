"""``bird-infer species``: BirdNET-Analyzer 2.4.0's ``birdnet-species``, the species list for a place and week from
BirdNET's meta model (:class:`bird_infer.runtime.birdnet_analyzer.RangeFilter`), one label per line."""

from __future__ import annotations

import os
from pathlib import Path

from bird_infer.contract.birdnet import LABELS_FILE, MDATA_FILE
from bird_infer.outputs.atomic import write_text
from bird_infer.runtime.birdnet_analyzer import RangeFilter, checked_file


def write_species_list(
    output: str, lat: float, lon: float, week: int, threshold: float, sortby: str = "freq"
) -> tuple[Path, int]:
    """Write the list to ``output`` (a folder: its ``species_list.txt``), most frequent first or alphabetical
    (``sortby="alpha"``); return the path and the number of species."""
    path = os.path.join(output, "species_list.txt") if os.path.isdir(output) else output
    labels = checked_file(LABELS_FILE).read_text(encoding="utf-8").splitlines()
    species = RangeFilter(checked_file(MDATA_FILE), labels).species(lat, lon, week, threshold, sortby != "freq")
    write_text(path, "".join(s + "\n" for s in species))
    return Path(path), len(species)
