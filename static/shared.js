// What both of the page's modes share (one session at /, a room at /static/room.html):
// the access token, the server's API and its errors in plain words, formatting, the
// camera and microphone, and audio level meters.
"use strict";

window.rtcShared = (() => {
  const TOKEN_KEY = "rtc-recorder.token";
  const ICE_GATHERING_TIMEOUT_MS = 5000;
  const OFFER_PATIENCE_MS = 30000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    error: $("error"),
    errorText: $("error-text"),
    tokenForm: $("token-form"),
    tokenInput: $("token"),
    tokenHelp: $("token-help"),
  };
  // The token the page sends; `onSaved` runs once a new one is entered.
  const auth = { token: readToken(), onSaved: () => {} };

  function readToken() {
    try {
      return localStorage.getItem(TOKEN_KEY) || "";
    } catch {
      return "";
    }
  }

  function saveToken(token) {
    auth.token = token;
    try {
      if (token) localStorage.setItem(TOKEN_KEY, token);
      else localStorage.removeItem(TOKEN_KEY);
    } catch {
      // Storage can be unavailable (private modes): the token then lasts for this page.
    }
  }

  function withToken(path) {
    if (!auth.token) return path;
    const url = new URL(path, location.href);
    url.searchParams.set("token", auth.token);
    return url.pathname + url.search;
  }

  function sentence(text) {
    const trimmed = String(text || "").trim();
    if (!trimmed) return "";
    const first = trimmed[0].toUpperCase() + trimmed.slice(1);
    return /[.!?…]$/.test(first) ? first : first + ".";
  }

  function pad(number, width = 2) {
    return String(number).padStart(width, "0");
  }

  function formatClock(seconds) {
    const tenths = Math.floor(Math.max(0, seconds) * 10 + 1e-6);
    const whole = Math.floor(tenths / 10);
    const hours = Math.floor(whole / 3600);
    const minutes = Math.floor((whole % 3600) / 60);
    const secs = whole % 60;
    const head = hours ? `${hours}:${pad(minutes)}` : pad(minutes);
    return `${head}:${pad(secs)}.${tenths % 10}`;
  }

  function formatDuration(seconds) {
    if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "—";
    const whole = Math.round(seconds);
    const hours = Math.floor(whole / 3600);
    const minutes = Math.floor((whole % 3600) / 60);
    const secs = whole % 60;
    return hours ? `${hours}:${pad(minutes)}:${pad(secs)}` : `${minutes}:${pad(secs)}`;
  }

  function formatSize(bytes) {
    if (typeof bytes !== "number" || bytes < 0) return "—";
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(bytes < 10240 ? 1 : 0)} KB`;
    if (bytes < 1024 ** 3) return `${(bytes / 1024 ** 2).toFixed(1)} MB`;
    return `${(bytes / 1024 ** 3).toFixed(2)} GB`;
  }

  function formatCreated(iso) {
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return "Unknown date";
    return date.toLocaleString(undefined, {
      year: "numeric",
      month: "short",
      day: "numeric",
      hour: "2-digit",
      minute: "2-digit",
      second: "2-digit",
    });
  }

  const CONTAINERS = {
    "video/webm": "WebM",
    "audio/webm": "WebM audio",
    "video/x-matroska": "Matroska",
    "audio/x-matroska": "Matroska audio",
    "video/mp4": "MP4",
    "audio/mp4": "MP4 audio",
    "audio/ogg": "Ogg audio",
    "audio/wav": "WAV audio",
  };
  const CODECS = {
    vp8: "VP8",
    vp9: "VP9",
    av1: "AV1",
    avc1: "H.264",
    h264: "H.264",
    opus: "Opus",
    "mp4a.40.2": "AAC",
    aac: "AAC",
    pcm: "PCM",
  };

  function parseMime(type) {
    const [base, ...params] = String(type || "").split(";");
    const codecs = [];
    for (const param of params) {
      const [key, value] = param.split("=");
      if (key && value && key.trim().toLowerCase() === "codecs") {
        for (const codec of value.replace(/"/g, "").split(",")) {
          if (codec.trim()) codecs.push(codec.trim().toLowerCase());
        }
      }
    }
    return { base: base.trim().toLowerCase(), codecs };
  }

  function mimeLabel(type) {
    const { base, codecs } = parseMime(type);
    const name = CONTAINERS[base] || base || "Unknown type";
    if (!codecs.length) return base === "audio/wav" ? `${name} · PCM` : name;
    return `${name} · ${codecs.map((c) => CODECS[c] || c).join(" + ")}`;
  }

  const isAudioOnly = (type) => parseMime(type).base.startsWith("audio/");

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // -- messages -------------------------------------------------------------------------

  // `keep`: a message already shown stays (it usually says more than this one).
  function showMessage(text, kind = "error", { keep = false } = {}) {
    if (keep && !ui.error.hidden) return;
    ui.errorText.textContent = text;
    ui.error.dataset.kind = kind;
    ui.error.hidden = false;
  }

  function clearMessage() {
    ui.error.hidden = true;
    ui.errorText.textContent = "";
  }

  class ApiError extends Error {
    // `retryAfter`: the seconds the server asked to wait before trying again, if it did.
    constructor(status, name, message, retryAfter = null) {
      super(message);
      this.status = status;
      this.name = name;
      this.retryAfter = retryAfter;
    }
  }

  // What went wrong, in words a person can act on. `action` says what was being done.
  function describe(error, action) {
    if (error instanceof ApiError) {
      if (error.status === 0) {
        return "The server could not be reached. Check that it is running, then try again.";
      }
      if (error.status === 401) {
        return "The server needs a valid access token. Enter it above, then try again.";
      }
      if (error.status >= 500) {
        return `${action}: the server had a problem (${sentence(error.message)})`;
      }
      return `${action}: ${sentence(error.message)}`;
    }
    const name = error && error.name;
    if (name === "NotAllowedError" || name === "SecurityError" || name === "PermissionDeniedError") {
      return "Camera or microphone permission was denied. Allow access to both in the browser's site settings, then connect again.";
    }
    if (name === "NotFoundError" || name === "OverconstrainedError") {
      return "No camera or microphone was found. Plug one in, then connect again.";
    }
    if (name === "NotReadableError" || name === "AbortError") {
      return "The camera or microphone could not be started. Another application may be using it.";
    }
    if (name === "InsecureContext") {
      return "This page can only use the camera over HTTPS or from localhost.";
    }
    if (name === "NoWebRTC") {
      return "This browser cannot send media to the server (WebRTC is not available).";
    }
    return `${action}: ${sentence((error && error.message) || "something went wrong")}`;
  }

  // -- the server's API -----------------------------------------------------------------

  async function api(path, { method = "GET", body, keepalive = false } = {}) {
    const headers = {};
    if (auth.token) headers.Authorization = `Bearer ${auth.token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        keepalive,
      });
    } catch {
      throw new ApiError(0, "NetworkError", "The server could not be reached.");
    }
    let data = null;
    try {
      const text = await response.text();
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (response.status === 401) {
      askForToken();
      throw new ApiError(401, "NotAllowedError", "A valid access token is required.");
    }
    if (!response.ok) {
      const message =
        (data && data.message) || `the server answered ${response.status} ${response.statusText}`;
      const retryAfter = Number.parseInt(response.headers.get("Retry-After") || "", 10);
      throw new ApiError(
        response.status,
        (data && data.error) || "UnknownError",
        message,
        Number.isFinite(retryAfter) ? retryAfter : null,
      );
    }
    return data;
  }

  // `POST /offer`. A server that is busy taking the last sessions asks a new one to wait
  // (503 with Retry-After): the offer is sent again when it says, for OFFER_PATIENCE_MS at
  // most, while `current()` holds; `onWait(seconds)` tells the person.
  async function postOffer(body, current, onWait) {
    const deadline = performance.now() + OFFER_PATIENCE_MS;
    for (;;) {
      try {
        return await api("/offer", { method: "POST", body });
      } catch (error) {
        const wait = error instanceof ApiError && error.status === 503 ? error.retryAfter : null;
        if (wait === null || !current() || performance.now() + wait * 1000 > deadline) throw error;
        onWait(wait);
        await new Promise((resolve) => setTimeout(resolve, wait * 1000));
        if (!current()) throw error;
      }
    }
  }

  // -- sessions and recordings ----------------------------------------------------------

  // Hang-up sent and forgotten (it outlives the page: `keepalive`).
  function hangUpQuietly(session) {
    api(`/api/sessions/${encodeURIComponent(session)}`, { method: "DELETE", keepalive: true }).catch(
      () => {},
    );
  }

  // Hang-up awaited: the error worth telling (none when the session is gone already).
  async function hangUpSession(session) {
    try {
      await api(`/api/sessions/${encodeURIComponent(session)}`, { method: "DELETE" });
      return null;
    } catch (error) {
      const gone = error instanceof ApiError && (error.status === 404 || error.status === 0);
      return gone ? null : error;
    }
  }

  // A function that lists the recordings into `render`, one listing at a time: called
  // while one is on its way, it lists once more after it (so the last call is served).
  function recordingsRefresher(render) {
    let running = null;
    let again = false;
    return function refresh() {
      if (running) {
        again = true;
        return running;
      }
      running = (async () => {
        do {
          again = false;
          try {
            render(await api("/api/recordings"));
          } catch (error) {
            if (!(error instanceof ApiError && error.status === 401)) {
              showMessage(describe(error, "Could not list the recordings"), "error", {
                keep: true,
              });
            }
          }
        } while (again);
        running = null;
      })();
      return running;
    };
  }

  // -- access token ---------------------------------------------------------------------

  function askForToken() {
    const hadToken = Boolean(auth.token);
    if (hadToken) saveToken("");
    ui.tokenHelp.textContent = hadToken
      ? "The saved token was not accepted. Enter the current one; it stays in this browser only."
      : "Enter the token the server was started with. It stays in this browser only.";
    if (ui.tokenForm.hidden) {
      ui.tokenForm.hidden = false;
      ui.tokenInput.value = "";
      ui.tokenInput.focus();
    }
  }

  ui.tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = ui.tokenInput.value.trim();
    if (!token) return;
    saveToken(token);
    ui.tokenForm.hidden = true;
    ui.tokenInput.value = "";
    clearMessage();
    auth.onSaved();
  });

  function iceGathered(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      };
      const check = () => {
        if (pc.iceGatheringState === "complete") done();
      };
      const timer = setTimeout(done, ICE_GATHERING_TIMEOUT_MS);
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  async function getCameraAndMicrophone() {
    if (!window.isSecureContext || !navigator.mediaDevices) {
      throw Object.assign(new Error("insecure context"), { name: "InsecureContext" });
    }
    return navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true },
      video: { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } },
    });
  }

  // -- audio level ---------------------------------------------------------------------

  // A level meter drawn on `canvas`, following the loudness of a stream's audio (its
  // `data-level` attribute says it, 0..1, for tests and assistive tools).
  function createMeter(canvas) {
    const context = canvas.getContext("2d");
    const SEGMENTS = 32;
    let audio = null; // { ctx, analyser, samples }
    let level = 0;
    let peak = 0;
    let peakAt = 0;
    let reported = -1;
    let reportedAt = 0;
    let frame = null;

    function start(stream) {
      stop();
      const Context = window.AudioContext || window.webkitAudioContext;
      if (!Context || stream.getAudioTracks().length === 0) return;
      const ctx = new Context();
      const source = ctx.createMediaStreamSource(stream);
      const analyser = ctx.createAnalyser();
      analyser.fftSize = 1024;
      source.connect(analyser);
      audio = { ctx, analyser, samples: new Float32Array(analyser.fftSize) };
      if (ctx.state === "suspended") ctx.resume().catch(() => {});
      frame = requestAnimationFrame(tick);
    }

    function stop() {
      if (frame !== null) cancelAnimationFrame(frame);
      frame = null;
      if (audio) audio.ctx.close().catch(() => {});
      audio = null;
      level = 0;
      peak = 0;
      report(0, true);
      draw();
    }

    // Loudness on a -60..0 dBFS scale, as 0..1.
    function measure() {
      audio.analyser.getFloatTimeDomainData(audio.samples);
      let sum = 0;
      for (const sample of audio.samples) sum += sample * sample;
      const rms = Math.sqrt(sum / audio.samples.length);
      const db = rms > 0 ? 20 * Math.log10(rms) : -Infinity;
      return Math.min(1, Math.max(0, (db + 60) / 60));
    }

    function report(value, force) {
      const now = performance.now();
      if (!force && now - reportedAt < 100) return;
      const rounded = Math.round(value * 100) / 100;
      if (rounded !== reported) canvas.dataset.level = String(rounded);
      reported = rounded;
      reportedAt = now;
    }

    function tick(now) {
      frame = requestAnimationFrame(tick);
      const value = measure();
      level = Math.max(value, level - 0.02); // fast attack, slow release
      if (value >= peak || now - peakAt > 1200) {
        peak = value;
        peakAt = now;
      }
      report(level);
      draw();
    }

    function fit() {
      const ratio = window.devicePixelRatio || 1;
      const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
      const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
      if (canvas.width !== width || canvas.height !== height) {
        canvas.width = width;
        canvas.height = height;
      }
    }

    function draw() {
      fit();
      const { width, height } = canvas;
      const styles = getComputedStyle(canvas);
      const off = styles.getPropertyValue("--meter-off").trim() || "#2a3040";
      const colors = [
        styles.getPropertyValue("--meter-low").trim() || "#3ecf8e",
        styles.getPropertyValue("--meter-mid").trim() || "#f5b342",
        styles.getPropertyValue("--meter-high").trim() || "#ff5a5f",
      ];
      context.clearRect(0, 0, width, height);
      const gap = Math.max(2, Math.round(width / 250));
      const segment = (width - gap * (SEGMENTS - 1)) / SEGMENTS;
      const lit = Math.round(level * SEGMENTS);
      const peakSegment = Math.min(SEGMENTS - 1, Math.round(peak * SEGMENTS) - 1);
      for (let index = 0; index < SEGMENTS; index += 1) {
        const share = (index + 1) / SEGMENTS;
        const color = share > 0.9 ? colors[2] : share > 0.72 ? colors[1] : colors[0];
        context.fillStyle = index < lit || (audio && index === peakSegment) ? color : off;
        const x = Math.round(index * (segment + gap));
        context.fillRect(x, 0, Math.max(1, Math.round(segment)), height);
      }
    }

    return { start, stop, draw };
  }

  // -- a recorded-time clock ------------------------------------------------------------
  // Shown in `node` (its text, and `data-seconds`): the seconds recorded before `since`,
  // plus the time since then while running.
  function createClock(node) {
    let base = 0;
    let since = null;

    function seconds() {
      return base + (since === null ? 0 : (performance.now() - since) / 1000);
    }

    function draw() {
      const value = seconds();
      const text = formatClock(value);
      if (node.textContent !== text) node.textContent = text;
      node.dataset.seconds = value.toFixed(2);
    }

    function set(value, running) {
      base = Math.max(0, Number(value) || 0);
      since = running ? performance.now() : null;
      draw();
    }

    setInterval(() => {
      if (since !== null) draw();
    }, 50);
    return { set, seconds, running: () => since !== null };
  }

  return {
    $,
    auth,
    withToken,
    sentence,
    pad,
    formatClock,
    formatDuration,
    formatSize,
    formatCreated,
    mimeLabel,
    isAudioOnly,
    element,
    showMessage,
    clearMessage,
    ApiError,
    describe,
    api,
    postOffer,
    hangUpQuietly,
    hangUpSession,
    recordingsRefresher,
    iceGathered,
    getCameraAndMicrophone,
    createMeter,
    createClock,
  };
})();
