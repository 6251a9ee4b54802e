"""One viewer load in headless Chromium, measured: for bench/viewer.py.

A load opens ``/pacs-viewer/viewer?StudyInstanceUIDs=...`` in a page of a browser context
holding the bench radiologist's session cookies, and records:

- from Chrome's DevTools protocol (Network domain): every request's finish time, status,
  protocol, encoded length (on the wire, headers included) and whether the cache served it;
- from the page: when the canvas first shows the image (a probe on every animation frame
  draws Cornerstone's canvas onto a 32x32 canvas and looks for lit pixels) and OHIF's own
  console timers (``studyToFirstImage``, ``scriptToView``), on the page's clock (0 = the
  start of navigation);
- frames: when each slice's first response finished (its first pass: the first byte range
  of a progressive frame, else the whole frame) and when it was complete (a 200, or the
  206 of its last byte range).
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.harness import wait_for

STALL_SECONDS = 10.0
FIRST_IMAGE_TIMEOUT = 120.0
FRAMES_TIMEOUT = 400.0
# Page-side probes, installed before any of the page's own scripts run.
PAGE_HOOKS = """
(() => {
  // When OHIF ends each console timer, on the page's clock.
  const timers = {};
  Object.defineProperty(window, '__nnTimerEnds', { value: timers });
  const original = console.timeEnd;
  console.timeEnd = function (label) {
    if (!(label in timers)) timers[label] = performance.now();
    return original.apply(this, arguments);
  };
  // When Cornerstone's canvas first holds an image: more than 3% of a 32x32 copy lit.
  const canvasMarks = {};
  Object.defineProperty(window, '__nnCanvas', { value: canvasMarks });
  const look = () => {
    const canvas = document.querySelector('canvas.cornerstone-canvas');
    if (canvas && canvas.width > 0 && canvas.height > 0) {
      const probe = document.createElement('canvas');
      probe.width = probe.height = 32;
      const context = probe.getContext('2d', { willReadFrequently: true });
      context.drawImage(canvas, 0, 0, 32, 32);
      const data = context.getImageData(0, 0, 32, 32).data;
      let lit = 0;
      for (let i = 0; i < data.length; i += 4) {
        if (data[i] + data[i + 1] + data[i + 2] > 60) lit += 1;
      }
      if (lit > 32) {
        canvasMarks.firstImage = performance.now();
        return;
      }
    }
    requestAnimationFrame(look);
  };
  requestAnimationFrame(look);
})();
"""


class NetworkChanged(RuntimeError):
    """Chromium dropped its connections: the machine's interfaces changed during the load
    (``net::ERR_NETWORK_CHANGED``; containers started by other work do that)."""


def kind_of(url: str) -> str:
    """Which part of the traffic a request belongs to."""
    path = "/" + url.split("://", 1)[-1].split("/", 1)[-1]
    if path.startswith("/api/pacs/dicom-web/"):
        return "frames" if "/frames/" in path else "dicomweb_other"
    if path.startswith("/pacs-viewer/"):
        return "viewer_app"
    if path.startswith("/api/"):
        return "api_other"
    return "other"


def completes(status: int, headers: dict[str, str]) -> bool:
    """Whether a response with ``status`` and ``headers`` (any case) ends its resource."""
    if status == 200:
        return True
    content_range = {k.lower(): v for k, v in headers.items()}.get("content-range", "")
    match = re.fullmatch(r"bytes \d+-(\d+)/(\d+)", content_range)
    return status == 206 and match is not None and int(match[1]) == int(match[2]) - 1


@dataclass
class Request:
    url: str
    kind: str
    sent: float
    status: int | None = None
    finished: float | None = None
    encoded_bytes: int = 0
    failed: str | None = None
    whole: bool = False  # the response completes the resource: 200, or a last byte range
    protocol: str = ""
    from_cache: bool = False


@dataclass
class NetworkLog:
    """Chrome DevTools Network events of one page, by request id."""

    requests: dict[str, Request] = field(default_factory=dict)
    document_sent: float | None = None

    def attach(self, cdp) -> None:
        cdp.on("Network.requestWillBeSent", self._sent)
        cdp.on("Network.responseReceived", self._response)
        cdp.on("Network.requestServedFromCache", self._from_cache)
        cdp.on("Network.loadingFinished", self._finished)
        cdp.on("Network.loadingFailed", self._failed)
        cdp.send("Network.enable")

    def _sent(self, event: dict) -> None:
        url = event["request"]["url"]
        if event.get("type") == "Document" and self.document_sent is None:
            self.document_sent = event["timestamp"]
        # A redirect reuses the id: the earlier hop is finished, keep the new URL.
        self.requests[event["requestId"]] = Request(url, kind_of(url), event["timestamp"])

    def _response(self, event: dict) -> None:
        request = self.requests.get(event["requestId"])
        if request is not None:
            response = event["response"]
            request.status = response["status"]
            request.whole = completes(request.status, response.get("headers", {}))
            request.protocol = response.get("protocol", "")
            request.from_cache |= bool(
                response.get("fromDiskCache") or response.get("fromPrefetchCache")
            )

    def _from_cache(self, event: dict) -> None:
        request = self.requests.get(event["requestId"])
        if request is not None:
            request.from_cache = True

    def _finished(self, event: dict) -> None:
        request = self.requests.get(event["requestId"])
        if request is not None:
            request.finished = event["timestamp"]
            request.encoded_bytes = int(event["encodedDataLength"])

    def _failed(self, event: dict) -> None:
        request = self.requests.get(event["requestId"])
        if request is not None:
            request.failed = event.get("errorText", "failed")

    def _first_per_url(self, keep: Callable[[Request], bool]) -> list[Request]:
        seen: dict[str, Request] = {}
        for request in self.requests.values():
            if request.kind != "frames" or not request.finished or not keep(request):
                continue
            if request.url not in seen or request.finished < (seen[request.url].finished or 0):
                seen[request.url] = request
        return sorted(seen.values(), key=lambda r: r.finished or 0)

    def frames_done(self) -> list[Request]:
        """Frame requests that finished a frame (200, or the 206 of its last byte range, as
        the viewer loads a frame progressively), the first finish per URL."""
        return self._first_per_url(lambda r: r.whole)

    def first_passes(self) -> list[Request]:
        """Each frame's first successful response (a first byte range, or the whole frame)."""
        return self._first_per_url(lambda r: r.status in (200, 206))

    def bytes_by_kind(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for request in self.requests.values():
            totals[request.kind] = totals.get(request.kind, 0) + request.encoded_bytes
        return totals

    def protocols(self) -> dict[str, int]:
        """How many responses came over each protocol (``h2``, ``http/1.1``)."""
        counts: dict[str, int] = {}
        for request in self.requests.values():
            if request.protocol and not request.from_cache:
                counts[request.protocol] = counts.get(request.protocol, 0) + 1
        return counts

    def from_cache(self) -> int:
        return sum(1 for r in self.requests.values() if r.from_cache)

    def check_network(self) -> None:
        """Raise :class:`NetworkChanged` if Chromium saw the machine's network change."""
        if any(r.failed == "net::ERR_NETWORK_CHANGED" for r in self.requests.values()):
            raise NetworkChanged("Chromium saw the machine's network change during the load")

    def errors(self) -> list[tuple[str, int | None, str | None]]:
        return [
            (r.url, r.status, r.failed)
            for r in self.requests.values()
            if r.failed or (r.status is not None and r.status >= 400)
        ]


def poll(page, condition: Callable[[], bool], timeout: float, what: str) -> None:
    """:func:`wait_for` while playwright keeps delivering page and CDP events."""
    wait_for(condition, timeout, what, sleep=lambda seconds: page.wait_for_timeout(seconds * 1e3))


def ohif_timings(console: list[str]) -> dict[str, float]:
    """OHIF's console timers (``name: 123.4 ms``) as printed."""
    found = {}
    for text in console:
        name, _, rest = text.strip().partition(": ")
        if rest.endswith(" ms") and name.isidentifier():
            try:
                found[name] = float(rest[:-3])
            except ValueError:
                continue
    return found


def part_content_type(cdp, network: NetworkLog, request: Request) -> str:
    """The Content-Type line of the first part of a multipart frame response."""
    request_id = next(rid for rid, r in network.requests.items() if r is request)
    try:
        body = cdp.send("Network.getResponseBody", {"requestId": request_id})
    except Exception as exc:  # evicted or not kept by Chrome: say so in the results
        return f"unavailable ({str(exc)[-60:]})"
    raw = base64.b64decode(body["body"]) if body["base64Encoded"] else body["body"].encode()
    for line in raw[:600].decode("latin-1").split("\r\n"):
        if line.lower().startswith("content-type:"):
            return line.split(":", 1)[1].strip()
    return ""


def scroll_through(page, count: int) -> None:
    """Scroll the viewport through the whole stack with the mouse wheel (one image a notch)."""
    box = page.locator("canvas.cornerstone-canvas").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(count):
        page.mouse.wheel(0, 100)
        page.wait_for_timeout(20)


@dataclass
class PageLoad:
    """A page of ``context`` opened on ``url``, its network log and console."""

    page: Any
    cdp: Any
    network: NetworkLog
    console: list[str]

    @classmethod
    def open(cls, context, url: str, emulate: dict[str, Any] | None = None) -> PageLoad:
        """Navigate a new page to ``url``; ``emulate``: Chrome's network emulation."""
        page = context.new_page()
        page.add_init_script(PAGE_HOOKS)
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        cdp = context.new_cdp_session(page)
        network = NetworkLog()
        network.attach(cdp)
        if emulate:
            cdp.send("Network.emulateNetworkConditions", emulate)
        page.goto(url, wait_until="commit")
        return cls(page, cdp, network, console)

    def marks(self) -> dict[str, float]:
        """The page's marks, seconds from navigation start: ``canvas`` and OHIF's timers."""
        found = self.page.evaluate(
            "() => ({...window.__nnTimerEnds, canvas: window.__nnCanvas.firstImage})"
        )
        return {name: value / 1000 for name, value in found.items() if value is not None}

    def wait_first_image(self, label: str) -> None:
        """Until the canvas shows an image and OHIF has marked its first image."""
        marks = ("canvas", "studyToFirstImage")

        def shown() -> bool:
            self.network.check_network()
            return all(m in self.marks() for m in marks)

        try:
            poll(self.page, shown, FIRST_IMAGE_TIMEOUT, f"the first image of the {label} study")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}: page {self.page.url}, marks {self.marks()}, failed "
                               f"requests {self.network.errors()[:5]}, console "
                               f"{self.console[-5:]}") from exc  # fmt: skip

    def wait_all_frames(self, label: str, expected: int) -> dict[str, Any]:
        """Until every frame is complete; scrolls through the stack if OHIF's prefetch
        stops short of it. What was seen: part Content-Type, prefetched, scrolled."""
        last = (0, time.monotonic())
        seen = {"part_content_type": ""}

        def all_or_stalled() -> bool:
            nonlocal last
            self.network.check_network()
            finished = self.network.frames_done()
            if finished and not seen["part_content_type"]:  # before Chrome evicts the body
                seen["part_content_type"] = part_content_type(self.cdp, self.network, finished[0])
            if len(finished) >= expected:
                return True
            if len(finished) != last[0]:
                last = (len(finished), time.monotonic())
            return time.monotonic() - last[1] > STALL_SECONDS

        poll(self.page, all_or_stalled, FRAMES_TIMEOUT, f"the {label} frames")
        prefetched = len(self.network.frames_done())
        if prefetched < expected:
            scroll_through(self.page, expected)
            last = (prefetched, time.monotonic())
            poll(self.page, all_or_stalled, FRAMES_TIMEOUT, f"the {label} frames after scrolling")
        if len(self.network.frames_done()) < expected:
            raise RuntimeError(f"{label}: only {len(self.network.frames_done())} of {expected} "
                               "frames were fetched")  # fmt: skip
        return {**seen, "prefetched": prefetched, "scrolled": prefetched < expected}

    def timeline(self) -> dict[str, float]:
        """Frame times, seconds from the document request: first, all, first pass of all."""
        origin = self.network.document_sent
        assert origin is not None, "no document request seen"
        done, passes = self.network.frames_done(), self.network.first_passes()
        return {
            "nav_to_first_frame_s": (done[0].finished or 0) - origin,
            "nav_to_all_frames_s": (done[-1].finished or 0) - origin,
            "first_to_all_frames_s": (done[-1].finished or 0) - (done[0].finished or 0),
            "nav_to_first_pass_all_s": (passes[-1].finished or 0) - origin,
        }
