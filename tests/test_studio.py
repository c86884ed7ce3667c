"""The studio's API: many models of every kind, jobs (progress, cancel, time limit, a bounded queue), the history
across restarts, files per data kind, and the safety rules (names inside the root, a token)."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from diffusionlab.pipeline import Pipeline  # noqa: E402
from diffusionlab.server import create_app  # noqa: E402
from diffusionlab.server.registry import ModelRegistry, weights_hash  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, pets_model: Path) -> Path:
    from studio_models import write_studio_root

    return write_studio_root(tmp_path_factory.mktemp("studio") / "models", pets_model)


@pytest.fixture()
def client(root: Path, tmp_path: Path) -> TestClient:
    return TestClient(create_app(root, data_dir=tmp_path / "data"))


def wait(client: TestClient, job_id: str, timeout: float = 60) -> dict[str, Any]:
    """The job's state once it has finished."""
    end = time.time() + timeout
    while time.time() < end:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def queue(client: TestClient, task: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"/api/jobs/{task}?model={model}", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def run(client: TestClient, task: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
    job = wait(client, queue(client, task, model, body)["id"])
    assert job["state"] == "done", job
    return job


def test_every_model_under_the_root_is_listed_with_its_kind(client: TestClient, root: Path) -> None:
    listed = {m["name"]: m for m in client.get("/api/models").json()["models"]}
    assert {n: m["kind"] for n, m in listed.items()} == {
        "markov": "tokens",
        "moons": "points",
        "people": "table",
        "pets": "image",
        "tones/clips": "signal",
        "moving": "video",
    }
    assert listed["pets"]["class_names"] == ["cat", "dog", "owl"] and listed["pets"]["hash"] == weights_hash(
        root / "pets"
    )
    pets = client.get("/api/model?model=pets").json()
    assert pets["tasks"] == ["sample", "img2img", "inpaint"] and pets["defaults"]["steps"] == 3
    assert client.get("/api/model?model=markov").json()["tasks"] == ["sample", "infill"]
    several = client.get("/api/model")
    assert several.status_code == 400 and "model is required" in several.json()["detail"]


@pytest.mark.parametrize("name", ["../pets", "/etc", "pets/../pets", "tones", "nothing", "pets\x00"])
def test_model_names_resolve_only_to_served_models(client: TestClient, name: str) -> None:
    response = client.post("/api/jobs/sample", params={"model": name}, json={"num_samples": 1})
    assert response.status_code == 404 and "is not a served model" in response.json()["detail"], response.text


def test_an_image_job_reports_progress_and_writes_pngs_with_their_settings(client: TestClient, root: Path) -> None:
    body = {"num_samples": 4, "labels": [0, 1, 2, 0], "steps": 6, "seed": 3}
    job = run(client, "sample", "pets", body)
    assert (job["step"], job["total"]) == (6, 6) and job["evaluations"] >= 6
    outputs = job["outputs"]
    assert outputs["view"] == "images" and len(outputs["files"]) == 4 and outputs["size"] == [8, 8]
    pipe = Pipeline.load(root / "pets")
    expected = pipe.sample(4, labels=[0, 1, 2, 0], steps=6, seed=3)
    for i, name in enumerate(outputs["files"]):
        png = client.get(f"/api/jobs/{job['id']}/files/{name}")
        image = Image.open(io.BytesIO(png.content))
        assert np.array_equal(np.asarray(image), np.round(expected[i, 0].numpy() * 255).astype(np.uint8))
        settings = json.loads(image.text["settings"])
        assert settings["model"] == "pets" and settings["model_hash"] == weights_hash(root / "pets")
        assert {k: settings[k] for k in body} == body and settings["task"] == "sample" and image.text["index"] == str(i)
    again = run(client, "sample", "pets", body)
    first = client.get(f"/api/jobs/{job['id']}/files/grid.png").content
    assert client.get(f"/api/jobs/{again['id']}/files/grid.png").content == first  # same seed, same bytes


def test_each_data_kind_writes_its_files(client: TestClient) -> None:
    table = run(client, "sample", "people", {"num_samples": 30, "labels": [1], "seed": 0})["outputs"]
    assert table["view"] == "table" and table["columns"] == ["age", "income", "city", "member", "y"]
    assert len(table["rows"]) == 20 and table["rows_total"] == 30
    job_id = client.get("/api/jobs?model=people").json()["jobs"][0]["id"]
    rows = list(csv.reader(io.StringIO(client.get(f"/api/jobs/{job_id}/files/samples.csv").text)))
    assert rows[0] == table["columns"] and len(rows) == 31 and {r[4] for r in rows[1:]} == {"low"}

    texts = run(client, "sample", "markov", {"num_samples": 3, "steps": 8, "seed": 1})["outputs"]
    assert texts["view"] == "texts" and len(texts["texts"]) == 3 and all(len(t) == 32 for t in texts["texts"])
    assert set("".join(texts["texts"])) <= set("abcd")

    audio = run(client, "sample", "tones/clips", {"num_samples": 2, "labels": [0, 1], "steps": 4})
    assert audio["outputs"]["view"] == "audio" and audio["outputs"]["picture"] == "signals.png"
    wav = client.get(f"/api/jobs/{audio['id']}/files/{audio['outputs']['files'][1]}")
    clip, rate = soundfile.read(io.BytesIO(wav.content))
    assert rate == 800 and clip.shape == (80,) and np.abs(clip).max() <= 1

    points = run(client, "sample", "moons", {"num_samples": 50, "seed": 2})["outputs"]
    assert points["view"] == "points" and np.asarray(points["points"]).shape == (50, 2)

    clips = run(client, "sample", "moving", {"num_samples": 2, "labels": [3, 5], "steps": 3, "seed": 0})
    assert clips["outputs"]["view"] == "clips" and len(clips["outputs"]["files"]) == 2
    gif = Image.open(io.BytesIO(client.get(f"/api/jobs/{clips['id']}/files/{clips['outputs']['files'][0]}").content))
    assert gif.n_frames == 4 and gif.size == (64, 64)  # 4 frames of 32x32, drawn at twice the size
    strip = client.get(f"/api/jobs/{clips['id']}/files/{clips['outputs']['picture']}")
    assert strip.status_code == 200 and Image.open(io.BytesIO(strip.content)).format == "PNG"


def test_infill_keeps_the_given_characters(client: TestClient) -> None:
    prompt = "ab__" * 4 + "_" * 16
    job = run(client, "infill", "markov", {"text": prompt, "num_samples": 3, "steps": 8, "seed": 0})
    for text in job["outputs"]["texts"]:
        assert len(text) == 32 and all(p == t for p, t in zip(prompt, text, strict=True) if p != "_")


def test_a_task_for_another_kind_is_one_clear_400(client: TestClient) -> None:
    response = client.post("/api/jobs/infill?model=pets", json={"text": "a_b"})
    assert response.status_code == 400
    assert response.json()["detail"] == "task 'infill' serves tokens models; model 'pets' is a image model."
    assert client.post("/api/sample?model=people", json={}).status_code == 400


def test_a_cancelled_job_stops_within_one_step(client: TestClient) -> None:
    job = queue(client, "sample", "pets", {"num_samples": 2, "steps": 1000, "sampler": "ddim"})
    while client.get(f"/api/jobs/{job['id']}").json()["step"] < 3:
        time.sleep(0.01)
    began = time.time()
    assert client.post(f"/api/jobs/{job['id']}/cancel").status_code == 200
    done = wait(client, job["id"])
    assert done["state"] == "cancelled" and time.time() - began < 2 and done["step"] < 1000, done
    # a job still waiting is cancelled before it starts
    first = queue(client, "sample", "pets", {"steps": 1000})
    second = queue(client, "sample", "pets", {"steps": 3})
    client.post(f"/api/jobs/{second['id']}/cancel")
    client.post(f"/api/jobs/{first['id']}/cancel")
    never_ran = wait(client, second["id"])
    assert never_ran["error"] == "cancelled before it started." and never_ran["step"] == 0


def test_a_full_queue_answers_429_with_retry_after(root: Path, tmp_path: Path) -> None:
    client = TestClient(create_app(root, data_dir=tmp_path, max_waiting=1))
    running = queue(client, "sample", "pets", {"steps": 1000})
    waiting = queue(client, "sample", "pets", {"steps": 1000})
    full = client.post("/api/jobs/sample?model=pets", json={"steps": 3})
    assert full.status_code == 429 and int(full.headers["Retry-After"]) >= 1
    assert "queue is full" in full.json()["detail"]
    assert len(client.get("/api/jobs").json()["jobs"]) == 2  # the refused job left no record
    for job in (waiting, running):
        client.post(f"/api/jobs/{job['id']}/cancel")


def test_a_job_past_its_time_limit_fails_with_one_sentence(root: Path, tmp_path: Path) -> None:
    client = TestClient(create_app(root, data_dir=tmp_path, time_limit_s=0.3))
    job = wait(client, queue(client, "sample", "pets", {"steps": 1000})["id"])
    assert job["state"] == "failed" and job["error"] == "the job ran past its time limit of 0.3 s."


def test_the_history_survives_a_restart_and_delete_removes_files(root: Path, tmp_path: Path) -> None:
    client = TestClient(create_app(root, data_dir=tmp_path))
    done = run(client, "sample", "pets", {"num_samples": 2, "seed": 9})
    long = queue(client, "sample", "pets", {"steps": 1000})
    restarted = TestClient(create_app(root, data_dir=tmp_path))  # a second server on the same data folder
    jobs = {j["id"]: j for j in restarted.get("/api/jobs?model=pets").json()["jobs"]}
    assert jobs[done["id"]]["state"] == "done" and jobs[done["id"]]["settings"]["seed"] == 9
    assert jobs[long["id"]]["state"] == "interrupted"  # running in the first server when the second opened the db
    client.post(f"/api/jobs/{long['id']}/cancel")
    assert restarted.get(f"/api/jobs/{done['id']}/files/grid.png").status_code == 200
    assert restarted.delete(f"/api/jobs/{done['id']}").status_code == 200
    assert not (tmp_path / "jobs" / done["id"]).exists()
    assert restarted.get(f"/api/jobs/{done['id']}").status_code == 404


@pytest.mark.parametrize("name", ["../../etc/passwd", "..%2F..%2Fstudio.sqlite3", "grid.png/..", "x.png"])
def test_job_files_resolve_only_to_the_jobs_outputs(client: TestClient, name: str) -> None:
    job = run(client, "sample", "pets", {"num_samples": 1})
    assert client.get(f"/api/jobs/{job['id']}/files/{name}").status_code == 404
    assert client.get("/api/jobs/../../x").status_code == 404


def test_the_events_stream_ends_with_the_finished_job(client: TestClient) -> None:
    job = queue(client, "sample", "pets", {"num_samples": 1, "steps": 5})
    states = []
    with client.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                states.append(json.loads(line[6:]))
    assert states[-1]["state"] == "done" and states[-1]["outputs"]["view"] == "images"
    assert [s["step"] for s in states] == sorted(s["step"] for s in states)


def test_a_token_guards_the_api(root: Path, tmp_path: Path) -> None:
    client = TestClient(create_app(root, data_dir=tmp_path, token="s3cret"))
    assert client.get("/api/models").status_code == 401
    assert client.get("/api/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/api/models?token=s3cret").status_code == 200
    assert client.get("/").status_code == 200  # the page itself holds nothing; it sends the token it was given


def test_models_beyond_the_memory_budget_are_unloaded_least_recently_used_first(root: Path) -> None:
    registry = ModelRegistry(root, memory_budget_bytes=1)
    registry.get("pets")
    registry.get("moons")
    assert registry.loaded() == ["moons"]  # pets went: the budget holds one model at a time
    registry = ModelRegistry(root, memory_budget_bytes=2**30)
    for name in ("pets", "moons", "pets"):
        registry.get(name)
    assert registry.loaded() == ["moons", "pets"]
