"""What a spec needs from the network, fetched once, before anything else runs.

A dataset by name and timm's pretrained weights are downloaded the first time a spec uses them,
into caches shared by every study on the machine, so that `autocnn study` works from a fresh
clone; offline, the same call fails in seconds with a message naming what is missing and how to
bring it. Trials never download.
"""

from __future__ import annotations

from typing import Any

from autocnn.spec.schema import NAMED_SOURCES, Spec


def fetch_on_first_use(spec: Spec, reporter: Any = None) -> None:
    """Download the spec's dataset by name and its missing pretrained weights, if any.

    `reporter` hears a line per download (`message`) and, when it has one, draws a progress bar
    (`download_progress(what, done_bytes, total_bytes)`); without one nothing is shown.
    """
    say = getattr(reporter, "message", None)
    progress = getattr(reporter, "download_progress", None)
    if spec.data.source in NAMED_SOURCES:
        from autocnn.data.named import fetch_dataset

        fetch_dataset(spec.data.source, say=say, progress=progress)
    if spec.models.backbones():
        from autocnn.models.hub import fetch_missing_weights

        fetch_missing_weights(spec.models, say=say, progress=progress)
