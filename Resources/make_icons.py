"""Draws the extension icon and the module icon (128x128 PNGs) with Qt's painter.

    QT_QPA_PLATFORM=offscreen python Resources/make_icons.py

The picture: a scan slice (grey disk) with a segmented organ (filled), outlined by two networks that agree
(an orange and a blue contour, slightly apart): the dual-network method of SemiSupSeg.
"""

import math
import os
import sys

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QGuiApplication, QImage, QPainter, QPainterPath, QPen, QRadialGradient

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUTPUTS = [os.path.join(ROOT, "Resources", "Icons", "SemiSupSeg.png"),
           os.path.join(ROOT, "SemiSupSeg", "Resources", "Icons", "SemiSupSeg.png")]


def organ_path(cx: float, cy: float, r: float, phase: float = 0.0) -> QPainterPath:
    """A smooth blob (an organ's cross-section) around (cx, cy)."""
    path = QPainterPath()
    n = 96
    for i in range(n + 1):
        t = 2 * math.pi * i / n
        rr = r * (1 + 0.16 * math.sin(2 * t + phase) + 0.08 * math.cos(3 * t + 2 * phase))
        p = QPointF(cx + rr * math.cos(t), cy + 0.85 * rr * math.sin(t))
        if i == 0:
            path.moveTo(p)
        else:
            path.lineTo(p)
    path.closeSubpath()
    return path


def draw(size: int = 128) -> QImage:
    image = QImage(size, size, QImage.Format_ARGB32)
    image.fill(Qt.transparent)
    p = QPainter(image)
    p.setRenderHint(QPainter.Antialiasing)
    s = size / 128.0
    # rounded dark tile
    p.setPen(Qt.NoPen)
    p.setBrush(QColor(34, 40, 52))
    p.drawRoundedRect(QRectF(4 * s, 4 * s, 120 * s, 120 * s), 22 * s, 22 * s)
    # the scan slice
    gradient = QRadialGradient(QPointF(60 * s, 58 * s), 52 * s)
    gradient.setColorAt(0.0, QColor(150, 150, 150))
    gradient.setColorAt(0.8, QColor(95, 95, 95))
    gradient.setColorAt(1.0, QColor(60, 60, 60))
    p.setBrush(QBrush(gradient))
    p.drawEllipse(QPointF(64 * s, 64 * s), 50 * s, 46 * s)
    # the segmented organ
    p.setBrush(QColor(110, 200, 120, 170))
    p.drawPath(organ_path(66 * s, 66 * s, 24 * s))
    # two networks' contours
    p.setBrush(Qt.NoBrush)
    p.setPen(QPen(QColor(245, 150, 60), 4.5 * s, Qt.SolidLine, Qt.RoundCap, Qt.RoundJoin))
    p.drawPath(organ_path(64.5 * s, 65 * s, 26.5 * s, 0.25))
    p.setPen(QPen(QColor(80, 170, 245), 4.5 * s, Qt.DashLine, Qt.RoundCap, Qt.RoundJoin))
    p.drawPath(organ_path(67.5 * s, 67 * s, 22 * s, -0.2))
    p.end()
    return image


def main() -> int:
    QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    image = draw(128)
    for path in OUTPUTS:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not image.save(path):
            print(f"could not write {path}", file=sys.stderr)
            return 1
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
