"""Data frames for the app's native Gradio plots (the figures themselves are in
`evaluation.plots`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def probe_frame(rows: Sequence[Mapping[str, Any]] | None) -> Any:
    """The interpolation probe's curve in long form for `gr.LinePlot`: columns ``alpha``,
    ``value`` and ``curve`` ("loss", "straight line" and the accuracy when present).
    `None` when there is no curve."""
    if not rows:
        return None
    import pandas as pd

    records = []
    for row in rows:
        records.append({"alpha": row["alpha"], "value": row["loss"], "curve": "loss"})
        records.append({"alpha": row["alpha"], "value": row["linear_loss"],
                        "curve": "straight line between the ends"})  # fmt: skip
        if row.get("accuracy") is not None:
            records.append({"alpha": row["alpha"], "value": row["accuracy"],
                            "curve": "accuracy"})  # fmt: skip
    return pd.DataFrame.from_records(records)
