"""A Python client of omlweb's (and Oracle's) OML4Py REST API, on `requests`.

It behaves as the clients the service is built for: one keep-alive session, a token refreshed before it
expires, async jobs polled at their `Location` every 2 s until the 302, then `/result`. It needs
nothing of Django. Every path it calls is in `ENDPOINTS`, which the tests check against the service's
OpenAPI document, so the client cannot drift from the API.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

import requests

# (method, path template) of every call, as the OpenAPI document names them.
ENDPOINTS = {
    "token": ("POST", "/omlusers/api/oauth2/v1/token"),
    "scriptCreate": ("POST", "/oml/api/py-scripts/{version}/scripts"),
    "scriptList": ("GET", "/oml/api/py-scripts/{version}/scripts"),
    "doEval": ("POST", "/oml/api/py-scripts/{version}/do-eval/{scriptName}"),
    "jobStatus": ("GET", "/oml/api/py-scripts/{version}/jobs/{jobId}"),
    "jobResult": ("GET", "/oml/api/py-scripts/{version}/jobs/{jobId}/result"),
    "jobList": ("GET", "/oml/api/py-scripts/{version}/jobs"),
}
VERSION = "v2"
POLL_SECONDS = 2.0
# Refresh the token when it has less than this left.
REFRESH_MARGIN_SECONDS = 300


class OmlError(Exception):
    """An answer of the service that is not a success: its OML error body, with the HTTP status."""

    def __init__(self, status: int, message: str, code: int | None = None) -> None:
        super().__init__(f"{status} (error {code}): {message}" if code else f"{status}: {message}")
        self.status, self.message, self.code = status, message, code


@dataclass
class Credentials:
    url: str
    token: str
    expires_at: float

    def to_json(self) -> str:
        return json.dumps({"url": self.url, "token": self.token, "expiresAt": self.expires_at})

    @classmethod
    def from_json(cls, text: str) -> Credentials:
        data = json.loads(text)
        return cls(url=data["url"], token=data["token"], expires_at=data["expiresAt"])


@dataclass
class Figure:
    id: int
    title: str | None
    png: bytes | None


@dataclass
class RunResult:
    """A run's value, and its figures when it was run with graphics."""

    value: Any
    figures: list[Figure] = field(default_factory=list)
    comments: str | None = None

    def save_figures(self, folder: Path, stem: str) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for figure in self.figures:
            if figure.png is None:
                continue
            path = folder / f"{stem}-{figure.id}.png"
            path.write_bytes(figure.png)
            paths.append(path)
        return paths


def _path(name: str, **values: str) -> str:
    path = ENDPOINTS[name][1]
    for key, value in {"version": VERSION, **values}.items():
        path = path.replace(f"{{{key}}}", quote(str(value), safe=""))
    return path


def parse_result(body: dict, *, graphics: bool) -> RunResult:
    value = body.get("result")
    comments = body.get("comments")
    if not graphics:
        return RunResult(value=value, comments=comments)
    figures, data = [], None
    for element in value or []:
        data = element.get("DATA")
        image = element.get("IMAGE")
        figures.append(
            Figure(id=element.get("ID"), title=element.get("TITLE"), png=base64.b64decode(image) if image else None)
        )
    return RunResult(value=json.loads(data) if isinstance(data, str) else data, figures=figures, comments=comments)


class Client:
    """One user's session with a service at `url` (e.g. http://127.0.0.1:8000)."""

    def __init__(self, url: str, credentials: Credentials | None = None, timeout: float = 960.0) -> None:
        self.url = url.rstrip("/")
        self.credentials = credentials
        self.timeout = timeout
        # One session: one keep-alive connection, reused by every call and poll.
        self.session = requests.Session()
        self.session.headers["Accept"] = "application/json"

    # Tokens

    def login(self, username: str, password: str) -> Credentials:
        body = self._send(
            "token", json={"grant_type": "password", "username": username, "password": password}, auth=False
        )
        self.credentials = Credentials(self.url, body["accessToken"], time.time() + body["expiresIn"])
        return self.credentials

    def refresh(self) -> Credentials:
        assert self.credentials is not None
        body = self._send(
            "token", json={"grant_type": "refresh_token", "refresh_token": self.credentials.token}, auth=False
        )
        self.credentials = Credentials(self.url, body["accessToken"], time.time() + body["expiresIn"])
        return self.credentials

    # Scripts

    def push_script(self, name: str, source: str, *, description: str = "", is_global: bool = False) -> dict:
        body = {"name": name, "script": source, "description": description, "overwrite": True}
        if is_global:
            body["isGlobal"] = True
        return self._send("scriptCreate", json=body)["result"]

    def scripts(self) -> list[dict]:
        return self._send("scriptList")["result"]

    # Runs

    def run(self, name: str, *, parameters: dict | None = None, graphics: bool = False, **options: Any) -> RunResult:
        """A sync run: the answer when the function has returned."""
        body = self._run_body(parameters, graphics, options)
        return parse_result(self._send("doEval", json=body, scriptName=name), graphics=graphics)

    def submit(self, name: str, *, parameters: dict | None = None, graphics: bool = False, **options: Any) -> str:
        """An async job: its status URL (the Location)."""
        body = {**self._run_body(parameters, graphics, options), "asyncFlag": True}
        response = self._request("doEval", json=body, scriptName=name)
        if response.status_code != 201:
            raise _error(response)
        return response.headers["Location"]

    def wait(self, job_url: str, *, progress: Callable[[dict], None] | None = None) -> str:
        """Poll a job's status every 2 s until it has finished; its result URL (the Content-Location)."""
        while True:
            response = self.session.get(job_url, headers=self._auth(), allow_redirects=False, timeout=self.timeout)
            if response.status_code == 302:
                return response.headers["Content-Location"]
            if response.status_code != 202:
                raise _error(response)
            if progress is not None:
                progress(response.json())
            time.sleep(POLL_SECONDS)

    def result(self, result_url: str, *, graphics: bool = False) -> RunResult:
        response = self.session.get(result_url, headers=self._auth(), timeout=self.timeout)
        if response.status_code != 200:
            raise _error(response)
        return parse_result(response.json(), graphics=graphics)

    def job_url(self, job_id: str) -> str:
        return urljoin(self.url + "/", _path("jobStatus", jobId=job_id).lstrip("/"))

    def jobs(self, limit: int = 50) -> list[dict]:
        return self._send("jobList", params={"limit": limit})["result"]

    # Plumbing

    def _run_body(self, parameters: dict | None, graphics: bool, options: dict) -> dict:
        body = {"parameters": json.dumps(parameters or {}), "graphicsFlag": graphics}
        body.update({key: value for key, value in options.items() if value is not None})
        return body

    def _auth(self) -> dict:
        if self.credentials is None:
            raise OmlError(401, "Not logged in: run `omlweb login` first.")
        if self.credentials.expires_at - time.time() < REFRESH_MARGIN_SECONDS:
            self.refresh()
        return {"Authorization": f"Bearer {self.credentials.token}"}

    def _request(self, name: str, *, auth: bool = True, json: Any = None, params: dict | None = None, **path_values):
        method, _ = ENDPOINTS[name]
        headers = self._auth() if auth else {}
        return self.session.request(
            method,
            self.url + _path(name, **path_values),
            json=json,
            params=params,
            headers=headers,
            allow_redirects=False,
            timeout=self.timeout,
        )

    def _send(self, name: str, **kwargs) -> dict:
        response = self._request(name, **kwargs)
        if response.status_code not in (200, 201):
            raise _error(response)
        return response.json()


def _error(response: requests.Response) -> OmlError:
    try:
        body = response.json()
        return OmlError(response.status_code, body.get("errorMessage", response.text), body.get("errorCode"))
    except ValueError:
        return OmlError(response.status_code, response.text[:500] or response.reason)
