"""What the benchmarks share.

Pre-encoded media and the tracks that send it (:mod:`.media`), the sending processes
(:mod:`.sender`), a bare recording process and its measurements (:mod:`.receiver`, run by
:mod:`.bare`), ``rtc-recorder serve`` as a subprocess and its files (:mod:`.server`, with
aiortc's recorder adapted for it in :mod:`.aiortc_recorder`), what a server recording holds
against what was sent (:mod:`.accounting`), reading recordings back (:mod:`.files`), the
event loop's lag (:mod:`.lag`), the machine's load (:mod:`.machine`), child processes
(:mod:`.children`), the run's environment (:mod:`.environment`), ``recording_load.py``'s
summary and table (:mod:`.report`), and what the processes share (:mod:`.common`)."""
