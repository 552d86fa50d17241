"""PyTorch adapter: lifecycle events from your own loop, or from a ready-made one.

Your loop, five lines added or changed::

    with instrument(bus, optimizer, model=model) as run:     # on_train_start ... teardown
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

The canonical order has ``on_params_update`` only inside a batch: a change your loop makes
between epochs (``scheduler.step()`` above) is announced at the next epoch's first optimizer
step, and one made after the last epoch is not announced. :func:`fit` steps an epoch-level
scheduler inside each epoch's last batch instead, so every change is announced there.

No loop: :func:`fit`, :func:`evaluate`, :func:`predict`, :func:`export`.
"""

from __future__ import annotations

from ._torch_loop import evaluate, export, fit, predict
from ._torch_run import PEER_STOP, Run, instrument

__all__ = ["PEER_STOP", "Run", "evaluate", "export", "fit", "instrument", "predict"]
