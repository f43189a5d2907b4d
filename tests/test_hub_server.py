"""The local Hub server (tests/hub_server.py) against the real `huggingface_hub`, `timm` and `transformers` clients."""

from __future__ import annotations

import json
import os
from pathlib import Path

import hub_server as hub_server_module
import huggingface_hub
import pytest
import timm
import torch
import transformers
from hub_server import HubServer
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import get_session, httpx
from safetensors.torch import save_file
from timm.models import save_for_hf

hub_server = hub_server_module.hub_server  # the fixture, used by its name below


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    """config.json, a ~2 MB model.safetensors and a README.md."""
    folder = tmp_path / "model"
    folder.mkdir()
    torch.manual_seed(0)
    save_file({"weight": torch.randn(512, 1024)}, folder / "model.safetensors")
    return write_folder(folder, {
        "config.json": json.dumps({"model_type": "tiny", "hidden_size": 8}).encode(),
        "README.md": b"---\nlicense: mit\n---\n# Tiny\n",
    })  # fmt: skip


def assert_same_files(expected: Path, actual: Path) -> None:
    for path in expected.rglob("*"):
        if path.is_file():
            assert (actual / path.relative_to(expected)).read_bytes() == path.read_bytes(), path


def test_fixture_puts_the_client_online_against_the_server(hub_server: HubServer):
    assert not huggingface_hub.is_offline_mode()
    assert constants.ENDPOINT == hub_server.endpoint == os.environ["HF_ENDPOINT"]
    assert hub_server.endpoint.startswith("http://127.0.0.1:")
    assert HfApi().whoami()["name"] == "tester"
    with pytest.raises(HfHubHTTPError) as error:
        HfApi().whoami(token="not_a_hub_token")
    assert error.value.response.status_code == 401


def test_model_repo_upload_and_download(hub_server: HubServer, model_folder: Path, tmp_path: Path):
    api = HfApi()
    url = api.create_repo("tester/tiny", private=True, exist_ok=True)
    assert url.repo_id == "tester/tiny"
    assert url == f"{hub_server.endpoint}/tester/tiny"
    assert (model_folder / "model.safetensors").stat().st_size > 2_000_000
    commit = api.upload_folder(repo_id="tester/tiny", folder_path=model_folder, commit_message="Add the model")
    assert commit.oid == hub_server.commit_sha("tester/tiny")
    assert hub_server.read_file("tester/tiny", "model.safetensors") == (model_folder / "model.safetensors").read_bytes()

    for name in ("config.json", "model.safetensors", "README.md"):
        path = hf_hub_download("tester/tiny", name, cache_dir=tmp_path / "cache")
        assert Path(path).read_bytes() == (model_folder / name).read_bytes()
        assert f"snapshots/{commit.oid}/" in Path(path).as_posix()
    snapshot = snapshot_download("tester/tiny", cache_dir=tmp_path / "snapshot_cache")
    assert_same_files(model_folder, Path(snapshot))

    info = api.model_info("tester/tiny", files_metadata=True)
    assert info.sha == commit.oid
    assert info.private
    sizes = {sibling.rfilename: sibling.size for sibling in info.siblings or []}
    assert sizes == {
        ".gitattributes": len(hub_server.read_file("tester/tiny", ".gitattributes")),
        **{path.name: path.stat().st_size for path in model_folder.iterdir()},
    }
    assert api.list_repo_files("tester/tiny") == sorted(sizes)
    assert api.list_repo_commits("tester/tiny")[0].title == "Add the model"

    # The same folder again: nothing changed, so no new commit, as on the Hub.
    assert api.upload_folder(repo_id="tester/tiny", folder_path=model_folder).oid == commit.oid


def test_dataset_and_space_repos(hub_server: HubServer, tmp_path: Path):
    api = HfApi()
    folder = write_folder(tmp_path / "dataset", {
        "data/train-00000-of-00001.csv": b"x,label\n1,0\n2,1\n",
        "data/test-00000-of-00001.csv": b"x,label\n3,0\n",
        "README.md": b"---\nlicense: cc-by-4.0\n---\n# Data\n",
    })  # fmt: skip
    api.create_repo("tester/data", repo_type="dataset", exist_ok=True)
    commit = api.upload_folder(repo_id="tester/data", repo_type="dataset", folder_path=folder)

    path = hf_hub_download("tester/data", "data/test-00000-of-00001.csv", repo_type="dataset", cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == b"x,label\n3,0\n"
    snapshot = snapshot_download("tester/data", repo_type="dataset", cache_dir=tmp_path / "c")
    assert_same_files(folder, Path(snapshot))
    info = api.dataset_info("tester/data")
    assert info.sha == commit.oid
    assert {sibling.rfilename for sibling in info.siblings or []} >= {"README.md", "data/test-00000-of-00001.csv"}
    assert [entry.path for entry in api.list_repo_tree("tester/data", repo_type="dataset", path_in_repo="data")] == [
        "data/test-00000-of-00001.csv",
        "data/train-00000-of-00001.csv",
    ]
    with pytest.raises(RepositoryNotFoundError):  # same id, other type
        api.model_info("tester/data")

    api.create_repo("tester/demo", repo_type="space", space_sdk="gradio", exist_ok=True)
    api.upload_file(path_or_fileobj=b"print('hi')\n", path_in_repo="app.py", repo_id="tester/demo", repo_type="space")
    assert api.space_info("tester/demo").sdk == "gradio"
    path = hf_hub_download("tester/demo", "app.py", repo_type="space", cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == b"print('hi')\n"


def test_create_repo_on_an_existing_repo(hub_server: HubServer):
    api = HfApi()
    first = api.create_repo("tester/again")
    assert api.create_repo("tester/again", exist_ok=True) == first
    with pytest.raises(HfHubHTTPError) as error:
        api.create_repo("tester/again")
    assert error.value.response.status_code == 409


def test_missing_repo_revision_and_file(hub_server: HubServer, tmp_path: Path):
    api = HfApi()
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("tester/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("tester/missing", "config.json", cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("tester/missing", cache_dir=tmp_path)
    api.create_repo("tester/present")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("tester/present", "config.json", cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("tester/present", ".gitattributes", revision="nope", cache_dir=tmp_path)
    assert not api.file_exists("tester/present", "config.json")
    assert api.repo_exists("tester/present")
    assert not api.repo_exists("tester/missing")


def test_commits_are_real(hub_server: HubServer, tmp_path: Path):
    api = HfApi()
    api.create_repo("tester/history")
    first = api.upload_file(path_or_fileobj=b"one", path_in_repo="a/file.txt", repo_id="tester/history")
    second = api.upload_file(path_or_fileobj=b"two", path_in_repo="a/file.txt", repo_id="tester/history")
    assert first.oid != second.oid
    old = hf_hub_download("tester/history", "a/file.txt", revision=first.oid, cache_dir=tmp_path)
    new = hf_hub_download("tester/history", "a/file.txt", cache_dir=tmp_path)
    assert (Path(old).read_bytes(), Path(new).read_bytes()) == (b"one", b"two")
    assert [c.commit_id for c in api.list_repo_commits("tester/history")][:2] == [second.oid, first.oid]

    with pytest.raises(HfHubHTTPError) as error:  # parent_commit is checked
        api.upload_file(path_or_fileobj=b"x", path_in_repo="b.txt", repo_id="tester/history", parent_commit=first.oid)
    assert error.value.response.status_code == 412
    pr = api.upload_file(path_or_fileobj=b"pr", path_in_repo="a/file.txt", repo_id="tester/history", create_pr=True)
    assert pr.pr_revision == "refs/pr/1"
    pr_file = hf_hub_download("tester/history", "a/file.txt", revision="refs/pr/1", cache_dir=tmp_path)
    assert Path(pr_file).read_bytes() == hub_server.read_file("tester/history", "a/file.txt", "model", "refs/pr/1")
    assert Path(pr_file).read_bytes() == b"pr"
    assert hub_server.read_file("tester/history", "a/file.txt") == b"two"
    api.create_branch("tester/history", branch="v1", revision=first.oid)
    assert [ref.name for ref in api.list_repo_refs("tester/history").branches] == ["main", "v1"]
    assert hub_server.commit_sha("tester/history", revision="v1") == first.oid
    api.delete_file("a/file.txt", repo_id="tester/history")
    assert hub_server.list_files("tester/history") == [".gitattributes"]

    # Resumed downloads send a Range header.
    url = f"{hub_server.endpoint}/tester/history/resolve/{second.oid}/a/file.txt"
    response = get_session().get(url, headers={"Range": "bytes=1-"})
    assert (response.status_code, response.content, response.headers["Content-Range"]) == (206, b"wo", "bytes 1-2/3")


def test_pipelined_upload_with_xet_enabled(hub_server: HubServer, model_folder: Path, monkeypatch):
    """With hf_xet installed and not disabled, upload_folder takes another path; regular files still go through."""
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    HfApi().create_repo("tester/xet")
    commit = HfApi().upload_folder(repo_id="tester/xet", folder_path=model_folder)
    assert hub_server.commit_sha("tester/xet") == commit.oid
    assert hub_server.read_file("tester/xet", "model.safetensors") == (model_folder / "model.safetensors").read_bytes()


def test_fail_next_answers_500_then_recovers(hub_server: HubServer):
    api = HfApi()
    hub_server.fail_next(2)
    errors = []
    for _ in range(3):  # the caller's own retry loop: create_repo itself does not retry
        try:
            api.create_repo("tester/flaky")
            break
        except HfHubHTTPError as error:
            errors.append(error.response.status_code)
    assert errors == [500, 500]
    assert api.repo_exists("tester/flaky")
    assert [entry for entry in hub_server.requests_log if entry[0] == "POST"] == [
        ("POST", "/api/repos/create", 500),
        ("POST", "/api/repos/create", 500),
        ("POST", "/api/repos/create", 200),
    ]


def test_drop_next_is_a_connection_error(hub_server: HubServer):
    api = HfApi()
    hub_server.drop_next(1)
    with pytest.raises(httpx.TransportError):
        api.create_repo("tester/dropped")
    assert not api.repo_exists("tester/dropped")  # GETs are never dropped, and the dropped POST changed nothing
    api.create_repo("tester/dropped")
    assert api.repo_exists("tester/dropped")
    assert hub_server.requests_log[0] == ("POST", "/api/repos/create", 0)


def test_timm_and_transformers_load_from_the_server(hub_server: HubServer, tmp_path: Path):
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet")
    save_for_hf(model, tmp_path / "tiny", safe_serialization=True)
    config_path = tmp_path / "tiny" / "config.json"
    config = json.loads(config_path.read_text())
    del config["model_args"]["num_classes"]  # transformers' TimmWrapperConfig gets num_classes twice otherwise
    config_path.write_text(json.dumps(config))
    HfApi().create_repo("tester/tiny")
    HfApi().upload_folder(repo_id="tester/tiny", folder_path=tmp_path / "tiny")
    expected = model.state_dict()

    loaded = timm.create_model("hf-hub:tester/tiny", pretrained=True)
    assert all(torch.equal(tensor, expected[name]) for name, tensor in loaded.state_dict().items())
    wrapped = transformers.AutoModelForImageClassification.from_pretrained("tester/tiny")
    assert all(torch.equal(tensor, expected[name]) for name, tensor in wrapped.timm_model.state_dict().items())
    assert wrapped.config.num_labels == 1000
    assert ("GET", "/tester/tiny/resolve/main/model.safetensors", 200) in hub_server.requests_log
