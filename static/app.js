// rtc-recorder's page: sends the camera and microphone to the server over WebRTC and
// drives the server's recorder. Every button follows the recorder state the server
// reports (command answers and the events WebSocket), never a local guess.
"use strict";

(() => {
  const TIMESLICES = [250, 500, 1000, 2000, 5000];
  const CONNECT_TIMEOUT_MS = 20000;
  const ECHO_TIMEOUT_MS = { start: 3000, pause: 3000, resume: 3000, stop: 15000 };
  const CLOCK_POLL_MS = 2000;

  const {
    $,
    auth,
    withToken,
    sentence,
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
  } = window.rtcShared;
  const ui = {
    connect: $("connect"),
    start: $("start"),
    pause: $("pause"),
    resume: $("resume"),
    stop: $("stop"),
    hangup: $("hangup"),
    state: $("state"),
    stateDot: $("state-dot"),
    recBadge: $("rec-badge"),
    elapsed: $("elapsed"),
    link: $("link"),
    linkText: $("link-text"),
    mimeType: $("mime-type"),
    timeslice: $("timeslice"),
    serverNote: $("server-note"),
    sessionId: $("session-id"),
    currentFile: $("current-file"),
    written: $("written"),
    preview: $("preview"),
    previewEmpty: $("preview-empty"),
    meter: $("meter"),
    error: $("error"),
    errorText: $("error-text"),
    errorClose: $("error-close"),
    recordings: $("recordings"),
    recordingsEmpty: $("recordings-empty"),
    refresh: $("refresh"),
    playerFrame: $("player-frame"),
    playerCaption: $("player-caption"),
  };

  const STATE_LABELS = { inactive: "Inactive", recording: "Recording", paused: "Paused" };
  const LINK_LABELS = {
    idle: "Not connected",
    connecting: "Connecting…",
    connected: "Connected",
    closing: "Hanging up…",
  };

  const app = {
    config: null,
    link: "idle", // idle | connecting | connected | closing
    generation: 0, // bumped at every teardown: late answers of an old session are dropped
    session: null,
    recorder: "inactive", // the server's recorder state
    recording: null, // the current (or last) recording's file name
    written: 0, // bytes of the current recording the server reported
    busy: null, // the recorder method whose request is in flight
    echoSeen: false, // its event already came over the WebSocket
    pendingEcho: null, // { type, timer }: event that must arrive before events count again
    pc: null,
    stream: null,
    socket: null,
    connectTimer: null,
    pollTimer: null,
    playing: null, // name of the recording in the player
  };

  // -- small helpers --------------------------------------------------------------------

  function timesliceLabel(ms) {
    return ms < 1000 ? `${ms} ms` : `${+(ms / 1000).toFixed(2)} s`;
  }

  // -- configuration --------------------------------------------------------------------

  async function loadConfig() {
    const config = await api("/api/config");
    app.config = config;
    const types = Array.isArray(config.mimeTypes) ? config.mimeTypes.slice() : [];
    if (config.mimeType && !types.includes(config.mimeType)) types.unshift(config.mimeType);
    ui.mimeType.replaceChildren();
    const groups = [
      ["Video and audio", types.filter((t) => !isAudioOnly(t))],
      ["Audio only", types.filter(isAudioOnly)],
    ];
    for (const [label, list] of groups) {
      if (!list.length) continue;
      const group = document.createElement("optgroup");
      group.label = label;
      for (const type of list) {
        const option = new Option(mimeLabel(type), type, false, type === config.mimeType);
        option.title = type;
        group.append(option);
      }
      ui.mimeType.append(group);
    }
    ui.mimeType.value = config.mimeType;

    const slices = TIMESLICES.slice();
    if (Number.isFinite(config.timeslice) && !slices.includes(config.timeslice)) {
      slices.push(config.timeslice);
      slices.sort((a, b) => a - b);
    }
    ui.timeslice.replaceChildren(
      ...slices.map((ms) => new Option(timesliceLabel(ms), String(ms), false, false)),
    );
    ui.timeslice.value = String(config.timeslice);
    ui.serverNote.textContent = config.autoRecord
      ? "This server starts recording as soon as a call connects."
      : "";
    render();
  }

  async function loadEverything() {
    try {
      await loadConfig();
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401)) {
        showMessage(describe(error, "Could not load the server's settings"));
      }
      render();
      return;
    }
    await refreshRecordings();
  }

  // -- buttons and status ---------------------------------------------------------------

  function render() {
    const connected = app.link === "connected";
    const free = app.busy === null;
    const rec = app.recorder;
    ui.connect.disabled = app.link !== "idle";
    ui.start.disabled = !(connected && free && rec === "inactive");
    ui.pause.disabled = !(connected && free && rec === "recording");
    ui.resume.disabled = !(connected && free && rec === "paused");
    ui.stop.disabled = !(connected && free && (rec === "recording" || rec === "paused"));
    ui.hangup.disabled = !connected;
    const choosing = app.config !== null && rec === "inactive" && app.link !== "closing";
    ui.mimeType.disabled = !choosing;
    ui.timeslice.disabled = !choosing;

    ui.state.textContent = STATE_LABELS[rec] || rec;
    ui.state.dataset.state = rec;
    ui.stateDot.dataset.state = rec;
    ui.recBadge.dataset.state = rec;
    ui.recBadge.textContent = rec === "paused" ? "PAUSED" : "REC";
    ui.sessionId.textContent = app.session || "—";
    ui.currentFile.textContent = app.recording || "—";
    ui.currentFile.title = app.recording || "";
    renderWritten();
    ui.link.dataset.state = app.link;
    ui.linkText.textContent = LINK_LABELS[app.link];
    document.body.dataset.link = app.link;
    document.title =
      rec === "recording"
        ? "● Recording — rtc-recorder"
        : rec === "paused"
          ? "❚❚ Paused — rtc-recorder"
          : "rtc-recorder";
  }

  function renderWritten() {
    ui.written.textContent = app.recording ? formatSize(app.written) : "—";
  }

  function setLink(link) {
    app.link = link;
    render();
  }

  // -- the recorded-time clock ----------------------------------------------------------
  // Command answers and a slow poll set it to the server's recordedSeconds.

  const clock = createClock(ui.elapsed);

  function startPolling() {
    stopPolling();
    app.pollTimer = setInterval(pollSession, CLOCK_POLL_MS);
  }

  function stopPolling() {
    if (app.pollTimer !== null) clearInterval(app.pollTimer);
    app.pollTimer = null;
  }

  async function pollSession() {
    if (app.link !== "connected" || app.recorder !== "recording" || app.busy) return;
    const id = app.session;
    const generation = app.generation;
    let session;
    try {
      session = await api(`/api/sessions/${encodeURIComponent(id)}`);
    } catch {
      return; // the events WebSocket reports a session that ended
    }
    const settled = app.busy === null && app.pendingEcho === null;
    if (generation !== app.generation || !settled) return;
    if (session.recorderState === app.recorder && session.recording === app.recording) {
      if (Math.abs(session.recordedSeconds - clock.seconds()) > 0.05) {
        clock.set(session.recordedSeconds, app.recorder === "recording");
      }
    }
  }

  // -- recorder state from the server ---------------------------------------------------

  function applySession(session) {
    app.recorder = session.recorderState || "inactive";
    app.recording = session.recording || null;
    clock.set(session.recordedSeconds || 0, app.recorder === "recording");
    render();
  }

  const ECHO = { start: "start", pause: "pause", resume: "resume", stop: "stop" };

  function waitForEcho(type) {
    clearEcho();
    const timer = setTimeout(() => {
      if (app.pendingEcho && app.pendingEcho.timer === timer) {
        app.pendingEcho = null;
        resync();
      }
    }, ECHO_TIMEOUT_MS[type]);
    app.pendingEcho = { type, timer };
  }

  function clearEcho() {
    if (app.pendingEcho) clearTimeout(app.pendingEcho.timer);
    app.pendingEcho = null;
  }

  async function resync() {
    if (!app.session || app.link !== "connected") return;
    const generation = app.generation;
    try {
      const session = await api(`/api/sessions/${encodeURIComponent(app.session)}`);
      if (generation === app.generation && app.busy === null) applySession(session);
    } catch (error) {
      if (generation !== app.generation) return;
      if (error instanceof ApiError && error.status === 404) {
        lost("The session no longer exists on the server.");
      }
    }
  }

  const FAILURES = {
    start: "Could not start recording",
    pause: "Could not pause",
    resume: "Could not resume",
    stop: "Could not stop recording",
  };

  async function command(method) {
    if (app.busy !== null || app.link !== "connected" || !app.session) return;
    const id = app.session;
    const generation = app.generation;
    let body;
    if (method === "start") {
      body = { mimeType: ui.mimeType.value || undefined, timeslice: Number(ui.timeslice.value) };
      if (!Number.isFinite(body.timeslice) || body.timeslice <= 0) delete body.timeslice;
    }
    clearMessage();
    clearEcho();
    app.busy = method;
    app.echoSeen = false;
    render();
    try {
      const answer = await api(`/api/sessions/${encodeURIComponent(id)}/${method}`, {
        method: "POST",
        body,
      });
      if (generation !== app.generation) return;
      if (method === "start") app.written = 0;
      applySession({ ...answer, recorderState: answer.state });
      if (!app.echoSeen && ECHO[method]) waitForEcho(ECHO[method]);
    } catch (error) {
      if (generation !== app.generation) return;
      showMessage(describe(error, FAILURES[method] || `Could not ${method}`));
      app.busy = null;
      await resync();
    } finally {
      if (generation === app.generation) {
        app.busy = null;
        render();
      }
    }
  }

  // -- events from the server -----------------------------------------------------------

  const CLOSE_REASONS = [
    [/^server stopping/, "The server is shutting down, so the call has ended."],
    [/^idle/, "The call ended because no media reached the server."],
    [/^connection (failed|closed)/, "The media connection to the server was lost."],
    [/hang-up/, "The call was ended on the server."],
  ];

  const LIMITS = { "recording length limit": "length", "recording size limit": "size" };

  function closeReason(reason) {
    for (const [pattern, text] of CLOSE_REASONS) {
      if (pattern.test(reason || "")) return text;
    }
    return `The call ended on the server (${reason || "no reason given"}).`;
  }

  function onEvent(message) {
    const type = message.type;
    if (type === "session") {
      // From here on the file's size is the sum of the dataavailable events' sizes.
      app.written = Number(message.bytes) || 0;
      if (app.busy === null) applySession(message);
      onConnectionState(message.connectionState);
      return;
    }
    if (type === "connectionstatechange") {
      onConnectionState(message.connectionState);
      return;
    }
    if (type === "closed") {
      if (app.link !== "closing") lost(closeReason(message.reason), { tellServer: false });
      return;
    }
    if (type === "limit") {
      const limit = LIMITS[message.reason];
      showMessage(
        limit
          ? `The recording reached the server's ${limit} limit, so it was stopped and saved.`
          : `The recording was stopped: ${sentence(message.reason)}`,
        "info",
      );
      return;
    }
    if (type === "error") {
      showMessage(`Recording failed: ${sentence(message.message || message.error)}`);
    }
    if (type === "dataavailable" && message.name === app.recording) {
      app.written += Number(message.size) || 0;
      renderWritten();
    }
    if (type === "stop") refreshRecordings();
    if (type === "start") refreshRecordings();

    // Recorder state: only from events of the current recording, and not while an answer
    // to one of this page's commands is awaited, or before that command's own event came
    // over the WebSocket (the two travel on different connections).
    if (!["start", "pause", "resume", "stop", "error"].includes(type)) return;
    if (app.busy !== null) {
      if (type === ECHO[app.busy]) app.echoSeen = true;
      return;
    }
    if (app.pendingEcho !== null) {
      if (type !== app.pendingEcho.type) return;
      clearEcho();
    }
    // A start the page did not ask for (auto-record, another client) begins a new file.
    const isNew = type === "start" && Boolean(message.name) && message.name !== app.recording;
    if (!isNew && app.recording && message.name !== app.recording) return;
    if (typeof message.state !== "string") return;
    const wasRunning = clock.running();
    if (isNew) {
      app.recording = message.name;
      app.written = 0;
    }
    app.recorder = message.state;
    const running = app.recorder === "recording";
    if (isNew) clock.set(0, running);
    else if (running !== wasRunning) clock.set(clock.seconds(), running);
    render();
    // The final recorded time (a stop can come from the server: a limit, an error).
    if (type === "stop") resync();
  }

  function onConnectionState(state) {
    if (state === "connected" && app.link === "connecting") {
      clearTimeout(app.connectTimer);
      app.connectTimer = null;
      setLink("connected");
      startPolling();
    }
  }

  function openEvents(id) {
    const url = new URL(`/api/sessions/${encodeURIComponent(id)}/events`, location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    if (auth.token) url.searchParams.set("token", auth.token);
    const socket = new WebSocket(url);
    app.socket = socket;
    socket.addEventListener("message", (event) => {
      if (app.socket !== socket) return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      onEvent(message);
    });
    socket.addEventListener("close", () => {
      if (app.socket !== socket) return;
      app.socket = null;
      if (app.link === "connecting" || app.link === "connected") {
        lost("The connection to the server was lost.");
      }
    });
  }

  // -- connecting and hanging up --------------------------------------------------------

  async function connect() {
    if (app.link !== "idle") return;
    const generation = app.generation;
    clearMessage();
    setLink("connecting");
    try {
      if (app.config === null) await loadConfig();
      if (typeof RTCPeerConnection !== "function") {
        throw Object.assign(new Error("no WebRTC"), { name: "NoWebRTC" });
      }
      const stream = await getCameraAndMicrophone();
      if (generation !== app.generation) {
        stream.getTracks().forEach((track) => track.stop());
        return;
      }
      app.stream = stream;
      ui.preview.srcObject = stream;
      ui.previewEmpty.hidden = true;
      ui.preview.play().catch(() => {});
      meter.start(stream);

      const pc = new RTCPeerConnection({ iceServers: [], bundlePolicy: "max-bundle" });
      app.pc = pc;
      for (const track of stream.getTracks()) {
        pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
      }
      pc.addEventListener("connectionstatechange", () => {
        if (app.pc !== pc) return;
        if (pc.connectionState === "failed") {
          lost("The media connection to the server failed.");
        }
      });
      await pc.setLocalDescription(await pc.createOffer());
      await iceGathered(pc);
      if (generation !== app.generation) return;

      const body = { sdp: pc.localDescription.sdp, type: "offer" };
      if (ui.mimeType.value) body.mimeType = ui.mimeType.value;
      if (Number(ui.timeslice.value) > 0) body.timeslice = Number(ui.timeslice.value);
      const answer = await postOffer(
        body,
        () => generation === app.generation,
        (seconds) => {
          ui.linkText.textContent = `The server is busy: connecting in ${seconds} s…`;
        },
      );
      if (generation !== app.generation) {
        hangUpQuietly(answer.session);
        return;
      }
      app.session = answer.session;
      await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
      openEvents(answer.session);
      app.connectTimer = setTimeout(() => {
        if (generation === app.generation && app.link === "connecting") {
          lost("The media connection to the server could not be set up.");
        }
      }, CONNECT_TIMEOUT_MS);
    } catch (error) {
      if (generation !== app.generation) return;
      showMessage(describe(error, "Could not connect"));
      const session = app.session;
      teardown();
      if (session) hangUpQuietly(session);
    }
  }

  async function hangUp() {
    if (app.link !== "connected") return;
    const id = app.session;
    const generation = app.generation;
    setLink("closing");
    const failure = await hangUpSession(id);
    if (failure && generation === app.generation) {
      showMessage(describe(failure, "The server was not told about the hang-up"));
    }
    if (generation === app.generation) teardown();
    refreshRecordings();
  }

  // The session ended without this page asking: say why, and go back to the start.
  function lost(text, { tellServer = true } = {}) {
    if (app.link === "idle") return;
    const session = app.session;
    showMessage(text);
    teardown();
    if (session && tellServer) hangUpQuietly(session);
    refreshRecordings();
  }

  function teardown() {
    app.generation += 1;
    clearTimeout(app.connectTimer);
    app.connectTimer = null;
    stopPolling();
    clearEcho();
    const socket = app.socket;
    app.socket = null;
    if (socket) socket.close();
    if (app.pc) app.pc.close();
    app.pc = null;
    if (app.stream) app.stream.getTracks().forEach((track) => track.stop());
    app.stream = null;
    meter.stop();
    ui.preview.srcObject = null;
    ui.previewEmpty.hidden = false;
    app.session = null;
    app.recording = null;
    app.recorder = "inactive";
    app.busy = null;
    app.written = 0;
    clock.set(0, false);
    setLink("idle");
  }

  window.addEventListener("pagehide", () => {
    if (app.session) hangUpQuietly(app.session);
  });

  const meter = createMeter(ui.meter);
  window.addEventListener("resize", meter.draw);

  // -- recordings -----------------------------------------------------------------------

  const refreshRecordings = recordingsRefresher(renderRecordings);

  const STATE_BADGES = {
    recording: "Recording",
    complete: "",
    failed: "Failed",
    unknown: "",
  };

  function renderRecordings(list) {
    const entries = Array.isArray(list) ? list : [];
    const items = entries.map(recordingItem);
    ui.recordings.replaceChildren(...items);
    ui.recordingsEmpty.hidden = entries.length > 0;
    if (app.playing && !entries.some((entry) => entry.name === app.playing)) clearPlayer();
  }

  function recordingItem(entry) {
    const item = element("li", "rec");
    item.dataset.testid = "recording";
    item.dataset.name = entry.name;
    item.dataset.state = entry.state;
    if (entry.name === app.playing) item.classList.add("is-playing");
    const live = entry.state === "recording";
    const audioOnly = isAudioOnly(entry.mimeType);

    const play = element("button", "rec-play");
    play.type = "button";
    play.disabled = live;
    play.setAttribute("aria-label", `Play ${entry.name}`);
    play.innerHTML = live
      ? '<svg viewBox="0 0 20 20" aria-hidden="true"><circle cx="10" cy="10" r="4.5"/></svg>'
      : '<svg viewBox="0 0 20 20" aria-hidden="true"><path d="M7 5l8 5-8 5z"/></svg>';
    play.addEventListener("click", () => playRecording(entry));

    const main = element("div", "rec-main");
    const title = element("span", "rec-title", formatCreated(entry.created));
    const badgeText = STATE_BADGES[entry.state];
    if (badgeText) {
      const badge = element("span", `badge badge-${entry.state}`, badgeText);
      title.append(" ", badge);
    }
    const name = element("span", "rec-name", entry.name);
    name.title = entry.name;
    main.append(title, name);

    const meta = element("dl", "rec-meta");
    const facts = [
      ["Duration", live ? "recording…" : formatDuration(entry.duration), "rec-duration"],
      ["Size", formatSize(entry.size), "rec-size"],
      ["Type", mimeLabel(entry.mimeType), "rec-type"],
    ];
    for (const [label, value, className] of facts) {
      const group = element("div", className);
      group.append(element("dt", "visually-hidden", label), element("dd", "", value));
      if (className === "rec-type") group.title = entry.mimeType;
      meta.append(group);
    }
    if (audioOnly) meta.dataset.audio = "true";

    const actions = element("div", "rec-actions");
    const download = element("a", "btn btn-quiet btn-small rec-download", "Download");
    download.href = withToken(`/recordings/${encodeURIComponent(entry.name)}?download=1`);
    download.download = entry.name;
    download.setAttribute("aria-label", `Download ${entry.name}`);
    const remove = element("button", "btn btn-quiet btn-small rec-delete", "Delete");
    remove.type = "button";
    remove.disabled = live;
    remove.setAttribute("aria-label", `Delete ${entry.name}`);
    remove.addEventListener("click", () => deleteRecording(entry, remove));
    actions.append(download, remove);

    item.append(play, main, meta, actions);
    return item;
  }

  function playerElement(audioOnly) {
    const current = $("player");
    const tag = audioOnly ? "AUDIO" : "VIDEO";
    if (current && current.tagName === tag) return current;
    const player = document.createElement(tag.toLowerCase());
    player.id = "player";
    player.controls = true;
    player.preload = "metadata";
    player.setAttribute("playsinline", "");
    player.setAttribute("aria-label", "Recording playback");
    if (current) {
      current.pause();
      current.removeAttribute("src");
      current.load();
      current.replaceWith(player);
    } else {
      ui.playerFrame.prepend(player);
    }
    ui.playerFrame.dataset.kind = audioOnly ? "audio" : "video";
    return player;
  }

  function playRecording(entry) {
    const player = playerElement(isAudioOnly(entry.mimeType));
    app.playing = entry.name;
    player.src = withToken(`/recordings/${encodeURIComponent(entry.name)}`);
    player.dataset.name = entry.name;
    ui.playerCaption.textContent = `${formatCreated(entry.created)} · ${formatDuration(
      entry.duration,
    )} · ${mimeLabel(entry.mimeType)}`;
    ui.playerFrame.classList.add("has-media");
    for (const item of ui.recordings.children) {
      item.classList.toggle("is-playing", item.dataset.name === entry.name);
    }
    player.onerror = () => {
      if (player.dataset.name === entry.name) {
        showMessage("This recording could not be played in this browser. Download it instead.");
      }
    };
    player.play().catch(() => {});
  }

  function clearPlayer() {
    const player = $("player");
    app.playing = null;
    if (player) {
      player.pause();
      player.removeAttribute("src");
      delete player.dataset.name;
      player.load();
    }
    ui.playerFrame.classList.remove("has-media");
    ui.playerCaption.textContent = "";
  }

  async function deleteRecording(entry, button) {
    // The first click asks for confirmation (briefly, so a double click deletes nothing).
    if (button.dataset.confirm !== "true") {
      button.dataset.confirm = "true";
      button.textContent = "Confirm delete";
      button.disabled = true;
      setTimeout(() => {
        button.disabled = false;
      }, 400);
      setTimeout(() => {
        if (button.isConnected && button.dataset.confirm === "true") {
          button.dataset.confirm = "false";
          button.textContent = "Delete";
        }
      }, 5000);
      return;
    }
    button.disabled = true;
    clearMessage();
    try {
      await api(`/api/recordings/${encodeURIComponent(entry.name)}`, { method: "DELETE" });
    } catch (error) {
      showMessage(describe(error, "Could not delete the recording"));
    }
    if (app.playing === entry.name) clearPlayer();
    await refreshRecordings();
  }

  // -- wiring ---------------------------------------------------------------------------

  ui.connect.addEventListener("click", connect);
  ui.start.addEventListener("click", () => command("start"));
  ui.pause.addEventListener("click", () => command("pause"));
  ui.resume.addEventListener("click", () => command("resume"));
  ui.stop.addEventListener("click", () => command("stop"));
  ui.hangup.addEventListener("click", hangUp);
  ui.refresh.addEventListener("click", () => {
    clearMessage();
    refreshRecordings();
  });
  ui.errorClose.addEventListener("click", clearMessage);

  auth.onSaved = loadEverything;
  render();
  meter.draw();
  loadEverything();
})();
