"""Draw examples/shapes.png: a synthetic scene made here (no third-party image), for the demo."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

H, W = 720, 1080
rng = np.random.default_rng(7)
yy, xx = np.mgrid[0:H, 0:W]
sky = np.stack([90 + 60 * yy / H, 140 + 50 * yy / H, 200 - 30 * yy / H], -1)
img = Image.fromarray(np.clip(sky + rng.normal(0, 6, (H, W, 3)), 0, 255).astype(np.uint8))
d = ImageDraw.Draw(img)
d.rectangle([0, 520, W, H], fill=(96, 140, 70))  # ground
d.ellipse([180, 260, 480, 560], fill=(220, 70, 50), outline=(120, 30, 20), width=6)  # red ball
d.rectangle([600, 300, 900, 540], fill=(240, 200, 60), outline=(150, 110, 20), width=6)  # yellow box
d.polygon([(600, 300), (750, 180), (900, 300)], fill=(150, 60, 150))  # roof
d.ellipse([860, 60, 980, 180], fill=(255, 240, 180))  # sun
img = img.filter(ImageFilter.GaussianBlur(1.2))
out = Path(__file__).resolve().parents[1] / "examples" / "shapes.png"
img.save(out, optimize=True)
print(out)
