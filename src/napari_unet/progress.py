"""Long work is a generator of small progress events; `drain` runs one to its end."""
from __future__ import annotations

__all__ = ["drain"]


def drain(events, progress=None, total: int = 100):
    """Run a generator of events to its end, reporting to a tqdm-like ``progress``; return the last event.

    Parameters
    ----------
    events : iterable
        Events with a ``fraction`` (0 to 1) and, for training, a ``loss``.
    progress : tqdm-like, optional
        Receives ``update(n)`` (in ``total`` parts) and ``set_postfix(loss=...)``.
    total : int
        Parts of the whole run given to ``progress``.
    """
    last = None
    shown = 0
    if progress is not None and getattr(progress, "total", None) is None:
        try:
            progress.total = total
        except AttributeError:
            pass
    for event in events:
        last = event
        if progress is not None:
            done = int(round(getattr(event, "fraction", 0.0) * total))
            if done > shown:
                progress.update(done - shown)
                shown = done
            loss = getattr(event, "loss", None)
            if loss is not None and hasattr(progress, "set_postfix"):
                progress.set_postfix(loss=f"{loss:.4f}", refresh=False)
    return last
