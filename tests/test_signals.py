"""SIGINT / SIGTERM: deferred to the end of the chunk inside the training loop, at once outside."""

import os
import signal

import pytest

from jaxae.signals import Interrupted, StopOnSignal


def test_inside_the_loop_a_first_signal_asks_to_stop_and_a_second_interrupts():
    before = signal.getsignal(signal.SIGTERM)
    with StopOnSignal() as stop, stop.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested() and stop.signum == signal.SIGTERM
        with pytest.raises(Interrupted) as e:
            os.kill(os.getpid(), signal.SIGINT)
        assert e.value.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


def test_outside_the_loop_a_signal_interrupts_at_once_and_says_how_to_resume(tmp_path):
    with StopOnSignal() as stop:
        assert stop.hint() == ""  # nothing to resume yet
        stop.out = tmp_path
        (tmp_path / "sweep.json").write_text("{}")
        assert f"--resume --out {tmp_path}" in stop.hint()
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGTERM)
        assert not stop.requested()
