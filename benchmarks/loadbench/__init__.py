"""The parts of ``benchmarks/recording_load.py``: pre-encoded media and the tracks that send
it (:mod:`.media`), the sending processes (:mod:`.sender`), the recording process and its
measurements (:mod:`.receiver`), the inspection of the recorded files (:mod:`.files`), the
summary and its markdown table (:mod:`.report`), and what the processes share
(:mod:`.common`)."""
