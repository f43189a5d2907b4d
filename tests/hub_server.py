"""A small Hugging Face Hub-compatible HTTP server for the tests (standard library only, plus the pytest fixture).

It implements the part of the Hub API that the real `huggingface_hub` client (2.x) uses to create repos, commit files
and download them again, for model, dataset and space repos:

- ``GET  /api/whoami-v2``: any bearer token starting with ``hf_`` is the user ``tester``; anything else is a 401.
- ``POST /api/repos/create`` (409 with the repo url when it exists, so ``exist_ok=True`` works),
  ``DELETE /api/repos/delete``, ``POST /api/validate-yaml`` (always valid), ``GET /api/agent-harnesses`` (empty).
- ``GET  /api/{models,datasets,spaces}/{repo_id}[/revision/{rev}]``: repo info with ``sha`` and ``siblings``.
- ``GET  /api/{type}s/{repo_id}/tree/{rev}[/{path}]`` (``recursive``, ``expand``),
  ``POST /api/{type}s/{repo_id}/paths-info/{rev}``, ``GET .../refs``, ``GET .../commits/{rev}``,
  ``POST .../branch/{branch}``.
- ``POST /api/{type}s/{repo_id}/preupload/{rev}``: every file is a "regular" upload (no LFS, no Xet), with the
  ``oid`` of the file already on the Hub so unchanged files are skipped like on the real Hub.
- ``POST /api/{type}s/{repo_id}/commit/{rev}`` (ndjson: header, base64 ``file``, ``deletedFile``,
  ``deletedFolder``; ``create_pr=1`` opens ``refs/pr/N``; ``parentCommit`` is checked).
- ``GET``/``HEAD`` ``/[datasets/|spaces/]{repo_id}/resolve/{rev}/{path}`` with ``ETag`` (git blob sha1),
  ``X-Repo-Commit``, ``Content-Length``, ``Accept-Ranges`` and single ``Range`` requests.

Errors carry the ``X-Error-Code`` the client maps to its exceptions (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``). Commits are real: every repo keeps its refs and its commits (sha, parent, message, file tree);
file contents live on disk, content-addressed by git blob sha1, under ``root``. Like the Hub, a new repo starts with
one commit holding a ``.gitattributes`` file. Repo ids must be ``namespace/name``.

Fault injection: ``fail_next(n, status)`` answers the next ``n`` mutating requests (POST, PUT, PATCH, DELETE) with
``status``; ``drop_next(n)`` reads them and closes the connection without answering. Every request is recorded in
``requests_log`` as ``(method, path, status)``; a dropped request has status 0.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
import json
import os
import sys
import tempfile
import threading
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

USER = "tester"
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DROP = 0  # the "status" of a dropped request, in `HubServer.requests_log`
GITATTRIBUTES = b"""*.bin filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
"""


def git_blob_oid(data: bytes) -> str:
    """The git object id of a file's content (what the Hub uses as ETag and blob id of non-LFS files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _repo_object_id(repo_id: str) -> str:
    return hashlib.sha1(repo_id.encode()).hexdigest()[:24]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class HubError(Exception):
    """An error answered as JSON ``{"error": message}`` with the Hub's ``X-Error-Code``/``X-Error-Message``."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {}), **(headers or {})}


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, str]  # path in repo -> git blob oid


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    sdk: str | None
    created_at: str
    refs: dict[str, str] = field(default_factory=dict)  # "main", other branches, "refs/pr/N" -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)
    pr_count: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Repo:
        commits = {oid: Commit(**commit) for oid, commit in data.pop("commits").items()}
        return cls(**data, commits=commits)

    def resolve(self, revision: str) -> str:
        """The commit oid of a branch, a ``refs/pr/N`` ref or a full commit sha."""
        if revision in self.refs:
            return self.refs[revision]
        if revision in self.commits:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def url(self, endpoint: str) -> str:
        return f"{endpoint}/{URL_PREFIXES[self.repo_type]}{self.repo_id}"


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return cls(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubServer


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.0"  # one request per connection: no stale keep-alive connections across tests

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self, method: str) -> None:
        hub = self.server.hub
        url = urlsplit(self.path)
        body = self._read_body()  # read it all, even when dropping: unread data would turn the close into a reset
        fault = hub._take_fault(method)
        if fault == DROP:
            hub._record(method, url.path, DROP)
            self.close_connection = True
            return
        try:
            if fault is not None:
                raise HubError(fault, f"Injected failure (HTTP {fault})")
            headers = {name.lower(): value for name, value in self.headers.items()}
            response = hub._dispatch(method, url.path, parse_qs(url.query), headers, body)
        except HubError as error:
            response = Response.of({"error": error.message}, error.status, error.headers)
        except Exception as error:  # a bug in this server: answer 500 with the traceback, like a crashed Hub would
            print(traceback.format_exc(), file=sys.stderr)
            response = Response.of({"error": f"{type(error).__name__}: {error}"}, 500)
        hub._record(method, url.path, response.status)
        self.send_response(response.status)
        headers = {"Content-Type": "application/octet-stream", **response.headers}
        headers.setdefault("Content-Length", str(len(response.body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(response.body)


class HubServer:
    """A Hub-compatible server on ``127.0.0.1`` (free port) whose repos live under ``root``.

    Use it as a context manager (or call ``start``/``stop``). ``root`` defaults to a temporary folder deleted on
    ``stop``; a given ``root`` is kept, and the repos already in it are loaded again.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="hub_server_")
            root = self._tmp.name
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.requests_log: list[tuple[str, str, int]] = []
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], Repo] = {}
        self._failures: list[int] = []
        self._drops = 0
        self._counter = itertools.count()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        for path in sorted(self.root.glob("*s/*/*/repo.json")):
            repo = Repo.from_json(json.loads(path.read_text()))
            self._repos[(repo.repo_type, repo.repo_id)] = repo

    # -- lifecycle -------------------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        if self._httpd is None:
            raise RuntimeError("HubServer is not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> HubServer:
        if self._httpd is None:
            self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
            self._httpd.hub = self
            serve = functools.partial(self._httpd.serve_forever, poll_interval=0.02)  # quick to stop
            self._thread = threading.Thread(target=serve, name="hub-server", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._httpd = self._thread = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- fault injection and inspection ----------------------------------------------------------------------------

    def fail_next(self, n: int, status: int = 500) -> None:
        """Answer the next ``n`` mutating requests (POST/PUT/PATCH/DELETE) with ``status`` and change nothing."""
        with self._lock:
            self._failures.extend([status] * n)

    def drop_next(self, n: int) -> None:
        """Close the connection of the next ``n`` mutating requests without any response (a network failure)."""
        with self._lock:
            self._drops += n

    def _take_fault(self, method: str) -> int | None:
        """The injected fault for this request: ``DROP``, an HTTP status, or None."""
        if method not in MUTATING_METHODS:
            return None
        with self._lock:
            if self._drops:
                self._drops -= 1
                return DROP
            return self._failures.pop(0) if self._failures else None

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests_log.append((method, unquote(path), status))

    def list_files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> list[str]:
        """The paths in a repo at a revision (read straight from the server's state)."""
        repo = self._repo(repo_type, repo_id)
        return sorted(repo.commits[repo.resolve(revision)].files)

    def read_file(self, repo_id: str, path: str, repo_type: str = "model", revision: str = "main") -> bytes:
        """The content of a file in a repo at a revision."""
        repo = self._repo(repo_type, repo_id)
        return self._blob_path(repo.commits[repo.resolve(revision)].files[path]).read_bytes()

    def commit_sha(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> str:
        """The commit sha a revision points at."""
        return self._repo(repo_type, repo_id).resolve(revision)

    # -- storage ---------------------------------------------------------------------------------------------------

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound")
        return repo

    def _blob_path(self, oid: str) -> Path:
        return self.root / "blobs" / oid

    def _store_blob(self, data: bytes) -> str:
        oid = git_blob_oid(data)
        path = self._blob_path(oid)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{oid}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return oid

    def _save(self, repo: Repo) -> None:
        path = self.root / f"{repo.repo_type}s" / repo.repo_id / "repo.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(repo), indent=1))

    def _new_commit(self, repo: Repo, parent: str | None, title: str, message: str, files: dict[str, str]) -> str:
        seed = json.dumps([repo.repo_type, repo.repo_id, parent, title, message, files, next(self._counter), _now()])
        oid = hashlib.sha1(seed.encode()).hexdigest()
        repo.commits[oid] = Commit(oid, parent, title, message, _now(), files)
        return oid

    # -- routing ---------------------------------------------------------------------------------------------------

    def _dispatch(
        self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes
    ) -> Response:
        """Answer one request; ``headers`` has lower-case names."""
        user = self._user(headers.get("authorization"))
        parts = [unquote(part) for part in path.strip("/").split("/")]
        if parts[:1] == ["api"]:
            return self._dispatch_api(method, parts[1:], query, user, body)
        if method in ("GET", "HEAD"):
            repo_type = {"datasets": "dataset", "spaces": "space"}.get(parts[0], "model")
            rest = parts if repo_type == "model" else parts[1:]
            if len(rest) >= 5 and rest[2] == "resolve":
                repo = self._readable(repo_type, f"{rest[0]}/{rest[1]}", user)
                return self._resolve_file(repo, rest[3], "/".join(rest[4:]), method == "GET", headers.get("range"))
        raise HubError(404, f"Not found: {method} {path}")

    def _dispatch_api(
        self,
        method: str,
        parts: list[str],
        query: dict[str, list[str]],
        user: str | None,
        body: bytes,
    ) -> Response:
        route = (method, "/".join(parts[:2]))
        if route == ("GET", "whoami-v2"):
            if user is None:
                raise HubError(401, "Invalid credentials in Authorization header")
            auth = {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}
            return Response.of({"type": "user", "id": "0" * 24, "name": user, "orgs": [], "auth": auth})
        if route == ("POST", "repos/create"):
            return self._create_repo(self._writer(user), json.loads(body or b"{}"))
        if route == ("DELETE", "repos/delete"):
            return self._delete_repo(self._writer(user), json.loads(body or b"{}"))
        if route == ("POST", "validate-yaml"):
            return Response.of({"errors": [], "warnings": []})
        if route == ("GET", "agent-harnesses"):
            return Response.of({"standardEnvVars": [], "harnesses": {}})
        if len(parts) < 3 or parts[0] not in REPO_TYPES:
            raise HubError(404, f"Not found: {method} /api/{'/'.join(parts)}")
        repo_type, repo_id, action, args = REPO_TYPES[parts[0]], f"{parts[1]}/{parts[2]}", parts[3:4], parts[4:]
        blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
        if method == "GET" and not action:
            return self._info(self._readable(repo_type, repo_id, user), "main", blobs, query.get("expand"))
        if method == "GET" and action == ["revision"] and args:
            return self._info(self._readable(repo_type, repo_id, user), "/".join(args), blobs, query.get("expand"))
        if method == "GET" and action == ["tree"] and args:
            recursive, expand = (query.get(key, ["false"])[0].lower() == "true" for key in ("recursive", "expand"))
            repo = self._readable(repo_type, repo_id, user)
            return Response.of(self._tree(repo, args[0], "/".join(args[1:]), recursive, expand))
        if method == "POST" and action == ["paths-info"] and args:
            form = parse_qs(body.decode())
            expand = form.get("expand", ["False"])[0].lower() == "true"
            return Response.of(self._paths_info(self._readable(repo_type, repo_id, user), args[0], form, expand))
        if method == "GET" and action == ["refs"]:
            return self._refs(self._readable(repo_type, repo_id, user))
        if method == "GET" and action == ["commits"] and args:
            return self._commits(self._readable(repo_type, repo_id, user), "/".join(args))
        if method == "POST" and action == ["preupload"] and args:
            repo = self._writable(repo_type, repo_id, user)
            return self._preupload(repo, args[0], json.loads(body or b"{}"))
        if method == "POST" and action == ["commit"] and args:
            repo = self._writable(repo_type, repo_id, user)
            return self._commit(repo, "/".join(args), body, query.get("create_pr", ["0"])[0] == "1")
        if method == "POST" and action == ["branch"] and args:
            payload = json.loads(body or b"{}")
            return self._create_branch(self._writable(repo_type, repo_id, user), "/".join(args), payload)
        raise HubError(404, f"Not found: {method} /api/{'/'.join(parts)}")

    # -- auth ------------------------------------------------------------------------------------------------------

    @staticmethod
    def _user(authorization: str | None) -> str | None:
        token = (authorization or "").removeprefix("Bearer ").strip()
        return USER if token.startswith("hf_") else None

    @staticmethod
    def _writer(user: str | None) -> str:
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def _readable(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        repo = self._repo(repo_type, repo_id)
        if repo.private and user is None:
            raise HubError(401, "Repository not found", "RepoNotFound")
        return repo

    def _writable(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        self._writer(user)
        return self._readable(repo_type, repo_id, user)

    # -- repos -----------------------------------------------------------------------------------------------------

    def _create_repo(self, user: str, payload: dict[str, Any]) -> Response:
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"Invalid repo type: {repo_type}")
        if repo_type == "space" and not payload.get("sdk"):
            raise HubError(400, "Spaces need an sdk")
        repo_id = f"{payload.get('organization') or user}/{payload['name']}"
        with self._lock:
            existing = self._repos.get((repo_type, repo_id))
            if existing is not None:
                body = {"error": "You already created this repo", "url": existing.url(self.endpoint)}
                return Response.of(body, 409, {"X-Error-Message": "You already created this repo"})
            private = payload.get("visibility", "public") == "private" or bool(payload.get("private"))
            repo = Repo(repo_type, repo_id, private, payload.get("sdk"), _now())
            initial = {".gitattributes": self._store_blob(GITATTRIBUTES)}
            repo.refs["main"] = self._new_commit(repo, None, "initial commit", "", initial)
            self._repos[(repo_type, repo_id)] = repo
            self._save(repo)
        return Response.of({"url": repo.url(self.endpoint), "name": repo_id, "id": _repo_object_id(repo_id)})

    def _delete_repo(self, user: str, payload: dict[str, Any]) -> Response:
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or user}/{payload['name']}"
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            del self._repos[(repo_type, repo_id)]
            (self.root / f"{repo.repo_type}s" / repo.repo_id / "repo.json").unlink(missing_ok=True)
        return Response()

    def _info(self, repo: Repo, revision: str, blobs: bool, expand: list[str] | None) -> Response:
        oid = repo.resolve(revision)
        commit = repo.commits[oid]
        sizes = {path: self._blob_path(blob).stat().st_size for path, blob in commit.files.items()}
        siblings = [
            {"rfilename": path, **({"size": sizes[path], "blobId": blob} if blobs else {})}
            for path, blob in sorted(commit.files.items())
        ]
        author = repo.repo_id.split("/")[0]
        data: dict[str, Any] = {
            "_id": _repo_object_id(repo.repo_id),
            "id": repo.repo_id,
            "author": author,
            "sha": oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(sizes.values()),
        }
        if repo.repo_type == "space":
            data["sdk"] = repo.sdk
        if repo.repo_type == "model" and "config.json" in commit.files:
            try:
                config = json.loads(self._blob_path(commit.files["config.json"]).read_bytes())
                data["config"] = {key: config[key] for key in ("architectures", "model_type") if key in config}
            except (ValueError, TypeError):
                pass
        if expand:
            data = {key: value for key, value in data.items() if key in ("_id", "id", *expand)}
        return Response.of(data)

    def _refs(self, repo: Repo) -> Response:
        with self._lock:
            refs = dict(repo.refs)
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": target}
            for name, target in refs.items()
            if not name.startswith("refs/")
        ]
        prs = [
            {"name": name.rsplit("/", 1)[-1], "ref": name, "targetCommit": target}
            for name, target in refs.items()
            if name.startswith("refs/pr/")
        ]
        return Response.of({"branches": branches, "converts": [], "tags": [], "pullRequests": prs})

    def _commits(self, repo: Repo, revision: str) -> Response:
        items, oid = [], repo.resolve(revision)
        while oid is not None:
            commit = repo.commits[oid]
            authors = [{"user": USER}]
            items.append(
                {"id": oid, "title": commit.title, "message": commit.message, "authors": authors, "date": commit.date}
            )
            oid = commit.parent
        return Response.of(items)

    def _create_branch(self, repo: Repo, branch: str, payload: dict[str, Any]) -> Response:
        with self._lock:
            if branch in repo.refs:
                raise HubError(409, f"Branch {branch} already exists")
            repo.refs[branch] = repo.resolve(payload.get("startingPoint") or "main")
            self._save(repo)
        return Response.of({})

    # -- trees -----------------------------------------------------------------------------------------------------

    def _file_entry(self, path: str, blob: str) -> dict[str, Any]:
        return {"type": "file", "oid": blob, "size": self._blob_path(blob).stat().st_size, "path": path}

    @staticmethod
    def _folder_entry(path: str, files: dict[str, str]) -> dict[str, Any]:
        content = sorted((name, blob) for name, blob in files.items() if name.startswith(path + "/"))
        return {"type": "directory", "oid": hashlib.sha1(json.dumps(content).encode()).hexdigest(), "path": path}

    @staticmethod
    def _last_commit(repo: Repo, oid: str, path: str) -> dict[str, str]:
        def state(commit: Commit) -> Any:
            return commit.files.get(path) or sorted(
                (name, blob) for name, blob in commit.files.items() if name.startswith(path + "/")
            )

        commit = repo.commits[oid]
        while commit.parent is not None and state(repo.commits[commit.parent]) == state(commit):
            commit = repo.commits[commit.parent]
        return {"id": commit.oid, "title": commit.title, "date": commit.date}

    def _tree(self, repo: Repo, revision: str, path: str, recursive: bool, expand: bool) -> list[dict[str, Any]]:
        oid = repo.resolve(revision)
        files = repo.commits[oid].files
        path = path.strip("/")
        prefix = f"{path}/" if path else ""
        folders: set[str] = set()
        entries = []
        for name, blob in sorted(files.items()):
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix) :].split("/")
            depths = range(1, len(parts) if recursive else min(len(parts), 2))  # the folders above this file
            folders.update(prefix + "/".join(parts[:depth]) for depth in depths)
            if recursive or len(parts) == 1:
                entries.append(self._file_entry(name, blob))
        folders.discard(path)
        if path and not entries and not folders:
            raise HubError(404, f"Path {path} does not exist or is not a folder", "EntryNotFound")
        entries = [self._folder_entry(folder, files) for folder in sorted(folders)] + entries
        if expand:
            for entry in entries:
                entry["lastCommit"] = self._last_commit(repo, oid, entry["path"])
        return entries

    def _paths_info(self, repo: Repo, revision: str, form: dict[str, list[str]], expand: bool) -> list[dict[str, Any]]:
        oid = repo.resolve(revision)
        files = repo.commits[oid].files
        entries = []
        for path in (path.strip("/") for path in form.get("paths", [])):
            if path in files:
                entries.append(self._file_entry(path, files[path]))
            elif any(name.startswith(path + "/") for name in files):
                entries.append(self._folder_entry(path, files))
            else:
                continue
            if expand:
                entries[-1]["lastCommit"] = self._last_commit(repo, oid, path)
        return entries

    # -- uploads ---------------------------------------------------------------------------------------------------

    def _preupload(self, repo: Repo, revision: str, payload: dict[str, Any]) -> Response:
        """Every file is a "regular" upload; ``oid`` is the file already there, so unchanged files are skipped."""
        files = repo.commits[repo.resolve(revision)].files
        answers = [
            {"path": item["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": files.get(item["path"])}
            for item in payload.get("files", [])
        ]
        return Response.of({"files": answers, "commitOid": repo.resolve(revision)})

    def _commit(self, repo: Repo, revision: str, body: bytes, create_pr: bool) -> Response:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line of a commit must be its header")
        header = lines[0]["value"]
        additions: dict[str, str] = {}
        for line in lines[1:]:  # store contents first: content-addressed, so harmless if the commit then fails
            if line["key"] == "file":
                value = line["value"]
                raw = value["content"]
                data = base64.b64decode(raw) if value.get("encoding") == "base64" else raw.encode()
                additions[value["path"]] = self._store_blob(data)
            elif line["key"] == "lfsFile":
                raise HubError(400, "This test Hub takes regular uploads only (no LFS or Xet files)")
        with self._lock:
            if create_pr:
                parent = repo.resolve(revision)
                repo.pr_count += 1
                ref = f"refs/pr/{repo.pr_count}"
            elif revision in repo.refs:
                ref, parent = revision, repo.refs[revision]
            else:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            if header.get("parentCommit") not in (None, parent):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(repo.commits[parent].files)
            for line in lines[1:]:
                path = line["value"]["path"].strip("/")
                if line["key"] == "file":
                    files[path] = additions[line["value"]["path"]]
                elif line["key"] == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                elif line["key"] == "deletedFolder":
                    inside = [name for name in files if name.startswith(path + "/")]
                    if not inside:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for name in inside:
                        del files[name]
                else:
                    raise HubError(400, f"Unknown commit operation: {line['key']}")
            oid = self._new_commit(repo, parent, header.get("summary", ""), header.get("description", ""), files)
            repo.refs[ref] = oid
            self._save(repo)
        pr_url = f"{repo.url(self.endpoint)}/discussions/{repo.pr_count}" if create_pr else None
        commit_url = f"{repo.url(self.endpoint)}/commit/{oid}"
        return Response.of({"success": True, "commitOid": oid, "commitUrl": commit_url, "pullRequestUrl": pr_url})

    # -- downloads -------------------------------------------------------------------------------------------------

    def _resolve_file(
        self, repo: Repo, revision: str, path: str, with_body: bool, range_header: str | None
    ) -> Response:
        oid = repo.resolve(revision)
        blob = repo.commits[oid].files.get(path)
        if blob is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": oid})
        data = self._blob_path(blob).read_bytes()
        name = path.rsplit("/", 1)[-1]
        headers = {
            "ETag": f'"{blob}"',
            "X-Repo-Commit": oid,
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\"",
        }
        return self._ranged(data, headers, range_header) if with_body else Response(200, data, headers)

    @staticmethod
    def _ranged(data: bytes, headers: dict[str, str], range_header: str | None) -> Response:
        """A single ``Range: bytes=...`` request answered with 206, as the Hub (and its CDN) do."""
        if not range_header or not range_header.startswith("bytes="):
            return Response(200, data, headers)
        start_text, _, end_text = range_header.removeprefix("bytes=").split(",")[0].partition("-")
        if not start_text:  # suffix range: the last N bytes
            start, end = max(len(data) - int(end_text), 0), len(data) - 1
        else:
            start, end = int(start_text), min(int(end_text) if end_text else len(data) - 1, len(data) - 1)
        if start >= len(data) or start > end:
            raise HubError(416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
        return Response(206, data[start : end + 1], {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"})


def point_clients_at(
    endpoint: str, monkeypatch: pytest.MonkeyPatch, cache_root: Path, token: str = "hf_test_token"
) -> None:
    """Make `huggingface_hub` (and `transformers`, `timm`, `datasets` through it) talk to ``endpoint``, online.

    Sets the environment (for code that reads it later, and for subprocesses) and patches the module-level copies the
    libraries made of it at import time. The Hub, `datasets` and Xet caches go to ``cache_root/{hub,datasets,xet}``,
    so nothing from this fake Hub lands in the real caches. ``monkeypatch`` undoes it all.
    """
    import huggingface_hub  # imported here: the server itself needs nothing but the standard library
    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import _http

    cache_dir, datasets_cache = cache_root / "hub", cache_root / "datasets"

    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_TOKEN": token,
        "HF_HUB_CACHE": str(cache_dir),
        "HF_DATASETS_CACHE": str(datasets_cache),
        "HF_XET_CACHE": str(cache_root / "xet"),  # hf_xet writes its logs there when first imported
        "NO_PROXY": ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"])),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)

    host = urlsplit(endpoint).hostname or "127.0.0.1"
    patches: dict[str, Any] = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {host},
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_CACHE": str(cache_dir),
        "HF_XET_CACHE": str(cache_root / "xet"),
    }
    for name, value in patches.items():
        monkeypatch.setattr(constants, name, value)
        if name in vars(huggingface_hub):  # lazily exported constants, once accessed, are cached on the package
            monkeypatch.setattr(huggingface_hub, name, value)
    monkeypatch.setattr(_http, "_HUB_ORIGINS", _http._HUB_ORIGINS | {_http._url_origin(endpoint)})
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)  # the module-level HfApi behind `huggingface_hub.model_info`
    copies = {  # other module-level copies, patched only where the module is already imported
        "huggingface_hub.utils._cache_manager": {"HF_HUB_CACHE": str(cache_dir)},
        "huggingface_hub.utils._git_credential": {"ENDPOINT": endpoint},
        "huggingface_hub.cli.auth": {"ENDPOINT": endpoint},
        "huggingface_hub.utils._detect_agent": {"_registry": {"standardEnvVars": [], "harnesses": {}}},
        "datasets.config": {
            "HF_ENDPOINT": endpoint,
            "HUB_DATASETS_URL": endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}",
            "HF_HUB_OFFLINE": False,
            "HF_DATASETS_OFFLINE": False,
            "HF_DATASETS_CACHE": datasets_cache,
            "DOWNLOADED_DATASETS_PATH": datasets_cache / "downloads",
            "EXTRACTED_DATASETS_PATH": datasets_cache / "downloads" / "extracted",
        },
    }
    for module_name, values in copies.items():
        module = sys.modules.get(module_name)
        for name, value in values.items():
            if module is not None and hasattr(module, name):
                monkeypatch.setattr(module, name, value)
    _http.close_session()  # a fresh client, built with this environment


@pytest.fixture
def hub_server(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A running `HubServer` that `huggingface_hub`, `transformers`, `timm` and `datasets` talk to, online.

    Overrides offline mode (set by conftest), points ``HF_ENDPOINT`` at the server, disables Xet, sets
    ``HF_TOKEN=hf_test_token`` and sends the Hub and `datasets` caches to a fresh temporary folder (see
    `point_clients_at`); all undone afterwards.
    """
    from huggingface_hub.utils import close_session

    with HubServer(tmp_path_factory.mktemp("hub_server")) as server:
        point_clients_at(server.endpoint, monkeypatch, tmp_path_factory.mktemp("hf_cache"))
        yield server
    close_session()  # drop the client made for this server
