"""The core stands alone: importing eventhooks and running a bus imports no framework."""

from __future__ import annotations

import subprocess
import sys
import textwrap

FRAMEWORKS = ("numpy", "torch", "keras", "ultralytics", "lightning", "transformers")

PROGRAM = textwrap.dedent(
    """
    import sys
    import eventhooks
    from eventhooks import Callback, EventBus, events
    from eventhooks.callbacks import CSVLogger, EarlyStopping, EventLog, History
    from eventhooks.testing import Recorder, assert_canonical_order

    bus = EventBus()
    rec = Recorder(bus)
    history = History()
    bus.attach(history)
    bus.attach(EarlyStopping(monitor="loss", patience=1))
    bus.on(events.on_epoch_end)(lambda p: None)
    bus.emit("on_pretrain_routine_start")
    bus.emit("on_pretrain_routine_end")
    bus.emit("on_train_start")
    for epoch in range(2):
        bus.emit("on_train_epoch_start", epoch=epoch)
        bus.emit("on_train_batch_start", batch=0, epoch=epoch)
        bus.emit("on_train_batch_end", batch=0, epoch=epoch, logs={"loss": 1.0})
        bus.emit("on_train_epoch_end", epoch=epoch, logs={"loss": 1.0})
        bus.emit("on_fit_epoch_end", epoch=epoch, logs={"loss": 1.0})
    bus.emit("on_train_end")
    bus.emit("teardown")
    assert_canonical_order(rec.names)
    print(",".join(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules)))
    """
).replace("{FRAMEWORKS!r}", repr(FRAMEWORKS))


def test_importing_and_running_the_core_imports_no_framework() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"the core imported {done.stdout.strip()}"
