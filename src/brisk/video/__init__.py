"""Compressed-domain video: re-encoding, GOP reading (motion vectors, residuals), data, cache.

Modules: :mod:`~brisk.video.codec` (re-encode to MPEG-4 Part 2), :mod:`~brisk.video.motion`
(vectorised motion compensation), :mod:`~brisk.video.reader` (GOP reader), :mod:`~brisk.video.cache`
(preparation, manifest, clip store), :mod:`~brisk.video.clips` (crops, flips, normalisation),
:mod:`~brisk.video.datamodule` and :mod:`~brisk.video.datasets` (the ``dataset=`` options),
:mod:`~brisk.video.splits` (split-file parsers), :mod:`~brisk.video.synthetic` (``moving_shapes``),
:mod:`~brisk.video.prepare` (the ``prepare-video`` command).
"""
