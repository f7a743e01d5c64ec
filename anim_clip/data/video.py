"""Video decoding: random access to RGB frames of a file, with decord, PyAV or torchcodec.

``open_video(path)`` returns a :class:`VideoFile`; ``get_frames(indices)`` returns the requested
frames as one uint8 ``(len(indices), H, W, 3)`` RGB tensor, in the requested order (indices may
repeat), on the device the decoder decodes on: the CPU, or the GPU for ``torchcodec-cuda``
(NVDEC), whose frames then never cross the PCIe bus. Every problem with the file itself raises
:class:`~anim_clip.errors.VideoDecodeError` naming the file and the reason, so extraction can
record the clip as bad and go on; a decoder that cannot run on this machine raises
:class:`~anim_clip.errors.DecoderUnavailable` with the fix, before any clip is judged.

A configured CPU decoder (decord, torchcodec) that fails on a file PyAV reads hands that file to
PyAV: ``decord2`` 3.4.0, for one, cannot convert some frame sizes on AVX-512 CPUs (96×64 and 32×32
fail, 100×64 decodes). The file's :attr:`VideoFile.decoder` then says ``pyav`` and its
:attr:`VideoFile.fallback` why; a file PyAV cannot decode either fails with both reasons. A GPU
decoder's failure is never replaced by CPU pixels.

The CPU decoders are all FFmpeg software decoding but do not always give the same pixels: decord
and PyAV agree to the bit on 8-bit video of even height (4:2:0, 4:2:2, 4:4:4, odd widths too),
and differ on 10-bit and on odd-height 4:2:0 video, by up to 22/255 on real footage and 65/255 at
hard colour edges, neither closer to the source (benchmarks/bench_decoder_pixels.py). Their RGB
conversions differ. So the configured decoder is part of a cache's signature, and the cache
records which decoder decoded each clip. NVDEC converts colour on the GPU its own way, which
torchcodec documents as slightly different.

A clip from a phone held upright is stored sideways, with a display matrix (the mp4 ``rotate``)
saying how to turn it. Every backend returns frames the way a player shows them, upright, and
``height`` and ``width`` are the displayed ones, so views are planned on what the viewer sees:
decord and torchcodec (0.11 on) turn the frames themselves, for PyAV (and an older torchcodec)
:meth:`VideoFile.get_frames` turns them, by the counterclockwise quarter turns :func:`_scan` reads
from the first decoded frame (rounded to a multiple of 90°, as torchcodec does; a mirroring matrix
is not undone). torchcodec-cuda relies on torchcodec's own rotation on the GPU, untested on a
machine without one: a 90° or 270° turn it did not make fails the shape check, a 180° one would not.

Every file is first demuxed once with PyAV, every packet of its first video stream, decoding only
its first frame, for the display rotation (:func:`_scan`), whichever backend then decodes it. That
pass is cheap next to decoding and gives what the headers alone cannot:
a file holding fewer packets than its container declares (``stream.frames``), or holding a packet
cut short, is truncated and rejected at open, before any decoder returns half-decoded frames; a
stream with no packets has zero frames. The frame count is the number of packets, which is also
how decord and torchcodec count, so every backend reports the same ``num_frames``.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av

# decord2 dlopens every library of the nvidia-* wheels (PyPI torch's CUDA runtime) RTLD_GLOBAL when
# imported, libnvblas among them; an extension loaded afterwards binds its plain BLAS symbols to
# NVBLAS, and faiss's k-means then segfaults on a machine without an NVBLAS config. Python loads
# extensions RTLD_NOW, so importing faiss first binds it to its own OpenBLAS for good.
import faiss  # noqa: F401  isort: skip
import decord  # isort: skip
import numpy as np
import torch
from rich.markup import escape

from anim_clip.errors import ConfigError, DecoderUnavailable, VideoDecodeError
from anim_clip.ui import console

_DECORD_ERRORS = (decord.DECORDError, RuntimeError)


@contextmanager
def _av_errors(path: Path) -> Iterator[None]:
    """Turn PyAV/FFmpeg exceptions into VideoDecodeError naming the file."""
    try:
        yield
    except av.error.FFmpegError as error:
        raise VideoDecodeError(path, f"ffmpeg: {error.strerror or error}") from error


_DECORD_LOCATION = re.compile(r"\[\d\d:\d\d:\d\d\]\s*\S+:\d+:\s*")


def _decord_reason(error: Exception) -> str:
    """decord's message without its timestamps and C++ source locations."""
    reason = _DECORD_LOCATION.sub("", str(error)).strip()
    return f"decord: {reason or type(error).__name__}"


@dataclass(frozen=True)
class _Scan:
    """What one demux pass learns about the first video stream."""

    pts: list[int | None]
    dts: list[int | None]
    keyframes: np.ndarray
    fps: float
    height: int  # as coded, before the display rotation
    width: int
    turns: int  # counterclockwise quarter turns that show the frames upright

    @property
    def num_frames(self) -> int:
        return len(self.pts)

    @property
    def upright(self) -> tuple[int, int]:
        """``(height, width)`` as displayed."""
        return (self.width, self.height) if self.turns % 2 else (self.height, self.width)


def _quarter_turns(stream: av.VideoStream, packet: av.Packet | None) -> int | None:
    """The display rotation, in counterclockwise quarter turns, that the decoder attaches to the
    stream's first frame (the container's display matrix); None until a frame comes out of it. A
    packet that cannot be decoded gives none (the decoders report the file themselves if it matters)."""
    try:
        frames = stream.decode(packet)
    except av.error.FFmpegError:
        return None
    return round(frames[0].rotation / 90) % 4 if frames else None


def _scan(path: Path) -> _Scan:
    """Demux every packet of the first video stream and validate the file (module docstring)."""
    with _av_errors(path), av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoDecodeError(path, "no video stream")
        stream = container.streams.video[0]
        pts, dts, keyframes = [], [], []
        turns = None
        for packet in container.demux(stream):
            if packet.size == 0:  # the demuxer's end-of-stream flush packet
                continue
            if packet.is_corrupt:
                raise VideoDecodeError(
                    path, f"packet {len(pts)} is cut short or damaged (truncated file?)"
                )
            pts.append(packet.pts)
            dts.append(packet.dts)
            keyframes.append(packet.is_keyframe)
            if turns is None:
                turns = _quarter_turns(stream, packet)
        if not pts:
            raise VideoDecodeError(path, "the video stream has zero frames")
        if stream.frames > len(pts):
            raise VideoDecodeError(
                path,
                f"truncated: the container declares {stream.frames} frames "
                f"but holds only {len(pts)}",
            )
        if turns is None:  # no frame came out yet: flush the decoder
            turns = _quarter_turns(stream, None) or 0
        rate = stream.average_rate or stream.guessed_rate
        return _Scan(
            pts=pts,
            dts=dts,
            keyframes=np.array(keyframes, dtype=bool),
            fps=float(rate) if rate else 0.0,
            height=stream.height,
            width=stream.width,
            turns=turns,
        )


class VideoFile(ABC):
    """An open video file: its metadata and random access to its frames.

    ``fps`` is the container's average frame rate (0.0 when it declares none); ``height`` and
    ``width`` are the displayed frame size (module docstring: rotation). ``decoder`` names the backend whose pixels
    ``get_frames`` returns; ``fallback`` is None, or why the configured decoder failed on this
    file and PyAV decodes it instead.
    """

    device = torch.device("cpu")  # where get_frames puts frames; a GPU decoder sets its own
    decoder: str
    fallback: str | None = None

    def __init__(self, path: Path, num_frames: int, fps: float, height: int, width: int, turns: int = 0):
        """``height`` × ``width`` is what :meth:`_decode` returns; ``get_frames`` turns it
        counterclockwise by ``turns`` quarter turns, the display rotation the backend leaves undone."""
        self.path = path
        self.num_frames = num_frames
        self.fps = fps
        self._decoded_size = (height, width)
        self.turns = turns
        self.height, self.width = (width, height) if turns % 2 else (height, width)

    def get_frames(self, indices: np.ndarray) -> torch.Tensor:
        """Frames ``indices`` as uint8 ``(len(indices), H, W, 3)`` RGB on :attr:`device`, in the given order.

        Each distinct frame is decoded once, in increasing order, whatever order was asked for.
        """
        indices = np.asarray(indices)
        if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(f"indices must be a 1-D integer array, got {indices.dtype} {indices.shape}")
        if len(indices) == 0:
            return torch.empty((0, self.height, self.width, 3), dtype=torch.uint8, device=self.device)
        if indices.min() < 0 or indices.max() >= self.num_frames:
            raise IndexError(
                f"{self.path}: frame indices must lie in [0, {self.num_frames - 1}], "
                f"got [{indices.min()}, {indices.max()}]"
            )
        unique, inverse = np.unique(indices, return_inverse=True)
        frames = self._decode(unique.astype(np.int64))
        if tuple(frames.shape) != (len(unique), *self._decoded_size, 3):
            raise VideoDecodeError(
                self.path,
                f"decoded frames have shape {tuple(frames.shape[1:])}, expected "
                f"{(*self._decoded_size, 3)}",
            )
        if self.turns:
            frames = torch.rot90(frames, self.turns, dims=(1, 2)).contiguous()
        if len(unique) == len(indices) and (unique == indices).all():
            return frames
        return frames[torch.from_numpy(inverse.reshape(-1)).to(frames.device)]

    @abstractmethod
    def _decode(self, indices: np.ndarray) -> torch.Tensor:
        """Decode sorted, unique, in-range ``indices`` to uint8 ``(len, H, W, 3)`` RGB."""

    def close(self) -> None:
        """Release the decoder (a closed file cannot decode)."""

    def __enter__(self) -> VideoFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, frames={self.num_frames}, "
            f"fps={self.fps:.3f}, size={self.width}x{self.height})"
        )


class DecordVideo(VideoFile):
    """decord's ``VideoReader`` on the CPU (the release's decoder, docs/method.md §4.4); it turns
    frames upright itself."""

    decoder = "decord"

    def __init__(self, path: Path, scan: _Scan, threads: int):
        try:
            self._reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads)
        except _DECORD_ERRORS as error:
            raise VideoDecodeError(path, _decord_reason(error)) from error
        super().__init__(path, len(self._reader), self._reader.get_avg_fps(), *scan.upright)

    def _decode(self, indices: np.ndarray) -> torch.Tensor:
        try:
            return torch.from_numpy(self._reader.get_batch(indices.tolist()).asnumpy())
        except _DECORD_ERRORS as error:
            raise VideoDecodeError(self.path, _decord_reason(error)) from error

    def close(self) -> None:
        self._reader = None


@dataclass(frozen=True)
class _SeekIndex:
    """Frame index of each timestamp, and the keyframes a seek can land on."""

    frame_of_pts: dict[int, int]
    key_frames: np.ndarray  # frame indices of the keyframes, increasing
    key_seek_ts: list[int]  # the timestamp a seek to each of them uses

    @classmethod
    def build(cls, scan: _Scan) -> _SeekIndex | None:
        """None when timestamps are missing or repeated, or no packet is marked a keyframe."""
        if None in scan.pts or len(set(scan.pts)) < len(scan.pts) or not scan.keyframes.any():
            return None
        order = np.argsort(np.array(scan.pts, dtype=np.int64), kind="stable")
        frame_of_pts = {scan.pts[p]: k for k, p in enumerate(order.tolist())}
        key_packets = np.flatnonzero(scan.keyframes).tolist()
        key_frames = np.array([frame_of_pts[scan.pts[p]] for p in key_packets], dtype=np.int64)
        # Seek by dts, which the demuxers' seek indexes are keyed on (pts where dts is missing).
        seek_ts = [scan.pts[p] if scan.dts[p] is None else scan.dts[p] for p in key_packets]
        by_frame = np.argsort(key_frames, kind="stable")
        return cls(frame_of_pts, key_frames[by_frame], [seek_ts[i] for i in by_frame.tolist()])

    def keyframe_slot(self, index: int) -> int:
        """Position of the last keyframe at or before frame ``index`` (the first if none)."""
        return max(int(np.searchsorted(self.key_frames, index, side="right")) - 1, 0)

    def seek_skips_frames(self, current: int, target: int) -> bool:
        """Whether seeking to the keyframe before ``target`` skips frames after ``current``."""
        return int(self.key_frames[self.keyframe_slot(target)]) > current + 1


class PyAVVideo(VideoFile):
    """PyAV (FFmpeg) decoding that seeks to the keyframe before each wanted frame.

    Frame k is the packet with the k-th smallest presentation timestamp (decoders output frames
    in presentation order). Sorted wanted frames are decoded in runs: a run seeks to the keyframe
    at or before its first frame and decodes forward; the next wanted frame starts a new run
    only when seeking to its keyframe skips frames that decoding on would have to decode.
    Streams that cannot seek this way (timestamps missing or repeated, no keyframe flags) are
    decoded from the start in one pass, frame k being the k-th decoded frame.
    """

    decoder = "pyav"

    def __init__(self, path: Path, scan: _Scan, threads: int):
        super().__init__(path, scan.num_frames, scan.fps, scan.height, scan.width, scan.turns)
        self._threads = threads
        self._container, self._stream = self._open()
        self._index = _SeekIndex.build(scan)

    def _open(self) -> tuple[av.container.InputContainer, av.VideoStream]:
        with _av_errors(self.path):
            container = av.open(str(self.path))
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.thread_count = self._threads
        return container, stream

    def _rgb(self, frame: av.VideoFrame) -> np.ndarray:
        height, width = self._decoded_size
        return frame.to_ndarray(format="rgb24", width=width, height=height)

    def _missing(self, index: int) -> VideoDecodeError:
        return VideoDecodeError(self.path, f"frame {index} could not be decoded")

    def _decode(self, indices: np.ndarray) -> torch.Tensor:
        out = np.empty((len(indices), *self._decoded_size, 3), dtype=np.uint8)
        with _av_errors(self.path):
            if self._index is None:
                self._decode_from_start(indices, out)
            else:
                done = 0
                while done < len(indices):
                    done = self._decode_run(self._index, indices, done, out)
        return torch.from_numpy(out)

    def _decode_run(self, index: _SeekIndex, indices: np.ndarray, done: int, out: np.ndarray) -> int:
        """Seek before ``indices[done]``, decode forward; return how many frames are now done."""
        seek_ts = index.key_seek_ts[index.keyframe_slot(int(indices[done]))]
        self._container.seek(seek_ts, backward=True, any_frame=False, stream=self._stream)
        for frame in self._container.decode(self._stream):
            k = index.frame_of_pts.get(frame.pts)
            if k is None or k < indices[done]:
                continue
            if k > indices[done]:
                raise self._missing(int(indices[done]))
            out[done] = self._rgb(frame)
            done += 1
            if done == len(indices) or index.seek_skips_frames(k, int(indices[done])):
                return done
        raise self._missing(int(indices[done]))

    def _decode_from_start(self, indices: np.ndarray, out: np.ndarray) -> None:
        """One pass from the first frame, on a freshly opened container (rewinding it)."""
        self.close()
        self._container, self._stream = self._open()
        done = 0
        for k, frame in enumerate(self._container.decode(self._stream)):
            if k == indices[done]:
                out[done] = self._rgb(frame)
                done += 1
                if done == len(indices):
                    return
        raise self._missing(int(indices[done]))

    def close(self) -> None:
        self._container.close()


_TORCHCODEC_LOCATION = re.compile(r"^\w+, \S+:\d+, ")


def _torchcodec_decoder_class(backend: str) -> type:
    """torchcodec's ``VideoDecoder``, or DecoderUnavailable saying what this machine lacks, the
    most basic lack first: without a GPU, installing torchcodec or FFmpeg would not help NVDEC."""
    if backend == "torchcodec-cuda" and not torch.cuda.is_available():
        raise DecoderUnavailable(backend, "it decodes on a CUDA GPU (NVDEC) and torch sees none; "
                                          "decode with decord on this machine")
    try:
        import torchcodec
        from torchcodec.decoders import VideoDecoder
    except ImportError as error:
        raise DecoderUnavailable(backend, f"torchcodec is not installed ({error}); "
                                          "pip install 'anim-clip[gpu]', or decode with decord") from error
    if torchcodec.ffmpeg_major_version is None:
        raise DecoderUnavailable(backend, "torchcodec found no FFmpeg 4-9 shared libraries; install them "
                                          "(apt install ffmpeg, or conda install ffmpeg), or decode with decord")
    return VideoDecoder


class TorchcodecVideo(VideoFile):
    """torchcodec (FFmpeg) with exact, scan-based seeking; on the CPU or on a CUDA GPU with NVDEC.

    On the GPU, frames are decoded and converted to RGB on ``device`` and stay there, so the
    encoder reads them without a host-to-device copy and the CPU cores are free for demuxing.
    """

    def __init__(self, path: Path, scan: _Scan, backend: str, threads: int, device: torch.device | None):
        decoder_class = _torchcodec_decoder_class(backend)
        if backend not in GPU_BACKENDS:
            device = torch.device("cpu")
        elif device is None or device.type != "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        try:
            self._decoder = decoder_class(str(path), device=str(device), seek_mode="exact",
                                          dimension_order="NHWC", num_ffmpeg_threads=threads)
        except (RuntimeError, ValueError) as error:
            raise VideoDecodeError(path, self._reason(error)) from error
        if hasattr(self._decoder.metadata, "rotation"):  # torchcodec 0.11 on turns frames upright
            super().__init__(path, scan.num_frames, scan.fps, *scan.upright)
        else:
            super().__init__(path, scan.num_frames, scan.fps, scan.height, scan.width, scan.turns)
        self.device = device
        self.decoder = backend

    @staticmethod
    def _reason(error: Exception) -> str:
        return f"torchcodec: {_TORCHCODEC_LOCATION.sub('', str(error)).strip() or type(error).__name__}"

    def _decode(self, indices: np.ndarray) -> torch.Tensor:
        try:
            return self._decoder.get_frames_at(indices.tolist()).data
        except (RuntimeError, IndexError) as error:
            raise VideoDecodeError(self.path, self._reason(error)) from error

    def close(self) -> None:
        self._decoder = None


BACKENDS: tuple[str, ...] = ("decord", "pyav", "torchcodec", "torchcodec-cuda")
GPU_BACKENDS: tuple[str, ...] = ("torchcodec-cuda",)
FALLBACK = "pyav"  # the CPU decoder that decodes a file the configured CPU decoder fails on


def _open_alone(path: Path, scan: _Scan, backend: str, threads: int, device: torch.device | None) -> VideoFile:
    if backend == "decord":
        return DecordVideo(path, scan, threads)
    if backend == "pyav":
        return PyAVVideo(path, scan, threads)
    return TorchcodecVideo(path, scan, backend, threads, device)


class FallbackVideo(VideoFile):
    """A configured CPU decoder that hands the whole file to PyAV at its first failure, whether at
    open or while decoding (decord's frame-size failure comes at the first decode).

    Frames returned before a failure stay the configured decoder's; ``decoder`` names the one that
    decodes from then on.
    """

    def __init__(self, path: Path, scan: _Scan, backend: str, threads: int):
        self._scan, self._threads = scan, threads
        self._failure: VideoDecodeError | None = None
        try:
            self._reader = _open_alone(path, scan, backend, threads, None)
        except VideoDecodeError as error:
            self._reader = self._fall_back(error)
        super().__init__(path, self._reader.num_frames, self._reader.fps, self._reader.height, self._reader.width)

    @property
    def decoder(self) -> str:
        return self._reader.decoder

    @property
    def fallback(self) -> str | None:
        return None if self._failure is None else str(self._failure)

    def _both_failed(self, second: VideoDecodeError) -> VideoDecodeError:
        return VideoDecodeError(second.path, f"{self._failure.reason}; {FALLBACK} fallback: {second.reason}")

    def _fall_back(self, error: VideoDecodeError) -> PyAVVideo:
        self._failure = error
        try:
            return PyAVVideo(error.path, self._scan, self._threads)
        except VideoDecodeError as second:
            raise self._both_failed(second) from second

    def _decode(self, indices: np.ndarray) -> torch.Tensor:
        if self._failure is None:
            try:
                return self._reader.get_frames(indices)
            except VideoDecodeError as error:
                self._reader.close()
                self._reader = self._fall_back(error)
        try:
            return self._reader.get_frames(indices)
        except VideoDecodeError as second:
            raise self._both_failed(second) from second

    def close(self) -> None:
        self._reader.close()


class FallbackNotice:
    """Says once, at the first file PyAV decodes in place of the configured decoder, which file,
    which decoder and why; later ones are not repeated (a cache records every clip's decoder)."""

    def __init__(self) -> None:
        self.said = False

    def __call__(self, fallback: str | None) -> None:
        if fallback is None or self.said:
            return
        self.said = True
        console.print(f"[yellow]decoder fallback: {escape(fallback)}; PyAV decodes it instead, and every further file "
                      "the configured decoder fails on (said once)[/]", soft_wrap=True, highlight=False)


def check_decoder(backend: str, worker_processes: int = 0) -> None:
    """Raise now, with the fix, if ``backend`` cannot run on this machine (DecoderUnavailable) or
    in ``worker_processes`` DataLoader workers (ConfigError: they cannot share the GPU's context)."""
    if backend in GPU_BACKENDS and worker_processes:
        raise ConfigError(f"sampling.decoder={backend} decodes on the GPU, which DataLoader worker processes "
                          "cannot share: set train.num_workers=0")
    if backend.startswith("torchcodec"):
        _torchcodec_decoder_class(backend)


def decoder_unavailable(backend: str) -> str | None:
    """Why ``backend`` cannot run on this machine, or None when it can."""
    try:
        check_decoder(backend)
    except DecoderUnavailable as unavailable:
        return unavailable.reason
    return None


def decoder_note(backend: str, device: torch.device) -> str:
    """Which decoder runs where, for the log; names the GPU decoder when a GPU run leaves it unused."""
    note = f"decoder {backend} ({f'NVDEC on {device}' if backend in GPU_BACKENDS else 'CPU'})"
    if backend in GPU_BACKENDS or device.type != "cuda":
        return note
    reason = decoder_unavailable("torchcodec-cuda")
    if reason is not None:
        return f"{note}; no GPU decoder: {reason}"
    return f"{note}; a GPU decoder is available: --set sampling.decoder=torchcodec-cuda"


def open_video(path: str | Path, backend: str = "decord", threads: int = 1,
               device: torch.device | None = None, pyav_fallback: bool = True) -> VideoFile:
    """Open ``path`` for random frame access with ``backend`` (one of :data:`BACKENDS`).

    ``threads`` is the CPU decoder's thread count (0 lets the decoder choose); a GPU backend
    decodes on ``device`` (default: the current CUDA device). A CPU backend that fails on this
    file hands it to PyAV unless ``pyav_fallback`` is False (module docstring). Raises
    VideoDecodeError when the file is missing, empty, not a video, truncated, has no frames or
    cannot be decoded, and DecoderUnavailable when ``backend`` cannot run here.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(path, "file not found")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)")
    check_decoder(backend)  # what this machine lacks first, before the file is judged
    scan = _scan(path)
    if pyav_fallback and backend not in (FALLBACK, *GPU_BACKENDS):
        return FallbackVideo(path, scan, backend, threads)
    return _open_alone(path, scan, backend, threads, device)
