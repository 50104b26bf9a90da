"""Download the ImageNet MobileNetV2 weights into each framework's standard cache.

    python -m course.fetch_imagenet        # (make fetch-imagenet)

For instructors who build an offline grading machine or image: run this once where there is
internet; afterwards FTLAB_WEIGHTS=auto (the default) finds the files in the cache and uses them.
Each framework runs in its own process (TensorFlow and torchvision must not share one).
"""
from __future__ import annotations

import subprocess
import sys

from course import weights

FETCH = {
    "torch": "import torchvision; torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V2.get_state_dict(progress=True)",
    "keras": "from tensorflow import keras; keras.applications.MobileNetV2(weights='imagenet', include_top=False,"
             " input_shape=(96, 96, 3))",
}


def main() -> int:
    failed = []
    for framework, code in FETCH.items():
        target = weights.imagenet_cache_file(framework)
        if target.exists():
            print(f"{framework}: already cached at {target}")
            continue
        print(f"{framework}: downloading into {target.parent} ...", flush=True)
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if result.returncode == 0 and target.exists():
            print(f"{framework}: saved {target}")
        else:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"{framework}: FAILED to download ({last})", file=sys.stderr)
            failed.append(framework)
    if failed:
        print(f"could not fetch ImageNet weights for {', '.join(failed)}; the course backbone stays in use",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
