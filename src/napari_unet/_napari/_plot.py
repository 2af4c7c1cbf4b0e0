"""A small live plot of the training and validation loss, drawn with QPainter.

matplotlib's Qt canvas takes tens of milliseconds per redraw; this widget draws a few hundred line
segments in well under a millisecond and redraws at most a few times a second, so updating it during
training never stalls the viewer.
"""
from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt, QTimer
from qtpy.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["LossPlot"]

TRAIN_COLOR = QColor(90, 160, 255)
SMOOTH_COLOR = QColor(140, 200, 255)
VAL_COLOR = QColor(255, 150, 60)


class LossPlot(QWidget):
    """Training loss (raw and smoothed) and validation loss against the step, log-scaled.

    Parameters
    ----------
    parent : QWidget, optional
    min_interval_ms : int
        Redraws are coalesced to at most one per this many milliseconds.

    Attributes
    ----------
    train : list of (float, float)
        (step, loss) points.
    validation : list of (float, float)
        (step, validation loss) points.
    paint_count : int
        Number of repaints so far (tests use it to check that the plot is updated but throttled).
    """

    def __init__(self, parent=None, min_interval_ms: int = 200):
        super().__init__(parent)
        self.train: list = []
        self.validation: list = []
        self.runs: list = []  # steps where a new (continued) run starts
        self.paint_count = 0
        self._pending = False
        self._timer = QTimer(self)  # cool-down between repaints
        self._timer.setSingleShot(True)
        self._timer.setInterval(min_interval_ms)
        self._timer.timeout.connect(self._cooled_down)
        self.setMinimumHeight(130)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setFixedHeight(150)
        self.setToolTip("Training loss (blue, smoothed in light blue) and validation loss (orange), log scale")

    # ---------------------------------------------------------------------------------------- data
    def clear(self) -> None:
        """Forget all points."""
        self.train.clear()
        self.validation.clear()
        self.runs.clear()
        self.request_update()

    def last_step(self) -> float:
        """Largest step plotted (0 when empty)."""
        steps = [p[0] for p in self.train[-1:]] + [p[0] for p in self.validation[-1:]]
        return max(steps, default=0)

    def start_run(self) -> float:
        """Mark the start of a continued run; returns the step offset to add to its steps."""
        offset = self.last_step()
        if offset:
            self.runs.append(offset)
        return offset

    def add_train(self, points) -> None:
        """Append (step, loss) points."""
        self.train.extend((float(s), float(v)) for s, v in points if v is not None and math.isfinite(v))
        self.request_update()

    def add_validation(self, step, loss) -> None:
        """Append one validation point."""
        if loss is not None and math.isfinite(loss):
            self.validation.append((float(step), float(loss)))
            self.request_update()

    def request_update(self) -> None:
        """Repaint soon: at once (in the same frame as the widget's other updates) unless a repaint
        happened less than ``min_interval_ms`` ago, in which case once that interval is over."""
        if self._timer.isActive():
            self._pending = True
        else:
            self.update()
            self._timer.start()

    def _cooled_down(self) -> None:
        if self._pending:
            self._pending = False
            self.update()
            self._timer.start()

    # -------------------------------------------------------------------------------------- drawing
    def paintEvent(self, event):  # noqa: N802 (Qt name)
        self.paint_count += 1
        p = QPainter(self)
        try:
            p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
            self._draw(p)
        finally:
            p.end()

    def _draw(self, p: QPainter) -> None:
        w, h = self.width(), self.height()
        text = self.palette().color(self.foregroundRole())
        p.fillRect(self.rect(), self.palette().color(self.backgroundRole()).darker(115))
        font = QFont(self.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        p.setFont(font)
        left, right, top, bottom = 44, 8, 8, 20
        box = QRectF(left, top, max(10, w - left - right), max(10, h - top - bottom))
        p.setPen(QPen(text, 1))
        p.drawRect(box)
        values = [v for _, v in self.train] + [v for _, v in self.validation]
        if not values:
            p.drawText(box, Qt.AlignmentFlag.AlignCenter, "loss appears here during training")
            return
        lo, hi = min(values), max(values)
        lo = max(lo, 1e-6)
        hi = max(hi, lo * 1.01)
        llo, lhi = math.log10(lo), math.log10(hi)
        pad = 0.05 * (lhi - llo)
        llo, lhi = llo - pad, lhi + pad
        x_max = max(self.last_step(), 1.0)

        def to_px(step, value):
            x = box.left() + box.width() * (step / x_max)
            y = box.bottom() - box.height() * (math.log10(max(value, 1e-6)) - llo) / (lhi - llo)
            return QPointF(x, y)

        # axes labels: loss range and last step
        p.drawText(QRectF(0, box.top() - 2, left - 4, 14), Qt.AlignmentFlag.AlignRight, f"{hi:.3g}")
        p.drawText(QRectF(0, box.bottom() - 12, left - 4, 14), Qt.AlignmentFlag.AlignRight, f"{lo:.3g}")
        p.drawText(QRectF(box.left(), box.bottom() + 2, box.width(), 16), Qt.AlignmentFlag.AlignRight,
                   f"step {int(x_max)}")
        p.drawText(QRectF(box.left(), box.bottom() + 2, box.width(), 16), Qt.AlignmentFlag.AlignLeft, "0")
        for step in self.runs:  # where a fine-tuning run started
            p.setPen(QPen(text, 1, Qt.PenStyle.DashLine))
            x = to_px(step, lo).x()
            p.drawLine(QPointF(x, box.top()), QPointF(x, box.bottom()))

        points = _decimate(self.train, int(box.width()))
        if points:
            p.setPen(QPen(TRAIN_COLOR, 1))
            p.drawPath(_path([to_px(s, v) for s, v in points]))
            smooth = _ema(points, 0.9)
            p.setPen(QPen(SMOOTH_COLOR, 2))
            p.drawPath(_path([to_px(s, v) for s, v in smooth]))
        if self.validation:
            pts = [to_px(s, v) for s, v in self.validation]
            p.setPen(QPen(VAL_COLOR, 2))
            p.drawPath(_path(pts))
            p.setBrush(VAL_COLOR)
            for pt in pts[-50:]:
                p.drawEllipse(pt, 2.5, 2.5)
        # legend
        p.setPen(QPen(TRAIN_COLOR, 2))
        p.drawText(QRectF(box.right() - 150, box.top() + 2, 70, 14), Qt.AlignmentFlag.AlignRight, "train")
        p.setPen(QPen(VAL_COLOR, 2))
        p.drawText(QRectF(box.right() - 78, box.top() + 2, 74, 14), Qt.AlignmentFlag.AlignRight, "validation")


def _decimate(points, width: int):
    """At most about two points per horizontal pixel (keeps drawing cost independent of run length)."""
    n = len(points)
    limit = max(2 * width, 2)
    if n <= limit:
        return points
    step = n / limit
    return [points[int(i * step)] for i in range(limit)] + [points[-1]]


def _ema(points, alpha: float):
    out, acc = [], None
    for s, v in points:
        acc = v if acc is None else alpha * acc + (1 - alpha) * v
        out.append((s, acc))
    return out


def _path(pts) -> QPainterPath:
    path = QPainterPath()
    if pts:
        path.moveTo(pts[0])
        for pt in pts[1:]:
            path.lineTo(pt)
    return path
