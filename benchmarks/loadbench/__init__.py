"""What the benchmarks share, one module per job.

- :mod:`.media`: the pre-encoded VP8 + Opus loop every sender publishes, and its cache;
- :mod:`.sender`: the sending processes (sessions opened, hung up, paused and reported on
  request) and the orchestrator's side of them;
- :mod:`.receiver`: a bare recording process (aiortc's or rtc-recorder's ``MediaRecorder``
  in a plain aiortc server) and its measurements; :mod:`.bare` runs it with its senders;
- :mod:`.aiortc_order`: aiortc's recorder fed video before audio;
  :mod:`.aiortc_recorder`: aiortc's recorder behind what ``rtc-recorder serve`` uses of a
  recorder;
- :mod:`.server`: ``rtc-recorder serve`` as a subprocess, its API, sidecars and log;
- :mod:`.monitor`: ``/healthz`` probes and the server's CPU and RSS, sampled meanwhile;
- :mod:`.accounting`: what a server recording holds against what was sent, packet by packet;
- :mod:`.files`: reading a recording back (PyAV, and FFmpeg's verdict);
- :mod:`.lag`: the event loop's lag, in process or logged by a server subprocess;
- :mod:`.machine`: the machine's load (busy CPU, load average, CPU pressure);
- :mod:`.children`: child processes with a control pipe each; :mod:`.common`: what those
  processes share (loopback-only WebRTC, the pipe's asyncio end, shutdown on signals);
- :mod:`.report`: figures (percentiles, slopes, means), markdown tables, and
  ``recording_load.py``'s summary and table;
- :mod:`.results`: the results files of a run; :mod:`.environment`: where it ran.
"""
