"""Synthetic screen content: a domain for the fine-tuning example (docs/training.md).

``python -m iqlut_gpu.train.synth_screen OUT [--count N] [--seed S] [--size WxH]``

Writes N PNG "screenshots" to OUT (``screen_000.png`` ...), each a function of the seed
and its number only: a desktop (flat, or a two-colour gradient), then windows in a light
or dark theme, each with a title bar and its buttons, a menu bar, lines of text in
Pillow's bundled font (``ImageFont.load_default(size)``, FreeType's anti-aliased
rendering) at sizes from 9 to 30 pixels, push buttons, check boxes, a table with grid
lines, a scroll bar, a progress bar and small icons; one-pixel lines and borders are
drawn without anti-aliasing, as a desktop draws them. The words are random strings of
letters and digits (no text from anywhere). Nothing here is a photograph, and the
installed training photos hold no such image, so it is a domain the shipped models have
not seen.

Made only with Pillow (its own font, so the images are the same wherever the same Pillow
version renders them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

LIGHT = dict(window=(246, 246, 246), title=(222, 226, 232), title_text=(30, 30, 30),
             text=(20, 20, 20), dim=(110, 110, 110), border=(160, 164, 170),
             button=(232, 232, 236), accent=(38, 112, 216), field=(255, 255, 255))
DARK = dict(window=(40, 42, 46), title=(28, 30, 33), title_text=(230, 230, 230),
            text=(225, 225, 225), dim=(150, 150, 150), border=(80, 84, 90),
            button=(58, 61, 66), accent=(80, 160, 255), field=(24, 25, 28))
LETTERS = "abcdefghijklmnopqrstuvwxyz"
SIZES = (9, 10, 11, 12, 13, 14, 16, 18, 20, 24, 30)


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _words(rng, n: int) -> str:
    out = []
    for _ in range(n):
        k = int(rng.integers(1, 10))
        w = "".join(LETTERS[i] for i in rng.integers(0, 26, k))
        r = rng.random()
        if r < 0.15:
            w = w.capitalize()
        elif r < 0.2:
            w = str(int(rng.integers(0, 10000)))
        elif r < 0.23:
            w = w.upper()
        out.append(w)
    text = " ".join(out)
    return text + (rng.choice([".", ",", ":", ""]) if rng.random() < 0.5 else "")


def _color(rng, lo: int = 0, hi: int = 256) -> tuple:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def _desktop(rng, w: int, h: int) -> np.ndarray:
    a, b = np.array(_color(rng, 20, 200), float), np.array(_color(rng, 20, 200), float)
    if rng.random() < 0.4:
        return np.broadcast_to(a.astype(np.uint8), (h, w, 3)).copy()
    t = (np.arange(h)[:, None] / max(h - 1, 1)) if rng.random() < 0.5 else (np.arange(w)[None, :] / max(w - 1, 1))
    t = np.broadcast_to(t, (h, w))[..., None]
    return np.round(a * (1 - t) + b * t).astype(np.uint8)


def _text(draw, rng, x, y, size, color, max_w) -> int:
    """A line of words at (x, y) that fits in ``max_w``; returns its height."""
    font = _font(size)
    text = _words(rng, int(rng.integers(2, 14)))
    while text and draw.textlength(text, font=font) > max_w:
        text = text[: max(0, len(text) - 4)].rstrip()
    if text:
        draw.text((x, y), text, fill=color, font=font)
    return int(size * 1.35) + 1


def _window(draw, rng, x0, y0, x1, y1, th) -> None:
    draw.rectangle([x0, y0, x1, y1], fill=th["window"], outline=th["border"])
    bar = int(rng.integers(22, 34))
    draw.rectangle([x0 + 1, y0 + 1, x1 - 1, y0 + bar], fill=th["title"])
    draw.line([x0 + 1, y0 + bar, x1 - 1, y0 + bar], fill=th["border"])
    _text(draw, rng, x0 + 10, y0 + (bar - 14) // 2, int(rng.choice((11, 12, 13, 14))),
          th["title_text"], (x1 - x0) - 90)
    for i, col in enumerate(((232, 80, 70), (240, 190, 60), (90, 190, 80))):  # window buttons
        cx = x1 - 14 - 20 * i
        r = 6
        draw.ellipse([cx - r, y0 + bar // 2 - r, cx + r, y0 + bar // 2 + r], fill=col)
    y = y0 + bar + 1
    if rng.random() < 0.7:  # menu bar
        draw.rectangle([x0 + 1, y, x1 - 1, y + 20], fill=th["button"])
        x = x0 + 8
        font = _font(12)
        for _ in range(int(rng.integers(3, 7))):
            word = _words(rng, 1).strip(".,:").capitalize()[:9] or "File"
            if x + draw.textlength(word, font=font) > x1 - 8:
                break
            draw.text((x, y + 3), word, fill=th["text"], font=font)
            x += int(draw.textlength(word, font=font)) + 16
        y += 21
    y += 6
    inner_w = x1 - x0 - 34
    while y < y1 - 40:
        kind = rng.random()
        if kind < 0.45:  # a paragraph of text
            size = int(rng.choice(SIZES))
            for _ in range(int(rng.integers(1, 5))):
                if y + size * 1.4 > y1 - 24:
                    break
                y += _text(draw, rng, x0 + 12, y, size, th["text"] if rng.random() < 0.8 else th["dim"],
                           inner_w)
            y += 4
        elif kind < 0.6:  # buttons
            x = x0 + 12
            for _ in range(int(rng.integers(1, 4))):
                label = _words(rng, 1).strip(".,:").capitalize()[:10] or "Ok"
                font = _font(12)
                bw = int(draw.textlength(label, font=font)) + 24
                if x + bw > x1 - 22:
                    break
                primary = rng.random() < 0.3
                draw.rounded_rectangle([x, y, x + bw, y + 24], radius=4,
                                       fill=th["accent"] if primary else th["button"], outline=th["border"])
                draw.text((x + 12, y + 5), label, fill=(255, 255, 255) if primary else th["text"], font=font)
                x += bw + 10
            y += 32
        elif kind < 0.72:  # check boxes
            for _ in range(int(rng.integers(1, 4))):
                if y > y1 - 40:
                    break
                draw.rectangle([x0 + 14, y + 2, x0 + 26, y + 14], fill=th["field"], outline=th["border"])
                if rng.random() < 0.5:
                    draw.line([x0 + 16, y + 8, x0 + 19, y + 12, x0 + 25, y + 4], fill=th["accent"], width=2)
                _text(draw, rng, x0 + 34, y, 12, th["text"], inner_w - 30)
                y += 20
            y += 4
        elif kind < 0.86:  # a table with grid lines
            rows, cols = int(rng.integers(2, 6)), int(rng.integers(2, 5))
            cw = max(30, inner_w // cols)
            rh = 20
            for r in range(rows):
                if y + rh > y1 - 30:
                    break
                if r == 0:
                    draw.rectangle([x0 + 12, y, x0 + 12 + cw * cols, y + rh], fill=th["button"])
                for c in range(cols):
                    _text(draw, rng, x0 + 16 + c * cw, y + 4, 11, th["text"], cw - 8)
                    draw.line([x0 + 12 + c * cw, y, x0 + 12 + c * cw, y + rh], fill=th["border"])
                draw.line([x0 + 12, y + rh, x0 + 12 + cw * cols, y + rh], fill=th["border"])
                y += rh
            y += 8
        else:  # an input field, a progress bar, icons
            draw.rectangle([x0 + 12, y, x1 - 30, y + 22], fill=th["field"], outline=th["border"])
            _text(draw, rng, x0 + 18, y + 4, 12, th["dim"], inner_w - 40)
            y += 30
            if y < y1 - 40:
                fill = float(rng.random())
                draw.rectangle([x0 + 12, y, x1 - 30, y + 8], fill=th["button"], outline=th["border"])
                draw.rectangle([x0 + 13, y + 1, x0 + 13 + int((x1 - x0 - 44) * fill), y + 7], fill=th["accent"])
                y += 16
            x = x0 + 12
            for _ in range(int(rng.integers(0, 6))):
                if y > y1 - 50 or x > x1 - 60:
                    break
                col = _color(rng, 40, 240)
                if rng.random() < 0.5:
                    draw.rounded_rectangle([x, y, x + 32, y + 32], radius=6, fill=col)
                else:
                    draw.ellipse([x, y, x + 32, y + 32], fill=col)
                x += 44
            y += 40
    # a scroll bar
    draw.rectangle([x1 - 14, y0 + bar + 2, x1 - 2, y1 - 2], fill=th["button"])
    top = int(rng.integers(y0 + bar + 4, max(y0 + bar + 5, y1 - 60)))
    draw.rounded_rectangle([x1 - 12, top, x1 - 4, min(y1 - 4, top + 50)], radius=3, fill=th["border"])


def screen(seed: int, index: int, width: int = 640, height: int = 400) -> np.ndarray:
    """One synthetic screenshot (uint8 RGB, ``height x width``)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng([seed, index])
    img = Image.fromarray(_desktop(rng, width, height))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):
        th = LIGHT if rng.random() < 0.6 else DARK
        ww = int(rng.integers(width // 2, width - 10))
        wh = int(rng.integers(height // 2, height - 10))
        x0 = int(rng.integers(0, width - ww))
        y0 = int(rng.integers(0, height - wh))
        _window(draw, rng, x0, y0, x0 + ww - 1, y0 + wh - 1, th)
    return np.asarray(img)


def write(out: Path, count: int, seed: int, width: int, height: int) -> list[Path]:
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        p = out / f"screen_{i:03d}.png"
        Image.fromarray(screen(seed, i, width, height)).save(p)
        paths.append(p)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m iqlut_gpu.train.synth_screen",
                                description="Write synthetic screen-content images (PNG).")
    p.add_argument("out", help="folder to write screen_NNN.png into")
    p.add_argument("--count", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="640x400", metavar="WxH")
    args = p.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        p.error(f"--size takes WxH, got {args.size!r}")
    if width < 160 or height < 120 or args.count < 1:
        p.error("--size must be at least 160x120 and --count at least 1")
    paths = write(Path(args.out), args.count, args.seed, width, height)
    print(f"wrote {len(paths)} images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
