"""The run's text log, ``train.log``, kept in the run's own directory.

Hydra opens the log file in the folder it made for this invocation before brisk decides where the
run lives. When ``resume=auto`` continues an earlier run in that run's directory, the folder Hydra
made would be left holding only this attempt's log and Hydra's ``.hydra`` record. :func:`follow_run`
moves the log into the continued run's ``train.log`` (appending what was logged so far, so no line
is lost) and removes that folder when it holds nothing else.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("brisk")

# What an attempt writes into the folder Hydra made before it knows where the run lives (besides
# the log file): the Hydra record, and the lock it takes before writing that record.
_HYDRA_RECORD = ".hydra"
_LOCK = ".lock"


def follow_run(started_in: Path, run_dir: Path) -> None:
    """Point the log files opened in ``started_in`` at ``run_dir``; remove ``started_in`` when
    Hydra made it for this invocation alone (a single run, holding nothing but its record).

    Nothing happens when the two are the same folder, or outside a Hydra single run (a sweep job's
    folder stays: the sweep's summary reads it).
    """
    if started_in.resolve() == run_dir.resolve() or not _single_hydra_run():
        return
    moved = [h for h in _file_handlers() if Path(h.baseFilename).parent == started_in.resolve()]
    for handler in moved:
        _reopen(handler, run_dir / Path(handler.baseFilename).name)
    if moved and _only_hydra_record(started_in):
        shutil.rmtree(started_in / _HYDRA_RECORD, ignore_errors=True)
        (started_in / _LOCK).unlink(missing_ok=True)  # held until exit: its inode outlives the name
        try:
            started_in.rmdir()
        except OSError:  # another rank's log is still there, or something appeared meanwhile
            return
        log.info(
            "this attempt's log continues in %s (the folder %s is removed)", run_dir, started_in
        )


def _single_hydra_run() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.RUN


def _file_handlers() -> list[logging.FileHandler]:
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    handlers = {
        id(h): h
        for logger in loggers
        if isinstance(logger, logging.Logger)
        for h in logger.handlers
        if isinstance(h, logging.FileHandler)
    }
    return list(handlers.values())


def _reopen(handler: logging.FileHandler, target: Path) -> None:
    """Append what ``handler`` wrote so far to ``target``, then write there from now on."""
    handler.acquire()
    try:
        handler.close()
        old = Path(handler.baseFilename)
        target.parent.mkdir(parents=True, exist_ok=True)
        if old.is_file():
            with old.open("rb") as src, target.open("ab") as dst:
                shutil.copyfileobj(src, dst)
            old.unlink()
        handler.baseFilename = os.path.abspath(target)
        handler.mode = "a"
        if not handler.delay:
            handler.stream = handler._open()
    finally:
        handler.release()


def _only_hydra_record(folder: Path) -> bool:
    entries = [e for e in folder.iterdir() if not (e.name == _LOCK and e.is_file())]
    return all(e.name == _HYDRA_RECORD and e.is_dir() for e in entries) and all(
        f.suffix == ".yaml" for e in entries for f in e.iterdir()
    )
