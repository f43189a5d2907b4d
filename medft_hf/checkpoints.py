"""Resuming: find the checkpoint to resume from, make sure it belongs to this run, restore the strategy's state.

Every checkpoint gets `medft_state.json` (the run's identity and the strategy's own state) after the Trainer has
written everything else into it, so its presence marks a complete checkpoint: a folder left half-written by a
kill has none and is skipped. The Trainer itself restores weights, optimizer, scheduler, RNG and data position.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from .errors import MedftError
from .results import write_json_atomic

STATE_FILE = "medft_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
logger = logging.getLogger(__name__)


def write_checkpoint_state(checkpoint: str | Path, identity: dict[str, Any], state: dict[str, Any]) -> None:
    write_json_atomic(Path(checkpoint) / STATE_FILE, {"identity": identity, **state})


def resolve_checkpoint(requested: str | None, output_dir: str | Path) -> Path | None:
    """`--resume_from_checkpoint`: None/false (start afresh), true/latest (the newest complete checkpoint in
    `output_dir`) or a path to one checkpoint folder."""
    if requested is None or requested.lower() in ("", "false", "none"):
        return None
    if requested.lower() in ("true", "latest"):
        found = latest_complete_checkpoint(output_dir)
        if found is None:
            raise MedftError(
                f"--resume_from_checkpoint true: no complete checkpoint in {output_dir}. Start without "
                "--resume_from_checkpoint, or point it at a checkpoint folder."
            )
        return found
    path = Path(requested)
    if not path.is_dir():
        raise MedftError(f"--resume_from_checkpoint {requested}: no such folder.")
    if not (path / STATE_FILE).is_file():
        raise MedftError(
            f"--resume_from_checkpoint {requested}: not a complete checkpoint of this tool (no {STATE_FILE}); "
            "it may have been cut off while saving. Use an earlier checkpoint or --resume_from_checkpoint true."
        )
    return path


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint in `output_dir` that was completely written; half-written ones are skipped."""
    found = sorted(
        (path for path in Path(output_dir).glob("checkpoint-*") if _CHECKPOINT.match(path.name)),
        key=lambda path: int(_CHECKPOINT.match(path.name)[1]),
        reverse=True,
    )
    for path in found:
        if (path / STATE_FILE).is_file():
            return path
        logger.warning("Skipping %s: it was not completely written (a kill during the save?).", path)
    return None


def _differs(saved: Any, value: Any) -> bool:
    """A group of settings (a dict) differs in a key both record; any other value, as a whole."""
    if isinstance(saved, dict) and isinstance(value, dict):
        return any(key in saved and _differs(saved[key], item) for key, item in value.items())
    return saved != value


def load_checkpoint_state(checkpoint: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's saved state, after checking that it was made by the same run: `identity` holds the data,
    the model and every setting that shapes training (resuming with another --sp_alpha, --seed or epoch count would
    silently splice two runs). A key the checkpoint does not record, at any depth (it predates the key), is not
    checked."""
    saved = json.loads((checkpoint / STATE_FILE).read_text())
    mismatches = [
        f"{name}: checkpoint {saved['identity'][name]!r}, this run {value!r}"
        for name, value in identity.items()
        if name in saved["identity"] and _differs(saved["identity"][name], value)
    ]
    if mismatches:
        raise MedftError(
            f"--resume_from_checkpoint {checkpoint} was made by a different run ({'; '.join(mismatches)}). "
            "Resume with the same flags, or start a new --output_dir."
        )
    return saved
