"""A client of FactLoop's admin REST API (annotation/administration/admin_api.py, annotation/web/annotator_api.py).

    from factloop import Client
    loop = Client("http://127.0.0.1:8000", username="admin", password="...")
    loop.wait_job(loop.import_archive("prompts.zip")["id"])   # a manifest and its images
    started = loop.start_round(policy_version="tiny-base", task_kinds=["correct"], limit=50)
    loop.wait_job(started["job"]["id"])          # the candidates are in; the round opens
    loop.wait_labelled(started["round"]["number"])   # annotators label it
    run = loop.train(started["round"]["number"], method="ddpo")
    loop.wait_job(run["job"])                     # train, evaluate, gate, deploy, next round
    loop.training_run(run["id"])["steps"]["gate"]["detail"]

It needs only httpx; every call raises FactLoopError with the server's message on a 4xx or
5xx answer.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

FINISHED = ("succeeded", "failed", "cancelled")


class FactLoopError(Exception):
    """The server refused a request; `status` is its HTTP status, the message its reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class Client:
    """An admin's session with a FactLoop server: a token (given, or got with a username and
    password) sent with every request."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout, transport=transport)
        if token is None:
            if username is None or password is None:
                raise ValueError("give a token, or a username and password")
            token = str(self._call("POST", "/api/auth/token/", {"username": username, "password": password})["token"])
        self._http.headers["Authorization"] = f"Token {token}"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, **multipart: Any) -> Any:
        """The answer's JSON; `multipart` (data=, files=) sends a form instead of `body`."""
        response = self._http.request(method, path, json=body, **multipart)
        if response.status_code >= 400:
            raise FactLoopError(response.status_code, _message(response))
        return response.json() if response.content else None

    # Imports
    def import_archive(
        self, path: str | Path, kind: str = "prompts", *, skip_bad: bool = False, dataset: str = ""
    ) -> dict[str, Any]:
        """Upload a zip to import (kind prompts, llava-rlhf or rlhf-v), streamed; the import
        job. Its result, once wait_job says it succeeded, counts what came in. Held-out rows
        join the held-out dataset `dataset` (default "heldout")."""
        source = Path(path)
        with source.open("rb") as archive:
            return dict(
                self._call(
                    "POST",
                    "/api/admin/imports/",
                    data={"kind": kind, "skip_bad": "true" if skip_bad else "false", "dataset": dataset},
                    files={"archive": (source.name, archive, "application/zip")},
                )
            )

    # Rounds
    def rounds(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/api/admin/rounds/"))

    def round(self, number: int) -> dict[str, Any]:
        return dict(self._call("GET", f"/api/admin/rounds/{number}/"))

    def start_round(self, **settings: Any) -> dict[str, Any]:
        """Start a round (policy_version, task_kinds, and optionally candidates_per_prompt,
        overlap, gold_rate, split, only_new, limit, temperature, max_tokens, ai_labeller,
        selection, human_prompts, heldout): {"round": ..., "job": the generation job}."""
        return dict(self._call("POST", "/api/admin/rounds/", settings))

    def wait_labelled(self, number: int, *, timeout: float = 24 * 3600.0, poll: float = 5.0) -> dict[str, Any]:
        """Until every task of the round has its labels (labels == capacity); the round.
        TimeoutError if it has not by `timeout` seconds, FactLoopError if it is no longer open."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.round(number)
            if state["capacity"] and state["labels"] >= state["capacity"]:
                return state
            if state["status"] not in ("draft", "open"):
                raise FactLoopError(409, f"round {number} is {state['status']} with {state['labels']} labels")
            if time.monotonic() > deadline:
                raise TimeoutError(f"round {number} has {state['labels']} of {state['capacity']} labels")
            time.sleep(poll)

    def open_round(self, number: int) -> dict[str, Any]:
        return dict(self._call("POST", f"/api/admin/rounds/{number}/open/"))

    def freeze_round(self, number: int) -> dict[str, Any]:
        return dict(self._call("POST", f"/api/admin/rounds/{number}/freeze/"))

    def quality(self, number: int) -> dict[str, Any]:
        return dict(self._call("GET", f"/api/admin/rounds/{number}/quality/"))

    # Training
    def train(self, number: int, *, method: str = "ddpo", overrides: list[str] | None = None, **options: Any) -> Any:
        """Train the round as a job (train_round); the run, with its job's id."""
        body = {"method": method, "overrides": overrides or [], **options}
        return self._call("POST", f"/api/admin/rounds/{number}/train/", body)

    def training_run(self, run_id: int) -> dict[str, Any]:
        return dict(self._call("GET", f"/api/admin/training-runs/{run_id}/"))

    # Jobs
    def job(self, job_id: int) -> dict[str, Any]:
        return dict(self._call("GET", f"/api/admin/jobs/{job_id}/"))

    def wait_job(self, job_id: int, *, timeout: float = 3600.0, poll: float = 2.0) -> dict[str, Any]:
        """Until the job has finished (succeeded, failed or cancelled); its last state.
        TimeoutError if it has not by `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in FINISHED:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout:.0f} s")
            time.sleep(poll)

    # Exports
    def export(self, fmt: str, rounds: list[int], **options: Any) -> dict[str, Any]:
        """Queue an export (format factloop, trl, llava-rlhf or rlhf-v); the job."""
        return dict(self._call("POST", "/api/admin/exports/", {"format": fmt, "rounds": rounds, **options}))

    def download(self, job_id: int, path: str | Path) -> Path:
        """Save a finished export job's files as one zip at `path`, streamed."""
        target = Path(path)
        with self._http.stream("GET", f"/api/admin/jobs/{job_id}/download/") as response:
            if response.status_code >= 400:
                response.read()
                raise FactLoopError(response.status_code, _message(response))
            partial = target.with_name(target.name + ".part")
            with partial.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
            partial.replace(target)
        return target

    # Versions
    def versions(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/api/admin/versions/"))

    def deploy(self, name: str, *, reason: str = "") -> dict[str, Any]:
        """Serve a version (an earlier one: a rollback)."""
        return dict(self._call("POST", f"/api/admin/versions/{name}/deploy/", {"reason": reason}))


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return str(body)[:500]
