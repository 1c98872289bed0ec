"""The Hydra config tree (``brisk.conf``), a package so that a wheel ships it.

Hydra imports this package to read the tree, so the schemas that YAML files here extend and that
belong to a feature package (the video data sets') are registered here: ``brisk.config`` stays
free of imports from the feature packages.
"""

from brisk.video.settings import register_video_schemas

register_video_schemas()
