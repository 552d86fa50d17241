"""Test environment: every framework offline, CPU only, writing nothing outside a temp folder.

Environment variables are set here, at import, because Keras and Ultralytics read them when
first imported.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings

# Machines here are noisy: no per-example deadline, no "too slow" verdicts. Speed is measured
# by the benchmarks, never asserted by tests.
settings.register_profile(
    "eventhooks", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("eventhooks")

# Test folders have no __init__.py: pytest puts a test's own folder on sys.path, so a test imports
# its siblings by plain name. The Ultralytics helpers (_yolo_data, _yolo_support) also serve
# tests/testing/test_conformance.py, which must find them when run alone. (mypy finds them
# through mypy_path in pyproject.toml.)
sys.path.insert(0, str(Path(__file__).resolve().parent / "adapters" / "ultralytics"))

_HOME = Path(tempfile.mkdtemp(prefix="eventhooks-tests-"))
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)

os.environ["KERAS_BACKEND"] = "torch"
os.environ["KERAS_HOME"] = str(_HOME / "keras")
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ["MPLBACKEND"] = "Agg"
os.environ["MPLCONFIGDIR"] = str(_HOME / "matplotlib")

# Ultralytics, offline (PRODUCT.md §2): its settings and the font it would download.
os.environ["YOLO_OFFLINE"] = "1"
os.environ["YOLO_AUTOINSTALL"] = "0"
os.environ["YOLO_VERBOSE"] = "0"
os.environ["YOLO_CONFIG_DIR"] = str(_HOME / "ultralytics")
_settings = _HOME / "ultralytics" / "Ultralytics"
_settings.mkdir(parents=True)
(_settings / "settings.json").write_text(
    json.dumps(
        {
            "sync": False,
            "hub": False,
            "clearml": False,
            "comet": False,
            "dvc": False,
            "mlflow": False,
            "neptune": False,
            "raytune": False,
            "tensorboard": False,
            "wandb": False,
            "vscode_msg": False,
            "openvino_msg": False,
        }
    )
)

# MLflow (PRODUCT.md §4): no telemetry host looked up, no "View run" URL printed, no INFO logs,
# and an HTTP client that gives up on a dead server after one retry instead of seven.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
os.environ["MLFLOW_LOGGING_LEVEL"] = "WARNING"
os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "1"
os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "30"


def _copy_font() -> None:
    """Ultralytics downloads Arial.ttf unless it finds one: give it matplotlib's DejaVu."""
    try:
        import matplotlib
    except ImportError:
        return
    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    if font.exists():
        for name in ("Arial.ttf", "Arial.Unicode.ttf"):
            shutil.copy(font, _settings / name)


_copy_font()
