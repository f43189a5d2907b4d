"""Create (or update) the Gradio Space and upload the demo, with the medft_hf package it imports.

    python scripts/push_space.py you/medft-demo [--space spaces/medft-demo] [--private]

The token comes from HF_TOKEN or `hf auth login`; it is never printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi

from medft_hf.errors import exit_on_error
from medft_hf.hub import check_push_ready

ROOT = Path(__file__).resolve().parents[1]


def space_files(space: Path) -> list[CommitOperationAdd]:
    """The Space folder itself, plus the package (without caches) so that `import medft_hf` works there."""
    files = [p for p in space.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyi"]
    package = [p for p in (ROOT / "medft_hf").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    hub_configs = [p for p in (ROOT / "hub_configs").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    operations = [CommitOperationAdd(str(p.relative_to(space)), str(p)) for p in files]
    operations += [CommitOperationAdd(str(p.relative_to(ROOT)), str(p)) for p in package]
    # medft_hf reads its YAML defaults from the `medft_hf.hub_configs` package: ship it at that path.
    operations += [CommitOperationAdd(f"medft_hf/hub_configs/{p.relative_to(ROOT / 'hub_configs')}", str(p))
                   for p in hub_configs]  # fmt: skip
    return operations


def push_space(repo_id: str, space: Path, private: bool | None = None) -> str:
    check_push_ready(repo_id)
    api = HfApi()
    api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    commit = api.create_commit(repo_id=repo_id, repo_type="space", operations=space_files(space),
                               commit_message="Update the medft-hf demo")  # fmt: skip
    return commit.commit_url


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo_id")
    parser.add_argument("--space", default=str(ROOT / "spaces" / "medft-demo"))
    parser.add_argument("--private", action="store_true", default=None)
    args = parser.parse_args(argv)
    with exit_on_error():
        print(f"pushed: {push_space(args.repo_id, Path(args.space), args.private)}")


if __name__ == "__main__":
    main()
