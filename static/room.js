// rtc-recorder's room mode: joins a room publishing the camera and microphone (/offer
// with `room`), watches and hears every other participant through one WHEP subscription
// each (added and removed as the room's events WebSocket says who joins and leaves),
// drives the room's recording, and lists room recordings with their mix, files and
// composite. Every state shown comes from the server (answers and events).
"use strict";

(() => {
  const {
    $,
    auth,
    withToken,
    sentence,
    formatDuration,
    formatSize,
    formatCreated,
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

  const CONNECT_TIMEOUT_MS = 20000;
  const JOB_POLL_MS = 500;
  const LIST_RETRY_MS = 1000;
  const NAME_KEY = "rtc-recorder.display-name";
  const STATE_LABELS = { inactive: "Inactive", recording: "Recording", paused: "Paused" };
  const LINK_LABELS = {
    idle: "Not in a room",
    joining: "Joining…",
    joined: "In the room",
    leaving: "Leaving…",
  };
  // The recorder state each room recording event leaves (when the event does not say).
  const EVENT_STATES = { start: "recording", pause: "paused", resume: "recording", stop: "inactive" };

  const ui = {
    joinForm: $("join-form"),
    roomName: $("room-name"),
    displayName: $("display-name"),
    join: $("join"),
    leave: $("leave"),
    link: $("link"),
    linkText: $("link-text"),
    tiles: $("tiles"),
    preview: $("preview"),
    selfName: $("self-name"),
    meter: $("meter"),
    start: $("start"),
    pause: $("pause"),
    resume: $("resume"),
    stop: $("stop"),
    state: $("state"),
    stateDot: $("state-dot"),
    recBadge: $("rec-badge"),
    elapsed: $("elapsed"),
    currentFile: $("current-file"),
    participants: $("participants"),
    recordings: $("recordings"),
    recordingsEmpty: $("recordings-empty"),
    refresh: $("refresh"),
    errorClose: $("error-close"),
  };

  const app = {
    link: "idle", // idle | joining | joined | leaving
    generation: 0, // bumped when leaving: late answers of an earlier call are dropped
    room: null,
    session: null, // this page's own session in the room
    pc: null,
    stream: null,
    socket: null,
    seq: -1, // the last event's seq
    people: new Map(), // session -> { session, name, kinds, muted, tile, sub }
    left: new Set(), // sessions that left (a snapshot older than their leave event lists them)
    recorder: "inactive",
    recording: null,
    busy: null, // the recording command in flight
    connectTimer: null,
  };
  const clock = createClock(ui.elapsed);
  const selfMeter = createMeter(ui.meter);
  const jobs = new Map(); // recording name -> { state, progress, output, error }

  const roomPath = (suffix = "") => `/api/rooms/${encodeURIComponent(app.room)}${suffix}`;

  function authHeaders(extra = {}) {
    return auth.token ? { ...extra, Authorization: `Bearer ${auth.token}` } : extra;
  }

  // -- what the page shows --------------------------------------------------------------

  function render() {
    const joined = app.link === "joined";
    const free = app.busy === null;
    const rec = app.recorder;
    ui.join.disabled = app.link !== "idle";
    ui.roomName.disabled = app.link !== "idle";
    ui.displayName.disabled = app.link !== "idle";
    ui.leave.disabled = !joined;
    ui.start.disabled = !(joined && free && rec === "inactive");
    ui.pause.disabled = !(joined && free && rec === "recording");
    ui.resume.disabled = !(joined && free && rec === "paused");
    ui.stop.disabled = !(joined && free && (rec === "recording" || rec === "paused"));
    ui.state.textContent = STATE_LABELS[rec] || rec;
    ui.state.dataset.state = rec;
    ui.stateDot.dataset.state = rec;
    ui.recBadge.dataset.state = rec;
    ui.recBadge.textContent = rec === "paused" ? "PAUSED" : "REC";
    ui.currentFile.textContent = app.recording || "—";
    ui.link.dataset.state = app.link;
    ui.linkText.textContent =
      app.link === "joined" ? `In room ${app.room}` : LINK_LABELS[app.link];
    document.body.dataset.link = app.link;
    document.title = app.room && app.link === "joined" ? `${app.room} — rtc-recorder` : "Room — rtc-recorder";
  }

  function setLink(link) {
    app.link = link;
    render();
  }

  function renderPeople() {
    const rows = [];
    for (const person of app.people.values()) {
      const row = element("li", "person");
      row.dataset.testid = "participant";
      row.dataset.session = person.session;
      const self = person.session === app.session;
      row.append(element("span", "person-name", person.name || person.session));
      if (self) row.append(element("span", "badge", "you"));
      for (const kind of ["audio", "video"]) {
        if (person.muted.has(kind)) row.append(element("span", "badge badge-muted", `${kind} off`));
      }
      rows.push(row);
    }
    ui.participants.replaceChildren(...rows);
  }

  // -- recording state ------------------------------------------------------------------

  // The room's recording as GET /api/rooms/{room} or a command's answer tells it.
  function applyRecording(info) {
    const state = info.state || info.recorderState;
    app.recorder = state in STATE_LABELS ? state : "inactive";
    if (info.recording) app.recording = info.recording;
    const seconds = info.recordedSeconds;
    if (typeof seconds === "number") clock.set(seconds, app.recorder === "recording");
    else if (app.recorder === "inactive") clock.set(clock.seconds(), false);
    render();
  }

  function onRecordingEvent(message) {
    const state = typeof message.state === "string" ? message.state : EVENT_STATES[message.type];
    if (message.type === "error") {
      showMessage(`The room recording failed: ${sentence(message.message || message.error)}`);
    }
    if (state === undefined) return;
    const wasRunning = clock.running();
    if (message.type === "start") {
      app.recording = message.name || message.recording || app.recording;
      clock.set(0, state === "recording");
    }
    app.recorder = state;
    const running = state === "recording";
    if (message.type !== "start" && running !== wasRunning) clock.set(clock.seconds(), running);
    render();
    if (message.type === "start" || message.type === "stop") refreshRecordings();
  }

  const FAILURES = {
    start: "Could not start recording the room",
    pause: "Could not pause",
    resume: "Could not resume",
    stop: "Could not stop the room recording",
  };

  async function command(method) {
    if (app.busy !== null || app.link !== "joined") return;
    const generation = app.generation;
    clearMessage();
    app.busy = method;
    render();
    try {
      const answer = await api(roomPath(`/${method}`), {
        method: "POST",
        body: method === "start" ? {} : undefined,
      });
      if (generation === app.generation && answer) applyRecording(answer);
    } catch (error) {
      if (generation === app.generation) showMessage(describe(error, FAILURES[method]));
    } finally {
      if (generation === app.generation) {
        app.busy = null;
        render();
      }
    }
  }

  // -- other participants: a tile and a WHEP subscription each --------------------------

  function addPerson({ session, name, kinds }) {
    if (!session) return;
    let person = app.people.get(session);
    if (!person) {
      person = { session, name: name || "", kinds: kinds || [], muted: new Set(), tile: null, sub: null };
      app.people.set(session, person);
      if (session !== app.session) {
        person.tile = createTile(person);
        subscribe(person);
      }
    } else if (name) {
      person.name = name;
      if (person.tile) person.tile.caption.textContent = name;
    }
    renderPeople();
  }

  function removePerson(session) {
    const person = app.people.get(session);
    if (!person) return;
    app.people.delete(session);
    unsubscribe(person);
    if (person.tile) {
      person.tile.meter.stop();
      person.tile.video.srcObject = null;
      person.tile.node.remove();
    }
    renderPeople();
  }

  function setMuted(session, kind, muted) {
    const person = app.people.get(session);
    if (!person || !kind) return;
    if (muted) person.muted.add(kind);
    else person.muted.delete(kind);
    if (person.tile) person.tile.node.dataset[`${kind}Muted`] = String(muted);
    renderPeople();
  }

  function createTile(person) {
    const node = element("figure", "tile");
    node.dataset.testid = "participant-tile";
    node.dataset.session = person.session;
    const video = element("video");
    video.autoplay = true;
    video.playsInline = true;
    video.setAttribute("aria-label", `${person.name || "A participant"}'s camera`);
    const caption = element("span", "tile-name", person.name || person.session);
    const figcaption = element("figcaption");
    figcaption.append(caption);
    const canvas = element("canvas", "tile-meter");
    canvas.width = 200;
    canvas.height = 8;
    canvas.dataset.level = "0";
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", `${person.name || "A participant"}'s sound level`);
    node.append(video, figcaption, canvas);
    ui.tiles.append(node);
    const meter = createMeter(canvas);
    meter.draw();
    return { node, video, caption, meter };
  }

  // One recvonly peer connection asking the server (WHEP) for `person`'s media.
  async function subscribe(person) {
    const generation = app.generation;
    const pc = new RTCPeerConnection({ iceServers: [], bundlePolicy: "max-bundle" });
    const sub = { pc, location: null };
    person.sub = sub;
    const stream = new MediaStream();
    pc.addTransceiver("audio", { direction: "recvonly" });
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addEventListener("track", (event) => {
      stream.addTrack(event.track);
      const { video, meter } = person.tile;
      if (video.srcObject !== stream) video.srcObject = stream;
      video.play().catch(() => {});
      if (event.track.kind === "audio") meter.start(stream);
    });
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await iceGathered(pc);
      if (person.sub !== sub) return pc.close();
      const answer = await postWhep(person.session, pc.localDescription.sdp);
      sub.location = answer.location;
      if (person.sub !== sub || generation !== app.generation) return endSubscription(sub);
      await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    } catch (error) {
      if (person.sub !== sub) return endSubscription(sub);
      if (app.people.has(person.session)) {
        showMessage(describe(error, `Could not watch ${person.name || "a participant"}`));
      }
    }
  }

  async function postWhep(session, sdp) {
    let response;
    try {
      response = await fetch(`/whep/${encodeURIComponent(session)}`, {
        method: "POST",
        headers: authHeaders({ "Content-Type": "application/sdp" }),
        body: sdp,
        cache: "no-store",
      });
    } catch {
      throw new ApiError(0, "NetworkError", "The server could not be reached.");
    }
    const text = await response.text();
    if (response.status !== 201) {
      let message = `the server answered ${response.status} ${response.statusText}`;
      try {
        message = JSON.parse(text).message || message;
      } catch {
        // not JSON: the status says it
      }
      throw new ApiError(response.status, "WhepError", message);
    }
    return { sdp: text, location: response.headers.get("Location") };
  }

  function unsubscribe(person) {
    const sub = person.sub;
    person.sub = null;
    if (sub) endSubscription(sub);
  }

  function endSubscription(sub) {
    sub.pc.close();
    if (sub.location) {
      fetch(sub.location, { method: "DELETE", headers: authHeaders(), keepalive: true }).catch(
        () => {},
      );
    }
  }

  // -- the room's events ----------------------------------------------------------------

  function onEvent(message) {
    if (message.type === "room") {
      // The room as it is when the socket opens: events numbered after it follow.
      applyRoom(message);
      if (typeof message.seq === "number") app.seq = Math.max(app.seq, message.seq);
      return;
    }
    if (typeof message.seq === "number") {
      if (message.seq <= app.seq) return;
      app.seq = message.seq;
    }
    const type = message.type;
    if (type === "join") addPerson(message);
    else if (type === "leave") {
      app.left.add(message.session);
      removePerson(message.session);
    }
    else if (type === "mute" || type === "unmute") setMuted(message.session, message.kind, type === "mute");
    else onRecordingEvent(message);
  }

  function openEvents() {
    const url = new URL(roomPath("/events"), location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    if (auth.token) url.searchParams.set("token", auth.token);
    const socket = new WebSocket(url);
    app.socket = socket;
    const opened = new Promise((resolve, reject) => {
      socket.addEventListener("open", resolve, { once: true });
      socket.addEventListener("error", () => reject(new Error("the room's events could not be followed")), { once: true });
    });
    socket.addEventListener("message", (event) => {
      if (app.socket !== socket) return;
      try {
        onEvent(JSON.parse(event.data));
      } catch (error) {
        if (!(error instanceof SyntaxError)) throw error;
      }
    });
    socket.addEventListener("close", () => {
      if (app.socket !== socket) return;
      app.socket = null;
      if (app.link === "joining" || app.link === "joined") lost("The connection to the room was lost.");
    });
    return opened;
  }

  // What the room is now: its participants and its recording (events after this merge in).
  function applyRoom(info) {
    for (const person of info.participants || []) {
      if (!app.left.has(person.session)) addPerson(person);
    }
    applyRecording(info);
  }

  async function loadRoom() {
    applyRoom(await api(roomPath()));
  }

  // -- joining and leaving --------------------------------------------------------------

  async function join(event) {
    event.preventDefault();
    if (app.link !== "idle" || !ui.joinForm.reportValidity()) return;
    const generation = app.generation;
    clearMessage();
    app.room = ui.roomName.value.trim();
    const name = ui.displayName.value.trim();
    try {
      localStorage.setItem(NAME_KEY, name);
    } catch {
      // Storage can be unavailable: the name is then asked again next time.
    }
    history.replaceState(null, "", `?room=${encodeURIComponent(app.room)}`);
    setLink("joining");
    try {
      if (typeof RTCPeerConnection !== "function") {
        throw Object.assign(new Error("no WebRTC"), { name: "NoWebRTC" });
      }
      const stream = await getCameraAndMicrophone();
      if (generation !== app.generation) return stream.getTracks().forEach((t) => t.stop());
      app.stream = stream;
      ui.preview.srcObject = stream;
      ui.preview.play().catch(() => {});
      ui.selfName.textContent = name ? `${name} (you)` : "You";
      selfMeter.start(stream);

      const pc = new RTCPeerConnection({ iceServers: [], bundlePolicy: "max-bundle" });
      app.pc = pc;
      for (const track of stream.getTracks()) {
        pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
      }
      pc.addEventListener("connectionstatechange", () => onConnectionState(pc));
      await pc.setLocalDescription(await pc.createOffer());
      await iceGathered(pc);
      if (generation !== app.generation) return;
      const body = { sdp: pc.localDescription.sdp, type: "offer", room: app.room };
      if (name) body.name = name;
      const answer = await postOffer(
        body,
        () => generation === app.generation,
        (seconds) => {
          ui.linkText.textContent = `The server is busy: joining in ${seconds} s…`;
        },
      );
      if (generation !== app.generation) return hangUpQuietly(answer.session);
      app.session = answer.session;
      ui.tiles.querySelector("#self-tile").dataset.session = answer.session;
      await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
      await openEvents();
      await loadRoom();
      app.connectTimer = setTimeout(() => {
        if (generation === app.generation && app.link === "joining") {
          lost("The media connection to the server could not be set up.");
        }
      }, CONNECT_TIMEOUT_MS);
      onConnectionState(pc);
    } catch (error) {
      if (generation !== app.generation) return;
      showMessage(describe(error, "Could not join the room"));
      const session = app.session;
      teardown();
      if (session) hangUpQuietly(session);
    }
  }

  function onConnectionState(pc) {
    if (app.pc !== pc) return;
    if (pc.connectionState === "connected" && app.link === "joining") {
      clearTimeout(app.connectTimer);
      setLink("joined");
    } else if (pc.connectionState === "failed") {
      lost("The media connection to the server failed.");
    }
  }

  async function leave() {
    if (app.link !== "joined") return;
    const session = app.session;
    const generation = app.generation;
    setLink("leaving");
    const failure = await hangUpSession(session);
    if (failure && generation === app.generation) {
      showMessage(describe(failure, "The server was not told that you left"));
    }
    if (generation === app.generation) teardown();
    refreshRecordings();
  }

  function lost(text) {
    if (app.link === "idle") return;
    const session = app.session;
    showMessage(text);
    teardown();
    if (session) hangUpQuietly(session);
    refreshRecordings();
  }

  function teardown() {
    app.generation += 1;
    clearTimeout(app.connectTimer);
    const socket = app.socket;
    app.socket = null;
    if (socket) socket.close();
    for (const session of [...app.people.keys()]) removePerson(session);
    if (app.pc) app.pc.close();
    app.pc = null;
    if (app.stream) app.stream.getTracks().forEach((track) => track.stop());
    app.stream = null;
    selfMeter.stop();
    ui.preview.srcObject = null;
    app.session = null;
    app.seq = -1;
    app.left.clear();
    app.recorder = "inactive";
    app.recording = null;
    app.busy = null;
    clock.set(0, false);
    setLink("idle");
  }

  window.addEventListener("pagehide", () => {
    if (app.session) hangUpQuietly(app.session);
  });

  // -- room recordings ------------------------------------------------------------------

  let retryTimer = null;
  const refreshRecordings = recordingsRefresher(renderRecordings);

  function renderRecordings(list) {
    const entries = (Array.isArray(list) ? list : []).filter((entry) => entry.room);
    // A room recording the server is still finalizing is looked at again shortly.
    clearTimeout(retryTimer);
    if (entries.some((entry) => entry.state === "recording" && entry.name !== app.recording)) {
      retryTimer = setTimeout(refreshRecordings, LIST_RETRY_MS);
    }
    const open = new Set(
      [...ui.recordings.querySelectorAll("audio")].filter((a) => !a.paused).map((a) => a.dataset.name),
    );
    const items = entries.map((entry) => (open.has(entry.name) ? keptItem(entry) : roomItem(entry)));
    ui.recordings.replaceChildren(...items);
    ui.recordingsEmpty.hidden = entries.length > 0;
  }

  // An entry whose mix is playing keeps its element (re-creating it would stop the sound).
  function keptItem(entry) {
    return ui.recordings.querySelector(`li[data-name="${CSS.escape(entry.name)}"]`) || roomItem(entry);
  }

  const fileUrl = (name, file, download = false) =>
    withToken(
      `/recordings/${encodeURIComponent(name)}/${encodeURIComponent(file)}${download ? "?download=1" : ""}`,
    );

  function roomItem(entry) {
    const item = element("li", "room-rec");
    item.dataset.testid = "room-recording";
    item.dataset.name = entry.name;
    item.dataset.state = entry.state || "complete";
    const live = entry.state === "recording";

    const head = element("div", "room-rec-head");
    head.append(element("span", "rec-title", `${entry.room} · ${formatCreated(entry.created)}`));
    if (live) head.append(" ", element("span", "badge badge-recording", "Recording"));
    head.append(element("span", "rec-name", entry.name));
    const facts = element("span", "muted small rec-facts");
    facts.textContent = `${live ? "recording…" : formatDuration(entry.duration)} · ${formatSize(entry.size)}`;
    head.append(facts);

    const people = element("ul", "rec-people");
    people.setAttribute("aria-label", `Participants of ${entry.name}`);
    for (const person of entry.participants || []) {
      const li = element("li", "rec-person", person.name || person.session);
      li.dataset.testid = "recording-participant";
      people.append(li);
    }

    const files = entry.files || [];
    const mix = files.find((file) => file.startsWith("mix."));
    item.append(head, people);
    if (mix && !live) {
      const audio = element("audio", "rec-mix");
      audio.controls = true;
      audio.preload = "metadata";
      audio.src = fileUrl(entry.name, mix);
      audio.dataset.name = entry.name;
      audio.setAttribute("aria-label", `The mix of ${entry.name}`);
      item.append(audio);
    }

    const links = element("ul", "rec-files");
    links.setAttribute("aria-label", `Files of ${entry.name}`);
    for (const file of files) {
      const li = element("li");
      const link = element("a", "btn btn-quiet btn-small rec-download", file);
      link.href = fileUrl(entry.name, file, true);
      link.download = file;
      link.setAttribute("aria-label", `Download ${file} of ${entry.name}`);
      li.append(link);
      links.append(li);
    }
    item.append(links);
    if (!live) item.append(composeControls(entry));
    return item;
  }

  // -- composites -----------------------------------------------------------------------

  function composeControls(entry) {
    const box = element("div", "compose");
    box.dataset.testid = "compose";
    const button = element("button", "btn btn-small compose-start", "Composite");
    button.type = "button";
    button.setAttribute("aria-label", `Composite ${entry.name}`);
    const progress = element("progress", "compose-progress");
    progress.max = 1;
    progress.setAttribute("aria-label", `Composite of ${entry.name}`);
    const status = element("span", "compose-status small muted");
    const link = element("a", "compose-output");
    box.append(button, progress, status, link);
    button.addEventListener("click", () => compose(entry.name));
    showJob(box, entry.name);
    return box;
  }

  function showJob(box, name) {
    const job = jobs.get(name);
    const [button, progress, status, link] = box.children;
    box.dataset.state = job ? job.state : "none";
    button.disabled = Boolean(job && !["done", "failed", "cancelled"].includes(job.state));
    progress.hidden = !job;
    link.hidden = !(job && job.state === "done" && job.output);
    if (!job) {
      status.textContent = "";
      return;
    }
    progress.value = job.progress || 0;
    box.dataset.progress = String(job.progress || 0);
    status.textContent =
      job.state === "failed"
        ? `Failed: ${sentence(job.error)}`
        : job.state === "done"
          ? "Done"
          : `${job.state === "queued" ? "Waiting" : "Composing"} ${Math.round((job.progress || 0) * 100)} %`;
    if (job.state === "done" && job.output) {
      link.href = fileUrl(name, job.output);
      link.textContent = `Open ${job.output}`;
      link.target = "_blank";
      link.rel = "noopener";
    }
  }

  function showJobs(name) {
    const item = ui.recordings.querySelector(`li[data-name="${CSS.escape(name)}"] .compose`);
    if (item) showJob(item, name);
  }

  async function compose(name) {
    clearMessage();
    let job;
    try {
      job = await api(`/api/recordings/${encodeURIComponent(name)}/compose`, {
        method: "POST",
        body: { layout: "grid" },
      });
    } catch (error) {
      showMessage(describe(error, "Could not start the composite"));
      return;
    }
    jobs.set(name, job);
    showJobs(name);
    while (!["done", "failed", "cancelled"].includes(job.state)) {
      await new Promise((resolve) => setTimeout(resolve, JOB_POLL_MS));
      try {
        job = await api(`/api/jobs/${encodeURIComponent(job.job)}`);
      } catch (error) {
        showMessage(describe(error, "Could not follow the composite"));
        return;
      }
      jobs.set(name, job);
      showJobs(name);
    }
    if (job.state === "done") refreshRecordings();
  }

  // -- wiring ---------------------------------------------------------------------------

  function prefill() {
    const params = new URLSearchParams(location.search);
    ui.roomName.value = params.get("room") || "";
    try {
      ui.displayName.value = params.get("name") || localStorage.getItem(NAME_KEY) || "";
    } catch {
      ui.displayName.value = params.get("name") || "";
    }
  }

  ui.joinForm.addEventListener("submit", join);
  ui.leave.addEventListener("click", leave);
  ui.start.addEventListener("click", () => command("start"));
  ui.pause.addEventListener("click", () => command("pause"));
  ui.resume.addEventListener("click", () => command("resume"));
  ui.stop.addEventListener("click", () => command("stop"));
  ui.refresh.addEventListener("click", () => {
    clearMessage();
    refreshRecordings();
  });
  ui.errorClose.addEventListener("click", clearMessage);
  window.addEventListener("resize", selfMeter.draw);
  auth.onSaved = refreshRecordings;

  prefill();
  render();
  selfMeter.draw();
  refreshRecordings();
})();
