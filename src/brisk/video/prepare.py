"""``prepare-video dataset=... paths.data_dir=...``: build a video data set's cache before training.

Takes the runner's configuration and overrides, so the cache it builds is exactly the one ``train``
will look for. Preparing is optional (``train`` prepares on first use) but lets a cluster job or a
machine with more cores do the slow part once. It is resumable: run it again after an interruption.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from brisk.config import CONFIG_NAME, CONFIG_PATH  # registers the runner's config schemas
from brisk.errors import USER_ERROR_EXIT, UserError
from brisk.run.setup import instantiate_checked
from brisk.video.cache import PrepareReport
from brisk.video.datamodule import VideoDataModule

log = logging.getLogger("brisk.video")


def prepare_dataset(dataset_cfg: DictConfig | VideoDataModule) -> PrepareReport:
    """Instantiate the data set (if given its config) and build its cache; returns the report."""
    dm = (
        dataset_cfg
        if isinstance(dataset_cfg, VideoDataModule)
        else instantiate_checked(dataset_cfg)
    )
    if not isinstance(dm, VideoDataModule):
        raise UserError(
            "prepare-video needs a video data set (dataset=ucf101, hmdb51, kinetics400, "
            f"video_folder or moving_shapes); dataset._target_ builds {type(dm).__name__}"
        )
    report = dm.prepare()
    log.info(
        "%s: %d videos ready (%d prepared now, %d already cached), %d left out, %.1f s; "
        "manifest %s",
        dm.name,
        len(report.records),
        report.prepared,
        report.reused,
        len(report.failures),
        report.seconds,
        dm.cache.root / "manifest.json",
    )
    return report


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def _main(cfg: DictConfig) -> None:
    try:
        prepare_dataset(cfg.dataset)
    except UserError as exc:
        # as ``train`` reports it: one line on stderr, exit status 2, no traceback
        print(f"brisk: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT)


def main() -> None:
    """Console entry point (``prepare-video``)."""
    _main()


if __name__ == "__main__":
    main()
