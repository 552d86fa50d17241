"""PyTorch adapter: lifecycle events from your own loop, or from a ready-made one.

Your loop, five lines added or changed::

    with instrument(bus, optimizer, model=model) as run:     # pretrain routine ... teardown
        for epoch in run.epochs(10):                          # epoch begin/end
            for x, y in run.batches(train_loader):            # batch begin/end
                optimizer.zero_grad()                         # on_before_zero_grad (hooked)
                loss = loss_fn(model(x), y)
                loss.backward()
                optimizer.step()                              # optimizer_step (hooked)
                run.log(loss=loss)                            # a tensor: no .item() here
            with torch.no_grad():
                for x, y in run.validation(val_loader):       # on_val_start ... on_val_end
                    run.log(loss=loss_fn(model(x), y))        # -> val_loss
            scheduler.step()                                  # -> on_params_update

The run opens with the pretrain routine (``on_pretrain_routine_start``/``_end``) when the
``with`` block is entered. A change of the optimizer's hyper-parameters is announced where it
happens: at the end of the batch that made it (a per-batch scheduler), or between epochs,
after ``on_fit_epoch_end`` (``scheduler.step()`` above, the last epoch's included; a stop
asked there starts no other epoch). Gradient accumulation (a batch without a step), several
optimizers (several steps in a batch) and a ``run.validation(...)`` after the epoch loop are
in the canonical order.

One validation an epoch is reported (``on_val_start`` ... ``on_val_end``): the epoch's, the
first after its batch loop. Others emit nothing: a validation every N batches, one before the
batch loop, a second loader's; their metrics join the epoch's logs as ``val_`` names (the
latest values win). A sanity validation before ``run.epochs()`` is not reported at all. A
``break`` out of ``run.epochs()``, ``run.batches()`` or ``run.validation()`` ends that loop
at the next ``run.log()`` or wrapper (a later ``run.log()`` is not credited to it).

No loop: :func:`fit`, :func:`evaluate`, :func:`predict`, :func:`export`.
"""

from __future__ import annotations

from ._torch_loop import evaluate, export, fit, predict
from ._torch_run import PEER_STOP, Run, instrument

__all__ = ["PEER_STOP", "Run", "evaluate", "export", "fit", "instrument", "predict"]
