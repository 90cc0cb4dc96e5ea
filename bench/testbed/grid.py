"""A captioned grid of teacher renders of evaluation prompts, one row per GenEval tag."""
from __future__ import annotations

import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from bench.testbed.captions import SKILLS
from bench.testbed.prompts import eval_prompts
from bench.testbed.teacher import render

GRID_PATH = Path(__file__).resolve().parents[2] / "results" / "testbed" / "teacher_grid.png"

def teacher_grid(resolution: int = 32, per_tag: int = 6, scale: int = 4, seed: int = 0) -> Image.Image:
    """Rows: tags; cells: renders upscaled `scale`x with nearest neighbour (the pixels the model
    sees) over their prompt. Prompts are spread over each tag's list, held-out ones included."""
    font = ImageFont.load_default(size=11)
    cell, label, text_h = resolution * scale, 92, 42
    grid = Image.new("RGB", (label + per_tag * (cell + 6), len(SKILLS) * (cell + text_h + 6)), "white")
    draw = ImageDraw.Draw(grid)
    rows = eval_prompts()
    for r, tag in enumerate(SKILLS):
        tagged = [m for m in rows if m["tag"] == tag]
        y = r * (cell + text_h + 6)
        draw.text((4, y + cell // 2), tag, fill="black", font=font)
        for c in range(per_tag):
            prompt = tagged[c * len(tagged) // per_tag]["prompt"]
            x = label + c * (cell + 6)
            grid.paste(render(prompt, resolution, seed + c).resize((cell, cell), Image.NEAREST), (x, y))
            lines = textwrap.wrap(prompt, width=max(cell // 6, 10))[:3]
            draw.multiline_text((x, y + cell + 2), "\n".join(lines), fill="black", font=font, spacing=1)
    return grid
