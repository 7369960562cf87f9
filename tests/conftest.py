import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def shared_images(folder: str, n: int):
    """Up to ``n`` real images from ../shared/data/<folder>/images, or skip."""
    d = SHARED_DATA / folder / "images"
    if not d.is_dir():
        pytest.skip(f"real data not found at {d} (../shared/data is absent)")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    if not files:
        pytest.skip(f"no images in {d}")
    return files
