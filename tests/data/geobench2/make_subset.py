"""Rebuild this folder from the GEO-Bench-2 test subsets: one sample per split per task.

    python tests/data/geobench2/make_subset.py SRC_DIR   # SRC_DIR/<task>/<task>.tortilla

Uses tacoreader.v1.compile, which copies the chosen samples' bytes unchanged into a new
.tortilla file.
"""

import pathlib
import sys

import tacoreader.v1 as tacoreader

CHOSEN = {  # task -> sample ids (train, validation, test)
    "benv2": ("sample_7118", "sample_20555", "sample_24555"),
    "pastis": ("sample_619", "sample_1616", "sample_1755"),
    "treesatai": ("sample_3325", "sample_4521", "sample_5353"),
    "biomassters": ("sample_2", "sample_4", "sample_6"),  # sample_2 lacks S2 Sep-Mar
}


def main(src: str) -> None:
    here = pathlib.Path(__file__).resolve().parent
    for task, ids in CHOSEN.items():
        table = tacoreader.load(str(pathlib.Path(src) / task / f"{task}.tortilla"))
        subset = table[table["tortilla:id"].isin(ids)]
        assert len(subset) == 3, (task, list(table["tortilla:id"]))
        tacoreader.compile(subset, here / task / f"{task}.tortilla", quiet=True, nworkers=1)


if __name__ == "__main__":
    main(sys.argv[1])
