"""Predictions as a Camera Trap Data Package (Camtrap DP 1.0.2, the TDWG standard that camtrapR,
Camelot, Wildlife Insights, Agouti and GBIF read): ``datapackage.json`` with ``deployments.csv``
(one deployment per folder of videos), ``media.csv`` (one row per video) and
``observations.csv`` (one media-level machine observation per behaviour event, see
:mod:`anim_clip.export.events`).

Camtrap DP needs what a prediction does not know, filled as follows and said in the files:
the recording time (``start_time`` for a single video, else the container's ``creation_time``
tag the camera wrote, else the file's modification time as Timelapse takes it), the location
(``location``, else latitude/longitude 0 flagged as a placeholder) and the project's design
(placeholders named in ``project.description``). The profile and table schemas of 1.0.2 are
shipped in ``camtrap_dp/`` (MIT, from github.com/tdwg/camtrap-dp): the CSV columns are read from
them, and the tests validate packages against them offline.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import mimetypes
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import av

from anim_clip.errors import AnimClipError
from anim_clip.export.events import DEFAULT_THRESHOLD, Event, timeline_events
from anim_clip.export.records import Record, check_threshold, scored, species_source, timeline
from anim_clip.io import atomic_write_json, atomic_write_text

VERSION = "1.0.2"
BASE_URL = f"https://raw.githubusercontent.com/tdwg/camtrap-dp/{VERSION}/"
PROFILE_URL = BASE_URL + "camtrap-dp-profile.json"
SCHEMA_DIR = Path(__file__).resolve().parent / "camtrap_dp"
TABLES = ("deployments", "media", "observations")
PLACEHOLDER_LOCATION = (0.0, 0.0)

Row = dict[str, Any]


def schema_url(table: str) -> str:
    return f"{BASE_URL}{table}-table-schema.json"


def local_schemas() -> dict[str, Path]:
    """The shipped copy of every file the package's descriptor names by URL."""
    return {PROFILE_URL: SCHEMA_DIR / "camtrap-dp-profile.json",
            **{schema_url(t): SCHEMA_DIR / f"{t}-table-schema.json" for t in TABLES}}


def columns(table: str) -> list[str]:
    """The table's field names, in the order of its Camtrap DP schema."""
    schema = json.loads((SCHEMA_DIR / f"{table}-table-schema.json").read_text(encoding="utf-8"))
    return [f["name"] for f in schema["fields"]]


@dataclass(frozen=True)
class Media:
    """A scored video placed in time: when it started recording and how that is known."""

    record: Record
    id: str
    folder: Path
    deployment: str
    start: datetime
    time_source: str

    @property
    def end(self) -> datetime:
        """The end of the recording, up to the next whole second (Camtrap DP has no fractions)."""
        return self.start + timedelta(seconds=math.ceil(self.record["duration_s"]))


def short_hash(text: str) -> str:
    """A stable identifier: the same video or folder gets the same id in every run."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def timestamp(when: datetime) -> str:
    """Camtrap DP's date-time: whole seconds with a UTC offset."""
    return when.isoformat(timespec="seconds")


def recording_start(video: Path, start_time: datetime | None = None) -> tuple[datetime, str]:
    """When ``video`` started recording, and where that comes from: ``start_time`` (a naive one is
    this machine's local time), else the container's ``creation_time`` tag (UTC, as cameras and
    FFmpeg write it), else the file's modification time (when the file was last written, a copy
    may carry the copy's time; in this machine's time zone)."""
    if start_time is not None:
        return aware(start_time), "given start time"
    tagged = creation_time(video)
    if tagged is not None:
        return aware(tagged), "creation_time tag"
    return aware(datetime.fromtimestamp(video.stat().st_mtime)), "file modification time"


def creation_time(video: Path) -> datetime | None:
    """The container's or its video stream's ``creation_time`` tag, if it has a readable one."""
    try:
        with av.open(str(video)) as container:
            tags = [container.metadata, *(s.metadata for s in container.streams.video)]
        return next((datetime.fromisoformat(t["creation_time"]) for t in tags if t.get("creation_time")), None)
    except (ValueError, av.FFmpegError):
        return None


def aware(when: datetime) -> datetime:
    """``when`` in whole seconds with a time zone (this machine's, if it has none)."""
    return (when if when.tzinfo else when.astimezone()).replace(microsecond=0)


def check_start_time(start_time: datetime | None, videos: int) -> None:
    """``--start-time`` dates one video: with more, every video would get the same time."""
    if start_time is not None and videos > 1:
        raise AnimClipError(f"--start-time gives one video's recording start, but there are {videos} videos: "
                            "run them one at a time, or let their creation_time tags or file times date them")


def place_media(records: Sequence[Record], start_time: datetime | None) -> list[Media]:
    """Each scored video with its id, its deployment (its folder) and its recording start."""
    check_start_time(start_time, len(records))
    media = []
    for record in records:
        path = Path(record["video"]).absolute()
        folder = path.parent
        start, source = recording_start(path, start_time)
        media.append(Media(record, short_hash(str(path)), folder,
                           f"{folder.name or 'root'}-{short_hash(str(folder))}", start, source))
    return media


def file_path(video: Path, directory: Path) -> str:
    """Camtrap DP's ``filePath``: relative to the package when the video is inside it, else a
    ``file://`` URL (the profile refuses absolute paths and ``..``)."""
    video, directory = video.absolute(), directory.absolute()
    return video.relative_to(directory).as_posix() if video.is_relative_to(directory) else video.as_uri()


def deployment_rows(media: Sequence[Media], location: tuple[float, float] | None) -> list[Row]:
    latitude, longitude = location or PLACEHOLDER_LOCATION
    rows = []
    for deployment in dict.fromkeys(m.deployment for m in media):
        group = [m for m in media if m.deployment == deployment]
        sources = sorted({m.time_source for m in group})
        comments = [f"videos of {group[0].folder}", f"media timestamps from: {', '.join(sources)}"]
        if location is None:
            comments.append("location unknown: latitude and longitude 0 are placeholders")
        rows.append({
            "deploymentID": deployment, "locationName": group[0].folder.name,
            "latitude": latitude, "longitude": longitude,
            "deploymentStart": timestamp(min(m.start for m in group)),
            "deploymentEnd": timestamp(max(m.end for m in group)),
            "timestampIssues": "file modification time" in sources,
            "deploymentComments": "; ".join(comments),
        })
    return rows


def media_rows(media: Sequence[Media], directory: Path) -> list[Row]:
    rows = []
    for m in media:
        video = Path(m.record["video"])
        kind = mimetypes.guess_type(video.name)[0] or ""
        rows.append({
            "mediaID": m.id, "deploymentID": m.deployment, "timestamp": timestamp(m.start),
            "filePath": file_path(video, directory), "filePublic": False, "fileName": video.name,
            "fileMediatype": kind if kind.startswith("video/") else "video/octet-stream",
            "mediaComments": f"timestamp from the {m.time_source}; {m.record['duration_s']:.2f} s at "
                             f"{m.record['fps']:g} fps",
        })
    return rows


def classified_by(header: Mapping[str, Any]) -> str:
    """The model, as Camtrap DP's ``classifiedBy`` names an algorithm."""
    backbone = header["backbone"]
    name = Path(header["checkpoint"]).name
    return f"anim-clip {name} ({header['kind']} on {backbone['model']} {backbone['weights']})"


def taxa(record: Record, source: str) -> list[tuple[str | None, float]]:
    """``(name, probability)`` of the species an observation names: every given species, the best
    predicted one, or none."""
    species = record.get("species") or []
    if source == "given":
        return [(s["name"], 1.0) for s in species]
    if source == "predicted" and species:
        return [(species[0]["name"], species[0]["probability"])]
    return [(None, 1.0)]


def observation_rows(m: Media, events: Sequence[Event], source: str, threshold: float, common: Row) -> list[Row]:
    """One row per event and species named. A video with no event gets one row spanning it: of
    type ``unknown`` (Camtrap DP's word for a classification below a threshold), or ``animal`` with
    the given species and no behaviour."""
    species = taxa(m.record, source)
    rows: list[Row] = []

    def add(first_s: float, last_s: float, name: str | None, probability: float | None, **fields: Any) -> None:
        rows.append({
            **common, "observationID": f"{m.id}-{len(rows) + 1}", "deploymentID": m.deployment, "mediaID": m.id,
            "eventStart": timestamp(m.start + timedelta(seconds=math.floor(first_s))),
            "eventEnd": timestamp(m.start + timedelta(seconds=math.ceil(last_s))),
            "observationLevel": "media", "scientificName": name,
            "classificationProbability": None if probability is None else round(probability, 6), **fields,
        })

    for k, e in enumerate(events, 1):
        for name, p in species:
            how = "" if name is None else f"; {name} {'given' if source == 'given' else f'predicted {p:.2f}'}"
            comment = (f"{e.action} from {e.start_s:.1f} s to {e.end_s:.1f} s of the video, score mean "
                       f"{e.mean_score:.2f} peak {e.peak_score:.2f}{how}")
            add(e.start_s, e.end_s, name, e.mean_score * p, eventID=f"{m.id}-e{k}", observationType="animal",
                behavior=e.action, observationComments=comment)
    if not events:
        best = float(timeline(m.record).scores.max())
        note = f"no action reached the score threshold {threshold:g} (best {best:.2f})"
        if source == "given":
            for name, _ in species:
                add(0.0, m.record["duration_s"], name, None, observationType="animal",
                    observationComments=f"{note}; {name} given")
        else:
            add(0.0, m.record["duration_s"], None, best, observationType="unknown", observationComments=note)
    return rows


def csv_text(table: str, rows: Iterable[Row]) -> str:
    """A table's CSV: its schema's columns in order, empty where a row has no value."""
    names = columns(table)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow(["" if row.get(n) is None else str(row[n]).lower() if isinstance(row[n], bool) else row[n]
                         for n in names])
    return buffer.getvalue()


def descriptor(media: Sequence[Media], observations: Sequence[Row], header: Mapping[str, Any], created: datetime,
               threshold: float, location: tuple[float, float] | None) -> dict[str, Any]:
    """``datapackage.json``: what Camtrap DP requires, with every placeholder said in a description."""
    latitude, longitude = location or PLACEHOLDER_LOCATION
    names = sorted({o["scientificName"] for o in observations if o["scientificName"]})
    unknown = [] if location else ["the location (latitude and longitude 0)"]
    unknown += ["the sampling design (opportunistic)", "the capture method (activityDetection)"]
    return {
        "resources": [{"name": t, "path": f"{t}.csv", "profile": "tabular-data-resource", "format": "csv",
                       "mediatype": "text/csv", "encoding": "utf-8", "schema": schema_url(t)} for t in TABLES],
        "profile": PROFILE_URL,
        "name": "anim-clip-predictions",
        "id": str(uuid.uuid4()),
        "created": timestamp(created),
        "title": f"anim-clip behaviour predictions for {len(media)} video{'s' * (len(media) != 1)}",
        "description": (f"Machine classification of animal behaviour by anim-clip ({classified_by(header)}). An "
                        f"observation is a behaviour event (an action's score at least {threshold:g}); its "
                        "classificationProbability is the event's mean score times the species probability (1 for "
                        "species given). scientificName holds the checkpoint's species names as they are, which may "
                        "be common names. Not known to anim-clip, filled with placeholders: "
                        f"{', '.join(unknown)}; replace them before publishing."),
        "contributors": [{"title": "anim-clip (machine classification)", "role": "contributor"}],
        "project": {"title": "anim-clip predictions", "samplingDesign": "opportunistic",
                    "captureMethod": ["activityDetection"], "individualAnimals": False, "observationLevel": ["media"],
                    "description": f"Placeholders: {', '.join(unknown)}."},
        "spatial": {"type": "Point", "coordinates": [longitude, latitude]},
        "temporal": {"start": min(m.start for m in media).date().isoformat(),
                     "end": max(m.end for m in media).date().isoformat()},
        "taxonomic": [{"scientificName": name} for name in names],
    }


def check_location(location: tuple[float, float] | None) -> tuple[float, float] | None:
    if location is not None and not (-90 <= location[0] <= 90 and -180 <= location[1] <= 180):
        raise AnimClipError(f"--location must be LATITUDE,LONGITUDE in degrees (-90..90, -180..180), got {location}")
    return location


def write_camtrap_dp(directory: str | Path, records: Iterable[Record], header: Mapping[str, Any], *,
                     threshold: float = DEFAULT_THRESHOLD, start_time: datetime | None = None,
                     location: tuple[float, float] | None = None) -> list[Path]:
    """Write the Camtrap DP package of the scored videos into ``directory``: its descriptor and
    three tables. ``header`` is ``Predictor.describe()``; ``location`` is ``(latitude, longitude)``."""
    directory = Path(directory)
    check_threshold(threshold)
    location = check_location(location)
    rows = scored(records)
    if not rows:
        raise AnimClipError("no video was scored, so there is no Camtrap DP package to write")
    media = place_media(rows, start_time)
    created = datetime.now(timezone.utc).replace(microsecond=0)
    common = {"classificationMethod": "machine", "classifiedBy": classified_by(header),
              "classificationTimestamp": timestamp(created)}
    observations = [o for m in media
                    for o in observation_rows(m, timeline_events(timeline(m.record), threshold),
                                              species_source(m.record, header), threshold, common)]
    tables = {"deployments": deployment_rows(media, location), "media": media_rows(media, directory),
              "observations": observations}
    written = [atomic_write_text(directory / f"{t}.csv", csv_text(t, tables[t])) for t in TABLES]
    return [atomic_write_json(directory / "datapackage.json",
                              descriptor(media, observations, header, created, threshold, location)), *written]
