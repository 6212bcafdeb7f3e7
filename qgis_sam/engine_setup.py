"""What the first-run dialog runs to set up the engine environment, without Qt or QGIS (standard library
only, so that it can be tested anywhere): the commands, the check of the engine's version, the report of
a failed step, and the bookkeeping that leaves no half-installed environment behind.

Steps (each a plain command, no shell): ``BASE_PYTHON -m venv FOLDER``, ``VENV_PYTHON -m pip install
--upgrade pip``, for the CPU build of PyTorch ``VENV_PYTHON -m pip install torch --index-url
CPU_TORCH_INDEX``, ``VENV_PYTHON -m pip install PACKAGE`` (the zip's engine wheel with ``[geo]``) and
``VENV_PYTHON -c CHECK_SCRIPT PLUGIN_VERSION``. A folder the set-up created is removed when it fails; an
existing one keeps ``INCOMPLETE_MARKER`` and is set up from scratch next time.
"""

from __future__ import annotations

import os
import shutil
import sys

from .bundle import plugin_version

CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_BUILDS = ("CPU only (smaller download; for computers without an NVIDIA GPU)",
                "PyPI's default (with CUDA on Linux and Windows, for NVIDIA GPUs)")

# Run as ``python -c CHECK_SCRIPT PLUGIN_VERSION DEVICE``: fails (exit code 1, with what to do) on another
# version; otherwise prints which precision ``auto`` runs on DEVICE and why (sam_core.describe_auto).
CHECK_SCRIPT = """\
import sys
import sam_core, torch, rasterio
print('sam_core', sam_core.__version__, '| torch', torch.__version__)
if sam_core.__version__ != sys.argv[1]:
    sys.exit(f'this Python has sam_core {sam_core.__version__} but the plugin is version {sys.argv[1]}: click '
             'Create and install to set up an environment with the engine bundled with the plugin, or install '
             f'sam-suite=={sys.argv[1]} into it')
device = sys.argv[2] if len(sys.argv) > 2 else 'cpu'
usable = (device == 'cpu' or (device.startswith('cuda') and torch.cuda.is_available())
          or (device == 'mps' and torch.backends.mps.is_available()))
if usable:
    print('precision:', sam_core.describe_auto(device))
else:
    print(f'precision: {device} is not available in this Python (choose cpu); on cpu', sam_core.describe_auto('cpu'))
"""
INCOMPLETE_MARKER = ".sam_setup_incomplete"
# pip's words when it cannot reach the package index (Linux, Windows and macOS spellings).
NETWORK_SIGNS = ("Failed to establish a new connection", "Temporary failure in name resolution",
                 "Name or service not known", "Network is unreachable", "Connection refused", "Could not fetch URL",
                 "NewConnectionError", "ConnectTimeoutError", "ProxyError", "Max retries exceeded",
                 "getaddrinfo failed", "nodename nor servname")
NETWORK_ADVICE = ("No network: pip could not reach the package index (PyPI). Connect this computer to the internet "
                  "(behind a proxy, set it in pip's configuration file, pip.conf or pip.ini), then click "
                  "'Create and install' again.")
PIP_ADVICE = ("What to try: read pip's lines above; free some disk space if it says 'No space left'; use a base "
              "Python 3.10 to 3.12 (PyTorch may have no build for a newer one yet); or create the environment "
              "by hand (see the plugin's README) and choose it under 'Use an existing Python'.")


def venv_python(folder: str) -> str:
    """The interpreter inside a virtual environment folder."""
    if os.name == "nt":
        return os.path.join(folder, "Scripts", "python.exe")
    return os.path.join(folder, "bin", "python")


def default_base_python() -> str:
    """A Python to create the environment with: QGIS's own interpreter if it is a real one, else python3."""
    for name in ("python.exe", "python3", "python"):
        candidate = os.path.join(sys.exec_prefix, name if os.name == "nt" else os.path.join("bin", name))
        if os.path.isfile(candidate):
            return candidate
    return shutil.which("python3") or shutil.which("python") or ""


def check_command(python: str, device: str = "") -> list[str]:
    """The command that checks that ``python`` runs the engine of the plugin's version and says which
    precision ``auto`` runs on ``device`` ("" = the engine's default, the CPU)."""
    return [python, "-c", CHECK_SCRIPT, plugin_version(), device or "cpu"]


def failure_report(description: str, code: int, output: str) -> str:
    """What the log shows when a step fails: the step, pip's last lines and what to try."""
    lines = [line for line in output.splitlines() if line.strip()][-12:]
    tail = "\n".join(f"    {line}" for line in lines) or "    (no output)"
    if any(sign in output for sign in NETWORK_SIGNS):
        advice = NETWORK_ADVICE
    elif description.startswith("Checking"):
        advice = "What to try: the lines above say what is missing; choose another Python or click Create and install."
    else:
        advice = PIP_ADVICE
    return f"== {description} failed (exit code {code}). The last lines:\n{tail}\n{advice}"


def has_nvidia_gpu() -> bool:
    """Whether this computer seems to have an NVIDIA driver (``nvidia-smi`` on the PATH)."""
    return shutil.which("nvidia-smi") is not None


def install_steps(base_python: str, folder: str, package: str, cpu_torch: bool,
                  device: str = "") -> list[tuple[str, list[str]]]:
    """(description, command) for each step of creating the environment; ``cpu_torch`` installs
    PyTorch's CPU build first, so that installing ``package`` keeps it; the check names the precision
    ``auto`` runs on ``device``."""
    python = venv_python(folder)
    steps = [
        ("Creating the virtual environment", [base_python, "-m", "venv", folder]),
        ("Updating pip", [python, "-m", "pip", "install", "--upgrade", "pip"]),
    ]
    if cpu_torch:
        steps.append(("Installing PyTorch, CPU build (about 200 MB)",
                      [python, "-m", "pip", "install", "torch", "--index-url", CPU_TORCH_INDEX]))
    steps += [
        (f"Installing {package} (torch and friends: this can take several minutes)",
         [python, "-m", "pip", "install", package]),
        ("Checking the engine", check_command(python, device)),
    ]
    return steps


def begin_folder(folder: str) -> tuple[bool, list[str]]:
    """Prepare ``folder`` for a set-up: remove it when an earlier set-up left it incomplete, create it and
    mark it incomplete. Returns (whether this set-up creates the folder, messages for the log); raises
    OSError when the folder cannot be written."""
    messages = []
    if os.path.exists(os.path.join(folder, INCOMPLETE_MARKER)):
        messages.append(f"== an earlier set-up of {folder} did not finish: removing it and starting again")
        shutil.rmtree(folder, ignore_errors=True)
    created = not os.path.isdir(folder) or not os.listdir(folder)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, INCOMPLETE_MARKER), "w", encoding="utf-8") as handle:
        handle.write("set-up of the Segment Anything engine not finished\n")
    return created, messages


def finish_folder(folder: str, ok: bool, created: bool) -> str:
    """After a set-up: drop the marker (``ok``), remove the folder this set-up created, or leave an existing
    one marked incomplete. Returns a message for the log ('' when none)."""
    marker = os.path.join(folder, INCOMPLETE_MARKER)
    if ok:
        if os.path.exists(marker):
            os.remove(marker)
        return ""
    if created:
        shutil.rmtree(folder, ignore_errors=True)
        return f"== removed the unfinished environment {folder}: nothing is left half-installed"
    return f"== the environment {folder} is marked incomplete; Create and install sets it up again"


def is_setup_folder(folder: str) -> bool:
    """Whether ``folder`` is an environment or an unfinished set-up (may be set up again)."""
    return any(os.path.isfile(os.path.join(folder, name)) for name in ("pyvenv.cfg", INCOMPLETE_MARKER))
