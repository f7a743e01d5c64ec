"""Camtrap DP packages validated with frictionless against the Camtrap DP 1.0.2 profile and table
schemas they declare, offline: every URL the validation asks for is answered from the copies
shipped in ``anim_clip/export/camtrap_dp`` (and no socket may connect), so the test proves the
package valid without a network and fails if anything else is fetched. A package made invalid on
purpose must fail, so the validation is shown to be real.

The predictions come from ``anim-clip predict`` itself (a tiny head on demo videos, with windows),
read back from ``predictions.json`` as a user's later run would."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
from datetime import datetime, timezone
from pathlib import Path

import av
import pytest

from anim_clip.errors import AnimClipError
from anim_clip.export import ExportOptions, timeline, video_events, write_camtrap_dp, write_exports
from anim_clip.export.camtrap import PROFILE_URL, local_schemas, schema_url
from anim_clip.predict import run_predict

from test_predict import cfg, demo, head_ckpt, videos  # noqa: F401 (fixtures: a tiny head and demo videos)
from videos import indexed_frames, write_video

frictionless = pytest.importorskip("frictionless", reason="frictionless validates Camtrap DP (the test extra)")
import requests  # noqa: E402 (installed with frictionless)

DATA_PACKAGE_V1 = "https://specs.frictionlessdata.io/schemas/data-package.json"
GEOJSON = "http://json.schemastore.org/geojson.json"


class LocalFiles(requests.adapters.BaseAdapter):
    """Answers the URLs it knows from local files and refuses any other, recording what was asked."""

    def __init__(self, files: dict[str, Path]):
        super().__init__()
        self.files = files
        self.asked: list[str] = []

    def send(self, request, **kwargs):
        self.asked.append(request.url)
        if request.url not in self.files:
            raise requests.ConnectionError(f"offline test: {request.url} is not a shipped schema")
        response = requests.Response()
        response.status_code, response.url, response.request = 200, request.url, request
        response.raw = io.BytesIO(self.files[request.url].read_bytes())
        return response

    def close(self):
        pass


def validate_offline(package: Path, tmp_path: Path, monkeypatch) -> tuple[bool, list[str]]:
    """frictionless's report on ``package`` (valid, error notes), every schema read from disk.
    The profile's two $refs outside Camtrap DP are the Data Package v1 profile, whose rules
    frictionless checks itself on every package (so an empty schema stands for it here), and
    GeoJSON, answered by the GeoJSON schema frictionless ships."""
    empty = tmp_path / "empty-schema.json"
    empty.write_text("{}")
    files = {**local_schemas(), DATA_PACKAGE_V1: empty,
             GEOJSON: Path(frictionless.__file__).parent / "assets" / "profiles" / "geojson.json"}
    adapter = LocalFiles(files)
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)

    def no_network(*args, **kwargs):
        raise AssertionError("the validation tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with frictionless.system.use_context(http_session=session):
        report = frictionless.validate(str(package / "datapackage.json"))
    monkeypatch.undo()
    assert set(adapter.asked) <= set(files) and PROFILE_URL in adapter.asked
    if report.valid:  # the tables were read against their schemas (a descriptor error stops before them)
        assert {schema_url(t) for t in ("deployments", "media", "observations")} <= set(adapter.asked)
    return report.valid, [note for _, note in report.flatten(["type", "note"])]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def predicted(head_ckpt: Path, videos: list[Path], tmp_path_factory) -> tuple[list[dict], dict]:
    """``predict --window 0.5`` on two demo videos (1 s each) and a missing one, read back from disk."""
    out = tmp_path_factory.mktemp("predicted")
    paths = [*videos, out / "missing.mp4"]
    run_predict(head_ckpt, paths, out=out, window=0.5, predict_species=True, device="cpu")
    header = json.loads((out / "predictions.json").read_text())
    return header.pop("videos"), header


def test_predict_output_makes_a_valid_camtrap_dp_package(predicted, tmp_path: Path, monkeypatch):
    records, header = predicted
    scored = records[:2]
    threshold = float(min(timeline(r).scores.max() for r in scored)) * 0.99  # every video has an event
    written = write_camtrap_dp(tmp_path / "dp", records, header, threshold=threshold, location=(50.85, 4.35))
    assert sorted(p.name for p in written) == ["datapackage.json", "deployments.csv", "media.csv", "observations.csv"]
    valid, errors = validate_offline(tmp_path / "dp", tmp_path, monkeypatch)
    assert valid, errors

    deployments = read_csv(tmp_path / "dp" / "deployments.csv")
    assert len(deployments) == 1 and (deployments[0]["latitude"], deployments[0]["longitude"]) == ("50.85", "4.35")
    media = read_csv(tmp_path / "dp" / "media.csv")
    assert [m["fileName"] for m in media] == [Path(r["video"]).name for r in scored]  # the missing video is left out
    assert all(m["filePath"] == Path(r["video"]).as_uri() for m, r in zip(media, scored))
    observations = read_csv(tmp_path / "dp" / "observations.csv")
    expected = [(Path(r["video"]).name, e.action) for r in scored for e in video_events(r, threshold)]
    by_media = {m["mediaID"]: m["fileName"] for m in media}
    assert [(by_media[o["mediaID"]], o["behavior"]) for o in observations] == expected
    for o in observations:
        record = scored[[m["mediaID"] for m in media].index(o["mediaID"])]
        species = record["species"][0]  # the best predicted species
        assert o["observationType"] == "animal" and o["scientificName"] == species["name"]
        assert o["classificationMethod"] == "machine" and "head.pt" in o["classifiedBy"]
        assert o["observationLevel"] == "media" and o["eventStart"] <= o["eventEnd"]
        assert 0 < float(o["classificationProbability"]) <= species["probability"]
    package = json.loads((tmp_path / "dp" / "datapackage.json").read_text())
    assert package["profile"] == PROFILE_URL and package["spatial"] == {"type": "Point", "coordinates": [4.35, 50.85]}
    assert package["taxonomic"] == [{"scientificName": n} for n in sorted({r["species"][0]["name"] for r in scored})]


def test_an_invalid_package_fails_validation(predicted, tmp_path: Path, monkeypatch):
    records, header = predicted
    write_camtrap_dp(tmp_path / "dp", records, header, threshold=1.0)  # no events: one "unknown" row per video
    rows = read_csv(tmp_path / "dp" / "observations.csv")
    assert [r["observationType"] for r in rows] == ["unknown", "unknown"] and not any(r["behavior"] for r in rows)

    bad_table = tmp_path / "bad_table"
    shutil.copytree(tmp_path / "dp", bad_table)
    text = (bad_table / "observations.csv").read_text()
    (bad_table / "observations.csv").write_text(text.replace(",media,unknown,", ",media,dragon,"))
    valid, errors = validate_offline(bad_table, tmp_path, monkeypatch)
    assert not valid and any("animal" in e and "unclassified" in e for e in errors)  # the enum of observationType

    bad_profile = tmp_path / "bad_profile"
    shutil.copytree(tmp_path / "dp", bad_profile)
    package = json.loads((bad_profile / "datapackage.json").read_text())
    package["project"]["samplingDesign"] = "haphazard"
    (bad_profile / "datapackage.json").write_text(json.dumps(package))
    valid, errors = validate_offline(bad_profile, tmp_path, monkeypatch)
    assert not valid and any("samplingDesign" in e for e in errors)


def test_predict_exports_events_budgets_overlays_and_the_package(predicted, tmp_path: Path):
    records, header = predicted
    written = write_exports(tmp_path, records, header, ExportOptions(threshold=0.5, camtrap_dp=tmp_path / "dp", overlay=True))
    names = sorted(p.relative_to(tmp_path).as_posix() for p in written)
    stems = [Path(r["video"]).stem for r in records[:2]]
    assert names == sorted(["events.csv", "time_budgets.csv", *(f"budget_{s}.png" for s in stems),
                            *(f"overlay_{s}.mp4" for s in stems), "dp/datapackage.json", "dp/deployments.csv",
                            "dp/media.csv", "dp/observations.csv"])
    budgets = read_csv(tmp_path / "time_budgets.csv")
    assert [b["video"] for b in budgets] == [r["video"] for r in records[:2]]
    for b in budgets:
        shares = [float(v) for k, v in b.items() if k not in ("video", "duration_s", "scored_s")]
        assert sum(shares) == pytest.approx(1, abs=1e-5)
    for record, stem in zip(records[:2], stems):
        with av.open(str(tmp_path / f"overlay_{stem}.mp4")) as container:
            assert sum(1 for _ in container.decode(video=0)) == record["frames"]


def hand_record(video: Path, duration: float = 2.0) -> dict:
    scores = {"walking": 0.9, "eating": 0.1}
    return {"video": str(video), "error": None, "frames": int(duration * 10), "fps": 10.0, "duration_s": duration,
            "species": [{"name": "Anas platyrhynchos", "probability": 1.0},
                        {"name": "Rana temporaria", "probability": 1.0}],
            "top": [], "scores": scores, "windows": [], "species_source": "given"}


HEADER = {"checkpoint": "/models/head.pt", "kind": "head", "backbone": {"model": "ViT-B-16", "weights": "openai"},
          "species_source": "oracle"}


def test_recording_times_come_from_the_creation_tag_else_the_file_time(tmp_path: Path):
    tagged = tmp_path / "cam1" / "tagged.mp4"
    tagged.parent.mkdir()
    with av.open(str(tagged), "w") as container:
        container.metadata["creation_time"] = "2024-05-01T06:30:00.000000Z"
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height = 64, 48
        for frame in indexed_frames(20, 48, 64):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    (tmp_path / "cam2").mkdir()
    untagged = write_video(tmp_path / "cam2" / "untagged.avi", indexed_frames(20, 48, 64), fps=10, codec="mpeg4")
    modified = datetime(2023, 7, 14, 22, 5, 9, tzinfo=timezone.utc)
    os.utime(untagged, (modified.timestamp(), modified.timestamp()))

    write_camtrap_dp(tmp_path / "dp", [hand_record(tagged), hand_record(untagged)], HEADER)
    media = read_csv(tmp_path / "dp" / "media.csv")
    times = [datetime.fromisoformat(m["timestamp"]) for m in media]
    assert times == [datetime(2024, 5, 1, 6, 30, tzinfo=timezone.utc), modified]
    assert "creation_time tag" in media[0]["mediaComments"] and "modification time" in media[1]["mediaComments"]
    assert media[1]["fileMediatype"] == "video/x-msvideo"
    deployments = read_csv(tmp_path / "dp" / "deployments.csv")
    assert [d["locationName"] for d in deployments] == ["cam1", "cam2"]  # one deployment per folder
    assert [d["timestampIssues"] for d in deployments] == ["false", "true"]
    assert all("latitude and longitude 0 are placeholders" in d["deploymentComments"] for d in deployments)
    end = datetime.fromisoformat(deployments[0]["deploymentEnd"])
    assert end == datetime(2024, 5, 1, 6, 30, 2, tzinfo=timezone.utc)  # the tag's start and the 2 s video

    # given species: one observation per species, certain; the event spans the whole (unwindowed) video
    observations = read_csv(tmp_path / "dp" / "observations.csv")
    first = [o for o in observations if o["mediaID"] == media[0]["mediaID"]]
    assert [o["scientificName"] for o in first] == ["Anas platyrhynchos", "Rana temporaria"]
    assert {(o["behavior"], o["eventStart"], o["eventEnd"], o["classificationProbability"]) for o in first} == {
        ("walking", "2024-05-01T06:30:00+00:00", "2024-05-01T06:30:02+00:00", "0.9")}


def test_start_time_dates_a_single_video_and_bad_input_is_one_line(tmp_path: Path):
    video = write_video(tmp_path / "clip.mp4", indexed_frames(20, 48, 64), fps=10)
    start = datetime(2022, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    write_camtrap_dp(tmp_path, [hand_record(video)], HEADER, start_time=start)  # the package beside the video
    media = read_csv(tmp_path / "media.csv")[0]
    assert datetime.fromisoformat(media["timestamp"]) == start and media["filePath"] == "clip.mp4"
    assert read_csv(tmp_path / "deployments.csv")[0]["timestampIssues"] == "false"

    with pytest.raises(AnimClipError, match="--start-time gives one video's recording start, but there are 2 videos"):
        write_camtrap_dp(tmp_path / "dp2", [hand_record(video), hand_record(video)], HEADER, start_time=start)
    with pytest.raises(AnimClipError, match="--location must be LATITUDE,LONGITUDE"):
        write_camtrap_dp(tmp_path / "dp2", [hand_record(video)], HEADER, location=(95.0, 0.0))
    with pytest.raises(AnimClipError, match="no video was scored"):
        write_camtrap_dp(tmp_path / "dp2", [{"video": str(video), "error": "broken"}], HEADER)
    assert not (tmp_path / "dp2").exists()


def test_given_species_with_no_event_are_animals_without_a_behaviour(tmp_path: Path, monkeypatch):
    video = write_video(tmp_path / "clip.mp4", indexed_frames(20, 48, 64), fps=10)
    write_camtrap_dp(tmp_path / "dp", [hand_record(video)], HEADER, threshold=0.95)  # walking 0.9 is below
    rows = read_csv(tmp_path / "dp" / "observations.csv")
    assert [(r["observationType"], r["scientificName"], r["behavior"], r["classificationProbability"]) for r in rows] \
        == [("animal", "Anas platyrhynchos", "", ""), ("animal", "Rana temporaria", "", "")]
    assert "no action reached the score threshold 0.95 (best 0.90)" in rows[0]["observationComments"]
    valid, errors = validate_offline(tmp_path / "dp", tmp_path, monkeypatch)
    assert valid, errors
